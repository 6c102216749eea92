"""Image bytes or a tensor in, the model's input and the geometry that maps heatmaps back out.

Decoding adds the server's limits (formats, sizes, decompression bombs); the preprocessing itself is
onnxcam.preprocess, the public numpy + Pillow module an edge device runs too, so both make the same
pixels. EXIF orientation is applied first, so "the original image" everywhere means the image as a
viewer shows it.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from onnxcam import preprocess as preprocessing
from server.errors import invalid
from server.model_info import Preprocess

#: Encodings a request may carry; anything else Pillow recognises is refused by name.
FORMATS = ("JPEG", "PNG", "WEBP")


@dataclass(frozen=True)
class Geometry:
    """Where the model's input came from: the crop box in original-image pixels (floats)."""

    height: int
    width: int
    box_top: float
    box_left: float
    box_height: float
    box_width: float


@dataclass(frozen=True)
class Prepared:
    pixels: np.ndarray  # float32 [3, H, W]
    geometry: Geometry
    #: The original image as uint8 [height, width, 3]: the overlay's background.
    rgb: np.ndarray


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header; Pillow refuses zero sizes without saying so."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data.startswith(b"\xff\xd8"):
        pos = 2
        while pos + 9 <= len(data) and data[pos] == 0xFF:
            marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2:pos + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
                return width, height
            pos += 2 + length
    return None


def open_header(data: bytes, max_pixels: int) -> Image.Image:
    """The image as Pillow opens it lazily: format and size read from the header, no pixel decoded.

    Everything a request's cost depends on (width x height) is known here, so a request that would
    not fit the server's limits is refused before the decode; ``load`` decodes it afterwards.
    """
    if not data:
        raise invalid("image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # lazy: reads the header only
    except Image.DecompressionBombError as error:
        raise invalid(f"image has too many pixels: {error}") from error
    except UnidentifiedImageError as error:
        size = _declared_size(data)
        if size is not None and min(size) == 0:
            raise invalid(f"image has zero size ({size[0]}x{size[1]})") from error
        raise invalid(f"image is not a readable JPEG, PNG or WebP (corrupt or unknown format, {len(data)} bytes)"
                      ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise invalid(f"image header is corrupt: {error}") from error
    if image.format not in FORMATS:
        raise invalid(f"unsupported image format {image.format}; send JPEG, PNG or WebP")
    width, height = image.size
    if width <= 0 or height <= 0:
        raise invalid(f"image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise invalid(f"image has too many pixels: {width}x{height} = {width * height}, the limit is {max_pixels}")
    return image


def load(image: Image.Image) -> Image.Image:
    """Decode an image from ``open_header`` into an upright RGB image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
            return preprocessing.upright_rgb(image)
    except Image.DecompressionBombError as error:
        raise invalid(f"image has too many pixels: {error}") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise invalid(f"{image.format} image is corrupt or truncated: {error}") from error


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Decode an encoded JPEG/PNG/WebP into an upright RGB image, refusing bombs before decoding."""
    return load(open_header(data, max_pixels))


#: Kept for callers of the server's names; the code is onnxcam.preprocess's.
resized_size = preprocessing.resized_size
normalize = preprocessing.normalize


def prepare_image(image: Image.Image, preprocess: Preprocess) -> Prepared:
    """onnxcam.preprocess's steps 3-5 on a decoded upright RGB image, plus where the crop came from."""
    rgb = np.asarray(image)
    height, width = rgb.shape[:2]
    resized = preprocessing.resize(image, preprocess)
    new_w, new_h = resized.size
    cropped, top, left = preprocessing.center_crop(np.asarray(resized), preprocess.crop)
    scale_y, scale_x = height / new_h, width / new_w
    geometry = Geometry(height, width, top * scale_y, left * scale_x, preprocess.crop[0] * scale_y,
                        preprocess.crop[1] * scale_x)
    return Prepared(normalize(cropped, preprocess), geometry, rgb)


def prepare_tensor(shape: list[int], data: np.ndarray, preprocess: Preprocess) -> Prepared:
    """An already preprocessed [3, H, W] tensor; its de-normalised self is the overlay background."""
    crop_h, crop_w = preprocess.crop
    if list(shape) != [3, crop_h, crop_w]:
        raise invalid(f"tensor shape {list(shape)} is wrong; this model takes [3, {crop_h}, {crop_w}]")
    if data.size != 3 * crop_h * crop_w:
        raise invalid(f"tensor has {data.size} values; shape {list(shape)} needs {3 * crop_h * crop_w}")
    if not np.isfinite(data).all():
        raise invalid("tensor holds NaN or infinite values")
    pixels = np.ascontiguousarray(data.astype(np.float32).reshape(3, crop_h, crop_w))
    std = np.asarray(preprocess.std, np.float32)[:, None, None]
    mean = np.asarray(preprocess.mean, np.float32)[:, None, None]
    rgb = np.clip(np.rint((pixels * std + mean) / preprocess.scale), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return Prepared(pixels, Geometry(crop_h, crop_w, 0.0, 0.0, float(crop_h), float(crop_w)),
                    np.ascontiguousarray(rgb))
