"""Hypothesis strategies for fuzzing the server's input handling (no tests here): random bytes,
mutated JPEG/PNG/WebP files (truncations, bit flips, rewritten headers and dimension fields, spliced
garbage) and random ExplainRequest messages (any field value, unknown enum values, huge and
negative numbers, empty and long strings). Shared by tests/test_fuzz.py and bench/fuzz.py."""

from __future__ import annotations

import io
import struct

import numpy as np
from hypothesis import strategies as st
from PIL import Image

from onnxcam.proto import explainer_pb2 as pb

INT32 = st.integers(-2**31, 2**31 - 1)
UINT64 = st.integers(0, 2**64 - 1)
FLOAT32 = st.floats(width=32)  # NaN, infinities, subnormals, huge values included


def _image(height: int, width: int, fmt: str, seed: int, **options) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([128 + 100 * np.sin(x / (3 + c) + y / (5 + c)) for c in range(3)], axis=-1)
    array = np.clip(array + rng.normal(0, 20, array.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


#: Valid files to mutate: each encoder's common variants (baseline and progressive JPEG, RGB and
#: palette PNG with EXIF-free chunks, lossy and lossless WebP), small so a mutation decodes quickly.
SEEDS: tuple[bytes, ...] = (
    _image(24, 32, "JPEG", 0, quality=85),
    _image(17, 9, "JPEG", 1, quality=60, progressive=True),
    _image(24, 32, "PNG", 2),
    _image(8, 40, "PNG", 3, optimize=True),
    _image(20, 20, "WEBP", 4, quality=70),
    _image(12, 16, "WEBP", 5, lossless=True),
)


def _dimension_offsets(data: bytes) -> list[tuple[int, str]]:
    """Where a file keeps its width and height, and their struct format: the fields a bomb rewrites."""
    offsets: list[tuple[int, str]] = []
    if data.startswith(b"\x89PNG"):
        offsets += [(16, ">I"), (20, ">I")]
    elif data.startswith(b"\xff\xd8"):
        for marker in (b"\xff\xc0", b"\xff\xc2"):
            sof = data.find(marker)
            if sof > 0:
                offsets += [(sof + 5, ">H"), (sof + 7, ">H")]
    elif data[8:12] == b"WEBP":
        chunk = data[12:16]
        offsets += [(24, "<H"), (27, "<H")] if chunk == b"VP8X" else [(26, "<H"), (28, "<H")] \
            if chunk == b"VP8 " else [(21, "<I")]
    return offsets


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A seed file after one to three mutations."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(("truncate", "flip", "header", "dimension", "splice", "chunk")))
        if kind == "truncate" and data:
            data = data[:draw(st.integers(0, len(data) - 1))]
        elif kind == "flip" and data:
            for _ in range(draw(st.integers(1, 8))):
                position = draw(st.integers(0, len(data) - 1))
                data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "header" and data:
            position = draw(st.integers(0, min(len(data), 64) - 1))
            patch = draw(st.binary(min_size=1, max_size=8))
            data[position:position + len(patch)] = patch
        elif kind == "dimension":
            offsets = _dimension_offsets(bytes(data))
            if offsets:
                offset, fmt = draw(st.sampled_from(offsets))
                bits = 8 * struct.calcsize(fmt)
                edges = st.sampled_from([0, 1, 2**bits - 1, 2**(bits - 1)])
                value = draw(st.one_of(edges, st.integers(0, 2**bits - 1)))
                if offset + struct.calcsize(fmt) <= len(data):
                    data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
        elif kind == "splice":
            position = draw(st.integers(0, len(data)))
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "chunk" and len(data) > 16:  # a repeated or dropped run of bytes
            start = draw(st.integers(0, len(data) - 2))
            end = draw(st.integers(start + 1, min(len(data), start + 256)))
            data[start:end] = data[start:end] * draw(st.integers(0, 3))
    return bytes(data)


#: Anything a request's ``image`` may hold.
image_bytes = st.one_of(mutated_images(), st.binary(max_size=512), st.sampled_from(SEEDS),
                        st.sampled_from([b"", b"\xff\xd8", b"\x89PNG\r\n\x1a\n", b"RIFF\0\0\0\0WEBPVP8X"]))

_methods = st.lists(st.one_of(st.sampled_from(pb.Method.values()), INT32), max_size=6)


@st.composite
def shaped_tensors(draw: st.DrawFn, height: int, width: int) -> pb.Tensor:
    """A tensor of the model's shape: ordinary values, huge finite ones (up to float32's 3.4e38), or one
    NaN or infinity among them."""
    scale = draw(st.sampled_from([1.0, 1e3, 1e30, 3e38]))
    fill = draw(st.sampled_from([None, None, None, float("nan"), float("inf"), -float("inf")]))
    data = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).uniform(-1, 1, 3 * height * width) * scale
    if fill is not None:
        data[draw(st.integers(0, data.size - 1))] = fill
    return pb.Tensor(shape=[3, height, width], data=data.astype(np.float32).tolist())


@st.composite
def tensors(draw: st.DrawFn, height: int, width: int) -> pb.Tensor:
    """A ``tensor`` input: the right shape with extreme values, or a wrong shape or size."""
    if draw(st.booleans()):
        return draw(shaped_tensors(height, width))
    shape = draw(st.lists(st.one_of(st.integers(-2, 40), st.integers(-2**63, 2**63 - 1)), max_size=5))
    return pb.Tensor(shape=shape, data=draw(st.lists(FLOAT32, max_size=64)))


@st.composite
def sampling_messages(draw: st.DrawFn) -> pb.Sampling:
    small = st.integers(-2, 64)
    message = pb.Sampling(samples=draw(st.one_of(small, INT32)), noise_level=draw(FLOAT32),
                          steps=draw(st.one_of(small, INT32)), baseline=draw(st.one_of(st.integers(0, 1), INT32)),
                          patch=draw(st.one_of(small, INT32)), stride=draw(st.one_of(small, INT32)),
                          fill=draw(FLOAT32))
    if draw(st.booleans()):
        message.seed = draw(UINT64)
    return message


#: Methods a valid request may name (METHOD_NONE only alone).
_VALID_METHODS = [value for value in pb.Method.values() if value != pb.METHOD_NONE]


@st.composite
def valid_requests(draw: st.DrawFn, model: str, height: int, width: int, num_classes: int) -> pb.ExplainRequest:
    """A well-formed request: a seed image or a tensor of the model's shape (huge values included),
    known methods, classes in range."""
    request = pb.ExplainRequest(
        model=model,
        methods=draw(st.lists(st.sampled_from(_VALID_METHODS), max_size=3, unique=True)),
        targets=draw(st.lists(st.integers(0, num_classes - 1), max_size=3)), top_k=draw(st.integers(0, 12)),
        raw=draw(st.booleans()), heatmap_png=draw(st.booleans()), overlay_png=draw(st.booleans()),
        max_render_side=draw(st.integers(0, 64)))
    if draw(st.booleans()):
        request.image = draw(st.sampled_from(SEEDS))
    else:
        request.tensor.CopyFrom(draw(shaped_tensors(height, width)))
    return request


@st.composite
def explain_requests(draw: st.DrawFn, model: str, height: int, width: int, num_classes: int) -> pb.ExplainRequest:
    """Half the time a valid request with one or two fields made random (validation is reached field
    by field), else any ExplainRequest, mostly for ``model``."""
    if draw(st.booleans()):
        request = draw(valid_requests(model, height, width, num_classes))
        random = draw(random_requests(model, height, width))
        for field in draw(st.lists(st.sampled_from(["image", "tensor", "methods", "targets", "top_k", "budget_ms",
                                                    "request_id", "max_render_side", "sampling"]),
                                   min_size=0, max_size=2, unique=True)):
            if field == "image":
                request.image = draw(image_bytes)
            elif field in ("tensor", "sampling"):
                if random.HasField(field):
                    getattr(request, field).CopyFrom(getattr(random, field))
            elif field in ("methods", "targets"):
                del getattr(request, field)[:]
                getattr(request, field).extend(getattr(random, field))
            else:
                setattr(request, field, getattr(random, field))
        return request
    return draw(random_requests(model, height, width))


@st.composite
def random_requests(draw: st.DrawFn, model: str, height: int, width: int) -> pb.ExplainRequest:
    """Any ExplainRequest: mostly for ``model`` (so validation past the name is reached)."""
    request = pb.ExplainRequest(
        model=draw(st.one_of(st.just(model), st.just(model), st.just(model), st.text(max_size=40),
                             st.just("x" * 70_000))),
        methods=draw(_methods),
        targets=draw(st.lists(st.one_of(st.integers(-2, 12), INT32), max_size=20)),
        top_k=draw(st.one_of(st.integers(-2, 12), INT32)),
        budget_ms=draw(st.one_of(st.just(0.0), FLOAT32)),
        raw=draw(st.booleans()), heatmap_png=draw(st.booleans()), overlay_png=draw(st.booleans()),
        request_id=draw(st.one_of(st.just(""), st.text(max_size=64))),
        max_render_side=draw(st.one_of(st.integers(-2, 64), INT32)),
    )
    which = draw(st.sampled_from(("image", "image", "tensor", "none")))
    if which == "image":
        request.image = draw(image_bytes)
    elif which == "tensor":
        request.tensor.CopyFrom(draw(tensors(height, width)))
    if draw(st.booleans()):
        request.sampling.CopyFrom(draw(sampling_messages()))
    return request


def non_finite_fields(response: pb.ExplainResponse) -> list[str]:
    """What an OK response holds that is NaN or infinite: never allowed (a refusal is the answer)."""
    import math

    bad = [f"prediction {p.index} score/logit" for p in response.predictions
           if not (math.isfinite(p.score) and math.isfinite(p.logit))]
    bad += [f"raw map of method {h.method}" for h in response.heatmaps
            if not all(math.isfinite(v) for v in h.raw.values)]
    return bad
