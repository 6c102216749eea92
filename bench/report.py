"""The README's performance tables, rendered from the latest full results in bench/results/.

    python bench/report.py            # markdown on stdout, to paste into the README

Why: the tables in the README are the figures people quote; rendering them from the JSON files the
benchmarks wrote keeps them from drifting away from what was measured.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def machine_line(machine: dict) -> str:
    return (f"_{machine['cpu']}, {machine['cores']} cores, onnxruntime {machine.get('onnxruntime')}, torch "
            f"{machine.get('torch', '–')}._")


def overhead_tables(data: dict) -> str:
    lines = [machine_line(data["machine"]), "",
             "| model | batch | forward.onnx ms | explainer.onnx ms | ratio | + normalise, upsample all maps ms "
             "| ratio |", "|---|---|---|---|---|---|---|"]
    for r in data["overhead"]:
        lines.append(f"| {r['model']} | {r['batch']} | {r['forward_ms']:.1f} | {r['explain_ms']:.1f} | "
                     f"{r['explain_ratio']:.2f}× | {r['explain_post_ms']:.1f} | {r['explain_post_ratio']:.2f}× |")
    if data.get("peer"):
        lines += ["", "| model | method | ours ms | pytorch-grad-cam ms | speedup | max map difference "
                  "| max raw map difference (relative) |", "|---|---|---|---|---|---|---|"]
        for r in data["peer"]:
            raw = r.get("max_rel_raw_map_difference")
            lines.append(f"| {r['model']} | {r['method']} | {r['ours_ms']:.1f} | {r['pytorch_grad_cam_ms']:.1f} | "
                         f"{r['speedup']:.1f}× | {r['max_abs_map_difference']:.1e} | "
                         f"{'–' if raw is None else f'{raw:.1e}'} |")
    return "\n".join(lines)


def server_load_tables(data: dict) -> str:
    lines = [machine_line(data["machine"]), "",
             "| batching | N | req/s | p50 ms | p95 ms | p99 ms | mean batch | server CPU (cores) | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in data["runs"]:
        lines.append(f"| {r['batching']} | {r['clients']} | {r['throughput_rps']:.1f} | {r['p50_ms']:.1f} | "
                     f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_batch_rows']:.2f} | "
                     f"{r['server_cpu_cores']:.2f} | {r['errors']} |")
    overhead = data["overhead"]
    lines += ["", f"gRPC against in-process explain at N = 1 ({overhead['calls']} interleaved calls): p50 "
              f"{overhead['grpc_p50_ms']:.2f} ms against {overhead['in_process_p50_ms']:.2f} ms, "
              f"**{overhead['overhead_p50_ms']:+.2f} ms**."]
    memory = data.get("memory")
    if memory:
        trend = memory.get("trend") or {}
        text = (f"Memory at N = {memory['clients']} for {memory['duration_s']:.0f} s ({memory['requests']} requests): "
                f"RSS {memory['rss_start_mib']:.0f} MiB at the start, {memory['rss_end_mib']:.0f} MiB at the end")
        if trend:
            text += (f"; after {trend['warmup_s']:.0f} s of warm-up, {trend['rss_after_warmup_mib']:.0f} → "
                     f"{trend['rss_final_mib']:.0f} MiB (**{trend['growth_mib']:+.1f} MiB**; by third: "
                     + ", ".join(f"{g:+.1f}" for g in trend["growth_per_third_mib"]) + ")")
        lines += ["", text + "."]
    return "\n".join(lines)


def batch_scaling_table(data: dict) -> str:
    lines = [machine_line(data["machine"]) + f" `{data['model']}` explainer.onnx.", "",
             "| spinning | batch | ms per call | ms per row | row cost vs batch 1 | predicted server gain |",
             "|---|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {'on' if r['spinning'] else 'off'} | {r['batch']} | {r['call_ms']:.1f} | "
                     f"{r['ms_per_row']:.1f} | {1 / r['gain_vs_batch_1']:.2f} | {r['predicted_server_gain']:.2f}× |")
    work = ", ".join(f"{name} {ms:.2f} ms" for name, ms in data["per_request_ms"].items())
    lines += ["", f"Per-request work outside the session call: {work}."]
    return "\n".join(lines)


def render_table(data: dict) -> str:
    load = data["load_average_before"]
    lines = [machine_line(data["machine"]) + f" Load average {load[0]:.1f} at the start, "
             f"{data['load_average_after'][0]:.1f} at the end; median of {data['repeats']} interleaved runs.", "",
             "| picture | background | PNGs | before ms/MP | zlib ms/MP | ISA-L ms/MP | speedup "
             "| CPU ms/MP before → now | goal ≤ 10 (CPU) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        ms, cpu = r["ms_per_mpixel"], r["cpu_ms_per_mpixel"]
        isal = f"{ms['isal']:.1f}" if "isal" in ms else "–"
        lines.append(f"| {r['mpixels']:.2f} MP | {r['background']} | {r['kind']} | {ms['old']:.1f} | "
                     f"{ms['zlib']:.1f} | {isal} | {r['speedup']:.1f}× | {cpu['old']:.1f} → "
                     f"{cpu[data['default_compressor']]:.1f} | {'met' if r['goal_met'] else 'missed'} |")
    probe = data["probe"]
    stages = data["stages_ms_per_mpixel"]
    lines += ["", "The server's cost probe (256 × 256, black, both PNGs), ms/MP: "
              + ", ".join(f"{name} {value:.1f}" for name, value in probe["ms_per_mpixel"].items()) + "; CPU "
              + ", ".join(f"{name} {value:.1f}" for name, value in probe.get("cpu_ms_per_mpixel", {}).items())
              + ".", "",
              "| stage at 1 MP, photo | ms/MP | CPU ms/MP |", "|---|---|---|"]
    lines += [f"| {name} | {value['wall']:.1f} | {value['cpu']:.1f} |" for name, value in stages.items()]
    return "\n".join(lines)


def server_overhead_table(data: dict) -> str:
    s = data["summary"]
    lines = [machine_line(data["machine"]) + f" `{data['model']}`, N = {data['clients']}, {data['pairs']} pairs of "
             f"{data['window_s']:g} s windows.", "",
             "| pair | server req/s | rows per call | bare session rows/s | ratio | server CPU ms per request "
             "| bare CPU ms per row | CPU ratio | load average |", "|---|---|---|---|---|---|---|---|---|"]
    for i, w in enumerate(data["windows"], 1):
        served, bare = w["server"], w["bare"]
        calls = sum(count / int(size) for size, count in served["batch_rows"].items())
        served_ms = served["server_cpu_cores"] * served["duration_s"] * 1000.0 / served["requests"]
        bare_ms = bare["cpu_cores"] * bare["duration_s"] * 1000.0 / bare["rows"]
        lines.append(f"| {i} | {served['throughput_rps']:.1f} | {served['requests'] / calls:.2f} | "
                     f"{bare['rows_per_s']:.1f} | {w['ratio']:.2f}× | {served_ms:.1f} | {bare_ms:.1f} | "
                     f"{bare_ms / served_ms:.2f}× | {w['load_average'][0]:.1f} |")
    verdict = {name: "met" if goal["met"] else "missed" for name, goal in data["goal"].items()}
    lines += ["", f"All windows: {s['server_rps']:.1f} req/s against {s['bare_rows_per_s']:.1f} rows/s, "
              f"**{s['ratio']:.2f}×** (goal ≥ 0.8×: {verdict['ratio>=0.8']}); CPU {s['server_cpu_ms_per_request']:.1f} "
              f"ms per request against {s['bare_cpu_ms_per_row']:.1f} ms per bare row, **{s['cpu_ratio']:.2f}×** "
              f"({verdict['cpu_ratio>=0.8']}); load generator {s['client_cpu_cores']:.2f} cores."]
    return "\n".join(lines)


def main() -> int:
    sections = [("Explanation overhead and pytorch-grad-cam (overhead.json)", "overhead", overhead_tables),
                ("Server under load (server-load.json)", "server-load", server_load_tables),
                ("Batch scaling (batch-scaling.json)", "batch-scaling", batch_scaling_table),
                ("Rendering heatmaps and overlays (render.json)", "render", render_table),
                ("Server overhead (server-overhead.json)", "server-overhead", server_overhead_table)]
    for title, name, render in sections:
        data = load(name)
        print(f"### {title}\n")
        print(render(data) if data else f"_no bench/results/{name}.json yet: run bench/{name.replace('-', '_')}.py_")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
