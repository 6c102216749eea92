"""What every benchmark shares: the machine's description, interleaved timing, ORT sessions."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
#: The model the server benchmarks use: the default model of `onnxcam demo`, with real weights.
DEFAULT_MODEL_DIR = ROOT / "models" / "efficientnet_lite0"
#: Where benchmark exports are kept between runs, shared by every script (an export takes minutes).
CACHE = Path(__file__).parent / ".cache"
#: --quick only proves the harness runs: every quick script shares one small export (resnet18 at this size),
#: so CI pays for one export, not one per script.
QUICK_SIZE = 48


def machine() -> dict:
    """CPU model, cores and library versions, stored next to every result."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
                  "platform": platform.platform(), "load_average": os.getloadavg()}
    for distribution in ("onnxruntime", "onnxruntime-gpu", "numpy", "torch", "grpcio", "grad-cam"):
        try:
            info[distribution] = version(distribution)
        except PackageNotFoundError:
            pass
    info.setdefault("onnxruntime", info.get("onnxruntime-gpu"))
    return info


def interleaved(functions: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Time each function ``repeats`` times, round-robin, so machine noise hits all alike (seconds)."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return times


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000.0


def session(path: Path, threads: int, *, spin: bool = False):
    """A CPU session whose idle threads do not spin (unless ``spin``).

    Interleaved timing alternates sessions; with ONNX Runtime's default spinning, the idle threads of
    the session that just ran keep the cores busy while the next one runs. On 2 cores that made a
    resnet50 forward take 82 ms interleaved with the explainer against 50 ms alone (43 ms without
    spinning, both ways).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def write_json(name: str, payload: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=float))
    return path


def image_batch(batch: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, 3, size, size)).astype(np.float32)


def ensure_model(model_dir: Path) -> None:
    """The default model is built on first use (``onnxcam models build``); any other folder must exist."""
    if (model_dir / "model.json").exists() or any(p.joinpath("model.json").exists() for p in model_dir.glob("*/")):
        return
    if model_dir.resolve() != DEFAULT_MODEL_DIR.resolve():
        raise SystemExit(f"{model_dir} holds no model.json; export a model there first")
    print(f"building {model_dir.name} with `onnxcam models build` (once)...", flush=True)
    subprocess.run([sys.executable, "-m", "onnxcam.cli", "models", "build", "--models", str(model_dir.parent),
                    model_dir.name], cwd=ROOT, check=True)
