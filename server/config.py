"""Server settings and their defaults, in one place so that --help, the docs and the code agree."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024

#: Largest request the server accepts (an encoded image plus fields). gRPC's own default is 4 MiB,
#: too small for phone photos; a larger request fails with RESOURCE_EXHAUSTED before any decoding.
DEFAULT_MAX_RECEIVE_BYTES = 16 * MIB
#: Largest response: overlays and heatmaps at the original image size for several methods and targets.
DEFAULT_MAX_SEND_BYTES = 64 * MIB
#: Decoded size limit (width * height), checked from the header before any pixel is decoded: a small
#: file that expands to gigabytes (a decompression bomb) is refused with INVALID_ARGUMENT.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
#: ONNX Runtime's intra-op thread spinning, off: the server runs several sessions (explainer, then
#: head or forward for the gradient-free methods; several models) and gRPC threads that decode and
#: encode, and on a small machine spinning threads take the cores they need. Measured on 2 cores: a
#: resnet50 forward right after another session's call 82 ms with spinning, 43 ms without; the same
#: throughput under load with about 0.5 core less CPU. The price: a lone EfficientNet-Lite0 call
#: takes 8.4 ms instead of 6.7 ms on an idle machine (``--spin`` gets that back).
SPIN_DEFAULT = False
#: Class indices one request may ask to explain (each becomes a row of the batch).
DEFAULT_MAX_TARGETS = 16
#: Graph rows the sampled methods (SmoothGrad, Integrated Gradients, occlusion...) of one request may
#: cost, all targets together: the defaults for one target are 25-170 rows; 16 targets x 256 samples fit.
DEFAULT_MAX_SAMPLED_ROWS = 4112
#: Largest side of a heatmap or overlay PNG: a 24-megapixel photo's overlay took 3 s to draw and
#: 15 MB to send at full size; 2048 px is more than any screen shows the picture at. Raw maps are
#: never scaled.
DEFAULT_MAX_RENDER_SIDE = 2048
#: Image encodings a request may carry (Pillow's names). GIF, BMP and TIFF can be allowed with
#: ``--image-formats``; they are off by default because each parser is more code an attacker reaches
#: (TIFF above all), and cameras and browsers send JPEG, PNG or WebP.
DEFAULT_IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")
ALLOWED_IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
#: Pixel work one request may cause, in megapixels: the decoded image times its passes (decode, the
#: model's resize, the overlay background) plus every PNG's pixels (server.work). A 24-megapixel photo
#: with a few overlays fits; a 40-megapixel image with PNGs, or 80 overlays of a 6-megapixel photo, do not.
DEFAULT_MAX_WORK_MPIXELS = 100.0
#: Compute one request may cost by the server's load-time measurements, in seconds; 0: no limit.
DEFAULT_MAX_WORK_S = 60.0
#: Multi-pass requests (Ablation-CAM, Score-CAM, ReciproCAM, the sampled methods) of one model that run
#: at once; more wait in a queue of ``multipass_queue`` (deadline and cancellation checked while waiting).
#: Running and waiting ones hold a gRPC worker thread each, so together they stay well under ``workers``
#: (default 8): one-call methods keep being served while multi-pass work queues.
DEFAULT_MULTIPASS_SLOTS = 2
DEFAULT_MULTIPASS_QUEUE = 2


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``onnxcam serve`` can set; tests build one directly."""

    host: str = "127.0.0.1"
    port: int = 50051
    #: Rows (image x target) per session call.
    max_batch: int = 8
    #: How long the first request of a batch waits for others. 0: no wait; a batch is what queued
    #: while the previous session call ran, which under load is where batches come from anyway
    #: (bench/server_load.py: a 2 ms wait cost 10-15% of throughput at one client, gained nothing at 16).
    max_delay_ms: float = 0.0
    #: Rows waiting per model beyond which requests fail with RESOURCE_EXHAUSTED.
    max_queue: int = 64
    #: gRPC worker threads: requests handled at once (decode and postprocess run on them).
    workers: int = 8
    #: RPCs in progress (queued or running; streams count once; health checks never) beyond which new
    #: ones get RESOURCE_EXHAUSTED (server.admission), instead of queueing without bound behind the workers.
    max_concurrent_rpcs: int = 128
    #: ONNX Runtime threads per session; 0 lets ONNX Runtime choose.
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    #: Whether ONNX Runtime's idle intra-op threads spin waiting for work (see SPIN_DEFAULT).
    spin: bool = SPIN_DEFAULT
    #: "auto" puts CUDA first when this onnxruntime build has it; "cpu" forces the CPU provider.
    device: str = "auto"
    max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES
    max_send_bytes: int = DEFAULT_MAX_SEND_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_targets: int = DEFAULT_MAX_TARGETS
    max_sampled_rows: int = DEFAULT_MAX_SAMPLED_ROWS
    #: Largest side of the PNGs in pixels (a request may ask for less); 0: the original image size.
    max_render_side: int = DEFAULT_MAX_RENDER_SIDE
    max_work_mpixels: float = DEFAULT_MAX_WORK_MPIXELS
    max_work_s: float = DEFAULT_MAX_WORK_S
    multipass_slots: int = DEFAULT_MULTIPASS_SLOTS
    multipass_queue: int = DEFAULT_MULTIPASS_QUEUE
    #: Seconds after SIGTERM during which health says NOT_SERVING but requests are still accepted (an
    #: orchestrator removes the endpoint in that time), before the drain starts.
    drain_s: float = 0.0
    #: Seconds in-flight requests get to finish after the drain starts; then they are cancelled, and
    #: the process exits.
    grace_s: float = 30.0
    #: The server's own limit on one request, in seconds, applied on top of the caller's deadline
    #: (the earlier wins); 0: none, a request without a client deadline runs to the end.
    max_request_s: float = 0.0
    #: Log one line per request (model, methods, status, timings).
    log_requests: bool = False
    #: "text" or "json" (one JSON object a line); json logs one line per request even without log_requests.
    log_format: str = "text"
    #: PEM files of the server's TLS certificate chain and key; both or neither ("": plaintext).
    tls_cert: str = ""
    tls_key: str = ""
    #: PEM file of the CA that signs client certificates: set, every client must present one (mutual TLS).
    tls_client_ca: str = ""
    #: File of bearer tokens, one a line ("": no authentication); health checking stays open.
    auth_token_file: str = ""
    #: Server reflection; None: on, unless token authentication is (then off unless asked for).
    reflection: bool | None = None
    #: Port of the Prometheus endpoint (HTTP /metrics on ``host``); None: no endpoint, 0: any free port.
    metrics_port: int | None = None
    #: Image encodings requests may carry, Pillow's names (see DEFAULT_IMAGE_FORMATS).
    image_formats: tuple[str, ...] = DEFAULT_IMAGE_FORMATS

    @property
    def logs_requests(self) -> bool:
        return self.log_requests or self.log_format == "json"

    @property
    def serves_reflection(self) -> bool:
        return (not self.auth_token_file) if self.reflection is None else self.reflection

    def __post_init__(self) -> None:
        positive = ("max_batch", "max_queue", "workers", "max_concurrent_rpcs", "max_receive_bytes", "max_send_bytes",
                    "max_image_pixels", "max_targets", "max_sampled_rows", "max_work_mpixels", "multipass_slots")
        bad = [f"{name}={getattr(self, name)}" for name in positive if getattr(self, name) < 1]
        non_negative = ("max_delay_ms", "grace_s", "drain_s", "max_work_s", "multipass_queue", "intra_op_threads",
                        "inter_op_threads", "max_request_s", "max_render_side")
        bad += [f"{name}={getattr(self, name)}" for name in non_negative if getattr(self, name) < 0]
        if self.log_format not in ("text", "json"):
            bad.append(f"log_format={self.log_format!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            bad.append("tls_cert and tls_key go together (--tls-cert needs --tls-key)")
        if self.tls_client_ca and not self.tls_cert:
            bad.append("tls_client_ca needs tls_cert and tls_key (mutual TLS is TLS first)")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            bad.append(f"metrics_port={self.metrics_port}")
        unknown_formats = [name for name in self.image_formats if name not in ALLOWED_IMAGE_FORMATS]
        if unknown_formats or not self.image_formats:
            bad.append(f"image_formats={list(self.image_formats)} (choose from {', '.join(ALLOWED_IMAGE_FORMATS)})")
        if self.device not in ("auto", "cpu", "cuda"):
            bad.append(f"device={self.device!r}")
        if bad:
            raise ValueError(f"invalid server settings: {', '.join(bad)}")
