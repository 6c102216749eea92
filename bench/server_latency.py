"""Latency of one Explain on a model folder: in-process (the server's pipeline called directly)
versus over gRPC on loopback (real server, generated client), p50 and p90 over N calls.

    python bench/server_latency.py [--model-dir DIR] [--calls 100] [--threads 1]

Both paths run the same request through the same batcher and sessions; the difference is protobuf
serialisation plus the gRPC round trip. Calls are sequential (one client), interleaved between the
two paths so machine noise hits both alike; --max-delay-ms 0 (the server's default) gives the
latency floor, a larger value shows what a lone request pays when batches wait to fill.
Without --model-dir the tiny test model is exported to bench/.cache/tiny (needs torch).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved  # noqa: E402

from onnxcam.client import ExplainerClient, build_request  # noqa: E402
from server.app import ExplainerServer  # noqa: E402
from server.config import ServerConfig  # noqa: E402
from server.repository import load_repository  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "server-latency.json"


def tiny_model() -> Path:
    out = ROOT / "bench" / ".cache" / "tiny"
    if not (out / "model.json").exists():
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_models import TinyNet, seeded

        from exporter import export

        export(seeded(TinyNet()), None, out, input_size=(32, 32))
    return out


def photo() -> tuple[bytes, str]:
    """A real photo when scikit-image is installed (its bundled cat, 300x451), else a smooth synthetic one."""
    try:
        from skimage import data

        pixels, what = data.chelsea(), "skimage chelsea 300x451"
    except ImportError:
        y, x = np.mgrid[0:300, 0:450]
        pixels = np.stack([128 + 100 * np.sin(x / (9 + c) + y / (13 + c)) for c in range(3)], -1).astype(np.uint8)
        what = "synthetic 300x450"
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue(), what


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000.0, q))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="a model folder (default: the tiny test model)")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--max-delay-ms", type=float, default=0.0)
    args = parser.parse_args()

    model_dir = args.model_dir or tiny_model()
    config = ServerConfig(port=0, max_delay_ms=args.max_delay_ms, intra_op_threads=args.threads,
                          inter_op_threads=1)
    server = ExplainerServer(load_repository(model_dir, config), config).start()
    name = next(iter(server.repository.models))
    image, what = photo()
    results = {}
    try:
        with ExplainerClient(server.address, timeout=60) as client:
            for label, options in {"gradcam raw": dict(methods=["gradcam"], raw=True),
                                   "gradcam + overlay png": dict(methods=["gradcam"], overlay_png=True),
                                   "prediction only": dict(methods=["none"])}.items():
                request = build_request(image, name, **options)
                times = interleaved({"in_process": lambda r=request: server.pipeline.explain(r),
                                     "grpc": lambda r=request: client.explain_request(r)},
                                    repeats=args.calls, warmup=5)
                server_side = [client.explain_request(request).timing.total_ms for _ in range(20)]
                results[label] = {path: {"p50_ms": percentile_ms(t, 50), "p90_ms": percentile_ms(t, 90)}
                                  for path, t in times.items()}
                results[label]["server_total_ms_p50"] = statistics.median(server_side)
    finally:
        server.stop(0)
    print(f"model {name}, JPEG {what}, {args.calls} calls, max delay {args.max_delay_ms} ms, "
          f"{args.threads} ORT thread(s)")
    print(f"{'request':<24s} {'in-process p50':>15s} {'gRPC p50':>10s} {'in-process p90':>15s} {'gRPC p90':>10s}")
    for label, r in results.items():
        print(f"{label:<24s} {r['in_process']['p50_ms']:13.2f}ms {r['grpc']['p50_ms']:8.2f}ms "
              f"{r['in_process']['p90_ms']:13.2f}ms {r['grpc']['p90_ms']:8.2f}ms")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    RESULTS.write_text(json.dumps({"machine": machine, "model": name, "calls": args.calls, "image": what,
                                   "max_delay_ms": args.max_delay_ms, "threads": args.threads, "results": results},
                                  indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
