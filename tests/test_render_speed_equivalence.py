"""The fast renderer draws the same pixels as the formulas it replaced: the heatmap is
to_uint8(upsample(normalize(raw))) and the overlay to_uint8(0.5 * jet(heat) + 0.5 * rgb / 255), written
out here as they were before (whole arrays, float32, nothing folded), and compared with the decoded
PNGs of server.heatmaps.render on random maps, odd picture sizes and crop boxes, every background
byte, and the heat values where jet's ramps turn."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from server import heatmaps, png
from server.imaging import Geometry


def reference_pixels(raw: np.ndarray, geometry: Geometry, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The renderer's formulas as they were written before it drew blocks of rows."""
    m = np.maximum(raw.astype(np.float32), 0)
    m = (m - m.min()) / (m.max() - m.min() + np.float32(1e-7))
    h, w = m.shape

    def taps(out_size: int, in_size: int, start: float, length: float):
        centers = np.arange(out_size, dtype=np.float64) + 0.5
        src = np.clip((centers - start) / length * in_size - 0.5, 0.0, in_size - 1)
        low = np.floor(src).astype(np.int64)
        return low, np.minimum(low + 1, in_size - 1), (src - low).astype(np.float32), \
            (centers >= start) & (centers < start + length)

    low_y, high_y, fy, inside_y = taps(geometry.height, h, geometry.box_top, geometry.box_height)
    low_x, high_x, fx, inside_x = taps(geometry.width, w, geometry.box_left, geometry.box_width)
    rows = m[low_y] * (1 - fy)[:, None] + m[high_y] * fy[:, None]
    heat = rows[:, low_x] * (1 - fx) + rows[:, high_x] * fx
    heat[~inside_y] = 0.0
    heat[:, ~inside_x] = 0.0

    def to_uint8(values: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)

    jet = np.clip(1.5 - np.abs(heat[..., None] * 4.0 - np.asarray([3.0, 2.0, 1.0], np.float32)), 0.0, 1.0)
    return to_uint8(heat), to_uint8(0.5 * jet + (1.0 - 0.5) * (rgb.astype(np.float32) / 255.0))


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def random_case(rng: np.random.Generator) -> tuple[np.ndarray, Geometry, np.ndarray]:
    height, width = (int(v) for v in rng.integers(1, 160, 2))
    h, w = (int(v) for v in rng.integers(1, 40, 2))  # 40 > width / 8 sometimes: the gathering path
    raw = (rng.normal(size=(h, w)) * rng.choice([1e-6, 1.0, 1e5])).astype(np.float32)
    box_height, box_width = rng.uniform(0.5, 1.5 * height), rng.uniform(0.5, 1.5 * width)
    geometry = Geometry(height, width, rng.uniform(-height / 2, height), rng.uniform(-width / 2, width),
                        box_height, box_width)
    return raw, geometry, rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("seed", range(6))
def test_decoded_pngs_equal_the_formulas_as_written_on_random_maps_and_crop_boxes(seed):
    rng = np.random.default_rng(seed)
    for _ in range(12):
        raw, geometry, rgb = random_case(rng)
        expected_heat, expected_overlay = reference_pixels(raw, geometry, rgb)
        shown, overlay = heatmaps.render(raw, geometry, rgb, heatmap_png=True, overlay_png=True)
        np.testing.assert_array_equal(decoded(shown), expected_heat)
        np.testing.assert_array_equal(decoded(overlay), expected_overlay)
        only_overlay = heatmaps.render(raw, geometry, rgb, heatmap_png=False, overlay_png=True)
        assert only_overlay[0] == b"" and np.array_equal(decoded(only_overlay[1]), expected_overlay)


@pytest.mark.parametrize("height, width, box", [
    (1, 1, (0.0, 0.0, 1.0, 1.0)),
    (600, 800, (50.0, 150.0, 500.0, 500.0)),  # the default preprocessing's centre crop, several blocks of rows
    (3, 2000, (-1.0, 700.0, 5.0, 600.0)),  # one short wide strip, the box partly above the picture
    (2000, 3, (0.0, 0.0, 2000.0, 3.0)),
    (40, 40, (100.0, 100.0, 10.0, 10.0)),  # the box wholly outside: all zero
])
def test_decoded_pngs_equal_the_formulas_as_written_on_odd_geometries(height, width, box):
    rng = np.random.default_rng(height * width)
    raw = rng.random((7, 7), dtype=np.float32)
    geometry = Geometry(height, width, *box)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    expected_heat, expected_overlay = reference_pixels(raw, geometry, rgb)
    gray, color = heatmaps.draw(raw, geometry, rgb, heatmap=True, overlay=True)
    np.testing.assert_array_equal(gray, expected_heat)
    np.testing.assert_array_equal(color, expected_overlay)


def test_overlay_equals_the_formula_for_every_background_byte_at_jets_turning_points():
    # Every heat value within 300 float32 steps of where a jet channel turns or saturates, and random
    # ones, each over all 256 background bytes: the folded constants and the rounding through 2**23 must
    # give the formula's bytes wherever the ramps change slope and rounding ties are likely.
    turns = np.asarray([0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0], np.float32)
    steps = np.arange(-300, 301, dtype=np.int32)
    near = (turns.view(np.int32)[:, None] + steps).ravel().view(np.float32)
    near = near[np.isfinite(near)]  # below 0.0's bits lie NaNs
    random = np.random.default_rng(7).random(4096, dtype=np.float32)
    heat_values = np.clip(np.concatenate([near, random]), 0.0, 1.0).astype(np.float32)
    heat = np.broadcast_to(heat_values, (256, len(heat_values))).copy()
    rgb = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None, None], (*heat.shape, 3)).copy()
    out = np.empty_like(rgb)
    heatmaps._overlay_block(heat, rgb, out)
    jet = np.clip(1.5 - np.abs(heat[..., None] * 4.0 - np.asarray([3.0, 2.0, 1.0], np.float32)), 0.0, 1.0)
    expected = np.clip(np.rint((0.5 * jet + 0.5 * (rgb.astype(np.float32) / 255.0)) * 255.0), 0, 255)
    np.testing.assert_array_equal(out, expected.astype(np.uint8))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_maps_with_nan_or_infinity_still_give_the_formulas_pixels(value):
    rng = np.random.default_rng(3)
    raw = rng.random((5, 6), dtype=np.float32)
    raw[2, 3] = value
    geometry = Geometry(30, 40, 2.0, 3.0, 25.0, 30.0)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    with np.errstate(invalid="ignore"):
        expected = reference_pixels(raw, geometry, rgb)
        got = heatmaps.draw(raw, geometry, rgb, heatmap=True, overlay=True)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.parametrize("compressor", sorted(png.COMPRESSORS))
@pytest.mark.parametrize("shape", [(1, 1), (17, 5), (9, 13, 3), (1, 300, 3)])
def test_png_writer_round_trips_with_every_compressor(compressor, shape):
    array = np.random.default_rng(len(shape)).integers(0, 256, shape, dtype=np.uint8)
    image = Image.open(io.BytesIO(png.encode(array, compressor)))
    assert image.mode == ("L" if len(shape) == 2 else "RGB")
    np.testing.assert_array_equal(np.asarray(image), array)


@pytest.mark.parametrize("array", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 4), np.uint8),
                                   np.zeros((0, 4), np.uint8)])
def test_png_writer_refuses_what_it_cannot_write(array):
    with pytest.raises(ValueError, match="uint8"):
        png.encode(array)
