"""The same exported graphs on other CPU runtimes: latency and agreement with ONNX Runtime, side by side.

    python bench/edge_runtimes.py [--quick] [--threads 2] [--repeats 30] [--models DIR ...] [--batches 1 8]

Why: the model folder is meant to run unchanged wherever ONNX runs; before suggesting another
runtime for the edge or for serving, we need to know that it gives the same numbers (the backward
pass inside the graph is the fragile part) and what it buys in time. Per model folder, graph
(explainer.onnx, forward.onnx) and batch (1, 8), interleaved in one process (A, B, C, A, B, C, ...;
median), every runtime with the same number of threads:

- ``ort``: ONNX Runtime's CPU execution provider, idle threads not spinning (``common.session``, the
  server's default). The reference for times and numbers.
- ``openvino``: OpenVINO's CPU plugin, ``INFERENCE_PRECISION_HINT=f32``, latency hint, one stream,
  the graph as it is (dynamic batch), as a server would hold it.
- ``openvino-static``: the same with the batch fixed by ``reshape`` before compiling (an edge device
  that always runs one shape).
- ``openvino-default``: no precision hint, only where the CPU plugin's default precision is not f32
  (bf16 on CPUs with AMX/AVX-512 BF16, f16 on ARM); on AVX2-only CPUs it is f32 and this row would
  repeat ``openvino``. It shows what the f32 hint protects against.
- ``ort-openvino-ep``: ONNX Runtime's OpenVINO execution provider (FP32), only when this onnxruntime
  build has it: the ``onnxruntime-openvino`` wheel replaces ``onnxruntime``, so run this script from a
  separate virtualenv for it (``pip install onnxruntime-openvino numpy``; not the project's) with
  ``--name edge-runtimes-ort-openvino-ep``. Its ``ort`` row is then that wheel's own CPU EP.

Agreement: max |x - ort| / max |ort| of logits, gradients and cam_gradcam (all outputs in the JSON) on
one fixed random batch. Noise: each row also records the spread of its samples, (p90 - p10) / median,
and the median of a short block run alone after the interleaved run (interference between runtimes
shows up as a gap between the two). Models: the default model (built on first use) and resnet50
(random weights, exported into bench/.cache/ on first use); --models takes any model folders.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CACHE, DEFAULT_MODEL_DIR, ensure_model, image_batch, interleaved, median_ms, session, write_json  # noqa: E402

RESNET50_DIR = CACHE / "resnet50-224"
GRAPHS = ["explainer.onnx", "forward.onnx"]
SHOWN = ["logits", "gradients", "cam_gradcam"]

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def ensure_resnet50(folder: Path) -> None:
    """resnet50 with random weights (timing only), exported once with the CLI the README documents."""
    if (folder / "model.json").exists():
        return
    print(f"exporting resnet50 into {folder} (once, about a minute)...", flush=True)
    subprocess.run([sys.executable, "-m", "onnxcam.cli", "export", "--arch", "resnet50", "--layer", "layer4",
                    "--out", str(folder)], cwd=ROOT, check=True)


def openvino_core():
    """OpenVINO's Core, or None where the package is absent (it is a test/bench-only dependency)."""
    try:
        import openvino
    except ImportError:
        return None
    return openvino.Core()


def openvino_default_precision(core) -> str:
    """The precision the CPU plugin picks when nobody asks: f32 on AVX2, bf16 with AMX / AVX-512 BF16."""
    return str(core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name())


def openvino_runner(core, path: Path, threads: int, *, precision: str | None, batch: int | None = None) -> Runner:
    """One compiled model and infer request; ``batch`` fixes the batch dimension before compiling."""
    model = core.read_model(str(path))
    if batch is not None:  # every input's first dimension is the batch (pixels, target, activations)
        model.reshape({i.get_any_name(): [batch, *(d.get_length() for d in list(i.get_partial_shape())[1:])]
                       for i in model.inputs})
    config: dict[str, object] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    return lambda feeds: {port.get_any_name(): value for port, value in request.infer(feeds).items()}


def ort_runner(path: Path, threads: int) -> Runner:
    sess = session(path, threads)
    names = [o.name for o in sess.get_outputs()]
    return lambda feeds: dict(zip(names, sess.run(None, feeds), strict=True))


