"""``onnxcam explain``: send images to a running server, print the top-k, write the overlays.

One image is one Explain call; several (or a folder) go over one ExplainStream, answered in order,
with one output per image and a ``[i/n]`` progress prefix.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from onnxcam import client_options
from onnxcam import methods as registry
from onnxcam.cli_errors import CliError, check_writable_dir, check_writable_file, rpc_failure, write_file
from onnxcam.cli_inputs import image_files, method_list, output_stems


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain", help="ask a running onnxcam server for predictions and heatmaps of images",
        description="Send images to an onnxcam server (onnxcam serve), print the top-k predictions of each "
                    "and write the heatmap overlays. Several images or a folder go over one stream.")
    parser.add_argument("images", type=Path, nargs="+", metavar="IMAGE",
                        help="JPEG, PNG or WebP files, or folders of them (the images directly inside, by name)")
    parser.add_argument("--server", default="localhost:50051", help="host:port (default localhost:50051)")
    parser.add_argument("--model", help="model name (as the server lists it); may be left out when the server has one")
    parser.add_argument("--method", "--methods", action="extend", type=method_list, dest="methods",
                        metavar="METHOD[,METHOD...]",
                        help=f"{', '.join(registry.names())} or none (default {registry.DEFAULT[0]}); several "
                             "comma-separated or the option repeated")
    parser.add_argument("--target", action="append", type=int, dest="targets", metavar="CLASS",
                        help="class index to explain (default: the top-1); repeat for several")
    parser.add_argument("--top-k", type=int, default=5, help="predictions to print (default 5)")
    parser.add_argument("--budget-ms", type=float, default=0.0, help="latency budget per image; 0 = none")
    parser.add_argument("--out", type=Path, help="overlay PNG to write; with several images a folder (created) that "
                        "gets <image>.png for each; with several heatmaps per image the method and class go into "
                        "the name (overlay.gradcam.3.png)")
    parser.add_argument("--heatmap", type=Path, help="grayscale heatmap PNG to write, named as --out (in a folder: "
                        "<image>.heatmap.png)")
    parser.add_argument("--max-render-side", type=int, default=0, metavar="PX",
                        help="largest side of the PNGs written, aspect ratio kept (default 0: the server's cap, "
                             "2048 unless onnxcam serve --max-render-side says otherwise)")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds per image (default 30)")
    client_options.add_arguments(parser)
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


def _asked(args: argparse.Namespace) -> list[str]:
    """The methods that make heatmaps (``none`` asks for predictions only)."""
    return [m for m in (args.methods or [registry.DEFAULT[0]]) if m.lower() != "none"]


def _several(args: argparse.Namespace) -> bool:
    """Whether a request can return more than one heatmap: decided by what was asked, never by what
    came back, so a budget that drops a method does not rename the files."""
    return len(_asked(args)) * max(len(args.targets or []), 1) > 1


@dataclass(frozen=True)
class Outputs:
    """Where one image's pictures go. In a folder: ``<stem>[.<method>.<class>].png`` and ``....heatmap.png``."""

    overlay: Path | None
    heatmap: Path | None
    in_folder: bool
    several: bool

    def path(self, kind: str, heatmap) -> Path | None:
        from onnxcam.client import method_name

        base = self.overlay if kind == "--out" else self.heatmap
        if base is None:
            return None
        suffix = ".heatmap" if self.in_folder and kind == "--heatmap" else ""
        if not self.several:
            return base.with_name(f"{base.stem}{suffix}{base.suffix}")
        return base.with_name(f"{base.stem}.{method_name(heatmap.method)}.{heatmap.target}{suffix}{base.suffix}")


def plan_outputs(args: argparse.Namespace, files: Sequence[Path]) -> list[Outputs]:
    """One Outputs per image, checked for writability before the first call."""
    in_folder = len(files) > 1 or any(p.is_dir() for p in args.images) or bool(args.out and args.out.is_dir())
    several = _several(args)
    if not in_folder:
        for option, path in (("--out", args.out), ("--heatmap", args.heatmap)):
            if path is not None:
                check_writable_file(path, option)
        return [Outputs(args.out, args.heatmap, False, several)]
    for option, folder in (("--out", args.out), ("--heatmap", args.heatmap)):
        if folder is not None:
            if folder.exists() and not folder.is_dir():
                raise CliError(f"{option} {folder} is a file; with several images it is a folder", code=2)
            if not folder.exists() and folder.suffix.lower() == ".png":
                raise CliError(f"{option} {folder} looks like a file name; with several images give a folder "
                               "(it gets <image>.png for each)", code=2)
            check_writable_dir(folder, option)
    return [Outputs(args.out / f"{stem}.png" if args.out else None,
                    args.heatmap / f"{stem}.png" if args.heatmap else None, True, several)
            for stem in output_stems(files)]


def only_model(client, server: str) -> str:
    """The server's model when it has exactly one, so ``--model`` can be left out."""
    names = sorted(m.name for m in client.list_models())
    if len(names) == 1:
        return names[0]
    raise CliError(f"--model is needed: the server on {server} has {', '.join(names) or 'no models'}", code=2)


