"""Health checks always answer (issue 17, item 7): probes during a flood of Explain calls beyond the
server's concurrency limit all say SERVING, quickly, while the excess calls are refused."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from test_server_helpers import encode, rgb_image

from onnxcam.client import ExplainerClient, build_request

FLOOD = 200  # more than the default --max-concurrent-rpcs (128) at once
PROBE_TIMEOUT_S = 1.0


@pytest.mark.slow
def test_health_probes_answer_during_a_flood_beyond_the_concurrency_limit(default_model_process):
    served = default_model_process
    request = build_request(encode(rgb_image(224, 224, seed=7), "JPEG"), "efficientnet_lite0",
                            methods=["gradcam"], heatmap_png=True)
    probes: list[tuple[str, float]] = []
    flooding = threading.Event()
    with ExplainerClient(served.address, timeout=120, retry=False) as client:
        def probe() -> None:
            while flooding.is_set():
                start = time.monotonic()
                try:
                    answer = client.health(timeout=PROBE_TIMEOUT_S)
                except grpc.RpcError as error:
                    answer = error.code().name
                probes.append((answer, time.monotonic() - start))
                time.sleep(0.05)

        flooding.set()
        prober = threading.Thread(target=probe)
        prober.start()
        codes: list[grpc.StatusCode] = []
        try:
            for _ in range(2):
                calls = [client.stub.Explain.future(request) for _ in range(FLOOD)]
                for call in calls:
                    try:
                        call.result()
                        codes.append(grpc.StatusCode.OK)
                    except grpc.RpcError as error:
                        codes.append(error.code())
        finally:
            flooding.clear()
            prober.join()
    answers = {answer for answer, _ in probes}
    slowest = max(seconds for _, seconds in probes)
    print(f"{len(probes)} probes during the flood, slowest {slowest * 1000:.0f} ms; explain codes "
          f"{ {code.name: codes.count(code) for code in set(codes)} }")
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert len(probes) >= 5 and answers == {"SERVING"}
