"""``onnxcam serve`` as a subprocess for the hardening tests (no tests here): its port, its resident
memory (VmRSS) and CPU time read from /proc, and a wait until it stops using the CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from test_server_process import LogReader

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = ROOT / "models" / "efficientnet_lite0"
#: CPU seconds per second below which the server counts as idle (gRPC's pollers use far less).
IDLE_CPU_SHARE = 0.1
IDLE_WINDOW_S = 0.5


@dataclass
class Served:
    process: subprocess.Popen
    log: LogReader
    address: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_mib(self) -> float:
        """Resident memory now, from /proc/<pid>/status."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        raise AssertionError("no VmRSS in /proc status")

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process, all threads, from /proc/<pid>/stat."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def seconds_until_idle(self, limit_s: float = 120.0) -> float:
        """Seconds from now until a whole IDLE_WINDOW_S passes with the process using less than
        IDLE_CPU_SHARE of a core; fails after ``limit_s``."""
        start = time.monotonic()
        while time.monotonic() - start < limit_s:
            window_start, cpu = time.monotonic(), self.cpu_s()
            time.sleep(IDLE_WINDOW_S)
            if self.cpu_s() - cpu < IDLE_CPU_SHARE * IDLE_WINDOW_S:
                return window_start - start
        raise AssertionError(f"the server was still busy after {limit_s} s")


@contextmanager
def serving(models: Path, *args: str) -> Iterator[Served]:
    """A server on a free loopback port; killed at the end if it is still running."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "onnxcam.cli", "serve", "--models", str(models), "--host", "127.0.0.1", "--port", "0",
         *args], cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        log = LogReader(process.stderr)
        port = log.expect(r"serving .* on 127\.0\.0\.1:(\d+)", limit_s=300).group(1)
        yield Served(process, log, f"127.0.0.1:{port}")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
