"""Every ``onnxcam`` failure a user can cause is one ``error:`` line on stderr and a non-zero exit code,
never a traceback: each path runs the real command in a subprocess."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_no_torch import SCRIPT as NO_TORCH_SCRIPT

ROOT = Path(__file__).resolve().parent.parent
#: The import blocker of test_no_torch: torch, torchvision... raise ModuleNotFoundError.
BLOCK_TORCH = NO_TORCH_SCRIPT.split("import server\n")[0]


def onnxcam(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxcam.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def assert_one_error(result: subprocess.CompletedProcess, code: int, *phrases: str) -> str:
    """The exit code, no traceback, exactly one ``error:`` line, the last one on stderr; returns it."""
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0]
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    assert result.returncode == code, result.stderr
    return errors[0]


def test_export_without_torch_says_to_install_the_export_extra(tmp_path):
    script = BLOCK_TORCH + (
        "from onnxcam.cli import main\n"
        f"sys.exit(main(['export', '--arch', 'resnet18', '--out', {str(tmp_path / 'r')!r}]))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert_one_error(result, 2, "onnxcam export needs PyTorch", "pip install 'onnxcam[export]'")
    assert not (tmp_path / "r").exists()


def test_models_build_without_torch_says_to_install_the_export_extra(tmp_path):
    recipe = tmp_path / "models" / "m"
    recipe.mkdir(parents=True)
    (recipe / "recipe.json").write_text('{"arch": "resnet18"}')
    script = BLOCK_TORCH + (
        "from onnxcam.cli import main\n"
        f"sys.exit(main(['models', 'build', '--models', {str(tmp_path / 'models')!r}]))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert_one_error(result, 2, "torch is not installed", "pip install 'onnxcam[export]'")


def test_serve_on_a_port_in_use_fails_before_loading_any_model(tiny_model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = onnxcam("serve", "--models", str(tiny_model_dir), "--host", "127.0.0.1", "--port", str(port))
    assert_one_error(result, 1, f"port {port} on 127.0.0.1 is already in use", "--port")
    assert "loaded" not in result.stderr  # checked before the models load, not after


def test_serve_with_a_models_folder_that_does_not_exist(tmp_path):
    result = onnxcam("serve", "--models", str(tmp_path / "nope"), "--port", "0")
    assert_one_error(result, 2, f"--models {tmp_path / 'nope'} does not exist")


@pytest.mark.parametrize("point_at", ["repository", "model folder"])
def test_serve_a_folder_with_only_its_recipe_says_to_build_it(tmp_path, point_at):
    folder = tmp_path / "models" / "efficientnet_lite0"
    folder.mkdir(parents=True)
    shutil.copyfile(ROOT / "models" / "efficientnet_lite0" / "recipe.json", folder / "recipe.json")
    models = tmp_path / "models" if point_at == "repository" else folder
    result = onnxcam("serve", "--models", str(models), "--port", "0")
    assert_one_error(result, 1, "efficientnet_lite0: not built yet",
                     f"run `onnxcam models build --models {tmp_path / 'models'} efficientnet_lite0`")


def test_models_build_with_a_models_folder_that_does_not_exist(tmp_path):
    result = onnxcam("models", "build", "--models", str(tmp_path / "nope"))
    assert_one_error(result, 2, f"--models {tmp_path / 'nope'} is not a folder")


def test_export_to_an_out_that_cannot_be_written_fails_before_exporting(tmp_path):
    pytest.importorskip("torch")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = onnxcam("export", "--arch", "resnet18", "--out", str(blocker / "resnet18"))
    assert_one_error(result, 1, f"cannot write --out {blocker / 'resnet18'}", "is a file, not a folder")
    assert "building resnet18" not in result.stderr


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_export_to_a_read_only_folder_fails_before_exporting(tmp_path):
    pytest.importorskip("torch")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = onnxcam("export", "--arch", "resnet18", "--out", str(locked / "resnet18"))
    finally:
        locked.chmod(0o700)
    assert_one_error(result, 1, f"cannot write --out {locked / 'resnet18'}", "is not writable")


def test_explain_to_an_out_that_cannot_be_written_fails_before_calling_the_server(tmp_path):
    photo = ROOT / "onnxcam" / "demo_photos" / "chelsea.jpg"
    result = onnxcam("explain", "--server", "127.0.0.1:9", "--model", "m", str(photo), "--out",
                     str(tmp_path / "missing" / "overlay.png"))
    assert_one_error(result, 1, f"folder {tmp_path / 'missing'} does not exist")
    result = onnxcam("explain", "--server", "127.0.0.1:9", "--model", "m", str(photo), "--heatmap", str(tmp_path))
    assert_one_error(result, 1, f"cannot write --heatmap {tmp_path}: it is a folder")
