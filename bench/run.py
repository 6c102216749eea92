"""Run every benchmark, one after the other, each in its own process.

    python bench/run.py [--quick] [--only overhead gradient_free input_gradients sampled edge_runtimes
                                     server_load batch_scaling]

--quick finishes in about two minutes and is what CI runs (it checks that the harness works,
never a timing). Without it: the full runs whose tables are in the README. Each script prints its
table and writes bench/results/<name>.json with the machine's description.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SCRIPTS = ["overhead", "gradient_free", "input_gradients", "sampled", "edge_runtimes", "server_load",
           "batch_scaling", "evaluate", "render", "server_overhead"]
#: Benchmarks that only make sense next to the peer library (grad-cam, captum, torchcam, openvino: the dev extra), so
#: without it they are skipped, not failed.
REQUIRES = {"gradient_free": "pytorch_grad_cam", "input_gradients": "captum", "sampled": "captum",
            "edge_runtimes": "openvino", "evaluate": "quantus"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, default=SCRIPTS)
    args = parser.parse_args(argv)
    failed = []
    for name in args.only:
        print(f"\n=== {name}{' (quick)' if args.quick else ''} ===", flush=True)
        needed = REQUIRES.get(name)
        if needed and importlib.util.find_spec(needed) is None:
            print(f"=== {name}: skipped, {needed} is not installed (pip install -e '.[dev]') ===", flush=True)
            continue
        started = time.perf_counter()
        result = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *(["--quick"] if args.quick else [])],
                                cwd=BENCH.parent)
        print(f"=== {name}: exit {result.returncode} after {time.perf_counter() - started:.0f} s ===", flush=True)
        if result.returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
