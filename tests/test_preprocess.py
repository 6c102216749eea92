"""The public preprocessing (onnxcam.preprocess) is the server's: the same pixels from the same photo,
a spec read from model.json or from a graph's metadata alone, and the README's edge snippet runs as
written and agrees with the server's top-1."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from test_server_helpers import encode, rgb_image, running_server

from onnxcam import contract
from onnxcam import preprocess as pp
from onnxcam.client import ExplainerClient
from onnxcam.proto import explainer_pb2 as pb
from server import imaging
from server.model_info import load_model_info

ROOT = Path(__file__).resolve().parent.parent
CAT = ROOT / "onnxcam" / "demo_photos" / "chelsea.jpg"


def rotated_jpeg(array: np.ndarray) -> bytes:
    """A JPEG whose EXIF says 'rotate 90° clockwise to view' (orientation 6)."""
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    return buffer.getvalue()


def sixteen_bit_png() -> bytes:
    grey = (np.arange(45 * 70, dtype=np.uint32).reshape(45, 70) * 20).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    return buffer.getvalue()


PHOTOS = {
    "png, landscape": encode(rgb_image(45, 70, seed=1)),
    "png, portrait, odd crop offset": encode(rgb_image(91, 40, seed=2)),
    "jpeg with EXIF rotation": rotated_jpeg(rgb_image(40, 64, seed=3)),
    "16-bit grey png": sixteen_bit_png(),
    "smaller than the crop": encode(rgb_image(20, 26, seed=4)),
}


@pytest.mark.parametrize("name", list(PHOTOS))
def test_public_preprocess_is_the_servers_bit_for_bit(tiny_model_dir, name):
    info = load_model_info(tiny_model_dir)
    data = PHOTOS[name]
    server_pixels = imaging.prepare_image(imaging.decode(data, 10**8), info.preprocess).pixels
    spec = pp.read_spec(tiny_model_dir)
    for source in (data, Image.open(io.BytesIO(data))):
        public = pp.preprocess(source, spec)
        assert public.dtype == np.float32 and public.shape == (3, *info.input_size)
        assert public.tobytes() == server_pixels.tobytes()


def test_graph_metadata_alone_gives_the_same_spec_and_spells_out_the_rules(tiny_model_dir):
    from_folder = pp.read_spec(tiny_model_dir)
    for graph in (contract.EXPLAINER_FILE, contract.FORWARD_FILE):
        assert pp.read_spec(tiny_model_dir / graph) == from_folder
    meta = {p.key: p.value for p in onnx.load(str(tiny_model_dir / contract.EXPLAINER_FILE)).metadata_props}
    rules = json.loads(meta["onnxcam.preprocess"])["rules"]
    assert rules == pp.RULES
    assert "floor(" in rules["resize"] and "round_half_even" in rules["crop"]
    assert "BILINEAR" in rules["interpolation"] and "exif_transpose" in rules["exif_orientation"]


def test_a_file_path_works_and_tensor_requests_match_image_requests(tiny_model_dir, tmp_path):
    """Pixels made on the client, sent as a tensor, give the server's own predictions for the photo."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(PHOTOS["jpeg with EXIF rotation"])
    pixels = pp.preprocess(photo, pp.read_spec(tiny_model_dir))
    with running_server(tiny_model_dir) as server, ExplainerClient(server.address) as client:
        by_image = client.explain(photo.read_bytes(), "tiny", methods=["none"], top_k=10)
        request = pb.ExplainRequest(model="tiny", methods=[pb.METHOD_NONE], top_k=10,
                                    tensor=pb.Tensor(shape=list(pixels.shape), data=pixels.ravel().tolist()))
        by_tensor = client.explain_request(request)
    assert [(p.index, p.logit) for p in by_image.predictions] == [(p.index, p.logit) for p in by_tensor.predictions]


def readme_edge_snippet() -> str:
    """The first python block of the README's "On the edge, without torch" section, unchanged."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## On the edge, without torch", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_edge_snippet_runs_as_written_and_agrees_with_the_server(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    from exporter.recipes import build_all

    build_all(ROOT / "models", only=["efficientnet_lite0"])
    model_dir = ROOT / "models" / "efficientnet_lite0"
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "efficientnet_lite0").symlink_to(model_dir, target_is_directory=True)
    (tmp_path / "cat.jpg").write_bytes(CAT.read_bytes())
    (tmp_path / "snippet.py").write_text(readme_edge_snippet())
    done = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    top1 = int(re.search(r"^top-1: (\d+) ", done.stdout, re.M).group(1))
    with running_server(tmp_path / "models") as server, ExplainerClient(server.address, timeout=300) as client:
        response = client.explain(CAT.read_bytes(), "efficientnet_lite0", methods=["none"])
    assert response.predictions[0].index == top1
    assert 281 <= top1 <= 285  # a domestic cat
