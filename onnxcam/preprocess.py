"""The model's preprocessing, public and torch-free (numpy + Pillow): the server runs this very code,
so pixels made here on an edge device are the pixels the server feeds the graph.

The steps, in order (each is also spelled out in model.json's ``preprocess.rules`` and so in the ONNX
graphs' ``onnxcam.preprocess`` metadata, enough to reimplement them in another language):

1. EXIF orientation is applied (``PIL.ImageOps.exif_transpose``): the image as a viewer shows it.
2. Colour: Pillow's ``convert("RGB")``; 16-bit greys are scaled by 255/65535 (Pillow would clip them),
   a palette with transparency goes through RGBA; alpha is dropped, not composited.
3. Resize: the shorter side becomes ``resize_shorter_side``, the longer one
   ``floor(resize_shorter_side * longer / shorter)`` (at least 1), computed in float64, as
   torchvision's ``Resize(int)`` does. Pillow's ``Image.Resampling.BILINEAR`` filter on the 8-bit
   image: a separable triangle filter over half-pixel centres whose support widens with the
   shrink factor (antialiased, like torchvision's ``antialias=True``), results rounded to uint8.
   An image already at that size is not resampled.
4. Centre crop to ``crop`` [H, W]: offset ``round_half_even((resized - crop) / 2)`` on each axis
   (Python's ``round``, as torchvision's ``CenterCrop``); where the crop is larger, zeros pad it.
5. ``(x * scale - mean) / std`` per channel in float32, channels first: float32 [3, H, W].
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

#: model.json's ``preprocess.rules``: the fixed parts of the algorithm above, written next to the
#: numbers so that a reader of the graph metadata alone can reproduce the pixels.
RULES: dict[str, str] = {
    "reference": "onnxcam.preprocess.preprocess (numpy + Pillow), the code the server runs",
    "exif_orientation": "applied first (PIL.ImageOps.exif_transpose)",
    "color": "Pillow convert('RGB'); 16-bit grey scaled by 255/65535; palette with transparency via RGBA; "
             "alpha dropped, not composited",
    "resize": "shorter side -> resize_shorter_side; longer side -> floor(resize_shorter_side * longer / shorter), "
              "at least 1, in float64 (torchvision Resize(int)); skipped when the size is already right",
    "interpolation": "Pillow Image.Resampling.BILINEAR on the uint8 RGB image: separable triangle filter, "
                     "half-pixel centres, support scaled by the shrink factor (antialiased), rounded to uint8",
    "crop": "centre crop to center_crop [H, W]: top = round_half_even((resized_h - H) / 2), "
            "left = round_half_even((resized_w - W) / 2) (torchvision CenterCrop); zero padding where the crop "
            "is larger",
    "normalize": "float32 (x * scale - mean[c]) / std[c], channels first [3, H, W]; batch as [N, 3, H, W]",
}


class SpecError(ValueError):
    """A preprocess description this code cannot follow."""


@dataclass(frozen=True)
class Spec:
    """The numbers of the preprocessing: RGB, shorter side resized, centre crop, scale, mean, std."""

    resize_shorter_side: int
    crop: tuple[int, int]
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    color: str = "RGB"
    layout: str = "NCHW"


def spec_from_dict(data: dict[str, Any], input_size: tuple[int, int] | None = None) -> Spec:
    """A Spec from model.json's ``preprocess`` object (``input_size`` when the crop is left out)."""
    color, layout = data.get("color", "RGB"), data.get("layout", "NCHW")
    if color != "RGB" or layout != "NCHW":
        raise SpecError(f"preprocess {color}/{layout} is not supported (RGB/NCHW only)")
    if "center_crop" not in data and input_size is None:
        raise SpecError("preprocess has no center_crop")
    crop = tuple(int(v) for v in data.get("center_crop", input_size or ()))
    if len(crop) != 2 or min(crop) <= 0:
        raise SpecError(f"center_crop {list(crop)} is not [H, W]")
    if input_size is not None and crop != tuple(input_size):
        raise SpecError(f"center_crop {list(crop)} differs from input_size {list(input_size)}")
    if "mean" not in data or "std" not in data:
        raise SpecError("preprocess needs mean and std")
    mean = tuple(float(v) for v in data["mean"])
    std = tuple(float(v) for v in data["std"])
    if len(mean) != 3 or len(std) != 3 or min(abs(s) for s in std) == 0:
        raise SpecError("preprocess mean and std need 3 values each, std non-zero")
    if not all(math.isfinite(v) for v in (*mean, *std)):
        raise SpecError(f"preprocess mean {list(mean)} and std {list(std)} must be finite numbers")
    resize = int(data.get("resize_shorter_side", min(crop)))
    if resize < min(crop):
        raise SpecError(f"resize_shorter_side {resize} is smaller than the crop {list(crop)}")
    return Spec(resize_shorter_side=resize, crop=crop, scale=float(data.get("scale", 1 / 255)),  # type: ignore[arg-type]
                mean=mean, std=std)  # type: ignore[arg-type]


