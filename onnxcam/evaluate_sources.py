"""Where ``onnxcam evaluate`` gets its maps and its scores, without torch.

Maps always come from an explainer server through ``onnxcam.client``: a running one (``--server``),
or one started in this process on a loopback port from the model folder (the default), so the
evaluation measures exactly what is served. Scores (the target's softmax probability on the image,
on the explanation E and on every deletion/insertion step) come from ``forward.onnx`` in a local
ONNX Runtime session, in batches; against a running server, from the server itself (preprocessed
tensors through ExplainStream, predictions only).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxcam import contract, metrics
from onnxcam.client import ExplainerClient, method_name
from onnxcam.preprocess import Spec, spec_from_message
from onnxcam.proto import explainer_pb2 as pb
from server.model_info import ModelFolderError, load_model_info


class SourceError(RuntimeError):
    """The model or server cannot be evaluated (named in the message)."""


@dataclass(frozen=True)
class ModelView:
    """What the evaluation needs to know about the served model."""

    name: str
    labels: tuple[str, ...]
    input_size: tuple[int, int]
    #: The target layer's h x w (the random baseline map's size).
    feature_size: tuple[int, int]
    preprocess: Spec
    #: Methods the server computes for this model.
    methods: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def model_view(client: ExplainerClient, model: str) -> ModelView:
    meta = client.metadata(model)
    preprocess = spec_from_message(meta.preprocess)
    return ModelView(meta.name, tuple(meta.labels), (meta.input_height, meta.input_width),
                     tuple(meta.activation_shape[1:3]), preprocess, tuple(method_name(m) for m in meta.methods))


def find_model_folder(models_dir: Path, name: str | None) -> Path:
    """The folder of model ``name`` under ``models_dir`` (or ``models_dir`` itself); with no name, the
    only model there."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise SourceError(f"model repository {models_dir} is not a directory")
    if (models_dir / contract.MODEL_JSON).is_file():
        candidates = [models_dir]
    else:
        candidates = sorted(p for p in models_dir.iterdir() if (p / contract.MODEL_JSON).is_file())
    found: dict[str, Path] = {}
    for folder in candidates:
        try:
            found[load_model_info(folder).name] = folder
        except ModelFolderError:
            continue
    if name is None:
        if len(found) != 1:
            raise SourceError(f"{models_dir} has {len(found)} models ({', '.join(sorted(found)) or 'none'}): "
                              "choose one with --model")
        return next(iter(found.values()))
    if name not in found:
        raise SourceError(f"no model {name!r} in {models_dir}; it has: {', '.join(sorted(found)) or 'none'}")
    return found[name]


@contextmanager
def local_server(folder: Path, threads: int = 0) -> Iterator[str]:
    """An explainer server for one model folder on a free loopback port, in this process: its address."""
    from server.app import ExplainerServer
    from server.config import ServerConfig
    from server.repository import load_repository

    config = ServerConfig(host="127.0.0.1", port=0, intra_op_threads=threads, grace_s=0.0)
    repository = load_repository(folder, config)
    if not repository.models:
        raise SourceError(f"cannot load {folder}: {'; '.join(repository.skipped.values())}")
    server = ExplainerServer(repository, config).start()
    try:
        yield server.address
    finally:
        server.stop(0)


def raw_map(heatmap: pb.Heatmap) -> np.ndarray:
    raw = heatmap.raw
    shape = (raw.channels, raw.height, raw.width) if raw.channels > 1 else (raw.height, raw.width)
    return np.asarray(raw.values, np.float32).reshape(shape)


def explain(client: ExplainerClient, model: str, image: bytes, target: int,
            methods: list[str]) -> tuple[dict[str, np.ndarray], dict[str, str], float]:
    """Raw maps of ``methods`` for ``target`` (one Explain call), what the server skipped and why,
    and the server's total milliseconds."""
    response = client.explain(image, model, methods=methods, targets=[target], raw=True, timeout=None)
    maps = {method_name(h.method): raw_map(h) for h in response.heatmaps}
    skipped = {method_name(s.method): s.detail or pb.Skipped.Reason.Name(s.reason) for s in response.skipped}
    return maps, skipped, response.timing.total_ms


class LocalScorer:
    """Softmax probabilities from ``forward.onnx`` in a local ONNX Runtime session, ``batch`` rows a call."""

    def __init__(self, forward_file: Path, threads: int = 0, batch: int = 32) -> None:
        from server.sessions import open_session

        self.session = open_session(Path(forward_file), "auto", threads, 1, spin=False)
        self.batch = batch

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        """[N, 3, H, W] -> [N, C]."""
        out = [self.session.run([contract.OUTPUT_LOGITS], {contract.INPUT_PIXELS: rows[i:i + self.batch]})[0]
               for i in range(0, len(rows), self.batch)]
        return metrics.softmax(np.concatenate(out))


class ServerScorer:
    """Softmax probabilities from a server: each row a preprocessed tensor on one ExplainStream,
    predictions only, every class."""

    def __init__(self, client: ExplainerClient, model: str, num_classes: int) -> None:
        self.client, self.model, self.num_classes = client, model, num_classes

    def _request(self, row: np.ndarray) -> pb.ExplainRequest:
        request = pb.ExplainRequest(model=self.model, methods=[pb.METHOD_NONE], top_k=self.num_classes)
        request.tensor.shape.extend(row.shape)
        request.tensor.data.extend(row.ravel().tolist())
        return request

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        out = np.zeros((len(rows), self.num_classes), np.float64)
        responses = self.client.explain_stream((self._request(row) for row in rows), timeout=None)
        for i, response in enumerate(responses):
            if response.HasField("error"):
                raise SourceError(f"the server could not score a perturbed input: {response.error.message}")
            for prediction in response.predictions:
                out[i, prediction.index] = prediction.score
        return out
