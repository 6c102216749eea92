"""The benchmark harness runs end to end in quick mode (no timing is checked here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_benchmarks_run_and_write_results(default_model_built: Path) -> None:
    # A session of its own: on a timeout the benchmark run.py started (and its model builds) die with it,
    # instead of running on beside the next tests.
    process = subprocess.Popen([sys.executable, str(ROOT / "bench" / "run.py"), "--quick"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=1800)  # seven scripts; minutes on a busy machine
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, stdout[-4000:] + stderr[-4000:]
    results = ROOT / "bench" / "results"
    overhead = json.loads((results / "overhead-quick.json").read_text())
    assert overhead["machine"]["cores"] >= 1
    assert overhead["overhead"] and all(row["forward_ms"] > 0 and row["explain_ms"] > 0
                                        for row in overhead["overhead"])
    gradients = json.loads((results / "input-gradients-quick.json").read_text())
    methods = {row["method"] for row in gradients["rows"]}
    assert methods == {"saliency", "deconvnet", "guided_backprop", "guided_gradcam"}
    # Timings only: parity is tests/test_reference_parity.py's job (a random-weight network at 224 px is
    # ill-conditioned in float32, and a quick run does not compare against float64).
    assert all(row["ours_ms"] > 0 and row["captum_ms"] > 0 and row["max_rel_difference"] >= 0
               for row in gradients["rows"])
    sampled = json.loads((results / "sampled-quick.json").read_text())
    assert {row["method"] for row in sampled["rows"]} == {
        "smoothgrad", "smoothgrad_guided", "smooth_gradcampp", "integrated_gradients", "occlusion"}
    assert all(row["ours_ms"] > 0 and row["reference_ms"] > 0 and row["max_rel_difference"] >= 0
               for row in sampled["rows"])
    load = json.loads((results / "server-load-quick.json").read_text())
    assert load["machine"]["cpu"]
    scaling = json.loads((results / "batch-scaling-quick.json").read_text())
    assert {row["batch"] for row in scaling["rows"]} == {1, 4} and all(row["ms_per_row"] > 0 for row in scaling["rows"])
