"""``onnxcam evaluate``: how faithful and how well placed each method's maps are on your images.

    onnxcam evaluate --models models --model efficientnet_lite0 --images photos/ --annotations boxes.csv \\
        --methods gradcam,gradcampp,layercam --out report/

Torch-free: the maps come from an explainer server started here on the model folder (or a running
one, ``--server``), the scores from ``forward.onnx`` in ONNX Runtime. Writes REPORT_DIR/metrics.json
and REPORT_DIR/index.html and prints the summary table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

from onnxcam import client_options, metrics
from onnxcam import methods as registry

DESCRIPTION = """How faithful and how well placed each method's maps are on your images: Average Drop, Increase in
Confidence, deletion/insertion AUC, pointing game, energy pointing game and localisation IoU, per
method and for a random and a centred-Gaussian baseline map.

    onnxcam evaluate --models models --model efficientnet_lite0 --images photos/ --annotations boxes.csv \\
        --methods gradcam,gradcampp,layercam --out report/

Needs no torch: the maps come from an explainer server started here on the model folder (or a running
one, --server), the scores from forward.onnx in ONNX Runtime. Writes REPORT_DIR/metrics.json and
REPORT_DIR/index.html and prints the summary table."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="measure methods' maps: Average Drop, deletion/insertion, pointing game, localisation",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("models"),
                        help="model repository or model folder (default models/); not needed with --server")
    parser.add_argument("--model", help="model name (default: the only model there)")
    parser.add_argument("--server", help="HOST:PORT of a running onnxcam server to measure instead (maps and scores "
                        "from it)")
    parser.add_argument("--images", type=Path, required=True, help="folder of images (annotation paths are relative "
                        "to it)")
    parser.add_argument("--annotations", type=Path, help="CSV (image,label[,x1,y1,x2,y2]), a Pascal VOC XML folder or "
                        "COCO JSON; without it every image's top-1 class is explained and box measures are skipped")
    parser.add_argument("--classes", type=Path, help="class names -> indices for VOC/COCO names: JSON {name: index} or "
                        "one name per line (default: the model's labels and their synonyms)")
    parser.add_argument("--methods", default="", help="comma-separated methods, or 'all' (default: every served "
                        "method except the slow ones: " + ", ".join(m.name for m in registry.METHODS if m.slow) + ")")
    parser.add_argument("--out", type=Path, required=True, help="report folder: metrics.json, index.html, pictures/")
    parser.add_argument("--steps", type=int, default=metrics.DEFAULT_STEPS, help="deletion/insertion steps "
                        f"(default {metrics.DEFAULT_STEPS})")
    parser.add_argument("--batch", type=int, default=32, help="rows per forward call on the curves (default 32)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads per session (default: ORT's "
                        "choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random baseline and of the order of equal "
                        "pixels (default 0)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N items (default all)")
    parser.add_argument("--resume", action="store_true", help="take the items an interrupted run with the same "
                        "settings finished from REPORT_DIR/checkpoint/ (each item is saved there as it is done)")
    client_options.add_arguments(parser)
    parser.set_defaults(handler=run)


