"""The explainer server under concurrent load: throughput, tail latency, batch sizes, errors and memory.

    python bench/server_load.py [--quick] [--model-dir DIR] [--channels per-client|shared]

Why: a latency figure for one sequential client (bench/server_latency.py) says nothing about what
dynamic batching buys when many clients call at once, nor whether the server keeps its memory and
answers every request under pressure. This script starts ``onnxcam serve`` as a separate process on
127.0.0.1, twice (default options = batching on, then ``--max-batch 1`` = batching off), and drives it
with N closed-loop client threads (N = 1, 4, 16, 64; quick: 1, 4) for a fixed time each. Every request
is the bundled JPEG (onnxcam/demo_photos/chelsea.jpg) asking for Grad-CAM, raw map only.

Reported per run: req/s, client-side p50/p95/p99 latency, the histogram of ``timing.batch_rows``,
errors by status code, and the CPU used by the load generator (this process: client threads plus
gRPC's own threads) and by the server, in cores; when the client uses about one core (the GIL) or
both together use every core, the load generator, not the server, may bound the figures.
Overhead: at N = 1, the same request alternately through gRPC and through the server's own Pipeline
loaded in this process with the same ServerConfig (same batcher, same sessions code, same batching delay),
so the difference is protobuf plus the loopback round trip plus gRPC's thread hand-offs.
Memory (full mode only): server VmRSS every 5 s of a 2-minute run at N = 16, batching on; the goal
is judged on the growth after a warm-up (medians over windows, see memory_trend).

Quick mode (CI): N = 1 and 4, 3 s each, no memory run; timings are never asserted, the exit status
is non-zero only when a request failed (or the server would not start).
Without --model-dir the default model (models/efficientnet_lite0) is used, built first if missing.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_MODEL_DIR, ensure_model, interleaved, write_json  # noqa: E402

from onnxcam.client import MAX_RECEIVE_BYTES, MAX_SEND_BYTES, ExplainerClient, build_request  # noqa: E402
from onnxcam.proto import explainer_pb2 as pb  # noqa: E402

PHOTO = ROOT / "onnxcam" / "demo_photos" / "chelsea.jpg"
RPC_TIMEOUT_S = 60.0
#: Goals (see the docstring): gRPC overhead at N = 1, batching gain at N = 16, memory growth.
OVERHEAD_GOAL_MS = 3.0
BATCHING_GOAL = 1.3
BATCHING_AT = 16
MEMORY_N = 16
#: "Flat": after the warm-up, RSS grows by at most this many MiB, or this fraction of the start,
#: whichever is larger. Warm-up: the first quarter of the run, at most a minute, while the allocator
#: and ONNX Runtime's arena grow to the batch shapes the load produces (a step, not a leak).
MEMORY_SLACK_MIB = 8.0
MEMORY_SLACK_FRACTION = 0.05
MEMORY_WARMUP_S = 60.0


def memory_trend(samples: list[tuple[float, float]], duration_s: float) -> dict[str, Any]:
    """RSS after the warm-up and at the end, each the median of a window of samples (RSS dips for a
    moment when the allocator returns a block, so single samples are noisy), and the growth per third."""
    warmup = min(MEMORY_WARMUP_S, duration_s / 4)
    window = max(15.0, duration_s / 10)
    after = [(t, r) for t, r in samples if t >= warmup]
    if len(after) < 2:
        return {}

    def median_between(start: float, end: float) -> float:
        return statistics.median(r for t, r in after if start <= t <= end)

    span = after[-1][0] - warmup
    thirds = [warmup + span * i / 3 for i in range(4)]
    level = [median_between(max(warmup, x - window / 2), x + window / 2) for x in thirds]
    level[0], level[-1] = median_between(warmup, warmup + window), median_between(after[-1][0] - window, after[-1][0])
    return {"warmup_s": warmup, "window_s": window, "rss_after_warmup_mib": level[0], "rss_final_mib": level[-1],
            "growth_mib": level[-1] - level[0], "growth_per_third_mib": [b - a for a, b in itertools.pairwise(level)]}


# ---------------------------------------------------------------------------------------------- server process


def rss_mib(pid: int) -> float:
    """VmRSS of a process in MiB: the figure the memory goal is about."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """``python -m onnxcam.cli serve`` on 127.0.0.1, port picked by the server and read from its log;
    stderr is drained on a thread so that the server never blocks on a full pipe."""

    def __init__(self, models: Path, extra: list[str], start_limit_s: float = 600.0) -> None:
        command = [sys.executable, "-m", "onnxcam.cli", "serve", "--models", str(models), "--host", "127.0.0.1",
                   "--port", "0", *extra]
        self.command = command
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        self.port = self._wait_for_port(start_limit_s)
        self.address = f"127.0.0.1:{self.port}"
        self.pid = self.process.pid
        self.exit_code: int | None = None

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def _wait_for_port(self, limit_s: float) -> int:
        stop = time.monotonic() + limit_s
        while time.monotonic() < stop:
            try:
                line = self._queue.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                break
            if match := re.search(r"serving .* on 127\.0\.0\.1:(\d+)", line):
                return int(match.group(1))
        self.stop()
        raise RuntimeError("the server did not start; its log:\n" + "".join(self.lines[-30:]))

    def stop(self) -> int | None:
        """SIGTERM (the server drains, then exits 0); SIGKILL only when it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.exit_code = self.process.returncode
        return self.exit_code

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------- load generator


