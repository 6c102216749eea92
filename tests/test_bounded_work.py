"""Bounded work: a request whose response or work cannot fit is refused from the image header, before
any pixel is decoded, quickly and without the server's memory jumping (issue 17, item 1)."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from PIL import Image
from test_server_helpers import encode, rgb_image, running_server

from onnxcam.client import ExplainerClient
from server import work
from server.errors import RequestError

#: The issue's request: 16 targets x 5 methods, both PNGs.
MANY_TARGETS = list(range(16))
FIVE_METHODS = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam"]
#: A refusal that decodes nothing is far quicker; this is a generous bound for a busy 2-core machine.
QUICK_S = 1.0
#: Resident memory the refusals may add (gRPC buffers of the received messages); decoding the
#: 3000x2000 photo takes 18 MB, rendering its maps gigabytes, decoding the four bombs 640 MB.
RSS_SLACK_MIB = 40.0


def _request(height: int, width: int, methods: list[str], rows: int, **outputs: bool) -> work.Request:
    return work.Request(height, width, methods, rows, outputs.get("raw", False), outputs.get("heatmap_png", False),
                        outputs.get("overlay_png", False), 2048, (7, 7), (224, 224))


def test_the_estimate_counts_maps_pixels_and_formats():
    both = work.estimate(_request(2000, 3000, FIVE_METHODS, 16, heatmap_png=True, overlay_png=True))
    assert (both.maps, both.render_width, both.render_height) == (80, 2048, 1365)
    per_map = work.png_bytes(1365, 2048, 1) + work.png_bytes(1365, 2048, 3) + work.PER_MAP_BYTES
    assert both.response_bytes == work.RESPONSE_BYTES + 80 * per_map
    assert both.mpixels == pytest.approx((3 * 6e6 + 2 * 80 * 1365 * 2048) / 1e6)
    raw = work.estimate(_request(2000, 3000, FIVE_METHODS, 16, raw=True))
    assert raw.response_bytes == work.RESPONSE_BYTES + 80 * (work.PER_MAP_BYTES + 4 * 49)
    assert raw.mpixels == pytest.approx(12.0)  # decode and resize only: no background, no PNG
    assert work.png_bytes(10, 10, 3) >= 10 * 31  # a filter byte per row and every pixel


def test_limits_refuse_with_what_to_ask_instead():
    request = _request(2000, 3000, FIVE_METHODS, 16, heatmap_png=True, overlay_png=True)
    with pytest.raises(RequestError) as too_big:
        work.check(request, 64 * 2**20, 1e9)
    assert too_big.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert all(word in too_big.value.message for word in ("fewer targets", "max_render_side", "raw maps only"))
    with pytest.raises(RequestError) as too_much:
        work.check(_request(1000, 40000, FIVE_METHODS, 1, heatmap_png=True, overlay_png=True), 64 * 2**20, 100)
    assert too_much.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "121 megapixels" in too_much.value.message and "40000x1000" in too_much.value.message
    assert work.check(_request(1000, 40000, FIVE_METHODS, 1, raw=True), 64 * 2**20, 100).mpixels == 80.0


def test_a_server_limit_refuses_and_the_suggested_request_is_served(tiny_model_dir):
    photo = encode(rgb_image(1000, 1000), "JPEG")
    with (running_server(tiny_model_dir, max_work_mpixels=2.5, metrics_port=0) as server,
          ExplainerClient(server.address) as client):  # the client's retry policy is on
        with pytest.raises(grpc.RpcError) as refused:
            client.explain(photo, "tiny", methods=["gradcam"], overlay_png=True)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "raw maps only" in refused.value.details()
        # a limit of the request, not a busy server: the refusal tells gRPC's retry policy not to try again
        assert _refusals(server) == 1
        assert len(client.explain(photo, "tiny", methods=["gradcam"], raw=True).heatmaps) == 1
    with running_server(tiny_model_dir, max_work_s=1e-6) as server, ExplainerClient(server.address) as client:
        with pytest.raises(grpc.RpcError) as slow:
            client.explain(photo, "tiny", methods=["gradcam"], raw=True)
        assert slow.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "fewer targets" in slow.value.details() and "1e-06 s" in slow.value.details()


def _refusals(server) -> float:
    """RESOURCE_EXHAUSTED answers the server counted (each retry of a call is one more)."""
    return sum(sample.value for family in server.metrics.registry.collect() if family.name == "onnxcam_rpcs"
               for sample in family.samples
               if sample.name == "onnxcam_rpcs_total" and sample.labels.get("code") == "RESOURCE_EXHAUSTED")


def _bomb() -> bytes:
    """A PNG of a few tens of KB declaring 40000x1000 pixels (120 MB once decoded to RGB)."""
    return encode(np.zeros((1000, 40000), np.uint8), "PNG", optimize=True)


@pytest.mark.slow
def test_the_issue_request_is_refused_quickly_without_memory(default_model_process):
    served = default_model_process
    photo = encode(rgb_image(2000, 3000, seed=3), "JPEG", quality=95)
    assert len(photo) > 2**20 and Image.open(io.BytesIO(photo)).size == (3000, 2000)
    with ExplainerClient(served.address, timeout=60) as client:
        client.explain(photo, "efficientnet_lite0", methods=["gradcam"], raw=True)  # warm: buffers, threads
        before = served.rss_mib()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            with pytest.raises(grpc.RpcError) as refused:
                client.explain(photo, "efficientnet_lite0", methods=FIVE_METHODS, targets=MANY_TARGETS,
                               heatmap_png=True, overlay_png=True)
            times.append(time.perf_counter() - start)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "fewer targets" in refused.value.details() and "raw maps only" in refused.value.details()
        after = served.rss_mib()
        assert client.health() == "SERVING"
    print(f"refusal {min(times) * 1000:.0f}-{max(times) * 1000:.0f} ms, RSS {before:.0f} -> {after:.0f} MiB")
    assert max(times) < QUICK_S
    assert after - before < RSS_SLACK_MIB


@pytest.mark.slow
def test_four_concurrent_png_bombs_are_refused_without_decoding(default_model_process):
    served = default_model_process
    bomb = _bomb()
    assert len(bomb) < 200_000
    methods = FIVE_METHODS
    with ExplainerClient(served.address, timeout=60) as client, ThreadPoolExecutor(4) as pool:
        before = served.rss_mib()
        start = time.perf_counter()

        def send() -> grpc.StatusCode:
            try:
                client.explain(bomb, "efficientnet_lite0", methods=methods, heatmap_png=True, overlay_png=True)
            except grpc.RpcError as error:
                assert "40000x1000" in error.details()
                return error.code()
            return grpc.StatusCode.OK

        codes = list(pool.map(lambda _: send(), range(4)))
        elapsed = time.perf_counter() - start
        after = served.rss_mib()
    print(f"four bombs refused in {elapsed * 1000:.0f} ms, RSS {before:.0f} -> {after:.0f} MiB")
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 4
    assert elapsed < QUICK_S
    assert after - before < RSS_SLACK_MIB


def test_serve_takes_the_new_limits_and_checks_them():
    from onnxcam.cli import build_parser
    from server.cli import config_from_args
    from server.config import ServerConfig

    args = build_parser().parse_args(["serve", "--models", "m", "--max-work-mpixels", "50", "--max-work-s", "0",
                                      "--multipass-slots", "1", "--multipass-queue", "0", "--drain-s", "5"])
    chosen = config_from_args(args)
    assert (chosen.max_work_mpixels, chosen.max_work_s, chosen.multipass_slots, chosen.multipass_queue,
            chosen.drain_s) == (50.0, 0.0, 1, 0, 5.0)
    defaults = config_from_args(build_parser().parse_args(["serve", "--models", "m"]))
    assert (defaults.max_work_mpixels, defaults.max_work_s, defaults.multipass_queue, defaults.drain_s) == (
        100.0, 60.0, 2, 0.0)
    for bad in (dict(max_work_mpixels=0), dict(multipass_slots=0), dict(drain_s=-1), dict(max_work_s=-1)):
        with pytest.raises(ValueError):
            ServerConfig(**bad)
