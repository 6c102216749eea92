"""The INT8 edge explainer against the float32 one, side by side, interleaved, in one run.

    python bench/quantized.py            # default model, offline photos as calibration

Quantises a copy of the model folder (bench/.cache) with the photos as calibration (onnxcam/demo_photos
and, where foolbox/imgaug are installed, bench/evaluate_photos.py's), then times explain and forward at
batch 1 for both folders, interleaved, and records the export check's agreement figures. Writes
bench/results/quantized.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CACHE, DEFAULT_MODEL_DIR, ROOT, ensure_model, interleaved, median_ms, session, write_json

GOALS = {"explain_speedup": 1.8, "top1_agreement": 0.95, "map_spearman": 0.95}


def gather_photos(folder: Path) -> int:
    """Copy the offline photos into ``folder``; returns how many."""
    for photo in sorted((ROOT / "onnxcam" / "demo_photos").glob("*.jpg")):
        shutil.copyfile(photo, folder / photo.name)
    try:
        from bench.evaluate_photos import write
        with tempfile.TemporaryDirectory() as labelled:
            write(Path(labelled))
            for photo in Path(labelled).glob("*.jpg"):
                shutil.copyfile(photo, folder / photo.name)
    except SystemExit as missing:  # foolbox/imgaug not installed: the demo photos only
        print(missing, file=sys.stderr)
    return len(list(folder.glob("*.jpg")))


def quantized_copy(model_dir: Path, calibration: Path) -> tuple[Path, dict]:
    """A fresh int8 copy of ``model_dir`` under bench/.cache, and its quantised export check."""
    from exporter.quantize import quantize_folder
    from exporter.sources import build_arch

    recipe = json.loads((model_dir / "recipe.json").read_text())
    int8_dir = CACHE / "quantized" / f"{model_dir.name}_int8"
    shutil.rmtree(int8_dir, ignore_errors=True)
    shutil.copytree(model_dir, int8_dir)
    return int8_dir, quantize_folder(int8_dir, calibration, build_arch(recipe["arch"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="a float32 folder with recipe.json")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args(argv)
    ensure_model(args.model)
    import numpy as np

    from onnxcam.preprocess import preprocess, read_spec

    with tempfile.TemporaryDirectory() as photos:
        count = gather_photos(Path(photos))
        int8_dir, check = quantized_copy(args.model, Path(photos))
        pixels = preprocess(sorted(Path(photos).glob("*.jpg"))[0], read_spec(args.model))[None]
    feed = {"pixels": pixels, "target": np.array([-1], np.int64)}
    sessions = {f"{graph}_{kind}": session(folder / f"{graph}.onnx", args.threads)
                for graph in ("explainer", "forward") for kind, folder in (("float32", args.model), ("int8", int8_dir))}
    calls = {name: (lambda s=s, name=name: s.run(None, feed if name.startswith("explainer") else
                                                 {"pixels": pixels})) for name, s in sessions.items()}
    times = {name: median_ms(samples) for name, samples in interleaved(calls, args.repeats).items()}
    speedup = {graph: times[f"{graph}_float32"] / times[f"{graph}_int8"] for graph in ("explainer", "forward")}
    worst_mean_rank = min(v["mean"] for v in check["map_spearman"].values())
    measured = {"explain_speedup": speedup["explainer"], "top1_agreement": check["top1_agreement"],
                "map_spearman": worst_mean_rank}
    payload = {
        "model": args.model.name, "threads": args.threads, "batch": 1, "repeats": args.repeats,
        "calibration_images": count, "median_ms": times, "speedup": speedup, "check": check,
        "goals": {name: {"goal": goal, "measured": measured[name], "met": measured[name] >= goal}
                  for name, goal in GOALS.items()},
    }
    path = write_json("quantized", payload)
    print(json.dumps({"median_ms": times, "speedup": speedup, "goals": payload["goals"]}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
