"""The demo page explains itself: a line per method from the registry (with what it costs in graph
calls), a colour legend, the crop the model sees outlined on each photo, how many classes the model
knows, and one cell per method in every row. Runs the real ``onnxcam demo`` on the tiny model."""

from __future__ import annotations

import html
import re
import shutil

from PIL import Image
from test_cli_errors import onnxcam
from test_server_helpers import encode, rgb_image

from onnxcam import methods as registry
from onnxcam.preprocess import Spec, crop_box


def test_the_page_says_what_it_shows(tiny_model_dir, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / "tiny")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "wide.png").write_bytes(encode(rgb_image(60, 120, seed=1)))
    (photos / "tall.png").write_bytes(encode(rgb_image(90, 45, seed=2)))
    out = tmp_path / "demo"
    shown = ["gradcam", "ablationcam", "scorecam", "eigencam"]
    result = onnxcam("-q", "demo", "--models", str(models), "--model", "tiny", "--out", str(out),
                     "--methods", ",".join(shown + ["cam"]), str(photos), timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    page = (out / "index.html").read_text()
    text = html.unescape(page)
    for name in shown + ["cam"]:
        method = registry.get(name)
        assert f"<b>{method.title}</b>: {method.shows}" in text
    assert "not one graph call: one head.onnx run per channel" in text  # Ablation-CAM
    assert "not one graph call: one forward.onnx run per channel" in text  # Score-CAM
    assert 'class=bar style="background:linear-gradient(to right, rgb(0, 0, 128)' in page  # the jet ramp, cold end
    assert "0 (cold)" in page and "1 (hot)" in page
    assert "The model knows 10 classes only" in text
    assert "covers only the centre crop the model sees" in text
    # the dashed box is where the server's preprocessing crops: tiny resizes the shorter side to 37, crops 32
    top, left, height, width = crop_box(60, 120, Spec(37, (32, 32), 1 / 255, (0.5,) * 3, (0.5,) * 3))
    assert (f"top:{100 * top / 60:.2f}%;left:{100 * left / 120:.2f}%;height:{100 * height / 60:.2f}%;"
            f"width:{100 * width / 120:.2f}%") in page
    # even rows: every photo has the photo, the predictions and one cell per method (skipped or not)
    sections = re.findall(r"<section>(.*?)</section>", page, re.S)
    assert len(sections) == 2
    for section in sections:
        assert section.count("<figure") == 1 + len(shown) + 1  # cam: a placeholder if this head has none
    gallery = Image.open(out / "gallery.png")
    assert gallery.width == 160 * (1 + len(re.findall(r"<li><b>", page)))