@dataclass
class ClientRecord:
    """What one client thread saw; merged after the run (no lock on the hot path)."""

    latencies: list[float] = field(default_factory=list)
    batch_rows: collections.Counter = field(default_factory=collections.Counter)
    server_total_ms: list[float] = field(default_factory=list)
    errors: collections.Counter = field(default_factory=collections.Counter)


def make_clients(address: str, n: int, mode: str) -> list[ExplainerClient]:
    """One channel shared by all threads, or one channel (and TCP connection) per thread. A local
    subchannel pool is needed for the latter: gRPC Python otherwise reuses one connection for
    channels with the same target and options."""
    if mode == "shared":
        return [ExplainerClient(address, timeout=RPC_TIMEOUT_S, retry=False)] * n
    options = [("grpc.max_send_message_length", MAX_SEND_BYTES),
               ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES), ("grpc.use_local_subchannel_pool", 1)]
    return [ExplainerClient(address, timeout=RPC_TIMEOUT_S, channel=grpc.insecure_channel(address, options=options))
            for _ in range(n)]


def percentile_ms(samples: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(samples) * 1000.0, q)) if samples else None


def run_load(server: ServerProcess, request: pb.ExplainRequest, n: int, duration_s: float, channels: str,
             rss_every_s: float = 0.0) -> dict[str, Any]:
    """N closed-loop clients for ``duration_s``: each sends its next request when the last came back.
    Every thread stops by itself at the deadline (a request in flight then still completes)."""
    clients = make_clients(server.address, n, channels)
    records = [ClientRecord() for _ in range(n)]
    clock: dict[str, float] = {}

    def started() -> None:  # runs once, when every client is connected and warm
        clock["start"] = time.perf_counter()
        clock["client_cpu"] = time.process_time()
        clock["server_cpu"] = cpu_seconds(server.pid)
        clock["rss_start"] = rss_mib(server.pid)

    barrier = threading.Barrier(n, action=started)

    def call(client: ExplainerClient, record: ClientRecord) -> None:
        begin = time.perf_counter()
        try:
            response = client.explain_request(request)
        except grpc.RpcError as error:
            code = error.code() if callable(getattr(error, "code", None)) else None
            record.errors[code.name if code else "UNKNOWN"] += 1
            return
        record.latencies.append(time.perf_counter() - begin)
        record.batch_rows[response.timing.batch_rows] += 1
        record.server_total_ms.append(response.timing.total_ms)

    def worker(index: int) -> None:
        client, record = clients[index], records[index]
        warm = ClientRecord()
        call(client, warm)  # opens the connection; not counted, except for errors
        record.errors.update(warm.errors)
        barrier.wait()
        stop_at = clock["start"] + duration_s
        while time.perf_counter() < stop_at:
            call(client, record)

    threads = [threading.Thread(target=worker, args=(i,), name=f"load-{i}") for i in range(n)]
    for thread in threads:
        thread.start()
    rss_samples: list[tuple[float, float]] = []
    if rss_every_s:
        while "start" not in clock:
            time.sleep(0.01)
        next_sample = 0.0
        while any(t.is_alive() for t in threads):
            now = time.perf_counter() - clock["start"]
            if now >= next_sample:
                rss_samples.append((round(now, 1), round(rss_mib(server.pid), 1)))
                next_sample += rss_every_s
            time.sleep(0.1)
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - clock["start"]
    client_cpu = time.process_time() - clock["client_cpu"]
    server_cpu = cpu_seconds(server.pid) - clock["server_cpu"]
    rss_end = rss_mib(server.pid)
    for client in {id(c): c for c in clients}.values():
        client.close()

    latencies = [x for r in records for x in r.latencies]
    batch_rows: collections.Counter = collections.Counter()
    errors: collections.Counter = collections.Counter()
    for r in records:
        batch_rows.update(r.batch_rows)
        errors.update(r.errors)
    server_ms = [x for r in records for x in r.server_total_ms]
    return {
        "clients": n, "duration_s": round(wall, 2), "requests": len(latencies),
        "throughput_rps": len(latencies) / wall,
        "p50_ms": percentile_ms(latencies, 50), "p95_ms": percentile_ms(latencies, 95),
        "p99_ms": percentile_ms(latencies, 99),
        "server_total_p50_ms": statistics.median(server_ms) if server_ms else None,
        "batch_rows": {int(k): v for k, v in sorted(batch_rows.items())},
        "mean_batch_rows": (sum(k * v for k, v in batch_rows.items()) / max(sum(batch_rows.values()), 1)),
        "errors": sum(errors.values()), "errors_by_code": dict(errors),
        "client_cpu_cores": client_cpu / wall, "server_cpu_cores": server_cpu / wall,
        "rss_start_mib": clock["rss_start"], "rss_end_mib": rss_end,
        **({"rss_samples": rss_samples} if rss_samples else {}),
    }


