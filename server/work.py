"""Bounded work: what a request will produce and cost, estimated from the image header, refused before
any pixel is decoded when it cannot fit.

Without this, one small request (a 3000x2000 JPEG, 16 targets x 5 methods, both PNGs) made the server
work 70 s at 4.4 GB of memory to build a 1.3 GB response that gRPC then refused to send, and a 39 KB
PNG declaring 40000x1000 pixels was decoded in full before anything looked at what it asked for.

Three limits, each with its own message saying what to ask for instead:

- the response: raw maps (4 bytes a value) plus PNGs at their largest (uncompressed; level-1 deflate
  of noise is a little larger than its input, of a heatmap usually a few times smaller) must fit the
  server's ``max_send_bytes``, or gRPC would refuse to send it after all the work;
- pixel work (``max_work_mpixels``): the decoded image's pixels times the passes over them (decode,
  resize for the model, and the overlay background when PNGs are asked for), plus every PNG's
  pixels; this bounds memory and the time spent outside ONNX Runtime;
- compute time (``max_work_s``): the load-time cost model (``server.budget``) for the chosen
  methods, rows, gradient-free and sampled forwards, and rendering.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from onnxcam import methods as registry
from onnxcam.methods import Kind
from server import budget, heatmaps
from server.errors import too_much

#: Passes over the decoded image's pixels: decode to RGB, and the resize to the model's input.
IMAGE_PASSES = 2
#: One more pass when pictures are asked for: the photo resized as the overlay's background.
BACKGROUND_PASSES = 1
#: Bytes a response carries per map beyond its pixels (method, target, label, statistics, framing).
PER_MAP_BYTES = 512
#: Fixed part of a response (predictions, timing, skipped methods) at its largest.
RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Request:
    """What the estimate needs: sizes from the image header, the chosen methods and outputs."""

    image_height: int
    image_width: int
    methods: Sequence[str]
    rows: int
    raw: bool
    heatmap_png: bool
    overlay_png: bool
    max_render_side: int
    #: The model's feature map (h, w) and input (H, W): the raw maps' sizes.
    feature_size: tuple[int, int]
    input_size: tuple[int, int]


@dataclass(frozen=True)
class Estimate:
    maps: int
    render_height: int
    render_width: int
    response_bytes: int
    mpixels: float


def png_bytes(height: int, width: int, channels: int) -> int:
    """A PNG's size at its largest: every row's filter byte and pixels, deflate's stored-block framing
    (5 bytes per 64 KiB), and the chunks around them."""
    raw = height * (width * channels + 1)
    return raw + 5 * (raw // 65535 + 1) + 128


def _raw_values(method: registry.Method, request: Request) -> int:
    """Values of one raw map: feature resolution for CAM-family maps, input resolution (3 channels at
    most) for gradient and sampled maps."""
    if method.kind in (Kind.GRAPH, Kind.GRADIENT_FREE):
        return math.prod(request.feature_size)
    return 3 * math.prod(request.input_size)


def _heatmap_channels(method: registry.Method) -> int:
    """A gradient map's picture is RGB, a CAM map's grayscale; sampled maps may be either."""
    return 3 if method.channels == 3 or method.kind is Kind.SAMPLED else 1


def estimate(request: Request) -> Estimate:
    """Maps, PNG size, the response's bytes at most and the pixel work, from the header alone."""
    height, width = heatmaps.render_size(request.image_height, request.image_width, request.max_render_side)
    pictures = request.heatmap_png or request.overlay_png
    size = RESPONSE_BYTES
    render_pixels = 0
    maps = 0
    for name in request.methods:
        method = registry.get(name)
        per_map = PER_MAP_BYTES + (4 * _raw_values(method, request) if request.raw else 0)
        if request.heatmap_png:
            per_map += png_bytes(height, width, _heatmap_channels(method))
            render_pixels += height * width * request.rows
        if request.overlay_png:
            per_map += png_bytes(height, width, 3)
            render_pixels += height * width * request.rows
        size += per_map * request.rows
        maps += request.rows
    passes = IMAGE_PASSES + (BACKGROUND_PASSES if pictures else 0)
    mpixels = (request.image_height * request.image_width * passes + render_pixels) / 1e6
    return Estimate(maps, height, width, size, mpixels)


def _mib(size: float) -> str:
    return f"{size / 2**20:.1f} MiB"


def _instead(request: Request, found: Estimate) -> str:
    """What to ask for instead: fewer maps, smaller pictures, raw maps only."""
    options = []
    if found.maps > 1:
        options.append(f"fewer targets or methods ({found.maps} maps asked for)")
    if request.heatmap_png or request.overlay_png:
        side = max(found.render_height, found.render_width)
        if side > 256:
            options.append(f"a smaller max_render_side (the PNGs would be {found.render_width}x{found.render_height})")
        if request.heatmap_png and request.overlay_png:
            options.append("one of heatmap_png and overlay_png")
        options.append("raw maps only (raw=true, no PNGs; onnxcam.client.heatmap_pngs draws them client-side)")
    options.append(f"a smaller image ({request.image_width}x{request.image_height} sent)")
    return "; ".join(options)


def check(request: Request, max_send_bytes: int, max_mpixels: float) -> Estimate:
    """Raise RESOURCE_EXHAUSTED when the request cannot fit the response limit or the pixel-work
    limit; else return the estimate."""
    found = estimate(request)
    if found.response_bytes > max_send_bytes:
        raise too_much(
            f"not started: the response would be up to {_mib(found.response_bytes)} ({found.maps} maps"
            f"{' with PNGs' if request.heatmap_png or request.overlay_png else ''}), above this server's "
            f"{_mib(max_send_bytes)} response limit; ask for {_instead(request, found)}")
    if found.mpixels > max_mpixels:
        raise too_much(
            f"not started: the request would process about {found.mpixels:.0f} megapixels (a "
            f"{request.image_width}x{request.image_height} image and {found.maps} maps), above this server's "
            f"limit of {max_mpixels:g} per request; ask for {_instead(request, found)}")
    return found


def check_compute(costs: budget.Costs, model: str, methods: Sequence[str], rows: int, render_ms: float,
                  sampled_rows: Mapping[str, int] | None, max_work_s: float) -> None:
    """Raise RESOURCE_EXHAUSTED when the measured costs of ``methods`` exceed ``max_work_s`` (0: no
    limit). Checked after the caller's deadline (server.fits): a deadline that cannot be met is the
    more useful answer when there is one."""
    if max_work_s <= 0 or not methods:
        return
    need_ms = budget.set_cost(costs, methods, rows, render_ms, sampled_rows)
    if need_ms > max_work_s * 1000.0:
        raise too_much(
            f"not started: {', '.join(methods)} on {model} for {rows} target(s) would take about "
            f"{need_ms / 1000.0:.1f} s by the server's measurements, above its limit of {max_work_s:g} s per "
            "request; ask for fewer targets, cheaper methods (one graph call: gradcam, gradcampp), or fewer "
            "samples, steps or occlusion positions")
