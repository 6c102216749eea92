"""Open Inference Protocol tensors <-> numpy: the wire formats of ModelInfer's inputs and outputs.

A tensor arrives either typed (``contents.fp32_contents``...) or as raw little-endian bytes
(``raw_input_contents``, positional, which tritonclient sends); BYTES elements in raw form are each a
4-byte little-endian length and the bytes. Outputs always go back raw, as Triton answers tritonclient.
Every refusal names the tensor, so a client knows which of its inputs to fix.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onnxcam.proto import grpc_service_pb2 as oip
from server.errors import invalid, quoted

#: Datatype names of the protocol -> numpy dtypes (little-endian), and the typed contents field.
NUMERIC = {"FP32": (np.dtype("<f4"), "fp32_contents"), "FP64": (np.dtype("<f8"), "fp64_contents"),
           "INT64": (np.dtype("<i8"), "int64_contents"), "INT32": (np.dtype("<i4"), "int_contents")}
BYTES = "BYTES"


@dataclass(frozen=True)
class Tensor:
    """A decoded input: numeric values as an array of its shape, BYTES as a flat list of elements."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray | list[bytes]


def split_bytes(name: str, raw: bytes) -> list[bytes]:
    """Raw BYTES contents: each element is a uint32 little-endian length, then that many bytes."""
    elements, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise invalid(f"input {quoted(name)}: raw BYTES contents end inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + length > len(raw):
            raise invalid(f"input {quoted(name)}: a BYTES element says {length} bytes, {len(raw) - pos} are left")
        elements.append(raw[pos:pos + length])
        pos += length
    return elements


def join_bytes(elements: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def decode_inputs(request: oip.ModelInferRequest) -> dict[str, Tensor]:
    """Every input of the request by name; the element count must match the declared shape."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise invalid(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: with raw contents, every "
                      "input carries one, in the order of inputs")
    tensors: dict[str, Tensor] = {}
    for position, item in enumerate(request.inputs):
        name, datatype, shape = item.name, item.datatype, tuple(int(d) for d in item.shape)
        if name in tensors:
            raise invalid(f"input {quoted(name)} is given twice")
        if any(d < 0 for d in shape):
            raise invalid(f"input {quoted(name)} has a negative dimension in its shape {quoted(list(shape))}")
        count = math.prod(shape)
        if datatype == BYTES:
            values: np.ndarray | list[bytes] = (split_bytes(name, raw[position]) if raw
                                                else list(item.contents.bytes_contents))
            found = len(values)
        elif datatype in NUMERIC:
            dtype, field = NUMERIC[datatype]
            if raw:
                if len(raw[position]) % dtype.itemsize:
                    raise invalid(f"input {quoted(name)}: {len(raw[position])} raw bytes are not whole "
                                  f"{quoted(datatype)} values")
                array = np.frombuffer(raw[position], dtype=dtype)
            else:
                array = np.asarray(getattr(item.contents, field), dtype=dtype)
            found = array.size
            values = array.reshape(shape) if found == count else array
        else:
            shown = quoted(datatype) if datatype else "(none)"
            raise invalid(f"input {quoted(name)} has datatype {shown}; this server reads FP32, FP64, "
                          "INT32, INT64 and BYTES")
        if found != count:
            raise invalid(f"input {quoted(name)} has shape {quoted(list(shape))} ({count} elements) but carries "
                          f"{found}")
        tensors[name] = Tensor(name, datatype, shape, values)
    return tensors


def add_output(response: oip.ModelInferResponse, name: str, value: np.ndarray | Sequence[bytes],
               shape: Sequence[int] | None = None) -> None:
    """Append one output in raw form: a numpy array (its dtype decides the datatype) or BYTES elements."""
    output = response.outputs.add(name=name)
    if isinstance(value, np.ndarray):
        datatype = next(n for n, (dtype, _) in NUMERIC.items() if dtype == value.dtype.newbyteorder("<"))
        output.datatype = datatype
        output.shape.extend(value.shape)
        response.raw_output_contents.append(np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
                                            .tobytes())
    else:
        output.datatype = BYTES
        output.shape.extend(shape if shape is not None else [len(value)])
        response.raw_output_contents.append(join_bytes(value))
