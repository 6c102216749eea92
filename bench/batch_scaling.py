"""What dynamic batching can buy at most: explainer.onnx per-row cost against batch size, and the
per-request CPU work that batching does not touch.

    python bench/batch_scaling.py [--quick] [--model-dir DIR] [--threads N]

Why: the server's batching gain at N concurrent clients is bounded by how much cheaper a row is in a
batch of b than alone (the session call) and diluted by the work done per request on the gRPC
threads (JPEG decode, resize, response). This script measures both on the server's own code:
explainer.onnx through server.sessions.open_session at batch 1, 2, 4, 8, 16 (interleaved, median),
with ONNX Runtime's intra-op thread spinning on (its default) and off, and the decode + preprocess
and the raw-map response of one request for the bundled JPEG. The predicted ceiling of the
throughput gain at batch b is (t1 + r) / (t_b + r), with t_b the session time per row and r the
per-request work, when the two share the same cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_MODEL_DIR, ensure_model, interleaved, median_ms, write_json  # noqa: E402
from common import session as common_session  # noqa: E402

from onnxcam import contract  # noqa: E402
from server import heatmaps, imaging  # noqa: E402
from server.config import DEFAULT_MAX_IMAGE_PIXELS  # noqa: E402
from server.model_info import load_model_info  # noqa: E402

PHOTO = ROOT / "onnxcam" / "demo_photos" / "chelsea.jpg"


def per_request_work(folder: Path, repeats: int) -> dict[str, float]:
    """Median ms of the work each request does outside the session call (one row, Grad-CAM raw)."""
    info = load_model_info(folder)
    data = PHOTO.read_bytes()

    def prepare() -> imaging.Prepared:
        return imaging.prepare_image(imaging.decode(data, DEFAULT_MAX_IMAGE_PIXELS), info.preprocess)

    prepared = prepare()
    raw = np.random.default_rng(0).random(info.activation_shape[1:], dtype=np.float32)
    times = interleaved({
        "decode + preprocess": prepare,
        "normalise + upsample one map": lambda: heatmaps.upsample(heatmaps.normalize(raw), prepared.geometry),
    }, repeats)
    return {name: median_ms(samples) for name, samples in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batches 1, 4; 3 repeats")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads; 0 = ONNX Runtime's choice "
                                                                  "(the server's default)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 20, quick 3)")
    args = parser.parse_args(argv)
    ensure_model(args.model_dir)
    batches = [1, 4] if args.quick else [1, 2, 4, 8, 16]
    repeats = args.repeats or (3 if args.quick else 20)
    info = load_model_info(args.model_dir)
    height, width = info.input_size
    rng = np.random.default_rng(0)
    feeds = {b: {contract.INPUT_PIXELS: rng.standard_normal((b, 3, height, width), dtype=np.float32),
                 contract.INPUT_TARGET: np.full(b, -1, np.int64)} for b in batches}
    rows = []
    for spinning in (True, False):
        session = common_session(args.model_dir / contract.EXPLAINER_FILE, args.threads, spin=spinning)
        calls = {b: (lambda b=b, session=session: session.run(None, feeds[b])) for b in batches}
        started = time.perf_counter()
        times = interleaved(calls, repeats, warmup=2)
        base = median_ms(times[1])
        for b in batches:
            per_row = median_ms(times[b]) / b
            rows.append({"spinning": spinning, "batch": b, "call_ms": median_ms(times[b]), "ms_per_row": per_row,
                         "rows_per_s": 1000.0 / per_row, "gain_vs_batch_1": base / per_row})
        print(f"  spinning {'on ' if spinning else 'off'}: {time.perf_counter() - started:.0f} s", flush=True)
    work = per_request_work(args.model_dir, repeats)
    request_ms = sum(work.values())
    print(f"\n{args.model_dir.name}, explainer.onnx, intra-op threads {args.threads or 'ORT default'}\n")
    print("| spinning | batch | call ms | ms per row | gain vs batch 1 | predicted server gain |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        first = next(r for r in rows if r["spinning"] == row["spinning"] and r["batch"] == 1)
        row["predicted_server_gain"] = (first["ms_per_row"] + request_ms) / (row["ms_per_row"] + request_ms)
        print(f"| {'on' if row['spinning'] else 'off'} | {row['batch']} | {row['call_ms']:.1f} | "
              f"{row['ms_per_row']:.1f} | {row['gain_vs_batch_1']:.2f}x | {row['predicted_server_gain']:.2f}x |")
    print("\nper-request work outside the session call: "
          + ", ".join(f"{name} {ms:.2f} ms" for name, ms in work.items()))
    path = write_json("batch-scaling-quick" if args.quick else "batch-scaling",
                      {"model": args.model_dir.name, "threads": args.threads, "repeats": repeats, "rows": rows,
                       "per_request_ms": work})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
