"""``onnxcam sanity-check``: the command line, the table and the plot of onnxcam.sanity's cascade.

    onnxcam sanity-check --arch efficientnet_lite0 --methods gradcam,gradcampp,eigencam --depths 4 --out sanity/

Needs the export extra (torch). Only argparse at import time: torch loads when the command runs.
Exit code 0 when every method passes, 1 when one fails, 2 when the check cannot run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from onnxcam.sanity import DEFAULT_DEPTHS, DEFAULT_METHODS, DEFAULT_THRESHOLD, run_check, verdict


def _finite(value: Any) -> Any:
    """NaN (a constant map: no rank correlation) as JSON null."""
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return None if isinstance(value, float) and not math.isfinite(value) else value


def plot(summary: dict[str, dict[str, Any]], depths: list[dict[str, Any]], threshold: float) -> Any:
    """Mean rho against depth, one line per method, the threshold dashed (Pillow)."""
    from PIL import Image, ImageDraw

    from onnxcam.evaluate_report import dashed_line, font

    palette = [(214, 39, 40), (31, 119, 180), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    width, height, left, right, top = 560, 320, 50, 540, 20
    bottom = height - 40
    image = Image.new("RGB", (width, height + 16 * len(summary) + 8), "white")
    draw = ImageDraw.Draw(image)
    small = font(11)
    n = len(depths) + 1
    x_of = lambda d: left + d / (n - 1) * (right - left)  # noqa: E731
    y_of = lambda r: bottom - (r + 1) / 2 * (bottom - top)  # noqa: E731
    for k in range(5):
        r = -1 + k / 2
        draw.line([(left, y_of(r)), (right, y_of(r))], fill=(232, 232, 232))
        draw.text((left - 34, y_of(r) - 7), f"{r:+.1f}", fill=(80, 80, 80), font=small)
    for d in range(n):
        draw.text((x_of(d) - 4, bottom + 4), str(d), fill=(80, 80, 80), font=small)
    draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
    draw.text((left, bottom + 20), "layers re-initialised from the logits down (depth; 0: the original model)",
              fill=(60, 60, 60), font=small)
    dashed_line(draw, [(left, y_of(threshold)), (right, y_of(threshold))], (120, 120, 120), 1)
    for i, (method, values) in enumerate(summary.items()):
        color = palette[i % len(palette)]
        points = [(x_of(0), y_of(1.0))] + [(x_of(d + 1), y_of(v)) for d, v in enumerate(values["mean_rho"])
                                           if v is not None]
        draw.line(points, fill=color, width=2)
        y = height + 4 + 16 * i
        draw.line([(left, y + 7), (left + 24, y + 7)], fill=color, width=2)
        state = "passes" if values["passed"] else "FAILS"
        draw.text((left + 30, y), f"{method}: {state}", fill="black", font=small)
    return image


DESCRIPTION = """Do a method's maps change when the model's weights are randomised? (Adebayo et al. 2018)

