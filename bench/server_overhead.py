"""The server's own overhead: `onnxcam serve` under load against the bare ONNX Runtime session.

    python bench/server_overhead.py [--quick] [--model-dir DIR] [--clients 16] [--window 10] [--pairs 4]

Why: the explainer graph is fast, so what bounds a loaded server is everything around it (decode,
preprocessing, protobuf, gRPC, Python). This script puts a figure on it: the throughput of the server
process (its defaults, N closed-loop gRPC clients asking for a Grad-CAM raw map of the bundled JPEG,
bench/server_load.py's load generator) against the throughput of the server's own explainer session
alone on the same preprocessed rows. The bare side opens explainer.onnx through the server's own
model loading (same session options, threads and spinning, same outputs fetched) in this process,
and runs batches drawn from the batch sizes the server formed in the window before, so both sides
run the same batch sizes. Windows alternate, server then bare, so machine noise hits both alike; the
server sits idle (its threads do not spin) while the bare side runs.

Reported per pair of windows: server req/s, bare rows/s and their ratio; overall: the pooled ratio,
the server's CPU per request and the load generator's CPU (the load generator shares the machine
with the server, the bare side does not: on few cores that is part of what the ratio measures).
Goal: ratio >= 0.8 at N = 16. Also reported: the CPU ratio (bare CPU ms per row / server CPU ms per
request), which is what the throughput ratio comes to on idle cores; under outside load the throughput
ratio favours the server, whose dozen threads get a larger share of the cores than the bare session's
two. Quick mode (CI): N = 4, two pairs of 2 s windows, no timing asserted.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_MODEL_DIR, ensure_model, interleaved, median_ms, write_json  # noqa: E402
from server_load import PHOTO, RPC_TIMEOUT_S, ServerProcess, load_average, run_load, shown_path  # noqa: E402

from onnxcam import contract  # noqa: E402
from onnxcam.client import ExplainerClient, build_request  # noqa: E402
from server import imaging  # noqa: E402

GOAL_RATIO = 0.8


def server_model(model_dir: Path, server_args: list[str], name: str):
    """The server's LoadedModel, loaded here with exactly the server's settings (its own CLI parsing)."""
    from server.cli import config_from_args, register
    from server.repository import load_repository

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    config = config_from_args(parser.parse_args(["serve", "--models", str(model_dir), *server_args]))
    repository = load_repository(model_dir, config)
    return repository, repository.get(name)


def prepared_row(model) -> np.ndarray:
    """The photo as the server preprocesses it: float32 [3, H, W]."""
    image = imaging.decode(PHOTO.read_bytes(), model.config.max_image_pixels, model.config.image_formats)
    return imaging.prepare_image(image, model.info.preprocess).pixels


def batch_counts(batch_rows: dict[int, int]) -> dict[int, float]:
    """Session calls per batch size from a per-request histogram (a batch of b rows answers b requests)."""
    return {size: count / size for size, count in batch_rows.items() if count}


def rows_per_call(batch_rows: dict[int, int]) -> float:
    """Mean rows per session call (not per request: a request in a batch of b counts 1/b of the call)."""
    calls = sum(batch_counts(batch_rows).values())
    return sum(batch_rows.values()) / calls if calls else 0.0


def run_bare(model, row: np.ndarray, batch_rows: dict[int, int], duration_s: float, seed: int) -> dict[str, Any]:
    """The server's explainer session alone for ``duration_s``: batches drawn in the server's proportions."""
    counts = batch_counts(batch_rows) or {1: 1.0}
    sizes, weights = list(counts), list(counts.values())
    feeds = {size: {contract.INPUT_PIXELS: np.repeat(row[None], size, axis=0),
                    contract.INPUT_TARGET: np.full(size, -1, np.int64)} for size in sizes}
    outputs = model.explainer_outputs
    draw = random.Random(seed)
    rows = calls = 0
    cpu, start = time.process_time(), time.perf_counter()
    while time.perf_counter() - start < duration_s:
        size = draw.choices(sizes, weights)[0]
        model.explainer.run(outputs, feeds[size])
        rows += size
        calls += 1
    wall = time.perf_counter() - start
    return {"duration_s": round(wall, 2), "rows": rows, "calls": calls, "rows_per_s": rows / wall,
            "mean_batch_rows": rows / calls, "cpu_cores": (time.process_time() - cpu) / wall}


def draft_decode(model, repeats: int, side: int = 3000) -> dict[str, Any]:
    """What JPEG draft mode (DCT scaling while decoding) would save on a large photo, and how far its
    pixels are from the documented preprocessing (full decode, then one bilinear resize): the
    server does not use it, since the preprocessing is defined bit for bit (onnxcam.preprocess)."""
    photo = Image.open(PHOTO).convert("RGB")
    large = photo.resize((side * photo.width // photo.height, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    large.save(buffer, format="JPEG", quality=90)
    data, pre, limit = buffer.getvalue(), model.info.preprocess, model.config.max_image_pixels

    def full() -> np.ndarray:
        return imaging.prepare_image(imaging.decode(data, limit), pre).pixels

    def draft() -> np.ndarray:
        header = imaging.open_header(data, limit)
        width, height = header.size
        new_h, new_w = imaging.resized_size(height, width, pre.resize_shorter_side)
        header.draft("RGB", (new_w, new_h))  # the largest DCT scale (1/2, 1/4, 1/8) still at least this size
        return imaging.prepare_image(imaging.load(header), pre).pixels

    times = interleaved({"full": full, "draft": draft}, repeats)
    std = np.asarray(pre.std, np.float32)[:, None, None] / np.float32(pre.scale)
    difference = np.abs(full() - draft()) * std  # in 0-255 pixel steps
    return {"photo": f"{PHOTO.name} enlarged to {large.width}x{large.height}, JPEG quality 90",
            "full_ms": median_ms(times["full"]), "draft_ms": median_ms(times["draft"]),
            "max_pixel_difference": float(difference.max()), "mean_pixel_difference": float(difference.mean())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 4, two pairs of 2 s windows (CI)")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--clients", type=int, help="closed-loop gRPC clients (default 16; quick 4)")
    parser.add_argument("--window", type=float, help="seconds per window (default 10; quick 2)")
    parser.add_argument("--pairs", type=int, help="server + bare window pairs (default 4; quick 2)")
    parser.add_argument("--channels", choices=("per-client", "shared"), default="per-client")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra `onnxcam serve` option, e.g. --server-arg=--workers=16")
    parser.add_argument("--name", help="results file name (default server-overhead[-quick])")
    args = parser.parse_args(argv)
    clients = args.clients or (4 if args.quick else 16)
    window = args.window or (2.0 if args.quick else 10.0)
    pairs = args.pairs or (2 if args.quick else 4)
    ensure_model(args.model_dir)
    began = time.perf_counter()
    payload: dict[str, Any] = {
        "mode": "quick" if args.quick else "full", "model_dir": shown_path(args.model_dir), "image": PHOTO.name,
        "request": "Explain, methods=[gradcam], raw=True (raw map only)", "clients": clients,
        "window_s": window, "pairs": pairs, "channels": args.channels, "server_extra_args": args.server_arg,
        "bare": "the server's explainer session (server.loaded_model, same settings and outputs) in this process, "
                "batch sizes drawn from the server's histogram of the window before",
        "load_average_before": load_average(), "windows": [],
    }
    with ServerProcess(args.model_dir, args.server_arg) as server:
        with ExplainerClient(server.address, timeout=RPC_TIMEOUT_S, retry=False) as client:
            name = client.list_models()[0].name
        request = build_request(PHOTO.read_bytes(), name, methods=["gradcam"], raw=True)
        repository, model = server_model(args.model_dir, args.server_arg, name)
        try:
            row = prepared_row(model)
            payload.update(model=name, threads={"intra_op": model.config.intra_op_threads,
                                                "inter_op": model.config.inter_op_threads,
                                                "spin": model.config.spin})
            payload["draft_decode"] = draft_decode(model, 3 if args.quick else 10)
            for pair in range(pairs):
                served = run_load(server, request, clients, window, args.channels)
                bare = run_bare(model, row, served["batch_rows"], window, seed=pair)
                ratio = served["throughput_rps"] / bare["rows_per_s"]
                payload["windows"].append({"server": served, "bare": bare, "ratio": ratio,
                                           "load_average": load_average()})
                print(f"  pair {pair + 1}: server {served['throughput_rps']:6.1f} req/s (mean batch "
                      f"{rows_per_call(served['batch_rows']):.2f}, {served['server_cpu_cores']:.2f} + client "
                      f"{served['client_cpu_cores']:.2f} cores), bare {bare['rows_per_s']:6.1f} rows/s "
                      f"(mean batch {bare['mean_batch_rows']:.2f}) -> {ratio:.2f}x", flush=True)
        finally:
            repository.close()
    windows = payload["windows"]
    requests = sum(w["server"]["requests"] for w in windows)
    server_s = sum(w["server"]["duration_s"] for w in windows)
    rows, bare_s = sum(w["bare"]["rows"] for w in windows), sum(w["bare"]["duration_s"] for w in windows)
    histogram: collections.Counter = collections.Counter()
    for w in windows:
        histogram.update(w["server"]["batch_rows"])
    server_cpu_s = sum(w["server"]["server_cpu_cores"] * w["server"]["duration_s"] for w in windows)
    bare_cpu_s = sum(w["bare"]["cpu_cores"] * w["bare"]["duration_s"] for w in windows)
    summary = {
        "server_rps": requests / server_s, "bare_rows_per_s": rows / bare_s,
        "ratio": (requests / server_s) / (rows / bare_s),
        "ratio_per_pair": [w["ratio"] for w in windows],
        "rows_per_call": rows_per_call(dict(histogram)),
        "bare_rows_per_call": rows / sum(w["bare"]["calls"] for w in windows),
        "server_cpu_ms_per_request": server_cpu_s * 1000.0 / max(requests, 1),
        "bare_cpu_ms_per_row": bare_cpu_s * 1000.0 / max(rows, 1),
        "server_cpu_cores": server_cpu_s / server_s,
        "client_cpu_cores": sum(w["server"]["client_cpu_cores"] * w["server"]["duration_s"] for w in windows)
        / server_s,
        "p50_ms": float(np.median([w["server"]["p50_ms"] for w in windows])),
        "errors": sum(w["server"]["errors"] for w in windows),
    }
    # Work per CPU second, server against bare: what the throughput ratio would be if each side had the
    # cores to itself. Under outside load the throughput ratio is not that: the scheduler shares the cores
    # among runnable threads, and the server has a dozen against the bare session's two.
    summary["cpu_ratio"] = summary["bare_cpu_ms_per_row"] / summary["server_cpu_ms_per_request"]
    payload["summary"] = summary
    payload["goal"] = {"ratio>=0.8": {"value": summary["ratio"], "met": summary["ratio"] >= GOAL_RATIO},
                       "cpu_ratio>=0.8": {"value": summary["cpu_ratio"], "met": summary["cpu_ratio"] >= GOAL_RATIO}}
    payload["load_average_after"] = load_average()
    payload["elapsed_s"] = round(time.perf_counter() - began, 1)
    print(f"\nserver overhead: {payload['model']}, {PHOTO.name}, Grad-CAM raw, N = {clients}, {pairs} pairs of "
          f"{window:g} s windows; {os.cpu_count()} cores, load average {payload['load_average_before']} before, "
          f"{payload['load_average_after']} after")
    print(f"server {summary['server_rps']:.1f} req/s, bare session {summary['bare_rows_per_s']:.1f} rows/s; rows "
          f"per call {summary['rows_per_call']:.2f} (bare {summary['bare_rows_per_call']:.2f}): ratio "
          f"{summary['ratio']:.2f}x (per pair: " + ", ".join(f"{r:.2f}" for r in summary["ratio_per_pair"]) + ")")
    print(f"CPU: server {summary['server_cpu_ms_per_request']:.1f} ms per request, bare session "
          f"{summary['bare_cpu_ms_per_row']:.1f} ms per row ({summary['cpu_ratio']:.2f}x); load generator "
          f"{summary['client_cpu_cores']:.2f} cores")
    draft = payload["draft_decode"]
    print(f"JPEG draft mode on {draft['photo']}: decode + preprocess {draft['full_ms']:.1f} -> {draft['draft_ms']:.1f} "
          f"ms, pixels differ by up to {draft['max_pixel_difference']:.1f} steps of 255 (mean "
          f"{draft['mean_pixel_difference']:.2f}): not used")
    for name, goal in payload["goal"].items():
        print(f"goal {name}: {'met' if goal['met'] else 'MISSED'} ({goal['value']:.2f})")
    print(f"errors {summary['errors']}")
    path = write_json(args.name or ("server-overhead-quick" if args.quick else "server-overhead"), payload)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    sys.exit(0 if main()["summary"]["errors"] == 0 else 1)
