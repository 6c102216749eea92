"""A small Python client for the onnxcam explainer server (grpcio only, no torch, no numpy needed).

    from onnxcam.client import ExplainerClient
    with ExplainerClient("localhost:50051") as client:
        response = client.explain("cat.jpg", model="resnet50", methods=["gradcam"], overlay_png=True)
        for p in response.predictions:
            print(p.label, p.score)
        open("overlay.png", "wb").write(response.heatmaps[0].overlay_png)
        print(summary(response))  # top-k, heatmaps, skipped methods, timing: one readable block

Errors arrive as ``grpc.RpcError`` with the server's status code and message
(``error.code()``, ``error.details()``). UNAVAILABLE and RESOURCE_EXHAUSTED are retried by gRPC itself
first (``retry=False`` turns that off; see onnxcam.client_channel). A server with TLS and tokens:

    ExplainerClient("host:50051", tls_ca="ca.pem", token=open("token").read().strip())
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from onnxcam import methods
from onnxcam.client_channel import MAX_RECEIVE_BYTES, MAX_SEND_BYTES, make_channel  # noqa: F401 (the limits, re-exported)
from onnxcam.proto import explainer_pb2 as pb
from onnxcam.proto import explainer_pb2_grpc as pb_grpc

MethodLike = str | int


def method_value(method: MethodLike) -> int:
    """``"gradcam"``, ``"GRADCAM"``, ``"grad-cam++"``, ``"none"`` or a Method value -> the Method value."""
    if isinstance(method, int):
        return method
    compact = method.strip().lower().replace("-", "").replace("_", "").replace("+", "p")
    if compact in ("none", "methodnone"):
        return pb.METHOD_NONE
    for known in methods.METHODS:
        if compact == known.name.replace("_", ""):
            return pb.Method.Value(known.enum)
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(methods.names())} or none")


def method_name(value: int) -> str:
    return pb.Method.Name(value).lower() if value in pb.Method.values() else str(value)


def format_timing(timing: pb.Timing) -> str:
    """One line: where the server's time went (the protobuf's own str is one field per line)."""
    return (f"decode {timing.decode_ms:.1f} ms, preprocess {timing.preprocess_ms:.1f} ms, queue {timing.queue_ms:.1f} "
            f"ms, inference {timing.inference_ms:.1f} ms, postprocess {timing.postprocess_ms:.1f} ms, total "
            f"{timing.total_ms:.1f} ms (batch of {timing.batch_rows} rows)")


def format_skipped(skipped: pb.Skipped) -> str:
    """``scorecam skipped (budget): needs about ...``: the method and reason by name, not enum numbers."""
    reason = pb.Skipped.Reason.Name(skipped.reason).lower().replace("_", " ")
    return f"{method_name(skipped.method)} skipped ({reason}): {skipped.detail}"


def summary(response: pb.ExplainResponse) -> str:
    """The response as a person reads it: predictions, heatmaps, skipped methods and timing, one per line."""
    lines = [f"{response.model}: {response.timing.total_ms:.1f} ms on the server"]
    lines += [f"{rank:3d}. {p.label:<30s} {p.score:8.4f}  (class {p.index}, logit {p.logit:.3f})"
              for rank, p in enumerate(response.predictions, 1)]
    lines += [f"heatmap {method_name(h.method)} for class {h.target} ({h.target_label})" for h in response.heatmaps]
    lines += [format_skipped(s) for s in response.skipped]
    lines.append(f"timing: {format_timing(response.timing)}")
    return "\n".join(lines)


def build_request(image: bytes | str | os.PathLike | Any, model: str, *, methods: Sequence[MethodLike] = (),
                  targets: Sequence[int] = (), top_k: int = 0, budget_ms: float = 0.0, raw: bool = False,
                  heatmap_png: bool = False, overlay_png: bool = False, request_id: str = "",
                  sampling: pb.Sampling | dict[str, Any] | None = None,
                  max_render_side: int = 0) -> pb.ExplainRequest:
    """An ExplainRequest. ``image``: encoded bytes, a file path, or an array-like [3, H, W] that is
    already preprocessed (sent as a float32 tensor). ``sampling``: the sampled methods' parameters,
    e.g. ``{"samples": 50, "seed": 7}`` (see the proto's Sampling). ``max_render_side``: the PNGs'
    largest side (0: the server's cap)."""
    if isinstance(sampling, dict):
        sampling = pb.Sampling(**sampling)
    request = pb.ExplainRequest(model=model, methods=[method_value(m) for m in methods], targets=list(targets),
                                top_k=top_k, budget_ms=budget_ms, raw=raw, heatmap_png=heatmap_png,
                                overlay_png=overlay_png, request_id=request_id, sampling=sampling,
                                max_render_side=max_render_side)
    if isinstance(image, bytes | bytearray | memoryview):
        request.image = bytes(image)
    elif isinstance(image, str | os.PathLike):
        request.image = Path(image).read_bytes()
    elif hasattr(image, "shape"):
        request.tensor.shape.extend(int(v) for v in image.shape)
        request.tensor.data.extend(image.astype("float32").ravel().tolist())
    else:
        raise TypeError(f"image must be bytes, a path or an array, not {type(image).__name__}")
    return request


def heatmap_pngs(raw: Any, image: bytes | str | os.PathLike | Any, model: Any, *, heatmap_png: bool = True,
                 overlay_png: bool = False, max_render_side: int | None = None) -> tuple[bytes, bytes]:
    """The (heatmap, overlay) PNGs ``onnxcam serve`` returns, made from a raw map computed elsewhere: a row
    of ``cam_gradcam`` (or any map output) of the explainer served by Triton or KServe from
    ``--triton-repo``, or of a local ONNX Runtime session. ReLU, min-max normalisation and bilinear
    upsampling through the centre crop onto ``image`` (bytes, a path or a PIL image: the photo that was
    preprocessed). ``model``: its model folder, one of its graphs (e.g. Triton's model.onnx) or a
    preprocess Spec. ``max_render_side``: the PNGs' largest side (default: the server's default cap;
    0: the original size). The server's own numpy + Pillow code draws them (no torch), so the bytes
    equal Explain's for the same map."""
    import numpy as np

    from onnxcam import preprocess
    from server import heatmaps, imaging
    from server.config import ServerConfig

    spec = model if isinstance(model, preprocess.Spec) else preprocess.read_spec(model)
    prepared = imaging.prepare_image(preprocess.open_image(image), spec)
    cap = ServerConfig().max_render_side if max_render_side is None else max_render_side
    shown, background = heatmaps.for_display(prepared.geometry, prepared.rgb, cap)
    return heatmaps.render(np.asarray(raw, np.float32), shown, background, heatmap_png=heatmap_png,
                           overlay_png=overlay_png)


class ExplainerClient:
    """One channel to a server; thread-safe, cheap to share. ``timeout`` (seconds) is the default deadline.

    ``tls``/``tls_ca`` (PEM bytes or path; default the system's roots), ``tls_client_cert`` and
    ``tls_client_key`` (mutual TLS) and ``token`` (bearer token) for a secured server; ``retry``: gRPC's
    retry policy for UNAVAILABLE and RESOURCE_EXHAUSTED (see onnxcam.client_channel)."""

    def __init__(self, target: str, *, timeout: float | None = 30.0, channel: grpc.Channel | None = None,
                 tls: bool = False, tls_ca: bytes | str | os.PathLike | None = None,
                 tls_client_cert: bytes | str | os.PathLike | None = None,
                 tls_client_key: bytes | str | os.PathLike | None = None, token: str | None = None,
                 retry: bool = True) -> None:
        self.target = target
        self.timeout = timeout
        self.channel = channel or make_channel(target, tls=tls, tls_ca=tls_ca, tls_client_cert=tls_client_cert,
                                               tls_client_key=tls_client_key, token=token, retry=retry)
        self.stub = pb_grpc.ExplainerStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def explain(self, image: bytes | str | os.PathLike | Any, model: str, *, timeout: float | None = None,
                **options: Any) -> pb.ExplainResponse:
        """One Explain call; ``options`` are build_request's (methods, targets, top_k, budget_ms, raw,
        heatmap_png, overlay_png, request_id, sampling)."""
        return self.stub.Explain(build_request(image, model, **options), timeout=self._timeout(timeout))

    def explain_request(self, request: pb.ExplainRequest, *, timeout: float | None = None) -> pb.ExplainResponse:
        return self.stub.Explain(request, timeout=self._timeout(timeout))

    def explain_stream(self, requests: Iterable[pb.ExplainRequest], *,
                       timeout: float | None = None) -> Iterator[pb.ExplainResponse]:
        """Responses in request order; a failed request yields a response with ``error`` set."""
        return self.stub.ExplainStream(iter(requests), timeout=self._timeout(timeout))

    def list_models(self, *, timeout: float | None = None) -> list[pb.ModelSummary]:
        return list(self.stub.ListModels(pb.ListModelsRequest(), timeout=self._timeout(timeout)).models)

    def metadata(self, model: str, *, timeout: float | None = None) -> pb.ModelMetadata:
        return self.stub.GetModelMetadata(pb.GetModelMetadataRequest(model=model), timeout=self._timeout(timeout))

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """"SERVING", "NOT_SERVING", ... from grpc.health.v1 (``service`` "" is the whole server)."""
        response = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self._timeout(timeout))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ExplainerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