def chosen_methods(text: str, served: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(methods to evaluate, notes): ``text`` is comma-separated names, 'all', or '' (served, not slow)."""
    if text.strip().lower() == "all":
        return list(served), []
    if not text.strip():
        slow = [m for m in served if registry.get(m).slow]
        notes = [f"left out {', '.join(slow)} (slow: --methods all adds it)"] if slow else []
        return [m for m in served if m not in slow], notes
    from onnxcam.client import method_name, method_value

    names = [method_name(method_value(part)) for part in text.split(",") if part.strip()]
    missing = [n for n in names if n not in served]
    if missing:
        raise ValueError(f"the model does not serve {', '.join(missing)}; it serves {', '.join(served)}")
    return list(dict.fromkeys(names)), []


class ProgressBar:
    """A one-line bar on a terminal; elsewhere (logs, CI) a line every 10% or 30 s."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last_line = -1.0
        self.last_tenth = -1

    def __call__(self, done: int, total: int, what: str) -> None:
        fraction = done / total if total else 1.0
        elapsed = time.monotonic() - self.started
        eta = f", {elapsed / fraction - elapsed:.0f} s left" if 0 < fraction < 1 else ""
        bar = "#" * int(fraction * 30)
        text = f"evaluate [{bar:<30}] {done}/{total} {fraction:4.0%} {elapsed:.0f} s{eta} | {what}"
        if self.tty:
            self.stream.write("\r" + text[:150].ljust(150) + ("\n" if done >= total else ""))
            self.stream.flush()
        elif int(fraction * 10) > self.last_tenth or time.monotonic() - self.last_line > 30 or done >= total:
            self.last_tenth, self.last_line = int(fraction * 10), time.monotonic()
            print(text, file=self.stream, flush=True)


def summary_table(data: dict) -> str:
    from onnxcam.evaluate import SUMMARY_KEYS
    from onnxcam.evaluate_report import formatted

    short = {"average_drop": "AD%", "increase_in_confidence": "IC%", "deletion_auc": "del", "insertion_auc": "ins",
             "pointing_game": "PG%", "energy_pointing_game": "EPG%", "localization_iou": "IoU",
             "localization_accuracy": "loc%"}
    width = max([len(n) for n in (*data["methods"], *data["baselines"])] + [12]) + 2
    lines = ["map".ljust(width) + "".join(f"{short[k]:>8}" for k in SUMMARY_KEYS)]
    for group, suffix in ((data["methods"], ""), (data["baselines"], " *")):
        for name, values in group.items():
            lines.append((name + suffix).ljust(width) + "".join(f"{formatted(k, values[k]):>8}" for k in SUMMARY_KEYS))
    lines.append("* baseline map. AD: Average Drop, IC: Increase in Confidence, del/ins: deletion/insertion AUC, "
                 "PG/EPG: (energy) pointing game, IoU and loc%: localisation")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import grpc

    from onnxcam import annotations, evaluate, evaluate_report, evaluate_sources
    from onnxcam.client import ExplainerClient

    def warn(problem: annotations.Problem) -> None:
        print(f"warning: {problem}", file=sys.stderr, flush=True)

    if args.steps < 1 or args.batch < 1:
        print("error: --steps and --batch must be positive", file=sys.stderr)
        return 2
    try:
        with ExitStack() as stack:
            if args.server:
                address, source = args.server, f"server {args.server}"
            else:
                folder = evaluate_sources.find_model_folder(args.models, args.model)
                args.model = args.model or evaluate_sources.load_model_info(folder).name
                print(f"starting an explainer server on {folder} ...", file=sys.stderr, flush=True)
                address = stack.enter_context(evaluate_sources.local_server(folder, args.threads))
                source = f"local {folder.name}"
            security = client_options.client_kwargs(args) if args.server else {}  # a local server has none
            client = stack.enter_context(ExplainerClient(address, timeout=None, **security))  # Score-CAM: minutes
            if args.model is None:
                served = [m.name for m in client.list_models()]
                if len(served) != 1:
                    raise evaluate_sources.SourceError(f"the server has {len(served)} models ({', '.join(served)}): "
                                                       "choose one with --model")
                args.model = served[0]
            view = evaluate_sources.model_view(client, args.model)
            if args.server:
                scorer = evaluate_sources.ServerScorer(client, view.name, view.num_classes)
            else:
                scorer = evaluate_sources.LocalScorer(folder / "forward.onnx", args.threads, args.batch)
            methods, notes = chosen_methods(args.methods, view.methods)
            for note in notes:
                print(note, file=sys.stderr)
            classes = annotations.Classes(view.labels, annotations.read_class_map(args.classes) if args.classes
                                          else None)
            if args.annotations:
                loaded = annotations.load(args.annotations, classes)
            else:
                loaded = annotations.Annotations(annotations.image_folder_items(args.images))
            for problem in loaded.problems:
                warn(problem)
            items = loaded.items[:args.limit] if args.limit else loaded.items
            if not items:
                print("error: nothing to evaluate: no image found, or every annotation row was skipped",
                      file=sys.stderr)
                return 1
            print(f"evaluating {', '.join(methods)} and 2 baselines on {len(items)} items of {view.name}",
                  file=sys.stderr, flush=True)
            settings = evaluate.Settings(steps=args.steps, batch=args.batch, seed=args.seed)
            checkpoint = evaluate.Checkpoint(args.out / "checkpoint", evaluate.fingerprint(
                view, methods, settings, items, source), args.resume)
            outcome = evaluate.evaluate(items, args.images, client, view, scorer, methods, settings,
                                        progress=ProgressBar(), warn=warn, checkpoint=checkpoint)
            outcome.problems[:0] = loaded.problems
            data = evaluate.report_json(outcome, source)
            (args.out / "metrics.json").write_text(json.dumps(data, indent=1))
            page = evaluate_report.write(args.out, data, outcome, view.preprocess)
            checkpoint.remove()
    except (annotations.AnnotationError, evaluate_sources.SourceError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except grpc.RpcError as error:
        print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    print(summary_table(data))
    skipped = data["skipped"]
    print(f"{data['images']} images, {data['items']} items; skipped {skipped['images']} images, "
          f"{skipped['annotation_rows']} annotation rows, {skipped['boxes']} boxes, {skipped['maps']} maps; "
          f"{data['timing']['total_s']:.0f} s")
    print(f"wrote {args.out / 'metrics.json'} and {page}")
    return 0 if data["items"] else 1