# ---------------------------------------------------------------------------------------------- overhead


def measure_overhead(server: ServerProcess, model_dir: Path, request: pb.ExplainRequest, extra: list[str],
                     calls: int) -> dict[str, Any]:
    """N = 1: gRPC against the server process vs the server's Pipeline in this process, interleaved
    call by call so that noise from the shared machine hits both alike."""
    from server.cli import config_from_args, register
    from server.errors import RequestError
    from server.pipeline import Pipeline
    from server.repository import load_repository

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--models", str(model_dir), *extra])
    config = config_from_args(args)  # exactly the server's settings (max delay, threads...)
    repository = load_repository(model_dir, config)
    pipeline = Pipeline(repository, config)
    errors: collections.Counter = collections.Counter()
    try:
        with ExplainerClient(server.address, timeout=RPC_TIMEOUT_S, retry=False) as client:
            def over_grpc() -> None:
                try:
                    client.explain_request(request)
                except grpc.RpcError as error:
                    errors[error.code().name] += 1

            def in_process() -> None:
                try:
                    pipeline.explain(request)
                except RequestError as error:
                    errors[f"in-process {error.code.name}"] += 1

            times = interleaved({"in_process": in_process, "grpc": over_grpc},
                                repeats=calls, warmup=5)
    finally:
        repository.close()
    p50 = {name: statistics.median(t) * 1000.0 for name, t in times.items()}
    return {"calls": calls, "in_process": "server.pipeline.Pipeline.explain in the load generator's process, "
                                          "same ServerConfig as the server",
            "in_process_p50_ms": p50["in_process"], "grpc_p50_ms": p50["grpc"],
            "in_process_p95_ms": percentile_ms(times["in_process"], 95),
            "grpc_p95_ms": percentile_ms(times["grpc"], 95),
            "overhead_p50_ms": p50["grpc"] - p50["in_process"], "errors": sum(errors.values()),
            "errors_by_code": dict(errors)}


# ---------------------------------------------------------------------------------------------- main


