"""What explainer.onnx adds to forward.onnx, in nodes and in time, for one or more exports side by side.

    python bench/graph_profile.py FOLDER [FOLDER ...] [--threads N] [--repeats R] [--batches 1 8]

Per model folder: node counts by op type (explainer minus forward), ONNX Runtime's own profile of
both graphs (time per op type, the ops the explainer adds, largest first), and, timed interleaved
in one process across every folder given (so an export before and after an exporter change can be
compared on equal terms): the forward, the explainer with all outputs, with logits only and with
Grad-CAM only (does ONNX Runtime skip the nodes an output does not need?), and the explainer after
ONNX Runtime's offline graph optimisation (ORT_ENABLE_EXTENDED, saved and reloaded). Sessions do not
spin, as the server's default. Each ratio to the forward is given three ways: of the median wall
times (the goal's measure), of the minimum wall times (the least disturbed call) and of the median
CPU time of the process (the work done, which waiting for a core on a shared machine does not
inflate). Results go to bench/results/graph_profile.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import image_batch, session, write_json  # noqa: E402

from onnxcam import contract  # noqa: E402


def node_counts(path: Path) -> collections.Counter:
    import onnx

    return collections.Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)


def added_nodes(folder: Path) -> dict:
    forward, explainer = node_counts(folder / contract.FORWARD_FILE), node_counts(folder / contract.EXPLAINER_FILE)
    added = {op: explainer[op] - forward.get(op, 0) for op in explainer if explainer[op] != forward.get(op, 0)}
    return {"forward": sum(forward.values()), "explainer": sum(explainer.values()),
            "added_by_op": dict(sorted(added.items(), key=lambda item: -item[1]))}


def feeds(batch: int, size: int, with_target: bool) -> dict:
    feed = {contract.INPUT_PIXELS: image_batch(batch, size)}
    if with_target:
        feed[contract.INPUT_TARGET] = np.full(batch, -1, np.int64)
    return feed


def profiled_us(path: Path, feed: dict, threads: int, runs: int = 30) -> dict[str, float]:
    """Mean microseconds per run spent in each op type, from ONNX Runtime's profiler."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "onnxcam-graph-profile")
    runner = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        runner.run(None, feed)
    trace = Path(runner.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    per_op: dict[str, float] = collections.defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"] / runs
    return dict(per_op)


def profile(folder: Path, threads: int, size: int) -> dict:
    forward = profiled_us(folder / contract.FORWARD_FILE, feeds(1, size, False), threads)
    explainer = profiled_us(folder / contract.EXPLAINER_FILE, feeds(1, size, True), threads)
    added = {op: explainer[op] - forward.get(op, 0.0) for op in explainer}
    return {"forward_us": sum(forward.values()), "explainer_us": sum(explainer.values()),
            "added_us_by_op": dict(sorted(((op, round(us, 1)) for op, us in added.items() if us > 0),
                                          key=lambda item: -item[1]))}


def offline_optimised(path: Path, directory: Path) -> Path:
    """The graph as ONNX Runtime's ORT_ENABLE_EXTENDED level rewrites it, saved (may hold contrib ops)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(directory / path.name)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return directory / path.name


def interleaved_wall_and_cpu(functions: dict, repeats: int, warmup: int = 2) -> dict[str, dict[str, float]]:
    """Round-robin timing as common.interleaved, keeping per call the wall time and the process's CPU time
    (all threads): on a shared machine the wall time waits for cores, the CPU time is the work done;
    the minimum wall time is the least disturbed call. Milliseconds."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    wall: dict[str, list[float]] = {name: [] for name in functions}
    cpu: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            function()
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start)
    return {name: {"median": statistics.median(wall[name]) * 1e3, "min": min(wall[name]) * 1e3,
                   "cpu_median": statistics.median(cpu[name]) * 1e3} for name in functions}


