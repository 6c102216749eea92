"""Shared fixtures: exported model folders are built once per session (exports take seconds)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """models/tiny: TinyNet (10 classes, 32x32 input) exported with its default layer."""
    pytest.importorskip("torch")
    from tiny_models import TinyNet, seeded

    from exporter import export

    out = tmp_path_factory.mktemp("models") / "tiny"
    export(seeded(TinyNet()), None, out, input_size=(32, 32), labels=[f"thing {i}" for i in range(10)])
    return out
