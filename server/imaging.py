"""Image bytes or a tensor in, the model's input and the geometry that maps heatmaps back out.

Decoding adds the server's limits (formats, sizes, decompression bombs); the preprocessing itself is
onnxcam.preprocess, the public numpy + Pillow module an edge device runs too, so both make the same
pixels. EXIF orientation is applied first, so "the original image" everywhere means the image as a
viewer shows it.
"""

from __future__ import annotations

import functools
import io
import struct
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from onnxcam import preprocess as preprocessing
from server.config import DEFAULT_IMAGE_FORMATS
from server.errors import RequestError, invalid, quoted
from server.model_info import Preprocess

#: Encodings a request may carry by default; anything else is refused by name (``onnxcam serve
#: --image-formats`` widens the list).
FORMATS = DEFAULT_IMAGE_FORMATS
#: File signatures of the formats off by default, to name a refused one without parsing it.
_SIGNATURES = {b"GIF87a": "GIF", b"GIF89a": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
#: The EXIF tag onnxcam.preprocess's step 1 applies.
_ORIENTATION = 0x0112


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
    #: The original upright RGB image (a decoded image, or uint8 [height, width, 3] already).
    original: Image.Image | np.ndarray = field(repr=False)

    @functools.cached_property
    def rgb(self) -> np.ndarray:
        """The original image as uint8 [height, width, 3]: the overlay's background, made on first use
        only, since a request for raw maps never draws one (a copy of every pixel of the photo)."""
        return np.asarray(self.original)


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header; Pillow refuses zero sizes without saying so."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP" and len(data) >= 30:
        return _webp_size(data)
    if data.startswith(b"\xff\xd8"):
        pos = 2
        while pos + 9 <= len(data) and data[pos] == 0xFF:
            marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2:pos + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
                return width, height
            pos += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a WebP's first chunk (VP8X canvas, lossy VP8 or lossless VP8L frame)."""
    chunk = data[12:16]
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _too_many_pixels(data: bytes, max_pixels: int) -> RequestError:
    """Pillow's own bomb refusal quotes Pillow's limit; the caller needs the server's."""
    size = _declared_size(data)
    declared = f": {size[0]}x{size[1]} = {size[0] * size[1]}" if size else ""
    return invalid(f"image has too many pixels{declared}, the limit is {max_pixels} (onnxcam serve "
                   "--max-image-pixels)")


def _format_names(formats: tuple[str, ...]) -> str:
    return ", ".join("WebP" if name == "WEBP" else name for name in formats)


def open_header(data: bytes, max_pixels: int, formats: tuple[str, ...] = FORMATS) -> Image.Image:
    """The image as Pillow opens it lazily, in one of ``formats`` (Pillow's names): format and size read
    from the header, no pixel decoded. Only ``formats``' parsers ever see the bytes.

    Everything a request's cost depends on (width x height) is known here, so a request that would
    not fit the server's limits is refused before the decode; ``load`` decodes it afterwards.
    """
    if not data:
        raise invalid("image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(formats))  # lazy: reads the header only
    except Image.DecompressionBombError as error:
        raise _too_many_pixels(data, max_pixels) from error
    except UnidentifiedImageError as error:
        refused = next((name for signature, name in _SIGNATURES.items() if data.startswith(signature)), None)
        if refused is not None and refused not in formats:
            raise invalid(f"unsupported image format {refused}; send {_format_names(formats)} (onnxcam serve "
                          "--image-formats widens the list)") from error
        size = _declared_size(data)
        if size is not None and min(size) == 0:
            raise invalid(f"image has zero size ({size[0]}x{size[1]})") from error
        raise invalid(f"image is not a readable {_format_names(formats)} image (corrupt or unknown format, "
                      f"{len(data)} bytes)") from error
    except (OSError, SyntaxError, ValueError, TypeError, struct.error, IndexError) as error:
        raise invalid(f"image header is corrupt: {error}") from error
    width, height = image.size
    if width <= 0 or height <= 0:
        raise invalid(f"image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise invalid(f"image has too many pixels: {width}x{height} = {width * height}, the limit is {max_pixels} "
                      "(onnxcam serve --max-image-pixels)")
    return image


def load(image: Image.Image) -> Image.Image:
    """Decode an image from ``open_header`` into an upright RGB image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
            return _upright_rgb(image)
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, struct.error, IndexError) as error:
        raise invalid(f"{image.format} image is corrupt or truncated: {error}") from error


def _upright_rgb(image: Image.Image) -> Image.Image:
    """onnxcam.preprocess's steps 1 and 2; an RGB image without an EXIF rotation (most photos) is
    returned as it is, where ``upright_rgb`` makes two copies of it that hold the same pixels."""
    if image.mode == "RGB":
        try:
            orientation = image.getexif().get(_ORIENTATION, 1)
        except (OSError, SyntaxError, ValueError, KeyError, TypeError):
            orientation = None  # upright_rgb decides what an unreadable EXIF block means
        if orientation == 1:
            return image
    return preprocessing.upright_rgb(image)


def decode(data: bytes, max_pixels: int, formats: tuple[str, ...] = FORMATS) -> Image.Image:
    """Decode an encoded image in one of ``formats`` into an upright RGB image, refusing bombs before decoding."""
    return load(open_header(data, max_pixels, formats))


#: Kept for callers of the server's names; the code is onnxcam.preprocess's.
resized_size = preprocessing.resized_size
normalize = preprocessing.normalize


def prepare_image(image: Image.Image, preprocess: Preprocess) -> Prepared:
    """onnxcam.preprocess's steps 3-5 on a decoded upright RGB image, plus where the crop came from."""
    width, height = image.size
    resized = preprocessing.resize(image, preprocess)
    new_w, new_h = resized.size
    cropped, top, left = preprocessing.center_crop(np.asarray(resized), preprocess.crop)
    scale_y, scale_x = height / new_h, width / new_w
    geometry = Geometry(height, width, top * scale_y, left * scale_x, preprocess.crop[0] * scale_y,
                        preprocess.crop[1] * scale_x)
    return Prepared(normalize(cropped, preprocess), geometry, image)


def prepare_tensor(shape: list[int], data: np.ndarray, preprocess: Preprocess) -> Prepared:
    """An already preprocessed [3, H, W] tensor; its de-normalised self is the overlay background."""
    crop_h, crop_w = preprocess.crop
    if list(shape) != [3, crop_h, crop_w]:
        raise invalid(f"tensor shape {quoted(list(shape))} is wrong; this model takes [3, {crop_h}, {crop_w}]")
    if data.size != 3 * crop_h * crop_w:
        raise invalid(f"tensor has {data.size} values; shape {quoted(list(shape))} needs {3 * crop_h * crop_w}")
    if not np.isfinite(data).all():
        raise invalid("tensor holds NaN or infinite values")
    pixels = np.ascontiguousarray(data.astype(np.float32).reshape(3, crop_h, crop_w))
    std = np.asarray(preprocess.std, np.float32)[:, None, None]
    mean = np.asarray(preprocess.mean, np.float32)[:, None, None]
    with np.errstate(over="ignore", invalid="ignore"):  # huge values clip to 255 (the pipeline refuses them later)
        rgb = np.clip(np.rint((pixels * std + mean) / preprocess.scale), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return Prepared(pixels, Geometry(crop_h, crop_w, 0.0, 0.0, float(crop_h), float(crop_w)),
                    np.ascontiguousarray(rgb))
