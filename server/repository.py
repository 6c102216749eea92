"""The model repository: every model folder under one directory, loaded once at start.

A folder that fails to load is logged with the reason and skipped; it never stops the others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from onnxcam import contract
from onnxcam.proto import explainer_pb2 as pb
from server.config import ServerConfig
from server.errors import not_found
from server.loaded_model import LoadedModel
from server.model_info import ModelFolderError, load_model_info

log = logging.getLogger("onnxcam.server")


@dataclass
class Repository:
    models: dict[str, LoadedModel] = field(default_factory=dict)
    #: folder -> why it was skipped
    skipped: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> LoadedModel:
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise not_found(f"unknown model {name!r}; this server has: {known}") from None

    def close(self) -> None:
        for model in self.models.values():
            model.close()


def model_folders(root: Path) -> list[Path]:
    """``root`` itself when it is a model folder (built, or only its recipe), else its sub-folders
    (hidden ones excluded)."""
    if (root / contract.MODEL_JSON).is_file() or (root / contract.RECIPE_FILE).is_file():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_repository(root: Path, config: ServerConfig) -> Repository:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"model repository {root} is not a directory")
    repository = Repository()
    for folder in model_folders(root):
        try:
            info = load_model_info(folder)
            if info.name in repository.models:
                raise ModelFolderError(f"model name {info.name!r} is already taken by "
                                       f"{repository.models[info.name].info.folder}")
            model = LoadedModel(info, config)
        except ModelFolderError as error:
            log.error("skipping model folder %s: %s", folder, error)
            repository.skipped[str(folder)] = str(error)
            continue
        except Exception as error:  # one bad folder must not stop the server
            log.exception("skipping model folder %s: unexpected error", folder)
            repository.skipped[str(folder)] = f"unexpected error: {error}"
            continue
        repository.models[info.name] = model
        if info.raw.get("weights") == contract.WEIGHTS_RANDOM:
            log.warning("%s has RANDOM weights (exported from an architecture without --weights): its predictions "
                        "and heatmaps mean nothing", info.name)
        off = ", ".join(f"{m} ({d})" for m, (reason, d) in model.unavailable.items()
                        if reason == pb.Skipped.NOT_AVAILABLE)
        log.info("loaded %s from %s: %d classes, input %s, methods %s, providers %s; costs ms %s%s", info.name, folder,
                 info.num_classes, list(info.input_size), ", ".join(model.methods), ", ".join(model.providers),
                 {k: round(v, 2) for k, v in model.costs.as_dict(model.methods).items()},
                 f"; off: {off}" if off else "")
    return repository
