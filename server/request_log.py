"""One log line per request: request id, model, methods, targets, status code and where the time went.

Never the image, the tensor or any metadata (tokens travel there): only the fields below. In text the
line reads ``explain model=... methods=[...] targets=[...] -> CODE in N ms (...)``; with
``--log-format json`` the same facts are keys of the line's JSON object.
"""

from __future__ import annotations

import logging
import uuid

import grpc

from onnxcam.proto import explainer_pb2 as pb
from server.metrics import STAGES, method_labels

log = logging.getLogger("onnxcam.server.requests")
#: Longest model name or request id written as given; longer ones are cut (a caller's 100 KB name
#: must not become a 100 KB log line).
MAX_ECHO = 128


def _cut(text: str) -> str:
    return text if len(text) <= MAX_ECHO else text[:MAX_ECHO] + f"...({len(text)} chars)"


def request_id(request: pb.ExplainRequest) -> str:
    """The caller's ``request_id`` or, when it sent none, a fresh one (so every line can be told apart)."""
    return _cut(request.request_id) if request.request_id else uuid.uuid4().hex[:16]


def fields(request: pb.ExplainRequest, code: grpc.StatusCode, elapsed_s: float,
           response: pb.ExplainResponse | None) -> dict[str, object]:
    line: dict[str, object] = {
        "request_id": request_id(request), "model": _cut(request.model), "methods": method_labels(request.methods),
        "targets": len(request.targets), "input": request.WhichOneof("input") or "none", "code": code.name,
        "total_ms": round(elapsed_s * 1000.0, 2)}
    if response is not None:
        line.update({f"{stage}_ms": round(getattr(response.timing, name), 2) for stage, name in STAGES.items()})
        line["batch_rows"] = response.timing.batch_rows
        line["heatmaps"] = len(response.heatmaps)
    return line


def log_request(request: pb.ExplainRequest, code: grpc.StatusCode, elapsed_s: float,
                response: pb.ExplainResponse | None) -> None:
    line = fields(request, code, elapsed_s, response)
    stages = ", ".join(f"{stage} {line[f'{stage}_ms']:.1f}" for stage in STAGES if f"{stage}_ms" in line)
    log.info("explain model=%s methods=%s targets=%s -> %s in %.1f ms (id %s%s)", line["model"], line["methods"],
             list(request.targets)[:16], code.name, line["total_ms"], line["request_id"],
             f"; {stages} ms" if stages else "", extra={"fields": line})
