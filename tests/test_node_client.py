"""The Node.js client (clients/node) against a real server: a second language, no deadlines.

Skipped where ``node`` is missing. Its npm packages are installed here (``npm ci``) when absent; where
that fails, the test is skipped outside CI and fails in CI (CI=true).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from test_server_helpers import make_repository, node_with_packages, running_server

from onnxcam.client import ExplainerClient

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "node"
PHOTOS = ROOT / "onnxcam" / "demo_photos"


@pytest.fixture(scope="module")
def node() -> str:
    return node_with_packages(CLIENT, "@grpc/grpc-js")


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    with running_server(make_repository(tiny_model_dir, tmp_path_factory.mktemp("repo"))) as running:
        yield running


def run_client(node: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([node, str(CLIENT / "explain.js"), *args], capture_output=True, text=True, timeout=120)


def json_lines(done: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_list_models(node, server):
    done = run_client(node, "models", "--server", server.address, "--json")
    assert done.returncode == 0, done.stderr
    models = {m["name"]: m for m in json_lines(done)}
    assert sorted(models) == ["nocam", "tiny"]
    assert models["tiny"]["num_classes"] == 10 and "GRADCAM" in models["tiny"]["methods"]


def test_explain_without_a_deadline_matches_the_python_client(node, server, tmp_path):
    photo = PHOTOS / "chelsea.jpg"
    done = run_client(node, "explain", "--server", server.address, "--model", "tiny", "--method", "gradcam",
                      "--method", "layercam", "--top-k", "3", "--out", str(tmp_path), "--json", str(photo))
    assert done.returncode == 0, done.stderr
    (result,) = json_lines(done)
    with ExplainerClient(server.address, timeout=None) as client:
        expected = client.explain(str(photo), "tiny", methods=["gradcam", "layercam"], top_k=3, heatmap_png=True)
    assert [p["index"] for p in result["predictions"]] == [p.index for p in expected.predictions]
    assert [p["label"] for p in result["predictions"]] == [p.label for p in expected.predictions]
    assert [h["method"] for h in result["heatmaps"]] == ["GRADCAM", "LAYERCAM"]
    for heatmap, reference in zip(result["heatmaps"], expected.heatmaps, strict=True):
        written = Path(heatmap["file"])
        assert written.read_bytes() == reference.heatmap_png  # the same PNG, byte for byte
        assert Image.open(written).size == (expected.image_width, expected.image_height)


def test_many_images_go_over_one_stream_in_order(node, server, tmp_path):
    photos = [str(PHOTOS / name) for name in ("coffee.jpg", "rocket.jpg", "astronaut.jpg")]
    done = run_client(node, "explain", "--server", server.address, "--model", "tiny", "--out", str(tmp_path),
                      "--json", *photos)
    assert done.returncode == 0, done.stderr
    results = json_lines(done)
    assert [r["image"] for r in results] == photos
    assert all(r["predictions"] and Path(r["heatmaps"][0]["file"]).is_file() for r in results)


def test_an_unknown_model_is_not_found(node, server, tmp_path):
    done = run_client(node, "explain", "--server", server.address, "--model", "no-such-model", "--out",
                      str(tmp_path), str(PHOTOS / "chelsea.jpg"))
    assert done.returncode == 1
    assert done.stderr.startswith("NOT_FOUND:") and "tiny" in done.stderr  # the message lists the loaded models


def test_human_readable_output(node, server, tmp_path):
    done = run_client(node, "explain", "--server", server.address, "--model", "tiny", "--out", str(tmp_path),
                      str(PHOTOS / "chelsea.jpg"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith(f"{PHOTOS / 'chelsea.jpg'} (tiny, ")
    assert "GRADCAM for thing" in done.stdout
    usage = run_client(node, "explain", "--server", server.address)
    assert usage.returncode == 2 and "explain needs at least one image" in usage.stderr
