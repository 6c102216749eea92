"""``onnxcam explain``: send an image to a running server, print the top-k, write the overlay."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxcam import methods as registry
from onnxcam.cli_errors import CliError, check_writable_file, rpc_failure, write_file


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain", help="ask a running onnxcam server for predictions and a heatmap",
        description="Send an image to an onnxcam server (onnxcam serve), print the top-k predictions "
                    "and write the heatmap overlay.")
    parser.add_argument("image", type=Path, help="JPEG, PNG or WebP file")
    parser.add_argument("--server", default="localhost:50051", help="host:port (default localhost:50051)")
    parser.add_argument("--model", help="model name (as the server lists it); may be left out when the server has one")
    parser.add_argument("--method", action="append", dest="methods", metavar="METHOD",
                        help=f"{', '.join(registry.names())} or none (default {registry.DEFAULT[0]}); repeat "
                             "for several")
    parser.add_argument("--target", action="append", type=int, dest="targets", metavar="CLASS",
                        help="class index to explain (default: the top-1); repeat for several")
    parser.add_argument("--top-k", type=int, default=5, help="predictions to print (default 5)")
    parser.add_argument("--budget-ms", type=float, default=0.0, help="latency budget; 0 = none")
    parser.add_argument("--out", type=Path, help="overlay PNG to write; with several heatmaps, "
                        "the method and class go into the name (overlay.gradcam.3.png)")
    parser.add_argument("--heatmap", type=Path, help="grayscale heatmap PNG to write (named as --out)")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds (default 30)")
    sampled = parser.add_argument_group("sampled methods (smoothgrad, smooth_gradcampp, integrated_gradients, "
                                        "occlusion); 0 = the server's default")
    sampled.add_argument("--samples", type=int, default=0, help="noisy copies (default 25)")
    sampled.add_argument("--noise-level", type=float, default=0.0, help="noise sigma / input range (default 0.15)")
    sampled.add_argument("--seed", type=int, help="noise seed (default 0); the same seed gives the same map")
    sampled.add_argument("--steps", type=int, default=0, help="Integrated Gradients steps (default 50)")
    sampled.add_argument("--baseline", choices=["black", "zero"], default="black",
                         help="Integrated Gradients baseline (default black)")
    sampled.add_argument("--patch", type=int, default=0, help="occlusion patch side in input pixels (default 32 "
                         "at 224 px)")
    sampled.add_argument("--stride", type=int, default=0, help="occlusion stride (default 16 at 224 px)")
    parser.set_defaults(handler=run)


def _sampling(args: argparse.Namespace) -> dict:
    sampling = {"samples": args.samples, "noise_level": args.noise_level, "steps": args.steps,
                "baseline": args.baseline.upper(), "patch": args.patch, "stride": args.stride}
    if args.seed is not None:
        sampling["seed"] = args.seed
    return sampling


def _several(args: argparse.Namespace) -> bool:
    """Whether the request can return more than one heatmap: decided by what was asked, never by what
    came back, so a budget that drops a method does not rename the files."""
    methods = [m for m in (args.methods or [registry.DEFAULT[0]]) if m.lower() != "none"]
    return len(methods) * max(len(args.targets or []), 1) > 1


def _path(base: Path, heatmap, several: bool) -> Path:
    from onnxcam.client import method_name

    if not several:
        return base
    return base.with_name(f"{base.stem}.{method_name(heatmap.method)}.{heatmap.target}{base.suffix}")


def only_model(client, server: str) -> str:
    """The server's model when it has exactly one, so ``--model`` can be left out."""
    names = sorted(m.name for m in client.list_models())
    if len(names) == 1:
        return names[0]
    raise CliError(f"--model is needed: the server on {server} has {', '.join(names) or 'no models'}", code=2)


def run(args: argparse.Namespace) -> int:
    import grpc

    from onnxcam.client import ExplainerClient, format_skipped, method_name

    for option, path in (("--out", args.out), ("--heatmap", args.heatmap)):
        if path is not None:
            check_writable_file(path, option)
    methods = args.methods or [registry.DEFAULT[0]]
    try:
        with ExplainerClient(args.server, timeout=args.timeout) as client:
            model = args.model or only_model(client, args.server)
            response = client.explain(args.image, model, methods=methods,
                                      targets=args.targets or [], top_k=args.top_k, budget_ms=args.budget_ms,
                                      overlay_png=args.out is not None, heatmap_png=args.heatmap is not None,
                                      raw=args.out is None and args.heatmap is None, sampling=_sampling(args))
    except grpc.RpcError as error:
        raise rpc_failure(error, args.server) from None
    except (OSError, ValueError) as error:
        raise CliError(str(error)) from error
    print(f"{args.image} on {response.model} ({response.timing.total_ms:.1f} ms on the server):")
    for rank, prediction in enumerate(response.predictions, 1):
        print(f"{rank:3d}. {prediction.label:<30s} {prediction.score:8.4f}  (class {prediction.index}, "
              f"logit {prediction.logit:.3f})")
    asked = [m for m in methods if m.lower() != "none"]
    if asked and not response.heatmaps:
        reasons = "; ".join(format_skipped(skipped) for skipped in response.skipped)
        raise CliError(f"no heatmap: every method asked for was skipped ({reasons or 'no reason given'})")
    for skipped in response.skipped:
        print(format_skipped(skipped))
    for heatmap in response.heatmaps:
        if heatmap.score_difference or heatmap.completeness_gap:
            print(f"{method_name(heatmap.method)} class {heatmap.target}: completeness gap "
                  f"{heatmap.completeness_gap:+.4f} of a logit difference {heatmap.score_difference:+.4f}")
    several = _several(args)
    for heatmap in response.heatmaps:
        for option, base, data in (("--out", args.out, heatmap.overlay_png),
                                   ("--heatmap", args.heatmap, heatmap.heatmap_png)):
            if base is not None and data:
                path = _path(base, heatmap, several)
                write_file(path, data, option)
                print(f"wrote {path} ({method_name(heatmap.method)}, class {heatmap.target} {heatmap.target_label})")
    return 0
