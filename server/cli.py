"""``onnxcam serve``: the gRPC explainer server. Only argparse at import time."""

from __future__ import annotations

import argparse
from pathlib import Path

from server.config import ALLOWED_IMAGE_FORMATS, MIB, ServerConfig

DEFAULTS = ServerConfig()

EPILOG = f"""\
limits: requests up to --max-receive-mb (default {DEFAULTS.max_receive_bytes // MIB} MiB) and responses up to
--max-send-mb (default {DEFAULTS.max_send_bytes // MIB} MiB); larger messages fail with RESOURCE_EXHAUSTED.
Images are refused (INVALID_ARGUMENT) above --max-image-pixels (default {DEFAULTS.max_image_pixels:,}) before
decoding; JPEG, PNG and WebP only unless --image-formats lists more. A model whose queue holds --max-queue
rows answers RESOURCE_EXHAUSTED. Two model folders with one model name stop the start. gRPC health checking
(grpc.health.v1) and server reflection are on (reflection is off with --auth-token-file unless
--reflection). Before decoding, a request whose response would exceed --max-send-mb, or whose work
exceeds --max-work-mpixels or --max-work-s, is refused (RESOURCE_EXHAUSTED).
SIGTERM/SIGINT: health turns NOT_SERVING (requests still accepted for --drain-s), then new requests are
refused, in-flight ones get --grace-s seconds to finish, and the process exits. A call without a
deadline (gRPC's default) has none, unless --max-request-s sets the server's own.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve model folders over gRPC (predictions with heatmaps)",
        description="Load every model folder under --models and serve Explain, ExplainStream, ListModels and "
                    "GetModelMetadata over gRPC, from ONNX Runtime (no torch needed).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, type=Path,
                        help="model repository: a folder of model folders (or one model folder)")
    parser.add_argument("--host", default=DEFAULTS.host, help=f"address to bind (default {DEFAULTS.host}; "
                        "0.0.0.0 for all interfaces)")
    parser.add_argument("--port", type=int, default=DEFAULTS.port, help=f"port (default {DEFAULTS.port}; 0 = any "
                        "free port, logged at start)")
    parser.add_argument("--max-batch", type=int, default=DEFAULTS.max_batch,
                        help=f"rows (image x target) per session call (default {DEFAULTS.max_batch})")
    parser.add_argument("--max-delay-ms", type=float, default=DEFAULTS.max_delay_ms,
                        help=f"how long a request waits for others to batch with (default {DEFAULTS.max_delay_ms})")
    parser.add_argument("--max-queue", type=int, default=DEFAULTS.max_queue,
                        help=f"rows waiting per model before RESOURCE_EXHAUSTED (default {DEFAULTS.max_queue})")
    parser.add_argument("--workers", type=int, default=DEFAULTS.workers,
                        help=f"gRPC worker threads (default {DEFAULTS.workers})")
    parser.add_argument("--max-concurrent-rpcs", type=int, default=DEFAULTS.max_concurrent_rpcs,
                        help="RPCs in progress (queued or running; health checks not counted) before new ones "
                             f"get RESOURCE_EXHAUSTED (default {DEFAULTS.max_concurrent_rpcs})")
    parser.add_argument("--intra-op-threads", type=int, default=DEFAULTS.intra_op_threads,
                        help="ONNX Runtime intra-op threads per session (default 0 = ONNX Runtime's choice)")
    parser.add_argument("--inter-op-threads", type=int, default=DEFAULTS.inter_op_threads,
                        help="ONNX Runtime inter-op threads per session (default 0 = ONNX Runtime's choice)")
    parser.add_argument("--spin", action=argparse.BooleanOptionalAction, default=DEFAULTS.spin,
                        help="let ONNX Runtime's idle threads spin for work (default: "
                             f"{'--spin' if DEFAULTS.spin else '--no-spin'})")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=DEFAULTS.device,
                        help="auto: CUDA execution provider first when present, CPU otherwise (default auto)")
    parser.add_argument("--max-receive-mb", type=float, default=DEFAULTS.max_receive_bytes / MIB,
                        help="largest request in MiB")
    parser.add_argument("--max-send-mb", type=float, default=DEFAULTS.max_send_bytes / MIB,
                        help="largest response in MiB")
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULTS.max_image_pixels,
                        help="largest decoded image, width x height")
    parser.add_argument("--max-targets", type=int, default=DEFAULTS.max_targets,
                        help=f"class indices per request (default {DEFAULTS.max_targets})")
    parser.add_argument("--max-sampled-rows", type=int, default=DEFAULTS.max_sampled_rows,
                        help="graph rows the sampled methods (SmoothGrad, Integrated Gradients, occlusion...) of one "
                             f"request may cost, all targets together (default {DEFAULTS.max_sampled_rows})")
    parser.add_argument("--max-render-side", type=int, default=DEFAULTS.max_render_side,
                        help="largest side of the heatmap and overlay PNGs in pixels, aspect ratio kept (default "
                             f"{DEFAULTS.max_render_side}; 0 = the original image size); raw maps are not scaled")
    parser.add_argument("--max-work-mpixels", type=float, default=DEFAULTS.max_work_mpixels,
                        help="pixel work per request in megapixels: the decoded image times its passes plus every "
                             "PNG's pixels, estimated from the image header and refused (RESOURCE_EXHAUSTED) before "
                             f"decoding (default {DEFAULTS.max_work_mpixels:g})")
    parser.add_argument("--max-work-s", type=float, default=DEFAULTS.max_work_s,
                        help="compute per request in seconds by the server's load-time measurements; more is refused "
                             f"before starting (default {DEFAULTS.max_work_s:g}; 0 = no limit)")
    parser.add_argument("--multipass-slots", type=int, default=DEFAULTS.multipass_slots,
                        help="multi-pass requests (Ablation-CAM, Score-CAM, ReciproCAM, sampled methods) per model "
                             f"running at once (default {DEFAULTS.multipass_slots})")
    parser.add_argument("--multipass-queue", type=int, default=DEFAULTS.multipass_queue,
                        help="multi-pass requests per model waiting for a slot before RESOURCE_EXHAUSTED "
                             f"(default {DEFAULTS.multipass_queue})")
    parser.add_argument("--drain-s", type=float, default=DEFAULTS.drain_s,
                        help="seconds after SIGTERM that health says NOT_SERVING while requests are still accepted "
                             f"(time for an orchestrator to remove the endpoint; default {DEFAULTS.drain_s:g})")
    parser.add_argument("--grace-s", type=float, default=DEFAULTS.grace_s,
                        help="seconds in-flight requests get to finish once the drain starts; then they are cancelled "
                             f"and the process exits (default {DEFAULTS.grace_s:g})")
    parser.add_argument("--max-request-s", type=float, default=DEFAULTS.max_request_s,
                        help="the server's own limit on one request in seconds, on top of the caller's deadline "
                             "(default 0: none; a call without a deadline then runs to the end)")
    parser.add_argument("--image-formats", type=image_formats, default=DEFAULTS.image_formats, metavar="LIST",
                        help="image encodings requests may carry, comma-separated, from "
                             f"{','.join(f.lower() for f in ALLOWED_IMAGE_FORMATS)} (default "
                             f"{','.join(f.lower() for f in DEFAULTS.image_formats)}; GIF, BMP and TIFF are off "
                             "unless listed: each parser is more code a request reaches)")
    parser.add_argument("--log-requests", action="store_true", help="log one line per request")
    parser.add_argument("--log-format", choices=("text", "json"), default=DEFAULTS.log_format,
                        help="text: 'time LEVEL logger: message' lines; json: one JSON object a line, and one line "
                             "per request (request id, model, methods, code, timings) without --log-requests")
    secure = parser.add_argument_group("security (default: plaintext, no authentication: bind to localhost or put "
                                       "the server behind a proxy that adds them)")
    secure.add_argument("--tls-cert", type=Path, help="PEM certificate chain of the server: serve TLS (with --tls-key)")
    secure.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    secure.add_argument("--tls-client-ca", type=Path, help="PEM CA certificates: every client must present a "
                        "certificate one of them signed (mutual TLS)")
    secure.add_argument("--auth-token-file", type=Path, help="file of bearer tokens, one a line (# comments): every "
                        "call needs the metadata 'authorization: Bearer <token>' or gets UNAUTHENTICATED; health "
                        "checking stays open for probes")
    secure.add_argument("--reflection", action=argparse.BooleanOptionalAction, default=None,
                        help="server reflection (default: on, but off with --auth-token-file; when on it needs a "
                             "token too)")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics over HTTP on --host at this port "
                        "(/metrics; 0 = any free port, logged at start; default: none)")
    parser.set_defaults(handler=run)


def image_formats(text: str) -> tuple[str, ...]:
    """``jpeg,png,webp,gif`` -> Pillow's names; ``jpg``/``tif`` accepted."""
    aliases = {"JPG": "JPEG", "TIF": "TIFF"}
    names = [aliases.get(part.strip().upper(), part.strip().upper()) for part in text.split(",") if part.strip()]
    unknown = [name.lower() for name in names if name not in ALLOWED_IMAGE_FORMATS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {','.join(f.lower() for f in ALLOWED_IMAGE_FORMATS)}")
    return tuple(dict.fromkeys(names))


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host, port=args.port, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms,
        max_queue=args.max_queue, workers=args.workers, max_concurrent_rpcs=args.max_concurrent_rpcs,
        intra_op_threads=args.intra_op_threads,
        inter_op_threads=args.inter_op_threads, spin=args.spin, device=args.device,
        max_receive_bytes=int(args.max_receive_mb * MIB), max_send_bytes=int(args.max_send_mb * MIB),
        max_image_pixels=args.max_image_pixels, max_targets=args.max_targets,
        max_sampled_rows=args.max_sampled_rows, max_render_side=args.max_render_side,
        max_work_mpixels=args.max_work_mpixels, max_work_s=args.max_work_s, multipass_slots=args.multipass_slots,
        multipass_queue=args.multipass_queue, drain_s=args.drain_s, grace_s=args.grace_s,
        max_request_s=args.max_request_s, log_requests=args.log_requests, log_format=args.log_format,
        tls_cert=str(args.tls_cert or ""), tls_key=str(args.tls_key or ""), tls_client_ca=str(args.tls_client_ca or ""),
        auth_token_file=str(args.auth_token_file or ""), reflection=args.reflection, metrics_port=args.metrics_port,
        image_formats=args.image_formats)


def run(args: argparse.Namespace) -> int:
    from onnxcam.cli_errors import CliError
    from server.app import serve

    try:
        config = config_from_args(args)
    except ValueError as error:
        raise CliError(str(error), code=2) from error
    return serve(args.models, config)