def timings(folders: list[Path], threads: int, repeats: int, batch: int, scratch: Path) -> dict:
    functions = {}
    for index, folder in enumerate(folders):
        size = json.loads((folder / contract.MODEL_JSON).read_text())["input_size"][0]
        plain, explain = feeds(batch, size, False), feeds(batch, size, True)
        forward = session(folder / contract.FORWARD_FILE, threads)
        explainer = session(folder / contract.EXPLAINER_FILE, threads)
        optimised_dir = scratch / str(index)
        optimised_dir.mkdir(exist_ok=True)
        optimised = session(offline_optimised(folder / contract.EXPLAINER_FILE, optimised_dir), threads)
        key = f"{index}:{folder.name}"
        functions.update({
            f"{key} forward": lambda s=forward, f=plain: s.run([contract.OUTPUT_LOGITS], f),
            f"{key} explainer": lambda s=explainer, f=explain: s.run(None, f),
            f"{key} explainer logits only": lambda s=explainer, f=explain: s.run([contract.OUTPUT_LOGITS], f),
            f"{key} explainer gradcam only": lambda s=explainer, f=explain: s.run(["cam_gradcam"], f),
            f"{key} explainer offline-optimised": lambda s=optimised, f=explain: s.run(None, f),
        })
    times = interleaved_wall_and_cpu(functions, repeats)
    rows = []
    for index, folder in enumerate(folders):
        key = f"{index}:{folder.name}"
        base = times[f"{key} forward"]
        row = {"folder": str(folder), "batch": batch, "forward_ms": base["median"],
               "explainer_ms": times[f"{key} explainer"]["median"], "forward_min_ms": base["min"],
               "forward_cpu_ms": base["cpu_median"]}
        for variant in ("explainer", "explainer logits only", "explainer gradcam only",
                        "explainer offline-optimised"):
            name = variant.replace(" ", "_").replace("-", "_")
            measured = times[f"{key} {variant}"]
            row[f"{name}_ratio"] = measured["median"] / base["median"]
            row[f"{name}_min_ratio"] = measured["min"] / base["min"]
            row[f"{name}_cpu_ratio"] = measured["cpu_median"] / base["cpu_median"]
        rows.append(row)
        print(f"  batch {batch} {key:<28} forward {base['median']:7.2f} ms (min {base['min']:6.2f}) | explainer "
              f"{row['explainer_ms']:7.2f} ms: median {row['explainer_ratio']:.3f}x, min "
              f"{row['explainer_min_ratio']:.3f}x, cpu {row['explainer_cpu_ratio']:.3f}x | logits only "
              f"{row['explainer_logits_only_ratio']:.3f}x (cpu {row['explainer_logits_only_cpu_ratio']:.3f}x) | "
              f"gradcam only {row['explainer_gradcam_only_ratio']:.3f}x (cpu "
              f"{row['explainer_gradcam_only_cpu_ratio']:.3f}x) | offline-optimised "
              f"{row['explainer_offline_optimised_ratio']:.3f}x (cpu "
              f"{row['explainer_offline_optimised_cpu_ratio']:.3f}x)", flush=True)
    return {"rows": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--no-profile", action="store_true", help="skip ONNX Runtime's per-op profile")
    parser.add_argument("--name", default="graph_profile", help="results file name under bench/results/")
    args = parser.parse_args(argv)
    print(f"graph profile ({args.threads} threads, {args.repeats} interleaved runs, "
          f"load average {os.getloadavg()[0]:.2f})")
    models = []
    for folder in args.folders:
        size = json.loads((folder / contract.MODEL_JSON).read_text())["input_size"][0]
        entry = {"folder": str(folder), "nodes": added_nodes(folder)}
        if not args.no_profile:
            entry["profile_batch_1"] = profile(folder, args.threads, size)
        models.append(entry)
        print(f"  {folder}: {entry['nodes']['forward']} forward nodes, {entry['nodes']['explainer']} explainer "
              f"nodes; added {entry['nodes']['added_by_op']}")
        if "profile_batch_1" in entry:
            print(f"    profiled at batch 1, us added by op: {entry['profile_batch_1']['added_us_by_op']}")
    with tempfile.TemporaryDirectory() as scratch:
        runs = [timings(args.folders, args.threads, args.repeats, batch, Path(scratch)) for batch in args.batches]
    payload = {"threads": args.threads, "repeats": args.repeats, "load_average_after": os.getloadavg(),
               "models": models,
               "timings": [row for run in runs for row in run["rows"]]}
    print(f"wrote {write_json(args.name, payload)}")
    return payload


if __name__ == "__main__":
    main()
