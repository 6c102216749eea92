"""model.json and the ONNX metadata that mirrors it: what the server learns about a model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from onnxcam import contract, preprocess

FORMAT_VERSION = 1


def preprocessing(input_size: tuple[int, int], resize: int | None, mean, std) -> dict[str, Any]:
    """Resize the shorter side, center-crop to input_size, scale to [0, 1], then (x - mean) / std.

    ``rules`` spells out what the numbers leave open (rounding, interpolation, EXIF, colour), so that
    the graphs' ``onnxcam.preprocess`` metadata is enough to reimplement onnxcam.preprocess elsewhere.
    """
    height, width = input_size
    return {
        "color": "RGB",
        "layout": "NCHW",
        "resize_shorter_side": int(resize if resize is not None else round(min(height, width) * 256 / 224)),
        "center_crop": [int(height), int(width)],
        "scale": 1.0 / 255.0,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "rules": dict(preprocess.RULES),
    }


def onnx_metadata(model_json: dict[str, Any]) -> dict[str, str]:
    """Each top-level model.json entry as one metadata_props entry, JSON-encoded."""
    return {f"onnxcam.{key}": json.dumps(value) for key, value in model_json.items()}


def write_model_json(out_dir: Path, model_json: dict[str, Any]) -> Path:
    """Write atomically: a server reading the folder never sees half a file."""
    path = out_dir / contract.MODEL_JSON
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(model_json, indent=2) + "\n")
    os.replace(tmp, path)
    return path
