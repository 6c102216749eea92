"""The exporter's last step and its inputs (issue 17): the folder is swapped in whole or not at all,
invalid preprocessing fails before any tracing, recorded file names are base names, and file-system
failures are one ``error:`` line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from test_cli_errors import ROOT, assert_one_error  # noqa: E402
from test_server_helpers import encode, rgb_image, running_server  # noqa: E402
from tiny_models import TinyNet, seeded  # noqa: E402

from exporter import ExportError, export  # noqa: E402
from onnxcam import contract  # noqa: E402
from onnxcam.client import ExplainerClient  # noqa: E402

GRAPHS = (contract.EXPLAINER_FILE, contract.HEAD_FILE, contract.FORWARD_FILE, contract.INPUT_GRADIENTS_FILE)


@pytest.mark.parametrize("options, phrase", [
    (dict(std=(0.0, 0.2, 0.2)), "std non-zero"),
    (dict(std=(-0.2, 0.2, 0.2)), "must be positive"),
    (dict(mean=(float("nan"), 0.4, 0.4)), "finite"),
    (dict(std=(0.2, 0.2)), "3 values each"),
    (dict(resize=16), "smaller than the crop"),
    (dict(input_size=(0, 32)), "is not [H, W]"),
])
def test_invalid_preprocessing_is_refused_before_anything_is_written(tmp_path, options, phrase):
    out = tmp_path / "m"
    with pytest.raises(ExportError, match="invalid preprocessing|must be") as caught:
        export(seeded(TinyNet()), None, out, **{"input_size": (32, 32), **options})
    assert phrase in str(caught.value)
    assert not out.exists() and not list(tmp_path.iterdir())


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.slow  # two exports of the tiny model and a server
def test_a_failed_last_step_leaves_the_old_folder_intact_and_servable(tmp_path):
    """First a good export over a folder holding a README (kept), with absolute source paths (written as
    base names); then an export whose model.json cannot be written: the first folder must survive."""
    out = tmp_path / "models" / "tiny"
    out.mkdir(parents=True)
    (out / "README").write_text("kept")
    export(seeded(TinyNet()), None, out, input_size=(32, 32),
           source={"model_file": str(tmp_path / "nets" / "net.py") + ":build", "weights": str(tmp_path / "w.pt")})
    meta = json.loads((out / contract.MODEL_JSON).read_text())
    assert meta["source"]["model_file"] == "net.py:build" and meta["source"]["weights"] == "w.pt"
    for graph in GRAPHS:
        props = {p.key: p.value for p in onnx.load(str(out / graph)).metadata_props}
        assert str(tmp_path) not in props["onnxcam.source"], graph
    assert (out / "README").read_text() == "kept"
    assert out.stat().st_mode & 0o777 == 0o777 & ~_umask()  # not mkdtemp's private 0700
    before = _files(out)

    with pytest.raises(ExportError, match="model.json cannot hold"):  # a set is no JSON value
        export(seeded(TinyNet(), seed=1), None, out, input_size=(32, 32), source={"tags": {"a", "b"}})
    assert _files(out) == before
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["tiny"]  # no staging folder left behind
    with running_server(tmp_path / "models") as server, ExplainerClient(server.address, timeout=60) as client:
        assert client.explain(encode(rgb_image(24, 24)), "tiny").heatmaps


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _export_cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "onnxcam.cli", "export", "--model-file", "tests/tiny_models.py:TinyNet",
               "--input-size", "32", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_file_system_failures_are_one_error_line(tmp_path):
    result = _export_cli("--out", str(tmp_path / ("a" * 300)))
    assert_one_error(result, 1, "cannot write --out", "File name too long")
    (tmp_path / "loop").symlink_to("loop")  # passes the early check, fails when the folder is made
    result = _export_cli("--out", str(tmp_path / "loop" / "m"))
    line = assert_one_error(result, 1, "exporting to", "failed:")
    assert "unexpected" not in line
    assert not list(tmp_path.glob(".*"))
