"""Soak: the server under 64 concurrent clients for 10 minutes, a mix of methods and image sizes.

    python bench/soak.py [--duration 600] [--clients 64] [--quick] [--model-dir DIR]

Why: the load benchmark (bench/server_load.py) sends one kind of request; an operator needs to know
that a mix (cheap and multi-pass methods, small and large photos, PNGs, requests the server must
refuse) runs for minutes with no error other than the expected ones and memory flat after warm-up.

Each client thread loops over requests drawn from MIX (weighted, seeded); every answer's status code
is counted per kind. Expected codes: OK; RESOURCE_EXHAUSTED (the server is busy, or a request over
its limits: the ``oversized`` kind must get it); DEADLINE_EXCEEDED for the kinds sent with a short
deadline. Anything else is unexpected and makes the exit status non-zero. The server's VmRSS is
sampled every second: at start (models loaded), after the warm-up and at the end (each the median of
a window, as bench/server_load.py's memory_trend). Results: bench/results/soak.json.

``--quick`` runs 8 s with 16 clients: a check that the script works, not a soak.
"""

from __future__ import annotations

import argparse
import collections
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_MODEL_DIR, ensure_model, write_json  # noqa: E402
from server_load import ServerProcess, memory_trend, rss_mib  # noqa: E402

from onnxcam.client import ExplainerClient, build_request  # noqa: E402
from onnxcam.proto import explainer_pb2 as pb  # noqa: E402

PHOTO = ROOT / "onnxcam" / "demo_photos" / "chelsea.jpg"
MODEL = "efficientnet_lite0"
OK, BUSY, LATE = grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED


@dataclass(frozen=True)
class Kind:
    name: str
    weight: int
    request: pb.ExplainRequest
    timeout_s: float
    expected: frozenset[grpc.StatusCode]


def _jpeg(height: int, width: int, seed: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([128 + 100 * np.sin(x / (30 + 7 * c) + y / (50 + 5 * c)) for c in range(3)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def mix() -> list[Kind]:
    """The requests the clients send, with their weights and the codes each may get."""
    photo = PHOTO.read_bytes()
    large = _jpeg(1200, 1600, 1)
    huge = _jpeg(2000, 3000, 2)
    normal = frozenset({OK, BUSY})
    return [
        Kind("gradcam_raw", 30, build_request(photo, MODEL, methods=["gradcam"]), 60.0, normal),
        Kind("three_methods_png", 20, build_request(photo, MODEL, methods=["gradcam", "gradcampp", "layercam"],
                                                    targets=[281, 282, 285], heatmap_png=True), 60.0, normal),
        Kind("large_overlay", 15, build_request(large, MODEL, methods=["gradcam"], overlay_png=True), 60.0, normal),
        Kind("saliency_guided", 10, build_request(photo, MODEL, methods=["saliency", "guided_backprop"]), 60.0,
             normal),
        Kind("eigencam", 8, build_request(photo, MODEL, methods=["eigencam"], heatmap_png=True), 60.0, normal),
        Kind("smoothgrad_small", 6, build_request(photo, MODEL, methods=["smoothgrad"],
                                                  sampling=pb.Sampling(samples=8)), 60.0, normal),
        Kind("scorecam_short_deadline", 4, build_request(photo, MODEL, methods=["scorecam"]), 2.0,
             frozenset({OK, BUSY, LATE})),
        Kind("ablationcam", 4, build_request(photo, MODEL, methods=["ablationcam"]), 20.0,
             frozenset({OK, BUSY, LATE})),
        Kind("oversized", 3, build_request(huge, MODEL, methods=["gradcam", "gradcampp", "xgradcam", "layercam",
                                                                   "hirescam"], targets=list(range(16)),
                                           heatmap_png=True, overlay_png=True), 60.0, frozenset({BUSY})),
    ]


def run(address: str, kinds: list[Kind], clients: int, duration_s: float, seed: int) -> dict:
    counts: dict[str, collections.Counter] = {kind.name: collections.Counter() for kind in kinds}
    latencies: dict[str, list[float]] = {kind.name: [] for kind in kinds}
    lock = threading.Lock()
    stop_at = time.monotonic() + duration_s

    def client_loop(index: int) -> None:
        rng = random.Random(seed + index)
        with ExplainerClient(address, timeout=None, retry=False) as client:
            while time.monotonic() < stop_at:
                kind = rng.choices(kinds, weights=[k.weight for k in kinds])[0]
                start = time.monotonic()
                try:
                    client.explain_request(kind.request, timeout=kind.timeout_s)
                    code = OK
                except grpc.RpcError as error:
                    code = error.code()
                with lock:
                    counts[kind.name][code.name] += 1
                    latencies[kind.name].append(time.monotonic() - start)

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    unexpected = {name: {code: n for code, n in counter.items()
                         if grpc.StatusCode[code] not in next(k for k in kinds if k.name == name).expected}
                  for name, counter in counts.items()}
    return {"codes": {name: dict(counter) for name, counter in counts.items()},
            "unexpected": {name: codes for name, codes in unexpected.items() if codes},
            "p50_ms": {name: statistics.median(v) * 1000 for name, v in latencies.items() if v}}


def sample_rss(pid: int, samples: list[tuple[float, float]], started: float, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        try:
            samples.append((time.monotonic() - started, rss_mib(pid)))
        except (OSError, RuntimeError):
            return


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    parser.add_argument("--quick", action="store_true", help="8 s with 16 clients: the script works, no soak")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    duration, clients = (8.0, 16) if args.quick else (args.duration, args.clients)
    ensure_model(args.model_dir)
    kinds = mix()
    with ServerProcess(args.model_dir, []) as server:
        rss_start = rss_mib(server.pid)
        samples: list[tuple[float, float]] = []
        stop = threading.Event()
        started = time.monotonic()
        sampler = threading.Thread(target=sample_rss, args=(server.pid, samples, started, stop), daemon=True)
        sampler.start()
        print(f"soak: {clients} clients for {duration:g} s against {server.address} (RSS {rss_start:.0f} MiB)",
              flush=True)
        result = run(server.address, kinds, clients, duration, args.seed)
        stop.set()
        sampler.join()
        rss_end = rss_mib(server.pid)
    trend = memory_trend(samples, duration)
    total = sum(sum(codes.values()) for codes in result["codes"].values())
    payload = {"duration_s": duration, "clients": clients, "requests": total, "rss_start_mib": rss_start,
               "rss_after_warmup_mib": trend.get("rss_after_warmup_mib"), "rss_end_mib": rss_end,
               "rss_growth_after_warmup_mib": trend.get("growth_mib"), "memory": trend,
               "server_exit_code": server.exit_code, **result}
    path = write_json("soak", payload)
    for name, codes in result["codes"].items():
        print(f"  {name:26s} {codes}")
    print(f"{total} requests; RSS start {rss_start:.0f} MiB, after warm-up "
          f"{payload['rss_after_warmup_mib'] or float('nan'):.0f}, end {rss_end:.0f}; unexpected: "
          f"{result['unexpected'] or 'none'}; written to {path.relative_to(ROOT)}")
    return payload


if __name__ == "__main__":
    outcome = main()
    sys.exit(1 if outcome["unexpected"] or outcome["server_exit_code"] else 0)
