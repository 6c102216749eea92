"""The code base stays ruff clean, and the server never names torch."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is in the dev extra")
    result = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_server_sources_never_import_torch() -> None:
    # tritonclient is a test-only client: the server speaks its protocol with its own stubs
    pattern = re.compile(r"^\s*(import torch|from torch|import tritonclient|from tritonclient)", re.MULTILINE)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "server").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
