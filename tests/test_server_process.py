"""``onnxcam serve`` as a real process: startup log, broken folders, and SIGTERM draining."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from test_server_helpers import make_repository

from onnxcam.client import ExplainerClient

ROOT = Path(__file__).resolve().parent.parent


class LogReader:
    """Collects the server's stderr lines on a thread, so the test can wait for a given line."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self._queue.put(line)

    def expect(self, pattern: str, limit_s: float = 120.0) -> re.Match:
        stop = time.monotonic() + limit_s
        while True:
            try:
                line = self._queue.get(timeout=max(stop - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no log line matching {pattern!r}; got:\n{''.join(self.lines)}") from None
            self.lines.append(line)
            if match := re.search(pattern, line):
                return match


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_lets_in_flight_requests_finish_and_refuses_new_ones(tiny_model_dir, tmp_path):
    repo = make_repository(tiny_model_dir, tmp_path / "models")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Batches wait "forever" to fill: the first request is still in flight when SIGTERM arrives.
    process = subprocess.Popen(
        [sys.executable, "-m", "onnxcam.cli", "serve", "--models", str(repo), "--host", "127.0.0.1", "--port", "0",
         "--max-delay-ms", "600000", "--intra-op-threads", "1", "--log-requests", "--grace-s", "60"],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        log = LogReader(process.stderr)
        port = log.expect(r"serving nocam, tiny on 127\.0\.0\.1:(\d+)").group(1)
        assert any("skipping model folder" in line and "broken" in line for line in log.lines)
        pixels = np.zeros((3, 32, 32), np.float32)
        with ExplainerClient(f"127.0.0.1:{port}", timeout=120, retry=False) as client, ThreadPoolExecutor(1) as pool:
            assert client.health() == "SERVING"
            in_flight = pool.submit(client.explain, pixels, "tiny", methods=["gradcam"])
            log.expect(r"received explain model=tiny")
            process.send_signal(signal.SIGTERM)
            log.expect(r"SIGTERM: draining")
            with pytest.raises(grpc.RpcError) as refused:
                client.explain(pixels, "tiny", timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            response = in_flight.result()
            assert response.predictions and response.heatmaps
        log.expect(r"stopped")
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