def shown_path(path: Path) -> str:
    """A path as the results file records it: relative to the repository, else just its name."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return path.name


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(runs: list[dict[str, Any]]) -> None:
    print(f"{'batching':<9s} {'N':>3s} {'req/s':>7s} {'p50 ms':>7s} {'p95 ms':>7s} {'p99 ms':>7s} {'errors':>6s} "
          f"{'cli cpu':>7s} {'srv cpu':>7s} {'mean b':>6s}  batch rows: count")
    for r in runs:
        histogram = " ".join(f"{k}:{v}" for k, v in r["batch_rows"].items())
        print(f"{r['batching']:<9s} {r['clients']:3d} {r['throughput_rps']:7.1f} {fmt(r['p50_ms']):>7s} "
              f"{fmt(r['p95_ms']):>7s} {fmt(r['p99_ms']):>7s} {r['errors']:6d} {r['client_cpu_cores']:7.2f} "
              f"{r['server_cpu_cores']:7.2f} {r['mean_batch_rows']:6.2f}  {histogram}")


def verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "MISSED")


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; the returned payload is also written to bench/results/server-load[-quick].json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 1, 4 for 3 s each, no memory run (CI)")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR,
                        help="a model folder, or a folder of them (default: models/efficientnet_lite0)")
    parser.add_argument("--model", help="model name when --model-dir holds several (default: the first)")
    parser.add_argument("--clients", type=int, nargs="+", help="concurrency levels (default 1 4 16 64; quick 1 4)")
    parser.add_argument("--duration", type=float, help="seconds per level (default 15; quick 3)")
    parser.add_argument("--memory-s", type=float, help="memory run length in seconds (default 120; quick 0 = none)")
    parser.add_argument("--overhead-calls", type=int, help="interleaved N = 1 calls per path (default 300; quick 30)")
    parser.add_argument("--channels", choices=("per-client", "shared"), default="per-client",
                        help="one gRPC channel per client thread (default) or one shared by all")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra `onnxcam serve` option for both servers, e.g. --server-arg=--workers=16")
    args = parser.parse_args(argv)
    levels = args.clients or ([1, 4] if args.quick else [1, 4, 16, 64])
    duration = args.duration or (3.0 if args.quick else 15.0)
    memory_s = args.memory_s if args.memory_s is not None else (0.0 if args.quick else 120.0)
    overhead_calls = args.overhead_calls or (30 if args.quick else 300)

    ensure_model(args.model_dir)
    image = PHOTO.read_bytes()
    began = time.perf_counter()
    payload: dict[str, Any] = {
        "mode": "quick" if args.quick else "full", "model_dir": shown_path(args.model_dir), "image": PHOTO.name,
        "request": "Explain, methods=[gradcam], raw=True (raw map only)", "clients": levels,
        "duration_s": duration, "channels": args.channels,
        "load_generator": "threads in one Python process, closed loop, "
                          + ("one shared channel" if args.channels == "shared" else "one channel per thread"),
        "server_extra_args": args.server_arg, "load_average_before": load_average(), "runs": [],
    }
    for batching, extra in (("on", []), ("off", ["--max-batch", "1"])):
        server_args = [*args.server_arg, *extra]
        with ServerProcess(args.model_dir, server_args) as server:
            rss_ready = rss_mib(server.pid)
            with ExplainerClient(server.address, timeout=RPC_TIMEOUT_S, retry=False) as client:
                names = [m.name for m in client.list_models()]
            model = args.model or names[0]
            request = build_request(image, model, methods=["gradcam"], raw=True)
            payload["model"] = model
            payload.setdefault("server", {})[batching] = {"args": server.command[3:], "rss_ready_mib": rss_ready}
            for n in levels:
                result = run_load(server, request, n, duration, args.channels)
                result["batching"] = batching
                payload["runs"].append(result)
                print(f"  batching {batching:3s} N={n:<3d} {result['throughput_rps']:7.1f} req/s, "
                      f"p50 {fmt(result['p50_ms'])} ms, errors {result['errors']}", flush=True)
            if batching == "on":
                payload["overhead"] = measure_overhead(server, args.model_dir, request, args.server_arg,
                                                       overhead_calls)
                if memory_s:
                    print(f"  memory run: N={MEMORY_N}, {memory_s:g} s...", flush=True)
                    memory = run_load(server, request, MEMORY_N, memory_s, args.channels, rss_every_s=5.0)
                    memory["batching"] = batching
                    payload["memory"] = memory
        payload["server"][batching]["exit_code"] = server.exit_code
    payload["load_average_after"] = load_average()
    payload["elapsed_s"] = round(time.perf_counter() - began, 1)

    # Goals.
    runs = {(r["batching"], r["clients"]): r for r in payload["runs"]}
    overhead = payload["overhead"]
    on, off = runs.get(("on", BATCHING_AT)), runs.get(("off", BATCHING_AT))
    speedup = on["throughput_rps"] / off["throughput_rps"] if on and off and off["throughput_rps"] else None
    memory = payload.get("memory")
    trend = memory_trend(memory.get("rss_samples", []), memory["duration_s"]) if memory else {}
    if memory:
        memory["trend"] = trend
    growth = trend.get("growth_mib")
    slack = max(MEMORY_SLACK_MIB, MEMORY_SLACK_FRACTION * trend["rss_after_warmup_mib"]) if trend else None
    errors = (sum(r["errors"] for r in payload["runs"]) + overhead["errors"] + (memory["errors"] if memory else 0))
    payload["errors"] = errors
    payload["speedup"] = {n: runs[("on", n)]["throughput_rps"] / runs[("off", n)]["throughput_rps"]
                          for n in levels if runs[("off", n)]["throughput_rps"]}
    payload["goals"] = {
        "overhead_p50_ms<=3": {"value": overhead["overhead_p50_ms"],  # failed calls make it meaningless
                               "met": None if overhead["errors"] else overhead["overhead_p50_ms"] <= OVERHEAD_GOAL_MS},
        f"batching_speedup_at_N{BATCHING_AT}>=1.3": {"value": speedup,
                                                     "met": None if speedup is None else speedup >= BATCHING_GOAL},
        "no_errors": {"value": errors, "met": errors == 0},
        "memory_flat": {"value": growth, "slack_mib": slack, "met": None if growth is None else growth <= slack},
    }
    saturated = [f"{r['batching']}/N={r['clients']}" for r in payload["runs"]
                 if r["client_cpu_cores"] >= 0.85 or r["client_cpu_cores"] + r["server_cpu_cores"]
                 >= 0.9 * (os.cpu_count() or 1)]
    payload["cpu_bound_runs"] = saturated

    print(f"\nserver load: model {payload['model']}, {PHOTO.name}, Grad-CAM raw, {duration:g} s per level, "
          f"{payload['load_generator']}; {os.cpu_count()} cores, load average {payload['load_average_before']} "
          f"before, {payload['load_average_after']} after; {payload['elapsed_s']} s in all")
    print_table(payload["runs"])
    print("throughput, batching on / off: " + ", ".join(f"N={n} {s:.2f}x" for n, s in payload["speedup"].items()))
    print(f"N=1 overhead ({overhead['calls']} interleaved calls): gRPC p50 {overhead['grpc_p50_ms']:.2f} ms, "
          f"in-process p50 {overhead['in_process_p50_ms']:.2f} ms -> {overhead['overhead_p50_ms']:.2f} ms")
    print(f"server RSS after load: {payload['server']['on']['rss_ready_mib']:.1f} MiB (batching on), "
          f"{payload['server']['off']['rss_ready_mib']:.1f} MiB (off)")
    if memory:
        print(f"memory run N={MEMORY_N} {memory['duration_s']:g} s: RSS {memory['rss_start_mib']:.1f} at the start, "
              f"{memory['rss_end_mib']:.1f} MiB at the end; {memory['throughput_rps']:.1f} req/s, "
              f"errors {memory['errors']}")
        if trend:
            print(f"  after {trend['warmup_s']:g} s of warm-up ({trend['window_s']:g} s medians): "
                  f"{trend['rss_after_warmup_mib']:.1f} -> {trend['rss_final_mib']:.1f} MiB ({growth:+.1f} MiB, slack "
                  f"{slack:.1f}); per third: " + ", ".join(f"{g:+.1f}" for g in trend["growth_per_third_mib"]))
    if saturated:
        print("CPU-bound (client >= 0.85 core or client + server >= 90% of the cores): " + ", ".join(saturated))
    for name, goal in payload["goals"].items():
        value = goal["value"]
        print(f"goal {name}: {verdict(goal['met'])} ({fmt(value, 2) if isinstance(value, float) else value})")
    path = write_json("server-load-quick" if args.quick else "server-load", payload)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    sys.exit(0 if main()["errors"] == 0 else 1)
