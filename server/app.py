"""The gRPC server: explainer service, health checking, reflection, limits and graceful shutdown.

Message size limits are set explicitly (gRPC's defaults are 4 MiB in and unlimited out): requests up
to ``max_receive_bytes`` (default 16 MiB), responses up to ``max_send_bytes`` (default 64 MiB). A
larger message fails with RESOURCE_EXHAUSTED from gRPC itself, before the server sees it.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from onnxcam.cli_errors import CliError
from onnxcam.proto import explainer_pb2 as pb
from onnxcam.proto import explainer_pb2_grpc as pb_grpc
from onnxcam.proto import grpc_service_pb2_grpc as oip_grpc
from server import auth, open_inference, reflection, tls
from server.admission import Admission, CountingPool
from server.config import ServerConfig
from server.metrics import ServerMetrics
from server.observed import ObservedPipeline
from server.repository import DuplicateModelError, Repository, load_repository
from server.rpc_metrics import RpcMetricsInterceptor
from server.service import ExplainerService

log = logging.getLogger("onnxcam.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Explainer"].full_name
#: Every service health checking reports on, by name (besides the server as a whole, "").
SERVICES = (SERVICE_NAME, open_inference.SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)


def grpc_options(config: ServerConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", config.max_receive_bytes),
        ("grpc.max_send_message_length", config.max_send_bytes),
        ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
    ]


def read_tokens(config: ServerConfig) -> list[bytes]:
    try:
        return auth.read_tokens(Path(config.auth_token_file))
    except OSError as error:
        raise CliError(f"cannot read --auth-token-file {config.auth_token_file}: {error.strerror or error}",
                       code=2) from error
    except (ValueError, UnicodeDecodeError) as error:
        raise CliError(f"--auth-token-file {config.auth_token_file}: {error}", code=2) from error


def interceptors(config: ServerConfig, metrics: ServerMetrics | None) -> list[grpc.ServerInterceptor]:
    """Metrics first (so they count the refusals), then token authentication."""
    chain: list[grpc.ServerInterceptor] = []
    if metrics is not None:
        chain.append(RpcMetricsInterceptor(metrics, SERVICES + reflection.SERVICE_NAMES))
    if config.auth_token_file:
        chain.append(auth.TokenAuthInterceptor(read_tokens(config)))
    return chain


class ExplainerServer:
    """A started server on ``host:port`` (port 0 picks a free one; ``self.port`` says which)."""

    def __init__(self, repository: Repository, config: ServerConfig) -> None:
        self.repository = repository
        self.config = config
        self.metrics = ServerMetrics() if config.metrics_port is not None else None
        self.pipeline = ObservedPipeline(repository, config, self.metrics, config.logs_requests)
        self.service = ExplainerService(self.pipeline, stream_workers=config.workers, log_requests=config.log_requests)
        self.health = health.HealthServicer()
        # The concurrency limit is Admission's, not gRPC's: gRPC's counts (and queues) health checks too.
        # Admission is outermost: it moves health checks to their own pool on the handler gRPC runs.
        self.admission = Admission(CountingPool(max_workers=config.workers, thread_name_prefix="grpc"),
                                   config.max_concurrent_rpcs)
        self._server = grpc.server(self.admission.pool, options=grpc_options(config),
                                   interceptors=[self.admission, *interceptors(config, self.metrics)])
        # The Open Inference Protocol (KServe v2) on the same port: Triton's and KServe's clients call it.
        self.open_inference = open_inference.OpenInferenceService(
            self.pipeline, is_ready=lambda: self._stopping is None, workers=config.workers)
        pb_grpc.add_ExplainerServicer_to_server(self.service, self._server)
        oip_grpc.add_GRPCInferenceServiceServicer_to_server(self.open_inference, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        if config.serves_reflection:
            reflection.enable(SERVICES, self._server)
        if self.metrics is not None:
            self.metrics.watch(repository.models.values())
        address = f"{config.host}:{config.port}"
        if config.tls_cert:
            credentials = tls.server_credentials(Path(config.tls_cert), Path(config.tls_key),
                                                 Path(config.tls_client_ca) if config.tls_client_ca else None)
            self.port = self._server.add_secure_port(address, credentials)
        else:
            self.port = self._server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot listen on {config.host}:{config.port}")
        self._stopping: threading.Event | None = None
        self._released = False

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    def start(self) -> ExplainerServer:
        if self.metrics is not None:
            try:
                self.metrics.serve_http(self.config.host, self.config.metrics_port)
            except OSError as error:
                raise CliError(f"cannot serve metrics on {self.config.host}:{self.config.metrics_port} "
                               f"(--metrics-port): {error.strerror or error}") from error
        self._server.start()
        for service in ("", SERVICE_NAME, open_inference.SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return self

    def begin_stop(self, grace_s: float | None = None, drain_s: float = 0.0) -> threading.Event:
        """Health says NOT_SERVING from now on; requests are still accepted for ``drain_s`` seconds
        (an orchestrator removes the endpoint meanwhile), then new ones are refused (UNAVAILABLE, the
        listener stays open for health probes) and in-flight ones get ``grace_s`` seconds before they
        are cancelled. The event is set once the gRPC server has stopped."""
        if self._stopping is None:
            self._stopping = threading.Event()
            self.health.enter_graceful_shutdown()
            grace_s = self.config.grace_s if grace_s is None else grace_s
            if drain_s <= 0:
                self.admission.stopping = True  # at once: a request sent after this call is refused
            threading.Thread(target=self._drain, args=(grace_s, drain_s), name="drain", daemon=True).start()
        return self._stopping

    def _drain(self, grace_s: float, drain_s: float) -> None:
        time.sleep(drain_s)
        self.admission.stopping = True
        for model in self.repository.models.values():
            for batcher in model.batchers:
                batcher.drain()
        end = time.monotonic() + grace_s
        while self.admission.busy and time.monotonic() < end:
            time.sleep(0.02)
        # What is left (calls past the grace, idle health Watch streams) is cancelled now; multi-pass
        # work sees its caller gone at its next chunk.
        self._server.stop(0).wait()
        self._stopping.set()

    def stop(self, grace_s: float | None = None, drain_s: float = 0.0) -> None:
        """Stop as ``begin_stop`` says and wait for it, then free the models."""
        self.begin_stop(grace_s, drain_s).wait()
        if not self._released:
            self._released = True
            self.service.close()
            self.open_inference.close()
            if self.metrics is not None:
                self.metrics.close()
            self.repository.close()
            self.admission.close()

    def wait(self) -> None:
        self._server.wait_for_termination()

    def __enter__(self) -> ExplainerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(0)


def describe_transport(config: ServerConfig) -> str:
    if not config.tls_cert:
        return "plaintext (no TLS)"
    return "TLS with client certificates required (mutual TLS)" if config.tls_client_ca else "TLS"


def check_port_free(host: str, port: int) -> None:
    """Fail at once, before minutes of model loading, when ``host:port`` cannot be bound.

    A probe socket with SO_REUSEADDR, as gRPC binds: a listener on the port refuses it, connections
    of a previous server in TIME_WAIT do not. gRPC's own bind still decides; this only fails early.
    """
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise CliError(f"cannot resolve --host {host}: {error.strerror}", code=2) from error
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise CliError(f"port {port} on {host} is already in use (another `onnxcam serve`?): stop "
                                   "that process or choose another --port (0 = any free port)") from error
                if error.errno == errno.EACCES:
                    raise CliError(f"no permission to listen on {host}:{port}: choose a --port above 1023") from error
                # EADDRNOTAVAIL and friends (an IPv6 name without IPv6): gRPC binds what it can.


def check_security_files(config: ServerConfig) -> None:
    """Unreadable certificates or token files fail before minutes of model loading, not after."""
    if config.auth_token_file:
        read_tokens(config)
    if config.tls_cert:
        tls.server_credentials(Path(config.tls_cert), Path(config.tls_key),
                               Path(config.tls_client_ca) if config.tls_client_ca else None)


def check_models_dir(models_dir: Path) -> None:
    if not models_dir.exists():
        raise CliError(f"--models {models_dir} does not exist: give the model repository (a folder of model "
                       "folders, e.g. models) or one model folder", code=2)
    if not models_dir.is_dir():
        raise CliError(f"--models {models_dir} is a file, not a folder", code=2)


def serve(models_dir: Path, config: ServerConfig) -> int:
    """Load the repository and serve until SIGTERM or SIGINT; then drain and exit 0. Problems the
    user can fix (a taken port, no model to serve) raise CliError before or instead of serving."""
    models_dir = Path(models_dir)
    check_models_dir(models_dir)
    check_port_free(config.host, config.port)
    check_security_files(config)
    try:
        repository = load_repository(models_dir, config)
    except DuplicateModelError as error:
        raise CliError(str(error)) from error
    if not repository.models:
        reasons = "; ".join(f"{Path(folder).name}: {why}" for folder, why in repository.skipped.items())
        raise CliError(f"no model to serve in {models_dir}: "
                       + (reasons or "it holds no model folder (each has a model.json, or a recipe.json to build)"))
    try:
        server = ExplainerServer(repository, config).start()
    except CliError:
        repository.close()
        raise
    except (OSError, RuntimeError) as error:
        repository.close()
        raise CliError(f"cannot listen on {config.host}:{config.port}: {error}") from error
    log.info("serving %s on %s (max batch %d, max delay %g ms, queue %d rows, %d workers)",
             ", ".join(sorted(repository.models)), server.address, config.max_batch, config.max_delay_ms,
             config.max_queue, config.workers)
    log.info("%s; %s; reflection %s%s", describe_transport(config),
             "bearer tokens required (health checking open)" if config.auth_token_file else "no authentication",
             "on" if config.serves_reflection else "off",
             f"; Prometheus metrics on http://{config.host}:{server.metrics.port}/metrics" if server.metrics else "")
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(1.0):
            pass
        server.begin_stop(drain_s=config.drain_s)
        if config.drain_s:
            log.info("%s: health says NOT_SERVING; requests are accepted for %g s more", received[0], config.drain_s)
        log.info("%s: draining%s; new requests are refused, in-flight ones get up to %g s", received[0],
                 f" in {config.drain_s:g} s" if config.drain_s else "", config.grace_s)
        server.stop(drain_s=config.drain_s)
        log.info("stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