def ort_openvino_ep_runner(path: Path, threads: int) -> Runner | None:
    """ONNX Runtime with its OpenVINO EP (FP32, CPU), or None where this onnxruntime build lacks it."""
    import onnxruntime as ort

    if "OpenVINOExecutionProvider" not in ort.get_available_providers():
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    ep_options = {"device_type": "CPU", "precision": "FP32", "num_of_threads": str(threads)}
    sess = ort.InferenceSession(str(path), options, providers=[("OpenVINOExecutionProvider", ep_options),
                                                               "CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda feeds: dict(zip(names, sess.run(None, feeds), strict=True))


def feeds_for(path: Path, batch: int, size: tuple[int, int]) -> dict[str, np.ndarray]:
    if size[0] != size[1]:
        raise SystemExit(f"{path.parent}: input {size[0]}x{size[1]}; this benchmark feeds square images only")
    feeds = {"pixels": image_batch(batch, size[0], seed=batch)}
    if path.name == "explainer.onnx":
        feeds["target"] = np.full(batch, -1, np.int64)  # each row's top-1, as a request without targets
    return feeds


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    scale = float(np.abs(reference).max())
    return float(np.abs(ours.astype(np.float64) - reference).max()) / (scale if scale > 0 else 1.0)


def spread(samples: list[float]) -> float:
    """(p90 - p10) / median of one runtime's samples: how noisy its median is."""
    deciles = statistics.quantiles(samples, n=10)
    return (deciles[-1] - deciles[0]) / statistics.median(samples)


def measure(folder: Path, graph: str, batch: int, threads: int, repeats: int, alone_repeats: int) -> list[dict]:
    info = json.loads((folder / "model.json").read_text())
    path = folder / graph
    feeds = feeds_for(path, batch, tuple(info["input_size"]))
    runners: dict[str, Runner] = {"ort": ort_runner(path, threads)}
    core = openvino_core()
    if core is not None:
        runners["openvino"] = openvino_runner(core, path, threads, precision="f32")
        runners["openvino-static"] = openvino_runner(core, path, threads, precision="f32", batch=batch)
        if openvino_default_precision(core) != "f32":
            runners["openvino-default"] = openvino_runner(core, path, threads, precision=None)
    ep = ort_openvino_ep_runner(path, threads)
    if ep is not None:
        runners["ort-openvino-ep"] = ep
    reference = runners["ort"](feeds)
    errors = {name: {output: relative_error(value, reference[output]) for output, value in run(feeds).items()}
              for name, run in runners.items()}
    times = interleaved({name: lambda run=run: run(feeds) for name, run in runners.items()}, repeats, warmup=3)
    alone = {}
    for name, run in runners.items():  # a short block each, to see what interleaving costs every side
        samples = []
        for _ in range(alone_repeats):
            start = time.perf_counter()
            run(feeds)
            samples.append(time.perf_counter() - start)
        alone[name] = median_ms(samples)
    base = median_ms(times["ort"])
    rows = []
    for name in runners:
        ms = median_ms(times[name])
        rows.append({"model": info["name"], "graph": graph, "batch": batch, "runtime": name, "ms": ms,
                     "ratio_to_ort": ms / base, "spread": spread(times[name]), "alone_ms": alone[name],
                     "max_rel_diff": errors[name]})
        shown = " ".join(f"{o} {errors[name][o]:.1e}" for o in SHOWN if o in errors[name])
        print(f"  {info['name']:<20} {graph:<15} b{batch} {name:<17} {ms:8.2f} ms ({ms / base:4.2f}x ort; "
              f"spread {rows[-1]['spread']:.0%}, alone {alone[name]:.2f} ms) | {shown}", flush=True)
    return rows


def runtime_versions() -> dict:
    import onnxruntime as ort

    out: dict[str, object] = {"onnxruntime_module": ort.__version__, "ort_providers": ort.get_available_providers()}
    core = openvino_core()
    if core is not None:
        import openvino

        out["openvino"] = openvino.get_version()
        out["openvino_cpu"] = core.get_property("CPU", "FULL_DEVICE_NAME")
        out["openvino_cpu_capabilities"] = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        out["openvino_default_precision"] = openvino_default_precision(core)
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| model | graph | batch | runtime | ms | vs ORT | logits | gradients | cam_gradcam |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        diffs = [f"{r['max_rel_diff'][o]:.1e}" if o in r["max_rel_diff"] else "–" for o in SHOWN]
        lines.append(f"| {r['model']} | {r['graph'].removesuffix('.onnx')} | {r['batch']} | {r['runtime']} | "
                     f"{r['ms']:.1f} | {r['ratio_to_ort']:.2f}× | {' | '.join(diffs)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the default model, batch 1, few repeats (seconds)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every runtime (default 2)")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--models", nargs="*", type=Path, help="model folders (default: efficientnet_lite0, resnet50)")
    parser.add_argument("--batches", nargs="*", type=int)
    parser.add_argument("--name", default="edge-runtimes",
                        help="results file bench/results/NAME.json (another name for a run from another venv)")
    args = parser.parse_args(argv)
    folders = args.models or ([DEFAULT_MODEL_DIR] if args.quick else [DEFAULT_MODEL_DIR, RESNET50_DIR])
    batches = args.batches or ([1] if args.quick else [1, 8])
    repeats = args.repeats or (5 if args.quick else 30)
    for folder in folders:
        if folder.resolve() == RESNET50_DIR.resolve():
            ensure_resnet50(folder)
        else:
            ensure_model(folder)
    versions = runtime_versions()
    print(f"edge runtimes ({args.threads} threads each, median of {repeats} interleaved runs; {versions})")
    load_before = os.getloadavg()
    rows = [row for folder in folders for graph in GRAPHS for batch in batches
            for row in measure(folder, graph, batch, args.threads, repeats, max(3, repeats // 3))]
    print(markdown(rows))
    payload = {"threads": args.threads, "repeats": repeats, "runtimes": versions, "load_average_before": load_before,
               "rows": rows}
    print(f"wrote {write_json(args.name + ('-quick' if args.quick else ''), payload)}")
    return payload


if __name__ == "__main__":
    main()
