"""model.json and the ONNX metadata that mirrors it, and how a finished folder replaces the old one.

An export is written into a hidden sibling folder and swapped in only when complete, so a failure
at any step (a check, a full disk, a value model.json cannot hold) leaves the old folder as it was
and servable; the server skips hidden folders, so it never sees a half-written one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from exporter.errors import ExportError
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


def check_preprocessing(input_size: tuple[int, int], resize: int | None, mean, std) -> dict[str, Any]:
    """model.json's ``preprocess`` for these values, refused (ExportError) when the server would refuse
    the folder or compute nonsense with it: checked before minutes of tracing, not after."""
    try:
        values = [float(v) for v in (*mean, *std)]
        spec = preprocessing(input_size, resize, mean, std)
        preprocess.spec_from_dict(spec, tuple(input_size))
    except (TypeError, ValueError) as error:
        raise ExportError(f"invalid preprocessing (input size {list(input_size)}, resize {resize}, mean "
                          f"{list(mean)}, std {list(std)}): {error}") from error
    if not all(math.isfinite(v) for v in values):
        raise ExportError(f"mean {list(mean)} and std {list(std)} must be finite numbers")
    if min(float(v) for v in std) <= 0:
        raise ExportError(f"std {list(std)}: every channel's std must be positive (pixels are divided by it)")
    return spec


def staging_dir(out_dir: Path) -> Path:
    """A new hidden folder beside ``out_dir`` (same file system, so the swap is a rename)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".export", dir=out_dir.parent))
    # mkdtemp's folder is private (0700); the model folder gets the old one's mode, or mkdir's
    umask = os.umask(0o022)
    os.umask(umask)
    mode = out_dir.stat().st_mode & 0o7777 if out_dir.is_dir() else 0o777 & ~umask
    os.chmod(staging, mode)
    return staging


def swap_in(staging: Path, out_dir: Path, produced: set[str]) -> None:
    """Make ``staging`` the folder ``out_dir``. What the old folder holds besides an export's own files
    (``produced``: its recipe.json, a README) is carried over; the old folder is removed last."""
    if out_dir.is_dir():
        for entry in out_dir.iterdir():
            if entry.name in produced or entry.name.endswith(".tmp") or (staging / entry.name).exists():
                continue
            if entry.is_dir():
                shutil.copytree(entry, staging / entry.name, symlinks=True)
            else:
                shutil.copy2(entry, staging / entry.name, follow_symlinks=False)
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
        os.replace(out_dir, old / out_dir.name)
        try:
            os.replace(staging, out_dir)
        except OSError:
            os.replace(old / out_dir.name, out_dir)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out_dir)
