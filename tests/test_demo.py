"""The newcomer path: `onnxcam demo` builds the default model, serves it and explains real photos."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_explains_the_cat(tmp_path: Path, default_model_built: Path) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "onnxcam.cli", "demo", "--models", str(ROOT / "models"), "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout
    # progress is printed as it goes: build check, server start, per-photo top-5 and timings, clean stop
    steps = ("checking model efficientnet_lite0", "starting the server", "server ready", "server stopped (exit code 0)")
    for step in steps:
        assert step in log
    cat_block = log.split("chelsea.jpg:")[1].split("[demo] coffee.jpg")[0]
    top1 = int(re.search(r"\(class (\d+)\)", cat_block).group(1))
    assert 281 <= top1 <= 285, cat_block  # a domestic cat class of ImageNet
    assert "decode" in cat_block and "inference" in cat_block
    espresso = log.split("coffee.jpg:")[1]
    assert "(class 967)" in espresso.splitlines()[1]  # top-1 espresso
    page = (out / "index.html").read_text()
    assert 'src="chelsea.jpg"' in page and 'src="chelsea_gradcam.png"' in page
    from PIL import Image

    gallery = Image.open(out / "gallery.png")
    assert gallery.width > 10 * gallery.height / len(list(out.glob("*.jpg")))  # every method, a row per photo
    for name in ("chelsea_guided_gradcam.png", "chelsea_saliency.png", "chelsea_eigencam.png", "chelsea_cam.png"):
        assert (out / name).is_file(), name
    overlay = Image.open(out / "chelsea_gradcam.png")
    photo = Image.open(out / "chelsea.jpg")
    assert overlay.size == photo.size  # the heatmap is drawn over the whole original photo
