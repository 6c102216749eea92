"""Prometheus metrics of one server, on their own registry (several servers in one process never mix):
requests by model, method and status code, latency per stage, batch sizes, queue depth, requests in
flight and RPCs by gRPC method and code. ``--metrics-port`` serves them over HTTP (``/metrics``).

Label values are bounded: a model name the server does not serve counts as ``unknown`` and a method
value outside the enum as ``unknown``, so a caller cannot grow the registry with names of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from onnxcam.proto import explainer_pb2 as pb
from server.loaded_model import LoadedModel

UNKNOWN = "unknown"
#: Seconds, from a 1 ms decode to a minute of Score-CAM.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: The stages of the Explain response's ``timing``, by the name the metric gives them.
STAGES = {"decode": "decode_ms", "preprocess": "preprocess_ms", "queue": "queue_ms", "inference": "inference_ms",
          "render": "postprocess_ms"}


def method_labels(values: Iterable[int]) -> list[str]:
    """The request's methods as label values; an empty list is the server's default method."""
    labels = [pb.Method.Name(v).lower() if v in pb.Method.values() else UNKNOWN for v in values]
    return sorted(set(labels)) or ["default"]


class ServerMetrics:
    """The metrics and, once ``serve_http`` ran, the HTTP endpoint that exposes them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._served: set[str] = set()
        self.requests = Counter("onnxcam_requests", "Explain requests (and Open Inference rows) by model, method "
                                "asked for and gRPC status code", ["model", "method", "code"], registry=self.registry)
        self.latency = Histogram("onnxcam_request_seconds", "Time of an Explain request on the server, "
                                 "end to end", ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage = Histogram("onnxcam_stage_seconds", "Time of an answered request per stage: decode, "
                               "preprocess, queue, inference, render", ["model", "stage"], buckets=LATENCY_BUCKETS,
                               registry=self.registry)
        self.batch_rows = Histogram("onnxcam_batch_rows", "Rows of each session call the batcher made", ["model",
                                    "graph"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_rows = Gauge("onnxcam_queue_rows", "Rows waiting in a model's batcher queue", ["model", "graph"],
                                registry=self.registry)
        self.in_flight = Gauge("onnxcam_requests_in_flight", "Explain requests (and Open Inference rows) being "
                               "worked on", registry=self.registry)
        self.rpcs = Counter("onnxcam_rpcs", "gRPC calls by full method name and status code (refused "
                            "ones too, e.g. UNAUTHENTICATED)", ["rpc", "code"], registry=self.registry)
        self._http: tuple[object, threading.Thread] | None = None
        self.port: int | None = None

    def watch(self, models: Iterable[LoadedModel]) -> None:
        """Queue depth and batch sizes of every batcher of ``models``."""
        for model in models:
            self._served.add(model.name)
            for batcher in model.batchers:
                graph = batcher.name.rsplit("/", 1)[-1]
                self.queue_rows.labels(model.name, graph).set_function(lambda b=batcher: b.queued_rows)
                batcher.batch_observers.append(self.batch_rows.labels(model.name, graph).observe)

    def model_label(self, name: str) -> str:
        return name if name in self._served else UNKNOWN

    def request_done(self, request: pb.ExplainRequest, code: grpc.StatusCode, elapsed_s: float,
                     response: pb.ExplainResponse | None) -> None:
        model = self.model_label(request.model)
        for method in method_labels(request.methods):
            self.requests.labels(model, method, code.name).inc()
        self.latency.labels(model).observe(elapsed_s)
        if response is not None:
            for stage, field in STAGES.items():
                self.stage.labels(model, stage).observe(getattr(response.timing, field) / 1000.0)

    def serve_http(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (0: a free port); returns the port."""
        server, thread = start_http_server(port, addr=host.strip("[]"), registry=self.registry)
        self._http = (server, thread)
        self.port = server.server_port
        return self.port

    def close(self) -> None:
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._http = None
