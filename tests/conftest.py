"""Shared fixtures: exported model folders are built once per session (exports take seconds)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "efficientnet_lite0"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With test processes (pyproject's ``-n 2 --dist loadfile --no-loadscope-reorder``), whole files are
    handed out in this order: the files with the most slow tests go first, so the longest files (the
    architecture exports) never start last and leave the other process idle. Order within a file is kept."""
    if not hasattr(config, "workerinput"):  # only an xdist worker's collection decides the order
        return
    slow: dict[Path, int] = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
    rank = {path: position for position, path in enumerate(sorted(slow, key=lambda p: -slow[p]))}
    items.sort(key=lambda item: rank[item.path])  # stable: each file keeps its own order


@contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` shared by every process on this machine (flock on the directory)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): run the tests in one process there
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@pytest.fixture(scope="session", autouse=True)
def _model_builds_take_turns() -> Iterator[None]:
    """Tests build the checkout's models/ folder in place (``build_all``). Test processes run in parallel
    (pytest-xdist), and two exports into one folder overwrite each other's temporary files: every
    ``build_all`` in a test holds a lock on the folder, so the second one finds the model up to date."""
    try:
        from exporter import recipes
    except ImportError:
        yield
        return
    build_all = recipes.build_all

    def build_all_in_turn(models_dir, *args, **kwargs):
        with _exclusive(Path(models_dir)):
            return build_all(models_dir, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recipes, "build_all", build_all_in_turn)
        yield


@pytest.fixture(scope="session")
def default_model_built(_model_builds_take_turns) -> Path:
    """models/efficientnet_lite0 exported (when missing or stale) under that lock, for tests whose
    subprocess would otherwise build it unlocked (the demo, the benchmarks). Returns models/."""
    models = ROOT / "models"
    try:
        import efficientnet_lite_pytorch  # noqa: F401

        from exporter.recipes import build_all
    except ImportError:
        return models  # no export extra: the test skips or fails on its own, as before
    build_all(models, only=[DEFAULT_MODEL])
    return models


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """models/tiny: TinyNet (10 classes, 32x32 input) exported with its default layer."""
    pytest.importorskip("torch")
    from tiny_models import TinyNet, seeded

    from exporter import export

    out = tmp_path_factory.mktemp("models") / "tiny"
    export(seeded(TinyNet()), None, out, input_size=(32, 32), labels=[f"thing {i}" for i in range(10)])
    return out


@pytest.fixture(scope="session")
def default_model_process(default_model_built):
    """``onnxcam serve`` on the default model as a subprocess, for tests that measure the server's own
    memory and CPU (bounded work, cancellation, health under load). No compute-time limit, so that
    long multi-pass requests are accepted and their cancellation can be observed."""
    from serving_process import DEFAULT_MODEL_DIR, serving

    if not (DEFAULT_MODEL_DIR / "model.json").exists():
        pytest.skip("the default model is not built")
    with serving(DEFAULT_MODEL_DIR, "--max-work-s", "0") as served:
        yield served
