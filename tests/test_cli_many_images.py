"""More than one image: ``onnxcam explain a.png b.jpg DIR`` over one ExplainStream with one output per
image and a progress prefix, and ``onnxcam demo DIR``; ``--methods gradcam DIR`` leaves the folder a
folder. Real subprocesses against a real server on loopback."""

from __future__ import annotations

import logging
import re
import shutil

import pytest
from PIL import Image
from test_cli_errors import assert_one_error, onnxcam
from test_server_helpers import encode, rgb_image, running_server


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with running_server(tiny_model_dir, log_requests=True) as running:
        yield running


@pytest.fixture
def photos(tmp_path):
    """a.png, b.jpg and a folder with c.png and a/b duplicates by stem (d/a.jpg), plus a non-image."""
    (tmp_path / "a.png").write_bytes(encode(rgb_image(40, 48, seed=1)))
    (tmp_path / "b.jpg").write_bytes(encode(rgb_image(36, 30, seed=2), "JPEG"))
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "c.png").write_bytes(encode(rgb_image(32, 32, seed=3)))
    (folder / "a.jpg").write_bytes(encode(rgb_image(50, 40, seed=4), "JPEG"))
    (folder / "notes.txt").write_text("not an image")
    return tmp_path


def test_several_images_and_a_folder_give_one_output_each_with_progress(server, photos, tmp_path, caplog):
    out = tmp_path / "overlays"
    caplog.set_level(logging.INFO, logger="onnxcam.server")
    result = onnxcam("explain", "--server", server.address, "--methods", "gradcam", str(photos / "a.png"),
                     str(photos / "b.jpg"), str(photos / "d"), "--out", str(out), "--top-k", "2", timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a-2.png", "a.png", "b.png", "c.png"]
    for name, size in (("a.png", (48, 40)), ("b.png", (30, 36)), ("a-2.png", (40, 50)), ("c.png", (32, 32))):
        assert Image.open(out / name).size == size, name  # each overlay is its own photo's
    headers = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert [h.split("]")[0] + "]" for h in headers] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert headers[2].startswith(f"[3/4] {photos / 'd' / 'a.jpg'} on tiny")  # folder images in name order
    assert result.stdout.rstrip().endswith("explained 4 images")
    logged = [record.getMessage() for record in caplog.records]
    assert not [m for m in logged if m.startswith("received explain")]  # no unary Explain: one ExplainStream
    assert len([m for m in logged if m.startswith("explain model=tiny") and m.split("-> ")[1].startswith("OK")]) == 4


def test_methods_before_a_folder_leave_the_folder_an_image_argument(server, photos, tmp_path):
    out = tmp_path / "o"
    result = onnxcam("explain", "--server", server.address, "--methods", "gradcam,layercam", str(photos / "d"),
                     "--heatmap", str(out), timeout=120)
    assert result.returncode == 0, result.stderr
    names = sorted(re.sub(r"\.\d+\.", ".N.", p.name) for p in out.iterdir())  # N: each photo's top-1
    assert names == ["a.gradcam.N.heatmap.png", "a.layercam.N.heatmap.png", "c.gradcam.N.heatmap.png",
                     "c.layercam.N.heatmap.png"]
    result = onnxcam("explain", "--server", server.address, "--methods", "gradcam,nosuchcam", str(photos / "d"))
    assert_one_error(result, 2, "unknown method 'nosuchcam'")


def test_a_bad_image_among_good_ones_is_reported_and_the_others_are_written(server, photos, tmp_path):
    (photos / "d" / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    result = onnxcam("explain", "--server", server.address, str(photos / "d"), "--out", str(out), timeout=120)
    line = assert_one_error(result, 1, "1 of 3 images failed (broken.png)")
    assert "broken.png failed: INVALID_ARGUMENT" in result.stderr, line
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png"]


def test_a_file_name_as_out_for_several_images_is_one_line(server, photos, tmp_path):
    result = onnxcam("explain", "--server", server.address, str(photos / "d"), "--out", str(tmp_path / "o.png"))
    assert_one_error(result, 2, "looks like a file name; with several images give a folder")
    assert not (tmp_path / "o.png").exists()


def test_a_folder_without_images_and_a_missing_path_are_one_line(server, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_error(onnxcam("explain", "--server", server.address, str(tmp_path / "empty")), 2, "holds no image")
    assert_one_error(onnxcam("explain", "--server", server.address, str(tmp_path / "nope.jpg")), 2,
                     "nope.jpg: no such file or folder")


def test_demo_takes_a_folder_after_methods(tiny_model_dir, photos, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / "tiny")
    out = tmp_path / "demo"
    result = onnxcam("-q", "demo", "--models", str(models), "--model", "tiny", "--out", str(out),
                     "--methods", "gradcam,layercam", str(photos / "d"), str(photos / "a.png"), timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "explaining 3 photos with gradcam, layercam" in result.stdout
    names = sorted(p.name for p in out.iterdir())
    for expected in ("a.jpg", "a_gradcam.png", "c_layercam.png", "a-2.png", "a-2_gradcam.png", "gallery.png",
                     "index.html"):
        assert expected in names, (expected, names)