Cascading randomisation: the layers with parameters are re-initialised from the logits down, one more
group at each depth (1: the classifier alone; the last: every layer). After each step the model is
exported again and every method's maps on the same images and classes (the original model's top-1)
are compared with the original maps by Spearman rank correlation. A method whose mean rho stays at or
above --threshold at a randomised depth fails: its maps do not depend on the weights they explain.
Needs the export extra (torch). Writes OUT/sanity.json, OUT/sanity.png and the graphs of every depth
(OUT/graphs; a re-run reuses them)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sanity-check", help="do maps change when the model's weights are randomised? (needs the export extra)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--arch", help="torchvision architecture or efficientnet_lite0/1/2 (real weights)")
    source.add_argument("--model-file", metavar="PATH.py:FUNCTION", help="a function returning the nn.Module")
    parser.add_argument("--weights", help="state_dict file to load into the model")
    parser.add_argument("--layer", help="target layer (default: the exporter's choice)")
    parser.add_argument("--input-size", type=int, nargs="+", default=[224], metavar="PX")
    parser.add_argument("--mean", type=float, nargs=3, help="default ImageNet's (EfficientNet-Lite: its own)")
    parser.add_argument("--std", type=float, nargs=3)
    parser.add_argument("--images", type=Path, help="folder of images (default: the demo photos)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated methods (default "
                        f"{','.join(DEFAULT_METHODS)})")
    parser.add_argument("--depths", type=int, default=DEFAULT_DEPTHS, help="randomisation steps (default "
                        f"{DEFAULT_DEPTHS}: the classifier alone, then near-equal shares down to every layer)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="a method fails when its mean "
                        f"rho stays at or above this at a randomised depth (default {DEFAULT_THRESHOLD})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export-tolerance", type=float, help="the export check's relative tolerance for the "
                        "randomised networks (default the exporter's, 1e-4); a depth that fails it is not measured")
    parser.add_argument("--out", type=Path, required=True, help="folder for sanity.json, sanity.png, graphs/")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401

        from exporter.sources import LITE_MEAN, LITE_STD, PRETRAINED, build_arch, load_weights, model_from_file
    except ModuleNotFoundError as error:
        print(f"error: onnxcam sanity-check needs the export extra ({error.name} is missing): "
              "pip install -e '.[export]'", file=sys.stderr)
        return 2
    from exporter import ExportError
    from onnxcam.annotations import image_folder_items
    from onnxcam.client import method_name, method_value

    size = tuple(args.input_size * 2 if len(args.input_size) == 1 else args.input_size[:2])
    lite = args.arch in PRETRAINED
    mean = args.mean or (LITE_MEAN if lite else (0.485, 0.456, 0.406))
    std = args.std or (LITE_STD if lite else (0.229, 0.224, 0.225))
    folder = args.images or Path(__file__).parent / "demo_photos"
    try:
        methods = [method_name(method_value(m)) for m in args.methods.split(",") if m.strip()]
        images = [(folder / item.image).read_bytes() for item in image_folder_items(folder)]
        if not images:
            raise ValueError(f"no image in {folder}")
        model = build_arch(args.arch) if args.arch else model_from_file(args.model_file)
        if args.weights:
            load_weights(model, args.weights)
        args.out.mkdir(parents=True, exist_ok=True)
        result = run_check(model, args.layer, images, methods, input_size=size, mean=mean, std=std,
                           depths=args.depths, seed=args.seed, work=args.out / "graphs",
                           tolerance=args.export_tolerance, log=lambda text: print(text, file=sys.stderr, flush=True))
    except (ExportError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = verdict(result, args.threshold)
    data = {"model": args.arch or args.model_file, "layer": args.layer, "images": len(images),
            "threshold": args.threshold, "seed": args.seed, **result, "methods": summary}
    (args.out / "sanity.json").write_text(json.dumps(_finite(data), indent=1))
    plot(summary, result["depths"], args.threshold).save(args.out / "sanity.png")
    header = "method".ljust(24) + "".join(f"{'depth ' + str(d['depth']):>10}" for d in result["depths"]) + "  check"
    print(header)
    for method, values in summary.items():
        cells = "".join(f"{'–' if v is None else f'{v:+.2f}':>10}" for v in values["mean_rho"])
        print(method.ljust(24) + cells + ("  passes" if values["passed"] else "  FAILS"))
    print("re-initialised: " + "; ".join(f"depth {d['depth']}: {d['randomised']} layers, down to {d['deepest']}"
                                         + (" (not measured: the export check failed)" if "error" in d else "")
                                         for d in result["depths"]))
    print(f"mean Spearman rho with the original maps over {len(images)} images; a method fails when it stays "
          f">= {args.threshold:g}. Wrote {args.out / 'sanity.json'} and {args.out / 'sanity.png'}")
    return 0 if all(v["passed"] for v in summary.values()) else 1
