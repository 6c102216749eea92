"""The model repository: every model folder under one directory, loaded once at start.

A folder that fails to load is logged with the reason and skipped; it never stops the others. Two
folders claiming one model name stop the start (DuplicateModelError): serving either one would let a
stray copy silently replace the real model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from onnxcam import contract
from onnxcam.proto import explainer_pb2 as pb
from server.config import ServerConfig
from server.errors import not_found, quoted
from server.loaded_model import LoadedModel
from server.model_info import ModelFolderError, ModelInfo, load_model_info

log = logging.getLogger("onnxcam.server")


class DuplicateModelError(Exception):
    """Two or more model folders give the same model name; the message names every folder."""


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
            raise not_found(f"unknown model {quoted(name)}; this server has: {known}") from None

    def close(self) -> None:
        for model in self.models.values():
            model.close()


def model_folders(root: Path) -> list[Path]:
    """``root`` itself when it is a model folder (built, or only its recipe), else its sub-folders
    (hidden ones excluded)."""
    if (root / contract.MODEL_JSON).is_file() or (root / contract.RECIPE_FILE).is_file():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _refuse_duplicates(infos: list[ModelInfo]) -> None:
    folders: dict[str, list[Path]] = {}
    for info in infos:
        folders.setdefault(info.name, []).append(info.folder)
    clashes = {name: paths for name, paths in folders.items() if len(paths) > 1}
    if clashes:
        detail = "; ".join(f"{name!r} in {' and '.join(str(p) for p in paths)}" for name, paths in clashes.items())
        raise DuplicateModelError(f"two model folders claim the same model name: {detail}; remove or rename one "
                                  "(model.json's \"name\")")


def load_repository(root: Path, config: ServerConfig) -> Repository:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"model repository {root} is not a directory")
    repository = Repository()
    infos: list[ModelInfo] = []
    for folder in model_folders(root):
        try:
            infos.append(load_model_info(folder))
        except ModelFolderError as error:
            log.error("skipping model folder %s: %s", folder, error)
            repository.skipped[str(folder)] = str(error)
    _refuse_duplicates(infos)
    for info in infos:
        folder = info.folder
        try:
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
