"""Shared pieces of the server and client tests (no tests here): a model repository built from the
exported tiny model, an in-process server on a free loopback port, and test images."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from server.app import ExplainerServer
from server.config import ServerConfig
from server.repository import load_repository


def make_repository(tiny_model_dir: Path, root: Path) -> Path:
    """root/tiny (the export), root/nocam (the same graphs, model.json without CAM) and root/broken."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tiny_model_dir, root / "tiny")
    shutil.copytree(tiny_model_dir, root / "nocam")
    meta = json.loads((root / "nocam" / "model.json").read_text())
    meta.update(name="nocam", cam=None, methods=[m for m in meta["methods"] if m != "cam"])
    (root / "nocam" / "model.json").write_text(json.dumps(meta))
    (root / "nocam" / "cam_linear.npz").unlink()
    (root / "broken").mkdir()
    (root / "broken" / "model.json").write_text("{not json")
    return root


def config(**overrides) -> ServerConfig:
    """Loopback, a free port, one ORT thread per session (the test machine has two cores)."""
    base = dict(host="127.0.0.1", port=0, workers=8, intra_op_threads=1, inter_op_threads=1, grace_s=5.0)
    base.update(overrides)
    return ServerConfig(**base)


@contextmanager
def running_server(models_dir: Path, **overrides) -> Iterator[ExplainerServer]:
    cfg = config(**overrides)
    server = ExplainerServer(load_repository(models_dir, cfg), cfg).start()
    try:
        yield server
    finally:
        server.stop(0)


def rgb_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth structure plus noise: something a conv net reacts to differently across the image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([128 + 100 * np.sin(x / (3 + c) + y / (5 + c) + seed) for c in range(3)], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_from_chunks(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height; the pixel data is a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def wait_until(condition: Callable[[], bool], what: str, limit_s: float = 30.0) -> None:
    """Poll for a state change on the server (a guard, not a timing assertion)."""
    stop = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > stop:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def node_with_packages(folder: Path, marker: str, *npm_args: str) -> str:
    """``node``, with ``folder``'s npm packages installed (``npm ci``) when ``node_modules/marker`` is
    missing. Skips without node; an install that fails skips outside CI and fails in CI (CI=true)."""
    import pytest

    node = shutil.which("node")
    if node is None:
        pytest.skip(f"node is not installed: {folder.name} cannot be tested here")
    if not (folder / "node_modules" / marker).is_dir():
        npm = shutil.which("npm")
        done = subprocess.run([npm, "ci", *npm_args, "--no-audit", "--no-fund"], cwd=folder, capture_output=True,
                              text=True, timeout=600) if npm else None
        if done is None or done.returncode != 0:
            why = "npm is missing" if done is None else done.stderr[-2000:]
            if os.environ.get("CI"):
                pytest.fail(f"cannot install {folder.name}'s packages: {why}")
            pytest.skip(f"cannot install {folder.name}'s packages (npm ci): {why}")
    return node
