"""``onnxcam serve --metrics-port 0 --log-format json`` as a real process: the Prometheus endpoint is
scraped over HTTP after real calls (requests by model, method and code; stage latencies; batch sizes;
queue depth; requests in flight; RPCs by code), and every stderr line is parsed as JSON."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from test_server_process import LogReader

from onnxcam.client import ExplainerClient

prometheus_parser = pytest.importorskip("prometheus_client.parser")

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "observability-token-5d8e1f0a"
PIXELS = np.zeros((3, 32, 32), np.float32)


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics, keyed by (name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in prometheus_parser.text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class JsonLog(LogReader):
    """The server's stderr, each line parsed as one JSON object (a line that is not fails the test)."""

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.lines if line.strip()]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_metrics_endpoint_and_json_logs_of_a_real_server(tiny_model_dir, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    # Batches of 2 rows that wait (almost) forever to fill: the first request stays queued and in flight
    # until a second one joins it, so the gauges can be read while it waits.
    process = subprocess.Popen(
        [sys.executable, "-m", "onnxcam.cli", "serve", "--models", str(tiny_model_dir), "--host", "127.0.0.1",
         "--port", "0", "--metrics-port", "0", "--log-format", "json", "--auth-token-file", str(tokens),
         "--max-batch", "2", "--max-delay-ms", "600000", "--intra-op-threads", "1", "--grace-s", "5"],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        text=True)
    try:
        log = JsonLog(process.stderr)
        port = log.expect(r"serving tiny on 127\.0\.0\.1:(\d+)").group(1)
        metrics_port = int(log.expect(r"Prometheus metrics on http://127\.0\.0\.1:(\d+)/metrics").group(1))
        with (ExplainerClient(f"127.0.0.1:{port}", timeout=60, token=TOKEN) as good,
              ExplainerClient(f"127.0.0.1:{port}", timeout=60, token="not-" + TOKEN, retry=False) as bad,
              ThreadPoolExecutor(1) as pool):
            first = pool.submit(good.explain, PIXELS, "tiny", methods=["gradcam"], request_id="first-call")
            deadline = time.monotonic() + 60
            while value(samples := scrape(metrics_port), "onnxcam_queue_rows", model="tiny", graph="explainer") < 1:
                assert time.monotonic() < deadline, "the first request never showed in the queue"
                time.sleep(0.05)
            assert value(samples, "onnxcam_requests_in_flight") == 1
            second = good.explain(PIXELS, "tiny", methods=["gradcam", "layercam"])  # fills the batch: both run
            assert first.result().heatmaps and len(second.heatmaps) == 2
            with pytest.raises(grpc.RpcError) as unknown:
                good.explain(PIXELS, "no-such-model-" + "x" * 300)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as refused:
                bad.list_models()
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert good.health() == "SERVING"
        samples = scrape(metrics_port)
        assert value(samples, "onnxcam_requests_total", model="tiny", method="gradcam", code="OK") == 2
        assert value(samples, "onnxcam_requests_total", model="tiny", method="layercam", code="OK") == 1
        assert value(samples, "onnxcam_requests_total", model="unknown", method="default", code="NOT_FOUND") == 1
        for stage in ("decode", "preprocess", "queue", "inference", "render"):
            assert value(samples, "onnxcam_stage_seconds_count", model="tiny", stage=stage) == 2, stage
        assert value(samples, "onnxcam_batch_rows_count", model="tiny", graph="explainer") == 1
        assert value(samples, "onnxcam_batch_rows_sum", model="tiny", graph="explainer") == 2  # one batch of 2
        assert value(samples, "onnxcam_queue_rows", model="tiny", graph="explainer") == 0
        assert value(samples, "onnxcam_requests_in_flight") == 0
        assert value(samples, "onnxcam_request_seconds_count", model="tiny") == 2
        assert value(samples, "onnxcam_rpcs_total", rpc="/onnxcam.v1.Explainer/Explain", code="OK") == 2
        assert value(samples, "onnxcam_rpcs_total", rpc="/onnxcam.v1.Explainer/Explain", code="NOT_FOUND") == 1
        assert value(samples, "onnxcam_rpcs_total", rpc="/onnxcam.v1.Explainer/ListModels",
                     code="UNAUTHENTICATED") == 1
        assert value(samples, "onnxcam_rpcs_total", rpc="/grpc.health.v1.Health/Check", code="OK") == 1

        process.send_signal(signal.SIGTERM)
        log.expect(r'"message": "stopped"')
        assert process.wait(timeout=60) == 0
        records = log.records()  # every line is one JSON object
        assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
        requests = [r for r in records if r["logger"] == "onnxcam.server.requests"]
        assert len(requests) == 3  # one line per request, without --log-requests
        by_id = {r["request_id"]: r for r in requests}
        first_line = by_id["first-call"]
        assert first_line["model"] == "tiny" and first_line["methods"] == ["gradcam"] and first_line["code"] == "OK"
        assert first_line["batch_rows"] == 2 and first_line["queue_ms"] > 0 and first_line["total_ms"] > 0
        assert {f"{s}_ms" for s in ("decode", "preprocess", "queue", "inference", "render")} <= set(first_line)
        not_found = next(r for r in requests if r["code"] == "NOT_FOUND")
        assert len(not_found["model"]) < 200 and "decode_ms" not in not_found
        assert len(by_id) == 3  # a request without an id gets one of its own
        assert any(r["level"] == "WARNING" and "refused /onnxcam.v1.Explainer/ListModels" in r["message"]
                   for r in records)
        assert TOKEN not in "".join(log.lines)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
