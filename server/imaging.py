"""Image bytes or a tensor in, the model's input and the geometry that maps heatmaps back out.

Preprocessing follows model.json (torchvision's Resize + CenterCrop + ToTensor + Normalize on a PIL
image): RGB, shorter side resized with Pillow's bilinear filter, center crop (zero padding where the
crop is larger), x * scale, (x - mean) / std, channels first. EXIF orientation is applied first, so
"the original image" everywhere means the image as a viewer shows it.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Pillow clips 16-bit values to 255 when converting; scale them instead.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(np.rint(array * 255.0 / top), 0, 255).astype(np.uint8), "L")
    elif image.mode in ("P", "PA") and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


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


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Decode an encoded JPEG/PNG/WebP into an upright RGB image, refusing bombs before decoding."""
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
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
            try:
                image = ImageOps.exif_transpose(image)
            except (OSError, SyntaxError, ValueError, KeyError, TypeError):
                pass  # an unreadable EXIF block: keep the stored orientation
            return _to_rgb(image)
    except Image.DecompressionBombError as error:
        raise invalid(f"image has too many pixels: {error}") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise invalid(f"{image.format} image is corrupt or truncated: {error}") from error


def resized_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """torchvision's Resize(int): the shorter side becomes ``shorter``, the longer one is truncated."""
    if height <= width:
        return shorter, max(1, int(shorter * width / height))
    return max(1, int(shorter * height / width)), shorter


def _center_crop(array: np.ndarray, crop: tuple[int, int]) -> tuple[np.ndarray, int, int]:
    """torchvision's CenterCrop, zero-padding a side that is smaller than the crop."""
    height, width = array.shape[:2]
    crop_h, crop_w = crop
    top = int(round((height - crop_h) / 2.0))
    left = int(round((width - crop_w) / 2.0))
    out = np.zeros((crop_h, crop_w, array.shape[2]), dtype=array.dtype)
    src_top, src_left = max(top, 0), max(left, 0)
    src_bottom, src_right = min(top + crop_h, height), min(left + crop_w, width)
    out[src_top - top:src_bottom - top, src_left - left:src_right - left] = array[src_top:src_bottom,
                                                                                  src_left:src_right]
    return out, top, left


def normalize(array: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """uint8 HWC -> float32 CHW: x * scale, then (x - mean) / std."""
    x = array.astype(np.float32) * np.float32(preprocess.scale)
    x = (x - np.asarray(preprocess.mean, np.float32)) / np.asarray(preprocess.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def prepare_image(image: Image.Image, preprocess: Preprocess) -> Prepared:
    rgb = np.asarray(image)
    height, width = rgb.shape[:2]
    new_h, new_w = resized_size(height, width, preprocess.resize_shorter_side)
    resized = image if (new_h, new_w) == (height, width) else image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    cropped, top, left = _center_crop(np.asarray(resized), preprocess.crop)
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
