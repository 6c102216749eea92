"""The server's quicker decode, preprocessing and responses give what the slower code gave, bit for bit:
the in-place normalisation against the rule written out, the decode that skips two copies against
onnxcam.preprocess.upright_rgb on every kind of image, the overlay background made on demand, and raw
maps set from their wire bytes against RawMap.values.extend."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from test_server_helpers import encode, rgb_image

from onnxcam import preprocess as pp
from onnxcam.proto import explainer_pb2 as pb
from server import imaging
from server.pipeline import set_raw_values

SPECS = {
    "imagenet": pp.Spec(256, (224, 224), 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "efficientnet-lite": pp.Spec(256, (224, 224), 1 / 255, (0.498, 0.498, 0.498), (0.502, 0.502, 0.502)),
    "scale 1, odd numbers": pp.Spec(40, (33, 37), 1.0, (103.9, -7.25, 0.0), (57.4, 0.01, 3e3)),
}


def rule_as_written(array: np.ndarray, spec: pp.Spec) -> np.ndarray:
    """Step 5 exactly as model.json's rule states it, one operation at a time."""
    x = array.astype(np.float32) * np.float32(spec.scale)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


@pytest.mark.parametrize("name", list(SPECS))
def test_normalize_gives_the_rules_bits_for_every_byte_value(name):
    spec = SPECS[name]
    every_value = np.arange(256 * 3, dtype=np.uint16).reshape(16, 48, 1).repeat(3, axis=2) % 256
    array = np.ascontiguousarray(np.roll(every_value.astype(np.uint8), (0, 1, 2), axis=(0, 1, 2)))
    ours, reference = pp.normalize(array, spec), rule_as_written(array, spec)
    assert ours.dtype == np.float32 and ours.flags["C_CONTIGUOUS"] and ours.shape == (3, 16, 48)
    assert np.array_equal(ours.view(np.uint32), reference.view(np.uint32))  # same bits, not just close
    assert not np.shares_memory(ours, array)


def jpeg(array: np.ndarray, orientation: int | None = None, mode: str = "RGB") -> bytes:
    image = Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    exif = image.getexif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=90)
    return buffer.getvalue()


def palette_png_with_transparency() -> bytes:
    image = Image.fromarray(rgb_image(30, 41, seed=7)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    image.info["transparency"] = 3
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=3)
    return buffer.getvalue()


IMAGES = {
    "RGB jpeg, no EXIF": jpeg(rgb_image(50, 70, seed=1)),
    "RGB jpeg, EXIF orientation 1": jpeg(rgb_image(50, 70, seed=2), orientation=1),
    "RGB jpeg, rotated (6)": jpeg(rgb_image(50, 70, seed=3), orientation=6),
    "RGB jpeg, mirrored (2)": jpeg(rgb_image(50, 70, seed=4), orientation=2),
    "grey jpeg": jpeg(rgb_image(50, 70, seed=5), mode="L"),
    "CMYK jpeg": jpeg(rgb_image(50, 70, seed=6), mode="CMYK"),
    "RGB png": encode(rgb_image(45, 60, seed=8)),
    "RGBA png": encode(np.dstack([rgb_image(45, 60, seed=9), np.full((45, 60), 128, np.uint8)])),
    "palette png with transparency": palette_png_with_transparency(),
}


@pytest.mark.parametrize("name", list(IMAGES))
def test_decode_gives_upright_rgbs_pixels(name):
    data = IMAGES[name]
    ours = imaging.decode(data, 10**6)
    reference = pp.open_image(data)
    assert ours.mode == "RGB" and ours.size == reference.size
    assert np.array_equal(np.asarray(ours), np.asarray(reference))
    spec = SPECS["scale 1, odd numbers"]
    prepared = imaging.prepare_image(ours, spec)
    assert np.array_equal(prepared.pixels, pp.preprocess(data, spec))
    assert np.array_equal(prepared.rgb, np.asarray(reference))  # the overlay background


def test_an_upright_rgb_photo_is_not_copied_and_a_rotated_one_is_turned():
    plain = imaging.open_header(IMAGES["RGB jpeg, no EXIF"], 10**6)
    assert imaging.load(plain) is plain
    rotated = imaging.decode(IMAGES["RGB jpeg, rotated (6)"], 10**6)
    assert rotated.size == (50, 70)  # stored 70 x 50, shown turned


def test_the_overlay_background_is_made_once_and_only_when_asked_for():
    image = imaging.decode(IMAGES["RGB png"], 10**6)
    prepared = imaging.prepare_image(image, SPECS["imagenet"])
    assert "rgb" not in vars(prepared)
    background = prepared.rgb
    assert background.shape == (45, 60, 3) and background.dtype == np.uint8
    assert prepared.rgb is background


@pytest.mark.parametrize("shape", [(7, 7), (3, 5, 4), (0, 0), (2, 300, 300)])
def test_raw_map_values_from_wire_bytes_are_extends_message_to_the_byte(shape):
    values = np.random.default_rng(3).standard_normal(shape).astype(np.float32) * 1e3
    ours, reference = pb.RawMap(height=shape[-1]), pb.RawMap(height=shape[-1])
    set_raw_values(ours, values)
    reference.values.extend(values.ravel().tolist())
    assert ours.SerializeToString() == reference.SerializeToString()
    assert np.array_equal(np.asarray(ours.values, np.float32), values.ravel())