def spec_from_message(message: Any) -> Spec:
    """A Spec from GetModelMetadata's ``preprocess`` (an ``onnxcam.v1.Preprocess`` message): what a
    client of a running server preprocesses with."""
    return Spec(resize_shorter_side=message.resize_shorter_side, crop=(message.crop_height, message.crop_width),
                scale=message.scale, mean=tuple(message.mean), std=tuple(message.std))  # type: ignore[arg-type]


def read_spec(source: str | Path) -> Spec:
    """The Spec of a model folder (its model.json) or of one of its .onnx graphs (the
    ``onnxcam.preprocess`` metadata entry, which every exported graph carries)."""
    path = Path(source)
    if path.is_dir():
        data = json.loads((path / "model.json").read_text(encoding="utf-8"))
        size = data.get("input_size")
        return spec_from_dict(data["preprocess"], tuple(int(v) for v in size) if size else None)
    import onnx  # a dependency of the serving side; only needed for this branch

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if "onnxcam.preprocess" not in meta:
        raise SpecError(f"{path} has no onnxcam.preprocess metadata (not exported by onnxcam?)")
    return spec_from_dict(json.loads(meta["onnxcam.preprocess"]))


def to_rgb(image: Image.Image) -> Image.Image:
    """Step 2: any Pillow mode to 8-bit RGB, without clipping 16-bit images."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(np.rint(array * 255.0 / top), 0, 255).astype(np.uint8), "L")
    elif image.mode in ("P", "PA") and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def upright_rgb(image: Image.Image) -> Image.Image:
    """Steps 1 and 2 on a loaded image; an unreadable EXIF block keeps the stored orientation."""
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError):
        pass
    return to_rgb(image)


def resized_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """Step 3's size: the shorter side becomes ``shorter``, the longer one is truncated."""
    if height <= width:
        return shorter, max(1, int(shorter * width / height))
    return max(1, int(shorter * height / width)), shorter


def resize(image: Image.Image, spec: Spec) -> Image.Image:
    """Step 3 on an RGB image."""
    width, height = image.size
    new_h, new_w = resized_size(height, width, spec.resize_shorter_side)
    if (new_h, new_w) == (height, width):
        return image
    return image.resize((new_w, new_h), Image.Resampling.BILINEAR)


def center_crop(array: np.ndarray, crop: tuple[int, int]) -> tuple[np.ndarray, int, int]:
    """Step 4: (crop, top, left); top/left are negative where zeros pad a smaller image."""
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


def crop_box(height: int, width: int, spec: Spec) -> tuple[float, float, float, float]:
    """(top, left, height, width) of the part of a ``height`` x ``width`` image the model sees, in the
    image's pixels: what a heatmap covers (outside it the maps are 0)."""
    new_h, new_w = resized_size(height, width, spec.resize_shorter_side)
    crop_h, crop_w = spec.crop
    top, left = int(round((new_h - crop_h) / 2.0)), int(round((new_w - crop_w) / 2.0))
    sy, sx = height / new_h, width / new_w
    return top * sy, left * sx, crop_h * sy, crop_w * sx


def normalize(array: np.ndarray, spec: Spec) -> np.ndarray:
    """Step 5: uint8 HWC -> float32 CHW, x * scale, then (x - mean) / std.

    The same float32 operations in the same order as the rule says, so the same bits; the uint8
    image is made channels-first before the conversion and the arithmetic runs in place, which takes
    a sixth of the time of converting a strided view and allocating a new array per operation.
    """
    x = np.ascontiguousarray(array.transpose(2, 0, 1)).astype(np.float32)
    x *= np.float32(spec.scale)
    x -= np.asarray(spec.mean, np.float32)[:, None, None]
    x /= np.asarray(spec.std, np.float32)[:, None, None]
    return x


def open_image(image: str | Path | bytes | Image.Image) -> Image.Image:
    """A path, encoded bytes or a PIL image, loaded and upright RGB (steps 1 and 2)."""
    if isinstance(image, Image.Image):
        image.load()
        return upright_rgb(image)
    source = io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image
    with Image.open(source) as opened:
        opened.load()
        return upright_rgb(opened)


def preprocess(image: str | Path | bytes | Image.Image, spec: Spec) -> np.ndarray:
    """The model's input for one image: float32 [3, H, W] (add ``[None]`` for a batch of one).

    Accepts a file path, encoded JPEG/PNG/WebP bytes or a PIL image. The server's own limits (size,
    formats, decompression bombs) are not applied here.
    """
    cropped, _, _ = center_crop(np.asarray(resize(open_image(image), spec)), spec.crop)
    return normalize(cropped, spec)
