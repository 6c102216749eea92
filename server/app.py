"""The gRPC server: explainer service, health checking, reflection, limits and graceful shutdown.

Message size limits are set explicitly (gRPC's defaults are 4 MiB in and unlimited out): requests up
to ``max_receive_bytes`` (default 16 MiB), responses up to ``max_send_bytes`` (default 64 MiB). A
larger message fails with RESOURCE_EXHAUSTED from gRPC itself, before the server sees it.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from onnxcam.proto import explainer_pb2 as pb
from onnxcam.proto import explainer_pb2_grpc as pb_grpc
from server.config import ServerConfig
from server.pipeline import Pipeline
from server.repository import Repository, load_repository
from server.service import ExplainerService

log = logging.getLogger("onnxcam.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Explainer"].full_name


def grpc_options(config: ServerConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", config.max_receive_bytes),
        ("grpc.max_send_message_length", config.max_send_bytes),
        ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
    ]


class ExplainerServer:
    """A started server on ``host:port`` (port 0 picks a free one; ``self.port`` says which)."""

    def __init__(self, repository: Repository, config: ServerConfig) -> None:
        self.repository = repository
        self.config = config
        self.pipeline = Pipeline(repository, config)
        self.service = ExplainerService(self.pipeline, stream_workers=config.workers, log_requests=config.log_requests)
        self.health = health.HealthServicer()
        self._server = grpc.server(ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="grpc"),
                                   options=grpc_options(config), maximum_concurrent_rpcs=config.max_concurrent_rpcs)
        pb_grpc.add_ExplainerServicer_to_server(self.service, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._server)
        self.port = self._server.add_insecure_port(f"{config.host}:{config.port}")
        if not self.port:
            raise OSError(f"cannot listen on {config.host}:{config.port}")
        self._stopping: threading.Event | None = None
        self._released = False

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    def start(self) -> ExplainerServer:
        self._server.start()
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return self

    def begin_stop(self, grace_s: float | None = None) -> threading.Event:
        """Refuse new RPCs from now on and stop batches waiting to fill; the event is set once the
        in-flight RPCs finished (or ``grace_s`` passed)."""
        if self._stopping is None:
            self.health.enter_graceful_shutdown()  # health checks say NOT_SERVING from now on
            for model in self.repository.models.values():
                for batcher in model.batchers:
                    batcher.drain()
            self._stopping = self._server.stop(self.config.grace_s if grace_s is None else grace_s)
        return self._stopping

    def stop(self, grace_s: float | None = None) -> None:
        """Refuse new RPCs, let in-flight ones finish (up to ``grace_s``), then free the models."""
        self.begin_stop(grace_s).wait()
        if not self._released:
            self._released = True
            self.service.close()
            self.repository.close()

    def wait(self) -> None:
        self._server.wait_for_termination()

    def __enter__(self) -> ExplainerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(0)


def serve(models_dir: Path, config: ServerConfig) -> int:
    """Load the repository and serve until SIGTERM or SIGINT; then drain and exit 0."""
    repository = load_repository(models_dir, config)
    if not repository.models:
        log.error("no model could be loaded from %s; nothing to serve", models_dir)
        return 1
    server = ExplainerServer(repository, config).start()
    log.info("serving %s on %s (max batch %d, max delay %g ms, queue %d rows, %d workers)",
             ", ".join(sorted(repository.models)), server.address, config.max_batch, config.max_delay_ms,
             config.max_queue, config.workers)
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(1.0):
            pass
        server.begin_stop()
        log.info("%s: draining; new requests are refused, in-flight ones get up to %g s", received[0],
                 config.grace_s)
        server.stop()
        log.info("stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
