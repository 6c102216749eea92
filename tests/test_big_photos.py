"""Big photos: the heatmap and overlay PNGs are drawn at most ``max_render_side`` pixels on their
longer side (server default 2048, a request may ask for less), the aspect ratio kept; raw maps and
the reported image size stay the original's."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from test_server_helpers import encode, rgb_image, running_server

from onnxcam.cli import build_parser
from onnxcam.client import ExplainerClient
from server.cli import config_from_args
from server.config import DEFAULT_MAX_RENDER_SIDE


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def pictures(client, photo: bytes, **options):
    response = client.explain(photo, "tiny", methods=["gradcam"], raw=True, heatmap_png=True, overlay_png=True,
                              timeout=120, **options)
    (heatmap,) = response.heatmaps
    return response, heatmap


@pytest.fixture(scope="module")
def default_server(tiny_model_dir):
    with running_server(tiny_model_dir) as server, ExplainerClient(server.address) as client:
        yield client


def test_a_big_photo_comes_back_within_the_default_cap(default_server):
    assert DEFAULT_MAX_RENDER_SIDE == 2048
    photo = encode(rgb_image(2300, 3100, seed=1), "JPEG", quality=80)  # 7 megapixels, landscape, a few MB
    response, heatmap = pictures(default_server, photo)
    assert (response.image_height, response.image_width) == (2300, 3100)  # what was sent
    assert png_size(heatmap.heatmap_png) == png_size(heatmap.overlay_png) == (2048, round(2300 * 2048 / 3100))
    small, smaller = pictures(default_server, photo, max_render_side=320)
    assert png_size(smaller.overlay_png) == (320, round(2300 * 320 / 3100))
    assert smaller.raw == heatmap.raw  # the raw map is the model's, whatever is drawn


def test_the_server_flag_sets_the_cap_and_a_request_cannot_exceed_it(tiny_model_dir):
    photo = encode(rgb_image(160, 200, seed=2))
    with running_server(tiny_model_dir, max_render_side=100) as server, ExplainerClient(server.address) as client:
        for asked, expected in ((0, (100, 80)), (500, (100, 80)), (50, (50, 40))):
            assert png_size(pictures(client, photo, max_render_side=asked)[1].overlay_png) == expected
        capped = np.asarray(Image.open(io.BytesIO(pictures(client, photo)[1].heatmap_png)), np.float32)
    with running_server(tiny_model_dir, max_render_side=0) as server, ExplainerClient(server.address) as client:
        full = np.asarray(Image.open(io.BytesIO(pictures(client, photo)[1].heatmap_png)), np.float32)
    assert full.shape == (160, 200)  # 0: the original size
    # the capped heatmap is the same map at half the size (2x2 means of the full one, up to resampling)
    halved = full.reshape(80, 2, 100, 2).mean(axis=(1, 3))
    assert np.abs(capped - halved).mean() < 3.0


def test_serve_takes_the_flag():
    args = build_parser().parse_args(["serve", "--models", "models", "--max-render-side", "1024"])
    assert config_from_args(args).max_render_side == 1024
    assert config_from_args(build_parser().parse_args(["serve", "--models", "m"])).max_render_side == 2048
