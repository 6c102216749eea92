"""Raw maps to pictures: ReLU, min-max normalisation, bilinear upsampling to the original image,
grayscale and colour-overlay PNGs; RGB gradient images for the input-gradient maps. numpy and
Pillow only; nothing is encoded unless asked for."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from onnxcam.contract import DISPLAY_EPS
from server.imaging import Geometry

#: zlib level for PNGs: 1 is several times faster than the default and barely larger for heatmaps.
PNG_COMPRESS_LEVEL = 1
OVERLAY_ALPHA = 0.5


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
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


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


def render(raw: np.ndarray, geometry: Geometry, rgb: np.ndarray, *, heatmap_png: bool,
           overlay_png: bool) -> tuple[bytes, bytes]:
    """The requested PNGs of one raw map: (heatmap or b"", overlay or b"").

    A [h, w] map becomes a grayscale heatmap and a jet overlay; a [3, h, w] gradient map (deconvnet,
    guided backpropagation, Guided Grad-CAM) an RGB gradient image, and that image over the photo.
    """
    if not heatmap_png and not overlay_png:
        return b"", b""
    if raw.ndim == 3:
        picture = np.stack([upsample(channel, geometry) for channel in gradient_image(raw)], axis=-1)
        shown = encode_png(to_uint8(picture)) if heatmap_png else b""
    else:
        heat = upsample(normalize(raw), geometry)
        shown = encode_png(to_uint8(heat)) if heatmap_png else b""
        picture = jet(heat) if overlay_png else None
    overlay = b""
    if overlay_png:
        blended = OVERLAY_ALPHA * picture + (1.0 - OVERLAY_ALPHA) * (rgb.astype(np.float32) / 255.0)
        overlay = encode_png(to_uint8(blended))
    return shown, overlay
