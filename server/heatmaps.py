"""Raw maps to pictures: ReLU, min-max normalisation, bilinear upsampling to the original image,
grayscale and colour-overlay PNGs; RGB gradient images for the input-gradient maps. numpy and
Pillow only; nothing is encoded unless asked for."""

from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image

from onnxcam.contract import DISPLAY_EPS
from server.imaging import Geometry

#: zlib level for PNGs: 1 is several times faster than the default and barely larger for heatmaps.
PNG_COMPRESS_LEVEL = 1
#: zlib strategy: run-length matching only. After the PNG "up" filter a smooth map is mostly runs of
#: small differences, so this is about as small as level 1's default search and faster (bench/render.py).
PNG_ZLIB_STRATEGY = zlib.Z_RLE
OVERLAY_ALPHA = 0.5
#: The overlay's background term per byte value, (1 - alpha) * (b / 255) in float32: the same values the
#: per-pixel formula gives, looked up instead of computed.
_BACKGROUND = np.float32(1.0 - OVERLAY_ALPHA) * (np.arange(256, dtype=np.float32) / np.float32(255.0))
#: Output pixels drawn at a time: a block's float32 temporaries stay in the CPU's cache.
_BLOCK_PIXELS = 1 << 15
#: jet's channel centres (red, green, blue) on the [0, 4] ramp, halved (see _overlay_block).
_JET_HALF_CENTRES = (1.5, 1.0, 0.5)


def normalize(raw: np.ndarray) -> np.ndarray:
    """ReLU, then (m - min) / (max - min + 1e-7), as the maps people are shown everywhere else."""
    m = np.maximum(raw.astype(np.float32), 0)
    low, high = m.min(), m.max()
    return (m - low) / (high - low + np.float32(DISPLAY_EPS))


def _taps(out_size: int, in_size: int, start: float, length: float) -> tuple[np.ndarray, ...]:
    """Per output pixel: the two source indices, the weight of the second, and whether the pixel's
    center lies in the crop box (align_corners=False sampling; outside the box stays 0)."""
    centers = np.arange(out_size, dtype=np.float64) + 0.5
    src = np.clip((centers - start) / length * in_size - 0.5, 0.0, in_size - 1)
    low = np.floor(src).astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    inside = (centers >= start) & (centers < start + length)
    return low, high, (src - low).astype(np.float32), inside


def upsample(m: np.ndarray, geometry: Geometry) -> np.ndarray:
    """[h, w] at feature resolution -> [height, width] of the original image, bilinear with half-pixel
    centers. Gathers and lerps rather than matrix products: tiny BLAS calls are slow when OpenBLAS
    threads compete with ONNX Runtime's for the cores."""
    h, w = m.shape
    low_y, high_y, fy, inside_y = _taps(geometry.height, h, geometry.box_top, geometry.box_height)
    low_x, high_x, fx, inside_x = _taps(geometry.width, w, geometry.box_left, geometry.box_width)
    m = m.astype(np.float32)
    rows = m[low_y] * (1 - fy)[:, None] + m[high_y] * fy[:, None]
    out = rows[:, low_x] * (1 - fx) + rows[:, high_x] * fx
    out[~inside_y] = 0.0
    out[:, ~inside_x] = 0.0
    return out


def jet(values: np.ndarray) -> np.ndarray:
    """[..] in [0, 1] -> [.., 3] in [0, 1]: the classic jet ramp (blue, cyan, yellow, red)."""
    v = values[..., None] * 4.0
    return np.clip(1.5 - np.abs(v - np.asarray([3.0, 2.0, 1.0], np.float32)), 0.0, 1.0)


def to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(array: np.ndarray) -> bytes:
    """uint8 [h, w] (grayscale) or [h, w, 3] (RGB) -> PNG. Written here rather than by Pillow, whose
    encoder tries all five PNG filters on every row: one "up" filter (each row minus the row above, a
    numpy subtraction) and zlib's run-length strategy encode a map several times faster, for a few
    percent more bytes. Decoders give back exactly ``array``."""
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    if array.dtype != np.uint8 or channels not in (1, 3) or array.ndim not in (2, 3):
        raise ValueError(f"encode_png takes uint8 [h, w] or [h, w, 3], not {array.dtype} {list(array.shape)}")
    rows = np.ascontiguousarray(array).reshape(height, width * channels)
    filtered = np.empty((height, width * channels + 1), np.uint8)
    filtered[:, 0] = 2  # the "up" filter; the row above the first counts as zeros
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    compressor = zlib.compressobj(PNG_COMPRESS_LEVEL, zlib.DEFLATED, zlib.MAX_WBITS, 8, PNG_ZLIB_STRATEGY)
    data = compressor.compress(filtered) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0 if channels == 1 else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def gradient_image(raw: np.ndarray) -> np.ndarray:
    """[3, h, w] gradients -> [3, h, w] in [0, 1], as the Grad-CAM paper and pytorch-grad-cam's
    ``deprocess_image`` show guided maps: (g - mean) / (std + 1e-5) * 0.1 + 0.5, clipped."""
    g = raw.astype(np.float32)
    g = (g - g.mean()) / (g.std() + np.float32(1e-5))
    return np.clip(g * np.float32(0.1) + np.float32(0.5), 0.0, 1.0)


