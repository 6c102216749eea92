"""onnxcam.client and ``onnxcam explain`` against a real server on loopback."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from test_server_helpers import encode, rgb_image, running_server

from onnxcam.cli import main
from onnxcam.client import ExplainerClient, build_request, method_name, method_value
from onnxcam.proto import explainer_pb2 as pb


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with running_server(tiny_model_dir) as running:
        yield running


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(encode(rgb_image(48, 64, seed=5), "JPEG", quality=95))
    return path


def test_method_names():
    assert method_value("gradcam") == pb.GRADCAM
    assert method_value("GradCAM++") == pb.GRADCAMPP
    assert method_value("score-cam") == pb.SCORECAM
    assert method_value("none") == pb.METHOD_NONE
    assert method_value(pb.CAM) == pb.CAM and method_name(pb.LAYERCAM) == "layercam"
    with pytest.raises(ValueError, match="unknown method"):
        method_value("no-such-cam")


def test_build_request_inputs(image_file):
    from_path = build_request(image_file, "m", methods=["cam"], targets=[1], top_k=3, overlay_png=True)
    assert from_path.image == image_file.read_bytes() and from_path.methods == [pb.CAM]
    tensor = build_request(np.ones((3, 4, 5), np.float32), "m")
    assert list(tensor.tensor.shape) == [3, 4, 5] and len(tensor.tensor.data) == 60
    with pytest.raises(TypeError):
        build_request(42, "m")


def test_client_calls(server, image_file):
    with ExplainerClient(server.address, timeout=60) as client:
        assert client.health() == "SERVING" and client.health("onnxcam.v1.Explainer") == "SERVING"
        assert [m.name for m in client.list_models()] == ["tiny"]
        assert client.metadata("tiny").num_classes == 10
        response = client.explain(image_file, "tiny", methods=["gradcam", "cam"], overlay_png=True)
        assert [h.method for h in response.heatmaps] == [pb.GRADCAM, pb.CAM]
        assert Image.open(io.BytesIO(response.heatmaps[0].overlay_png)).size == (64, 48)


def test_explain_command_prints_top_k_and_writes_the_overlay(server, image_file, tmp_path, capsys):
    out = tmp_path / "overlay.png"
    code = main(["-q", "explain", "--server", server.address, "--model", "tiny", "--method", "gradcam",
                 str(image_file), "--out", str(out), "--top-k", "3"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert len([line for line in printed.splitlines() if line.strip()[:2] in ("1.", "2.", "3.")]) == 3
    assert "thing" in printed and f"wrote {out}" in printed
    overlay = Image.open(out)
    assert overlay.size == (64, 48) and overlay.mode == "RGB"


def test_explain_command_names_files_per_heatmap_and_reports_errors(server, image_file, tmp_path, capsys):
    out = tmp_path / "overlay.png"
    assert main(["-q", "explain", "--server", server.address, "--model", "tiny", "--method", "gradcam",
                 "--method", "layercam", "--target", "1", str(image_file), "--out", str(out)]) == 0
    assert (tmp_path / "overlay.gradcam.1.png").exists() and (tmp_path / "overlay.layercam.1.png").exists()
    capsys.readouterr()
    assert main(["-q", "explain", "--server", server.address, "--model", "nope", str(image_file)]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
