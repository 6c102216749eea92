"""uint8 pictures to PNG bytes, fast: one fixed filter per picture kind and deflate at its fastest
useful level, through ISA-L (the optional ``isal`` package: the ``render`` extra) when it is installed,
else zlib. Pillow's encoder tries all five PNG filters on every row; for the maps this is several times
slower for about the same size (bench/render.py). Any decoder gives back exactly the array given."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

import numpy as np

try:  # ISA-L's deflate: a standard zlib stream, about four times faster than zlib's level 1 here
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - depends on the installation
    _isal = None

#: zlib's level when ISA-L is not installed: 1 is several times faster than the default and barely larger.
ZLIB_LEVEL = 1
#: ISA-L's level: 1 is as fast as its 0 and a tenth smaller.
ISAL_LEVEL = 1
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG filter types. "sub" (each byte minus the one a pixel to the left) suits a grayscale map, smooth
#: along rows; "up" (minus the byte above) compresses photo overlays best of the two.
_SUB, _UP = 1, 2


def _zlib(data: np.ndarray) -> bytes:
    return zlib.compress(data, ZLIB_LEVEL)


def _isal_zlib(data: np.ndarray) -> bytes:
    return _isal.compress(data, ISAL_LEVEL)


#: The compressors this installation has, by name (bench/render.py and the tests compare them).
COMPRESSORS: dict[str, Callable[[np.ndarray], bytes]] = {"zlib": _zlib, **({"isal": _isal_zlib} if _isal else {})}
DEFAULT_COMPRESSOR = "isal" if _isal else "zlib"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def filtered_rows(array: np.ndarray) -> np.ndarray:
    """The PNG scanlines of uint8 [h, w] or [h, w, 3]: each row's filter type byte, then the row filtered."""
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    rows = np.ascontiguousarray(array).reshape(height, width * channels)
    lines = np.empty((height, width * channels + 1), np.uint8)
    if channels == 1:
        lines[:, 0] = _SUB
        lines[:, 1] = rows[:, 0]
        np.subtract(rows[:, 1:], rows[:, :-1], out=lines[:, 2:])
    else:
        lines[:, 0] = _UP  # the row above the first counts as zeros
        lines[0, 1:] = rows[0]
        np.subtract(rows[1:], rows[:-1], out=lines[1:, 1:])
    return lines


def encode(array: np.ndarray, compressor: str = DEFAULT_COMPRESSOR) -> bytes:
    """uint8 [h, w] (grayscale) or [h, w, 3] (RGB), h and w >= 1, -> PNG bytes."""
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)) \
            or 0 in array.shape:
        raise ValueError(f"a PNG is drawn from uint8 [h, w] or [h, w, 3], not {array.dtype} {list(array.shape)}")
    height, width = array.shape[:2]
    header = struct.pack(">IIBBBBB", width, height, 8, 0 if array.ndim == 2 else 2, 0, 0, 0)
    data = COMPRESSORS[compressor](filtered_rows(array))
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
