"""Raw maps to pictures: ReLU, min-max normalisation, bilinear upsampling to the original image,
grayscale and colour-overlay PNGs; RGB gradient images for the input-gradient maps. numpy and
Pillow (and server.png's encoder); nothing is encoded unless asked for. bench/render.py measures it."""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image

from onnxcam.contract import DISPLAY_EPS
from server import png
from server.imaging import Geometry

OVERLAY_ALPHA = 0.5
#: (1 - alpha) * (b / 255) == b / _BACKGROUND_DIVISOR exactly in float32 while 1 - alpha is 0.5.
_BACKGROUND_DIVISOR = np.float32(255.0 / (1.0 - OVERLAY_ALPHA))
#: Output pixels drawn at a time: a block's float32 temporaries stay in the CPU's cache.
_BLOCK_PIXELS = 1 << 16
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


def encode_png(array: np.ndarray) -> bytes:
    """uint8 [h, w] or [h, w, 3] -> PNG (server.png: decoders give back exactly ``array``)."""
    return png.encode(array)


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


#: Adding 2**23 to a float32 in [0, 2**23) rounds it to the nearest integer, ties to even (np.rint's
#: rule), and leaves that integer in the low mantissa bits: the low byte of the float's bits is then
#: the pixel for values 0..255, with no float-to-integer conversion (numpy's is not vectorised).
_ROUNDING = np.float32(2.0**23)
_LOW_BYTE = 0 if sys.byteorder == "little" else 3


def _store_rounded(values: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = np.rint(values)`` for float32 values in [0, 255], through ``_ROUNDING``."""
    values += _ROUNDING
    out[...] = values.reshape(-1).view(np.uint8)[_LOW_BYTE::4].reshape(values.shape)


def draw(raw: np.ndarray, geometry: Geometry, rgb: np.ndarray, *, heatmap: bool,
         overlay: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A [h, w] map's grayscale heatmap [height, width] and jet overlay [height, width, 3] as uint8
    (None where not asked for): the pixels of ``to_uint8(upsample(normalize(raw)))`` and of
    ``to_uint8(alpha * jet(heat) + (1 - alpha) * rgb / 255)`` with every rounding the same, but drawn a
    block of rows at a time (the temporaries stay in cache) and with fewer operations: jet's halving
    is folded into its constants and the background's into its divisor (scaling by 0.5 is exact in
    float arithmetic, so 0.5 * clip(1.5 - |4h - k|, 0, 1) == clip(0.75 - |2h - k/2|, 0, 0.5) and
    0.5 * (b / 255) == b / 510 bit for bit); clipping to [0, 255] is dropped because finite values
    cannot leave it (heat <= 1 and alpha * jet + (1 - alpha) * b / 255 <= 1). A map with NaN or
    infinity (or a background other than uint8) takes the formulas as written.
    """
    m = normalize(raw)
    if not np.isfinite(m).all() or (overlay and rgb.dtype != np.uint8):
        return _draw_as_written(m, geometry, rgb, heatmap=heatmap, overlay=overlay)
    height, width = geometry.height, geometry.width
    h, w = m.shape
    low_y, high_y, fy, inside_y = _taps(height, h, geometry.box_top, geometry.box_height)
    low_x, high_x, fx, inside_x = _taps(width, w, geometry.box_left, geometry.box_width)
    rows = m[low_y] * (1 - fy)[:, None] + m[high_y] * fy[:, None]
    rows[~inside_y] = 0.0  # the same zeros as masking the upsampled rows: each is a sum of two products
    keep_x, (first_x, stop_x) = 1 - fx, _span(inside_x)
    segments = _segments(low_x, high_x)
    gray = np.empty((height, width), np.uint8) if heatmap else None
    color = np.empty((height, width, 3), np.uint8) if overlay else None
    step = _block_rows(width)
    for top in range(0, height, step):
        block = rows[top:top + step]
        if len(segments) * 8 <= width:  # few source columns: broadcast products, no gathers
            heat, far = np.empty((len(block), width), np.float32), np.empty((len(block), width), np.float32)
            for start, stop, low, high in segments:
                np.multiply(block[:, low, None], keep_x[start:stop], out=heat[:, start:stop])
                np.multiply(block[:, high, None], fx[start:stop], out=far[:, start:stop])
            heat += far
        else:
            heat = block[:, low_x] * keep_x
            heat += block[:, high_x] * fx
        heat[:, :first_x] = 0.0
        heat[:, stop_x:] = 0.0
        if gray is not None:
            _store_rounded(heat * np.float32(255.0), gray[top:top + step])
        if color is not None:
            _overlay_block(heat, rgb[top:top + step], color[top:top + step])
    return gray, color


def _span(inside: np.ndarray) -> tuple[int, int]:
    """[first, stop) of the True run in ``inside`` (the crop box is one interval); (0, 0) when none."""
    where = np.flatnonzero(inside)
    return (int(where[0]), int(where[-1]) + 1) if len(where) else (0, 0)


def _segments(low: np.ndarray, high: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(start, stop, low, high): the runs of output columns that read the same two source columns."""
    change = np.flatnonzero((low[1:] != low[:-1]) | (high[1:] != high[:-1])) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [len(low)]])
    return [(int(a), int(b), int(low[a]), int(high[a])) for a, b in zip(starts, stops, strict=True)]


def _overlay_block(heat: np.ndarray, rgb: np.ndarray, out: np.ndarray) -> None:
    """``to_uint8(alpha * jet(heat) + (1 - alpha) * rgb / 255)`` for a block of rows, into ``out``."""
    doubled = heat * np.float32(2.0)
    value, background = np.empty_like(heat), np.empty_like(heat)
    for channel, centre in enumerate(_JET_HALF_CENTRES):
        np.subtract(doubled, np.float32(centre), out=value)
        np.abs(value, out=value)
        np.subtract(np.float32(0.75), value, out=value)
        np.clip(value, np.float32(0.0), np.float32(OVERLAY_ALPHA), out=value)
        background[...] = rgb[..., channel]
        background /= _BACKGROUND_DIVISOR
        value += background
        value *= np.float32(255.0)
        _store_rounded(value, out[..., channel])


def _draw_as_written(m: np.ndarray, geometry: Geometry, rgb: np.ndarray, *, heatmap: bool,
                     overlay: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The formulas as written, for what the fast path leaves alone (NaN or infinity, a float background)."""
    heat = upsample(m, geometry)
    gray = to_uint8(heat) if heatmap else None
    color = None
    if overlay:
        color = to_uint8(OVERLAY_ALPHA * jet(heat) + (1.0 - OVERLAY_ALPHA) * (rgb.astype(np.float32) / 255.0))
    return gray, color


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
