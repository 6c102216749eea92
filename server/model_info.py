"""model.json parsed and checked: the only place the server learns what a model folder holds."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxcam import contract
from onnxcam import methods as registry
from onnxcam import preprocess as preprocessing


class ModelFolderError(Exception):
    """A model folder the server cannot serve; the repository logs it and skips the folder."""


#: The preprocessing numbers; the public onnxcam.preprocess runs them, here and on edge devices.
Preprocess = preprocessing.Spec


@dataclass(frozen=True)
class ModelInfo:
    name: str
    folder: Path
    input_size: tuple[int, int]
    preprocess: Preprocess
    labels: tuple[str, ...]
    num_classes: int
    target_layer: str
    activation_shape: tuple[int, int, int]
    #: Maps the explainer graph outputs (``cam_<method>``).
    graph_methods: tuple[str, ...]
    #: cam_linear.npz when the head is global-average-pool + linear, else None.
    cam_linear_file: Path | None
    head_file: Path
    head_inputs: tuple[str, ...]
    forward_file: Path
    explainer_file: Path
    #: input_gradients.onnx (saliency, deconvnet, guided backpropagation, Guided Grad-CAM); None in
    #: folders exported before it existed.
    input_gradients_file: Path | None
    opset: int
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)
    #: How the target layer's output was folded into [K, h, w]: "nchw", "tokens" (ViT) or "nhwc" (Swin).
    target_layout: str = "nchw"


def _require(data: dict[str, Any], key: str) -> Any:
    if key not in data:
        raise ModelFolderError(f"model.json has no {key!r}")
    return data[key]


def _file(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise ModelFolderError(f"{name} is missing")
    return path


def _preprocess(data: dict[str, Any], input_size: tuple[int, int]) -> Preprocess:
    try:
        return preprocessing.spec_from_dict(data, input_size)
    except preprocessing.SpecError as error:
        raise ModelFolderError(str(error)) from error


def load_model_info(folder: Path) -> ModelInfo:
    """Parse ``folder/model.json`` and check that the files it names exist."""
    folder = Path(folder)
    if not (folder / contract.MODEL_JSON).exists() and (folder / contract.RECIPE_FILE).is_file():
        raise ModelFolderError(f"not built yet: it holds {contract.RECIPE_FILE} but no {contract.MODEL_JSON}; run "
                               f"`onnxcam models build --models {folder.parent} {folder.name}` (needs torch)")
    try:
        data = json.loads(_file(folder, contract.MODEL_JSON).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFolderError(f"model.json is unreadable: {error}") from error
    if not isinstance(data, dict):
        raise ModelFolderError("model.json is not a JSON object")
    try:
        input_size = tuple(int(v) for v in _require(data, "input_size"))
        labels = tuple(str(v) for v in _require(data, "labels"))
        num_classes = int(_require(data, "num_classes"))
        activation_shape = tuple(int(v) for v in _require(data, "activation_shape"))
        methods = tuple(str(m) for m in _require(data, "methods"))
        cam = data.get("cam")
        head = data.get("head") or {}
        forward = data.get("forward") or {}
        explainer = data.get("explainer") or {}
        input_gradients = data.get("input_gradients") or {}
        info = ModelInfo(
            name=str(data.get("name") or folder.name),
            folder=folder,
            input_size=input_size,  # type: ignore[arg-type]
            preprocess=_preprocess(_require(data, "preprocess"), input_size),  # type: ignore[arg-type]
            labels=labels,
            num_classes=num_classes,
            target_layer=str(data.get("target_layer", "")),
            activation_shape=activation_shape,  # type: ignore[arg-type]
            graph_methods=methods,
            cam_linear_file=_file(folder, cam.get("file", contract.CAM_LINEAR_FILE)) if cam else None,
            head_file=_file(folder, head.get("file", contract.HEAD_FILE)),
            head_inputs=tuple(head.get("inputs", [contract.INPUT_ACTIVATIONS])),
            forward_file=_file(folder, forward.get("file", contract.FORWARD_FILE)),
            explainer_file=_file(folder, explainer.get("file", contract.EXPLAINER_FILE)),
            input_gradients_file=_file(folder, input_gradients["file"]) if input_gradients else None,
            opset=int(data.get("opset", 0)),
            raw=data,
            target_layout=str((data.get("target_layout") or {}).get("kind", "nchw")),
        )
    except (TypeError, ValueError, AttributeError) as error:
        raise ModelFolderError(f"model.json is malformed: {error}") from error
    if len(info.input_size) != 2 or min(info.input_size) <= 0:
        raise ModelFolderError(f"input_size {list(info.input_size)} is not [H, W]")
    if len(info.activation_shape) != 3:
        raise ModelFolderError(f"activation_shape {list(info.activation_shape)} is not [K, h, w]")
    if len(labels) != num_classes:
        raise ModelFolderError(f"{len(labels)} labels for {num_classes} classes")
    unknown = set(methods) - set(registry.names(registry.Kind.GRAPH))
    if unknown:
        raise ModelFolderError(f"unknown methods in model.json: {sorted(unknown)} (written by a newer onnxcam?)")
    return info
