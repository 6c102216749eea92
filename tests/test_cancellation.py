"""Multi-pass work through a bounded queue, stopped when the caller gives up (issue 17, items 2 and 7):
a cancelled or expired Score-CAM call leaves the server idle again soon, and eight concurrent
Score-CAM calls with a 3 s deadline neither keep it busy for minutes nor stop health checks."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from test_server_helpers import encode, rgb_image

from onnxcam.client import ExplainerClient, build_request
from server import deadlines
from server.errors import RequestError
from server.multipass import Gate

MODEL = "efficientnet_lite0"
#: Generous bound on the time from a caller giving up to the server being idle: a Score-CAM chunk is
#: 32 forwards (a fraction of a second here), the idle check itself needs 0.5 s of quiet.
IDLE_WITHIN_S = 10.0


def test_the_gate_runs_slots_queues_in_order_and_refuses_beyond_its_line():
    gate = Gate("m", slots=1, waiting=1)
    entered, release = threading.Event(), threading.Event()

    def second() -> None:
        with gate.enter(None):
            entered.set()
            release.wait(5)

    waiter = threading.Thread(target=second)
    with gate.enter(None):
        waiter.start()
        while gate.queued == 0:
            time.sleep(0.001)
        with pytest.raises(RequestError) as full:
            with gate.enter(None):
                pass
        assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "1 waiting" in full.value.message
        assert gate.running == 1 and not entered.is_set()
    assert entered.wait(5) and gate.running == 1 and gate.queued == 0
    release.set()
    waiter.join(5)
    assert gate.running == 0


def test_a_waiting_request_leaves_at_its_deadline_or_when_its_caller_goes():
    gate = Gate("m", slots=1, waiting=4)
    with gate.enter(None):
        with pytest.raises(RequestError) as late:
            with gate.enter(deadlines.deadline_at(0.05)):
                pass
        assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(RequestError) as gone:
            with gate.enter(None, is_active=lambda: False):
                pass
        assert gone.value.code == grpc.StatusCode.CANCELLED
        assert gate.queued == 0
    assert gate.running == 0
    with gate.enter(None):  # the slot came back
        assert gate.running == 1


@pytest.fixture(scope="module")
def photo() -> bytes:
    return encode(rgb_image(224, 224, seed=5), "JPEG")


def _busy(served, seconds: float = 1.0) -> float:
    """CPU seconds the server used in the next ``seconds``."""
    cpu = served.cpu_s()
    time.sleep(seconds)
    return served.cpu_s() - cpu


@pytest.mark.slow
def test_cancelled_score_cam_calls_leave_the_server_idle_soon(default_model_process, photo):
    served = default_model_process
    request = build_request(photo, MODEL, methods=["scorecam"], targets=[0])
    with ExplainerClient(served.address, timeout=None) as client:
        calls = [client.stub.Explain.future(request) for _ in range(8)]  # 2 run, 2 wait, 4 refused
        assert _busy(served) > 0.3, "Score-CAM should be computing"
        for call in calls:
            call.cancel()
        refused = [call for call in calls if not call.cancelled()]
        idle_s = served.seconds_until_idle(limit_s=120)
        assert client.health() == "SERVING"
        assert len(client.explain(photo, MODEL, methods=["gradcam"], timeout=60).heatmaps) == 1
    print(f"idle {idle_s:.2f} s after cancelling 8 Score-CAM calls")
    assert len(calls) - len(refused) >= 2  # the running ones were cancelled, not finished
    assert all(call.exception().code() == grpc.StatusCode.RESOURCE_EXHAUSTED for call in refused)
    assert idle_s < IDLE_WITHIN_S


@pytest.mark.slow
def test_a_30_ms_deadline_leaves_the_server_idle_soon(default_model_process, photo):
    served = default_model_process
    with ExplainerClient(served.address) as client:
        with pytest.raises(grpc.RpcError) as late:
            client.explain(photo, MODEL, methods=["scorecam"], targets=[0], timeout=0.03)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        idle_s = served.seconds_until_idle(limit_s=120)
    print(f"idle {idle_s:.2f} s after a 30 ms Score-CAM deadline")
    assert idle_s < IDLE_WITHIN_S


@pytest.mark.slow
def test_eight_score_cam_calls_with_a_3_s_deadline_end_soon_and_health_answers(default_model_process, photo):
    served = default_model_process
    probes: list[str] = []
    stop = threading.Event()
    with ExplainerClient(served.address) as client, ThreadPoolExecutor(8) as pool:
        def probe() -> None:
            while not stop.is_set():
                try:
                    probes.append(client.health(timeout=2))
                except grpc.RpcError as error:
                    probes.append(error.code().name)
                time.sleep(0.2)

        def call() -> grpc.StatusCode:
            try:
                client.explain(photo, MODEL, methods=["scorecam"], targets=[0, 1, 2, 3], timeout=3)
            except grpc.RpcError as error:
                return error.code()
            return grpc.StatusCode.OK

        prober = threading.Thread(target=probe)
        prober.start()
        start = time.monotonic()
        codes = list(pool.map(lambda _: call(), range(8)))
        answered_s = time.monotonic() - start
        idle_s = served.seconds_until_idle(limit_s=120)
        stop.set()
        prober.join()
    print(f"8 Score-CAM calls answered in {answered_s:.2f} s ({sorted({c.name for c in codes})}), server idle "
          f"{idle_s:.2f} s later; {len(probes)} health probes: {sorted(set(probes))}")
    assert set(codes) <= {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert answered_s < 3 + IDLE_WITHIN_S
    assert idle_s < IDLE_WITHIN_S
    assert probes and set(probes) == {"SERVING"}
