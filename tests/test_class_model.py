"""Class model visualisation (Simonyan et al. 2014) over the VisualizeClass RPC and the CLI, on ONNX Runtime only."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from PIL import Image
from test_server_helpers import make_repository, running_server

from onnxcam import class_model
from onnxcam.client import ExplainerClient
from onnxcam.proto import explainer_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def client(tiny_model_dir, tmp_path_factory):
    with running_server(make_repository(tiny_model_dir, tmp_path_factory.mktemp("repo"))) as server, \
            ExplainerClient(server.address, timeout=60) as client:
        yield client


def test_progress_streams_and_the_image_comes_last(client):
    updates = list(client.stub.VisualizeClass(pb.VisualizeClassRequest(model="tiny", target=4, steps=30,
                                                                      report_every=5)))
    assert [u.step for u in updates] == [0, 5, 10, 15, 20, 25, 30] and all(u.steps == 30 for u in updates)
    assert not any(u.image_png for u in updates[:-1])
    image = Image.open(io.BytesIO(updates[-1].image_png))
    assert image.size == (32, 32) and image.mode == "RGB"
    objectives = [u.objective for u in updates]
    assert all(b >= a for a, b in zip(objectives, objectives[1:], strict=False))  # backtracking: never falls
    assert updates[-1].score > updates[0].score + 1
    # a random tiny network's logits rise together, so its top-1 need not be the class (the slow test on
    # the default model checks that); the reported one is the model's own
    assert updates[-1].top1_label == f"thing {updates[-1].top1}"


def test_the_same_request_gives_the_same_image_and_jitter_is_seeded(client):
    request = pb.VisualizeClassRequest(model="tiny", target=2, steps=8, jitter=2, blur_sigma=0.8, blur_every=2,
                                       seed=5)
    first, again = (list(client.stub.VisualizeClass(request))[-1].image_png for _ in range(2))
    request.seed = 6
    other = list(client.stub.VisualizeClass(request))[-1].image_png
    assert first == again != other


@pytest.mark.parametrize(("request_fields", "code"), [
    ({"model": "tiny", "target": 10}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"model": "tiny", "target": 1, "steps": class_model.MAX_STEPS + 1}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"model": "tiny", "target": 1, "jitter": 9}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"model": "tiny", "target": 1, "blur_sigma": 1.0}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"model": "tiny", "target": 1, "blur_sigma": 1e6, "blur_every": 1}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"model": "tiny", "target": 1, "learning_rate": 1e9}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"model": "nope", "target": 1}, grpc.StatusCode.NOT_FOUND),
])
def test_bad_requests_get_a_clear_code(client, request_fields, code):
    with pytest.raises(grpc.RpcError) as failure:
        list(client.stub.VisualizeClass(pb.VisualizeClassRequest(**request_fields)))
    assert failure.value.code() == code, failure.value.details()
    assert client.health() == "SERVING"


def test_a_passed_deadline_stops_the_ascent(client):
    with pytest.raises(grpc.RpcError) as failure:
        list(client.stub.VisualizeClass(pb.VisualizeClassRequest(model="tiny", target=1, steps=2000), timeout=0.3))
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.slow
def test_default_model_class_score_rises_monotonically_and_wins(tmp_path):
    """EfficientNet-Lite0 with its ImageNet weights, locally from the model folder (no server): the CLI."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from exporter.recipes import build_all

    build_all(ROOT / "models", only=["efficientnet_lite0"])
    out = tmp_path / "tabby.png"
    result = subprocess.run([sys.executable, "-m", "onnxcam.cli", "visualize-class", "--model-dir",
                             str(ROOT / "models" / "efficientnet_lite0"), "--class", "281", "--steps", "40",
                             "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    scores = [float(line.split("score")[1].split()[0]) for line in result.stderr.splitlines() if " score " in line]
    assert len(scores) == 5 and all(b >= a for a, b in zip(scores, scores[1:], strict=False)), scores
    assert scores[-1] > scores[0] + 5
    assert "top-1 for it is class 281 (tabby" in result.stdout
    assert Image.open(out).size == (224, 224)