def announce(client, model: str, args: argparse.Namespace, images: int) -> None:
    """A line on stderr before a call the server's own measurements say will take a while."""
    from onnxcam import sampling
    from onnxcam.cli_estimate import announcement, estimate_ms

    asked = _asked(args)
    if not asked:
        return
    meta = client.metadata(model)
    settings = sampling.Settings(samples=args.samples, noise_level=args.noise_level,
                                 seed=sampling.DEFAULT_SEED if args.seed is None else args.seed, steps=args.steps,
                                 baseline=args.baseline, patch=args.patch, stride=args.stride)
    try:
        size = (meta.input_height, meta.input_width)
        need_ms = estimate_ms(meta.method_cost_ms, asked, len(args.targets or []), settings.resolved(*size), size)
    except ValueError:
        return  # bad sampling settings: the server says what is wrong
    line = announcement(model, asked, images, need_ms, args.timeout)
    if line:
        print(line, file=sys.stderr, flush=True)


def report(image: Path, response, outputs: Outputs, asked: list[str], prefix: str = "") -> str | None:
    """Print one image's answer and write its pictures; returns why it failed, or None."""
    from onnxcam.client import format_skipped, method_name

    print(f"{prefix}{image} on {response.model} ({response.timing.total_ms:.1f} ms on the server):", flush=True)
    for rank, prediction in enumerate(response.predictions, 1):
        print(f"{rank:3d}. {prediction.label:<30s} {prediction.score:8.4f}  (class {prediction.index}, "
              f"logit {prediction.logit:.3f})")
    if asked and not response.heatmaps:
        reasons = "; ".join(format_skipped(skipped) for skipped in response.skipped)
        return f"no heatmap: every method asked for was skipped ({reasons or 'no reason given'})"
    for skipped in response.skipped:
        print(format_skipped(skipped))
    for heatmap in response.heatmaps:
        if heatmap.score_difference or heatmap.completeness_gap:
            print(f"{method_name(heatmap.method)} class {heatmap.target}: completeness gap "
                  f"{heatmap.completeness_gap:+.4f} of a logit difference {heatmap.score_difference:+.4f}")
    for heatmap in response.heatmaps:
        for option, data in (("--out", heatmap.overlay_png), ("--heatmap", heatmap.heatmap_png)):
            path = outputs.path(option, heatmap)
            if path is not None and data:
                if outputs.in_folder:
                    path.parent.mkdir(parents=True, exist_ok=True)
                write_file(path, data, option)
                print(f"wrote {path} ({method_name(heatmap.method)}, class {heatmap.target} {heatmap.target_label})")
    return None


def _requests(files: Sequence[Path], options: dict, unreadable: dict[int, str]) -> Iterator:
    """One request per readable file, read as the stream asks for it; ``request_id`` is the file's index.
    A file that cannot be read is recorded and left out (an exception here would cancel the stream)."""
    from onnxcam.client import build_request

    for index, file in enumerate(files):
        try:
            yield build_request(file, request_id=str(index), **options)
        except OSError as error:
            unreadable[index] = f"cannot read it: {error.strerror or error}"


def _explain_stream(client, files: Sequence[Path], outputs: list[Outputs], options: dict, asked: list[str],
                    timeout: float) -> list[str]:
    """Every image over one ExplainStream, answered in order; returns the images that failed. Each
    failure is said at once on stderr (``[i/n] FILE failed: why``); the caller ends with one error line."""
    import grpc

    status_names = {code.value[0]: code.name for code in grpc.StatusCode}
    failures: list[str] = []
    unreadable: dict[int, str] = {}
    done = 0

    def failed(file: Path, why: str) -> None:
        failures.append(file.name)
        print(f"[{done}/{len(files)}] {file} failed: {why}", file=sys.stderr, flush=True)

    def flush_unreadable(before: int) -> None:
        nonlocal done
        for index in sorted(i for i in unreadable if i < before):
            done += 1
            failed(files[index], unreadable.pop(index))

    requests = _requests(files, options, unreadable)
    for response in client.explain_stream(requests, timeout=timeout * len(files)):
        index = int(response.request_id)
        flush_unreadable(index)
        done += 1
        if response.HasField("error"):
            code = status_names.get(response.error.code, str(response.error.code))
            failed(files[index], f"{code}: {response.error.message}")
        elif why := report(files[index], response, outputs[index], asked, f"[{done}/{len(files)}] "):
            failed(files[index], why)
    flush_unreadable(len(files))
    return failures


def run(args: argparse.Namespace) -> int:
    import grpc

    from onnxcam.client import ExplainerClient

    files = image_files(args.images)
    outputs = plan_outputs(args, files)
    asked = _asked(args)
    try:
        with ExplainerClient(args.server, timeout=args.timeout, **client_options.client_kwargs(args)) as client:
            model = args.model or only_model(client, args.server)
            announce(client, model, args, len(files))
            options = dict(model=model, methods=args.methods or [registry.DEFAULT[0]], targets=args.targets or [],
                           top_k=args.top_k, budget_ms=args.budget_ms, overlay_png=args.out is not None,
                           heatmap_png=args.heatmap is not None, raw=args.out is None and args.heatmap is None,
                           sampling=_sampling(args), max_render_side=args.max_render_side)
            if len(files) == 1:
                response = client.explain(files[0], **options)
                why = report(files[0], response, outputs[0], asked)
                if why:
                    raise CliError(why)
                return 0
            failures = _explain_stream(client, files, outputs, options, asked, args.timeout)
    except grpc.RpcError as error:
        raise rpc_failure(error, args.server) from None
    except (OSError, ValueError) as error:
        raise CliError(str(error)) from error
    if failures:
        shown = ", ".join(failures[:5]) + (", ..." if len(failures) > 5 else "")
        raise CliError(f"{len(failures)} of {len(files)} images failed ({shown}); the lines above say why")
    print(f"explained {len(files)} images")
    return 0