def render_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) of the pictures: the original size, scaled down (aspect kept) so that the
    longer side is at most ``max_side`` (0: no limit)."""
    if not max_side or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def for_display(geometry: Geometry, rgb: np.ndarray, max_side: int) -> tuple[Geometry, np.ndarray]:
    """The geometry and overlay background at the rendered size: the crop box scaled with the image,
    the photo resized with Pillow's BILINEAR (antialiased) filter. Unchanged under the cap."""
    height, width = render_size(geometry.height, geometry.width, max_side)
    if (height, width) == (geometry.height, geometry.width):
        return geometry, rgb
    sy, sx = height / geometry.height, width / geometry.width
    scaled = Geometry(height, width, geometry.box_top * sy, geometry.box_left * sx, geometry.box_height * sy,
                      geometry.box_width * sx)
    return scaled, np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))


def _block_rows(width: int) -> int:
    return max(1, _BLOCK_PIXELS // max(width, 1))


def draw(raw: np.ndarray, geometry: Geometry, rgb: np.ndarray, *, heatmap: bool,
         overlay: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A [h, w] map's grayscale heatmap [height, width] and jet overlay [height, width, 3] as uint8
    (None where not asked for): the pixels of ``to_uint8(upsample(normalize(raw)))`` and of
    ``to_uint8(alpha * jet(heat) + (1 - alpha) * rgb / 255)``, every float32 operation the same, but
    drawn a block of rows at a time (the temporaries stay in cache), with the background term looked
    up per byte value and jet's halving folded into its constants (scaling by 0.5 is exact in float
    arithmetic: 0.5 * clip(1.5 - |4h - k|, 0, 1) == clip(0.75 - |2h - k/2|, 0, 0.5) bit for bit).
    """
    height, width = geometry.height, geometry.width
    m = normalize(raw)
    h, w = m.shape
    low_y, high_y, fy, inside_y = _taps(height, h, geometry.box_top, geometry.box_height)
    low_x, high_x, fx, inside_x = _taps(width, w, geometry.box_left, geometry.box_width)
    rows = m[low_y] * (1 - fy)[:, None] + m[high_y] * fy[:, None]
    keep_x, outside_x = 1 - fx, ~inside_x
    any_outside_x = bool(outside_x.any())
    gray = np.empty((height, width), np.uint8) if heatmap else None
    color = np.empty((height, width, 3), np.uint8) if overlay else None
    step = _block_rows(width)
    for top in range(0, height, step):
        block = rows[top:top + step]
        heat = block[:, low_x] * keep_x
        heat += block[:, high_x] * fx
        heat[~inside_y[top:top + step]] = 0.0
        if any_outside_x:
            heat[:, outside_x] = 0.0
        if gray is not None:
            scaled = heat * np.float32(255.0)
            np.rint(scaled, out=scaled)
            np.clip(scaled, 0, 255, out=scaled)
            gray[top:top + step] = scaled
        if color is not None:
            _overlay_block(heat, rgb[top:top + step], color[top:top + step])
    return gray, color


def _overlay_block(heat: np.ndarray, rgb: np.ndarray, out: np.ndarray) -> None:
    """``to_uint8(alpha * jet(heat) + (1 - alpha) * rgb / 255)`` for a block of rows, into ``out``."""
    doubled = heat * np.float32(2.0)
    value = np.empty_like(heat)
    for channel, centre in enumerate(_JET_HALF_CENTRES):
        np.subtract(doubled, np.float32(centre), out=value)
        np.abs(value, out=value)
        np.subtract(np.float32(0.75), value, out=value)
        np.clip(value, np.float32(0.0), np.float32(OVERLAY_ALPHA), out=value)
        value += _BACKGROUND[rgb[..., channel]]
        value *= np.float32(255.0)
        np.rint(value, out=value)
        np.clip(value, 0, 255, out=value)
        out[..., channel] = value


def render(raw: np.ndarray, geometry: Geometry, rgb: np.ndarray, *, heatmap_png: bool,
           overlay_png: bool) -> tuple[bytes, bytes]:
    """The requested PNGs of one raw map: (heatmap or b"", overlay or b"").

    A [h, w] map becomes a grayscale heatmap and a jet overlay; a [3, h, w] gradient map (deconvnet,
    guided backpropagation, Guided Grad-CAM) an RGB gradient image, and that image over the photo.
    """
    if not heatmap_png and not overlay_png:
        return b"", b""
    if raw.ndim == 2:
        gray, color = draw(raw, geometry, rgb, heatmap=heatmap_png, overlay=overlay_png)
        return (encode_png(gray) if gray is not None else b"", encode_png(color) if color is not None else b"")
    picture = np.stack([upsample(channel, geometry) for channel in gradient_image(raw)], axis=-1)
    shown = encode_png(to_uint8(picture)) if heatmap_png else b""
    overlay = b""
    if overlay_png:
        blended = OVERLAY_ALPHA * picture + (1.0 - OVERLAY_ALPHA) * (rgb.astype(np.float32) / 255.0)
        overlay = encode_png(to_uint8(blended))
    return shown, overlay
