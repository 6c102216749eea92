"""SIGTERM on a real server process (issue 17, items 6 and 7): health says NOT_SERVING while requests
are still accepted for --drain-s, then new requests are refused while probes still get an answer,
and --grace-s bounds the time to exit with Score-CAM in flight and an idle health Watch stream open."""

from __future__ import annotations

import signal
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2
from serving_process import DEFAULT_MODEL_DIR, serving
from test_server_helpers import encode, rgb_image

from onnxcam.client import ExplainerClient, build_request

MODEL = "efficientnet_lite0"
DRAIN_S = 2.0
GRACE_S = 2.0
#: Generous bound on the time from the grace's end to the process gone: one Score-CAM batch, the
#: models' release and the interpreter's exit.
EXIT_WITHIN_S = 10.0


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_drains_then_exits_within_the_grace(default_model_built):
    if not (DEFAULT_MODEL_DIR / "model.json").exists():
        pytest.skip("the default model is not built")
    photo = encode(rgb_image(224, 224, seed=9), "JPEG")
    options = ("--max-work-s", "0", "--drain-s", str(DRAIN_S), "--grace-s", str(GRACE_S))
    # retry=False: gRPC's retries of the UNAVAILABLE refusal below would outlast the grace period
    with (serving(DEFAULT_MODEL_DIR, *options) as served,
          ExplainerClient(served.address, timeout=30, retry=False) as client):
        watch = client._health.Watch(health_pb2.HealthCheckRequest(service=""))
        watched: list[str] = []

        def follow() -> None:
            try:
                watched.extend(health_pb2.HealthCheckResponse.ServingStatus.Name(r.status) for r in watch)
            except grpc.RpcError as error:  # the server cancels the stream when it stops
                watched.append(error.code().name)

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        long_call = client.stub.Explain.future(build_request(photo, MODEL, methods=["scorecam"],
                                                             targets=list(range(16))), timeout=None)
        time.sleep(1.0)
        assert not long_call.done()
        sent = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        served.log.expect(r"SIGTERM: health says NOT_SERVING")
        assert client.health() == "NOT_SERVING"
        during_drain = client.explain(photo, MODEL, methods=["gradcam"])  # still accepted while draining
        assert len(during_drain.heatmaps) == 1
        served.log.expect(r"SIGTERM: draining")
        time.sleep(max(DRAIN_S - (time.monotonic() - sent), 0) + 0.2)
        with pytest.raises(grpc.RpcError) as refused:
            client.explain(photo, MODEL, methods=["gradcam"])
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert client.health() == "NOT_SERVING"  # the listener is still open for probes
        code = served.process.wait(timeout=DRAIN_S + GRACE_S + 60)
        exited_s = time.monotonic() - sent
        with pytest.raises(grpc.RpcError) as cut:
            long_call.result(timeout=10)
        watcher.join(10)
    print(f"exited {exited_s:.2f} s after SIGTERM (drain {DRAIN_S:g} s, grace {GRACE_S:g} s); long call "
          f"{cut.value.code().name}; watch saw {watched}")
    assert code == 0
    assert exited_s < DRAIN_S + GRACE_S + EXIT_WITHIN_S
    assert cut.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    assert watched[:1] == ["SERVING"] and "NOT_SERVING" in watched and not watcher.is_alive()
