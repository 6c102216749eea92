"""The CLI's small promises, each through the real command (a subprocess) against a real server on
loopback: file names that do not depend on the budget, all-skipped is a failure, ``--model`` optional
with one model, a hint when no server answers, ``--version``, ``python -m onnxcam``, clean help."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from test_cli_errors import ROOT, assert_one_error, onnxcam
from test_server_helpers import encode, make_repository, rgb_image, running_server

from onnxcam import __version__
from onnxcam.client import ExplainerClient, format_skipped, format_timing, summary


@pytest.fixture(scope="module")
def one_model(tiny_model_dir):
    with running_server(tiny_model_dir) as server:
        yield server


@pytest.fixture(scope="module")
def two_models(tiny_model_dir, tmp_path_factory):
    repo = make_repository(tiny_model_dir, tmp_path_factory.mktemp("repo") / "models")
    with running_server(repo) as server:
        yield server


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(encode(rgb_image(40, 48, seed=3)))
    return path


def explain(server, *args: str):
    return onnxcam("explain", "--server", server.address, *args, timeout=120)


def test_one_method_writes_the_name_given_whatever_the_budget(one_model, photo, tmp_path):
    for budget in ("0", "100000"):
        out = tmp_path / f"budget{budget}.png"
        result = explain(one_model, str(photo), "--out", str(out), "--budget-ms", budget)
        assert result.returncode == 0, result.stderr
        assert out.is_file() and f"wrote {out} " in result.stdout
    assert sorted(p.name for p in tmp_path.glob("budget*")) == ["budget0.png", "budget100000.png"]


def test_names_follow_the_request_not_what_came_back(two_models, photo, tmp_path):
    out = tmp_path / "overlay.png"
    result = explain(two_models, "--model", "nocam", "--method", "gradcam", "--method", "cam", "--target", "2",
                     str(photo), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "cam skipped (not supported)" in result.stdout  # CAM cannot be computed, one heatmap came back
    assert [p.name for p in tmp_path.glob("overlay*")] == ["overlay.gradcam.2.png"]


def test_a_request_whose_methods_were_all_skipped_fails(two_models, photo, tmp_path):
    result = explain(two_models, "--model", "nocam", "--method", "cam", str(photo), "--out", str(tmp_path / "o.png"))
    assert_one_error(result, 1, "no heatmap: every method asked for was skipped", "cam skipped (not supported)")
    assert " 1. thing" in result.stdout  # the predictions still arrived and are shown
    result = explain(two_models, "--model", "tiny", "--budget-ms", "0.0001", str(photo))
    assert_one_error(result, 1, "no heatmap", "gradcam skipped (budget)")
    assert explain(two_models, "--model", "tiny", "--method", "none", str(photo)).returncode == 0  # none asked


def test_model_may_be_left_out_when_the_server_has_one(one_model, two_models, photo):
    result = explain(one_model, str(photo))
    assert result.returncode == 0, result.stderr
    assert f"{photo} on tiny" in result.stdout
    result = explain(two_models, str(photo))
    assert_one_error(result, 2, "--model is needed", "has nocam, tiny")


def test_no_server_gets_a_hint(photo):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    result = onnxcam("explain", "--server", f"127.0.0.1:{port}", "--timeout", "5", str(photo))
    assert_one_error(result, 1, "UNAVAILABLE", f"is `onnxcam serve` running on 127.0.0.1:{port}?")


def test_version_and_python_dash_m():
    for command in (["-m", "onnxcam", "--version"], ["-m", "onnxcam.cli", "--version"]):
        result = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=60,
                                cwd=ROOT)
        assert result.returncode == 0 and result.stdout.strip() == f"onnxcam {__version__}", result.stderr


def test_a_command_group_without_its_subcommand_prints_its_help():
    for group, listed in (((), "visualize-class"), (("models",), "build")):
        result = onnxcam(*group)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.startswith("usage: onnxcam") and listed in result.stderr


def test_a_usage_error_is_one_error_line():
    result = onnxcam("explain", "--top-k", "many", "photo.jpg")
    assert_one_error(result, 2, "--top-k: invalid int value: 'many'")


@pytest.mark.parametrize("command", [(), ("export",), ("models",), ("models", "build"), ("serve",), ("explain",),
                                     ("visualize-class",), ("demo",), ("evaluate",),
                                     ("sanity-check",)])
def test_help_has_no_docstring_markup(command):
    result = onnxcam(*command, "--help")
    assert result.returncode == 0, result.stderr
    for markup in ("``", ":func:", ":class:", ":meth:", "`onnxcam"):
        assert markup not in result.stdout, (command, markup)
    if command == ("export",):
        text = " ".join(result.stdout.split())
        assert "--mean R G B per-channel mean" in text and "--std R G B per-channel divisor" in text


def test_the_python_client_prints_timing_and_skipped_readably(two_models, photo):
    with ExplainerClient(two_models.address, timeout=60) as client:
        response = client.explain(photo, "nocam", methods=["gradcam", "cam"])
    timing = format_timing(response.timing)
    assert "\n" not in timing and timing.startswith("decode ") and "total " in timing
    assert format_skipped(response.skipped[0]).startswith("cam skipped (not supported): CAM needs")
    text = summary(response)
    assert "heatmap gradcam for class" in text and "cam skipped (not supported)" in text and "timing: decode" in text
