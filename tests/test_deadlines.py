"""Calls with no deadline (gRPC's default in every language), a very long one and a tiny one.

Every RPC is called through raw gRPC stubs, as another language's client would, against a real
server on loopback: no deadline and a deadline of years must both succeed, a tiny one must fail
with DEADLINE_EXCEEDED, and the server must keep serving after each.
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from test_server_helpers import encode, make_repository, rgb_image, running_server

from onnxcam.proto import explainer_pb2 as pb
from onnxcam.proto import explainer_pb2_grpc as pb_grpc
from server import deadlines, gradient_free

YEAR_S = 365.25 * 24 * 3600.0
#: None: no deadline at all; ten years; 95 years, about the longest grpcio's own client sends (from
#: 1e10 s on, grpcio fails the call itself with DEADLINE_EXCEEDED before it leaves the client).
LONG_TIMEOUTS = [None, 10 * YEAR_S, 3e9]
IDS = ["no-deadline", "ten-years", "95-years"]


@pytest.fixture(scope="module")
def models_dir(tiny_model_dir, tmp_path_factory):
    return make_repository(tiny_model_dir, tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def channel(models_dir):
    with running_server(models_dir) as server, grpc.insecure_channel(server.address) as channel:
        yield channel


def explain_request(request_id: str = "") -> pb.ExplainRequest:
    return pb.ExplainRequest(model="tiny", image=encode(rgb_image(40, 48)), heatmap_png=True, raw=True,
                             methods=[pb.GRADCAM, pb.ABLATIONCAM, pb.SCORECAM], request_id=request_id)


def call_every_rpc(channel: grpc.Channel, timeout: float | None) -> dict[str, object]:
    """Each RPC once with ``timeout`` (None: no deadline is sent); name -> response."""
    explainer = pb_grpc.ExplainerStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    return {
        "ListModels": explainer.ListModels(pb.ListModelsRequest(), timeout=timeout),
        "GetModelMetadata": explainer.GetModelMetadata(pb.GetModelMetadataRequest(model="tiny"), timeout=timeout),
        "Explain": explainer.Explain(explain_request(), timeout=timeout),
        "ExplainStream": list(explainer.ExplainStream(iter([explain_request("a"), explain_request("b")]),
                                                      timeout=timeout)),
        "Health": health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout),
        "Reflection": list(reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=timeout)),
    }


@pytest.mark.parametrize("timeout", LONG_TIMEOUTS, ids=IDS)
def test_every_rpc_without_a_deadline_or_with_a_very_long_one_succeeds(channel, timeout):
    answers = call_every_rpc(channel, timeout)
    assert [m.name for m in answers["ListModels"].models] == ["nocam", "tiny"]
    assert answers["GetModelMetadata"].name == "tiny"
    explained = answers["Explain"]
    assert explained.predictions
    assert [pb.Method.Name(h.method) for h in explained.heatmaps] == ["GRADCAM", "ABLATIONCAM", "SCORECAM"]
    assert all(h.heatmap_png.startswith(b"\x89PNG") for h in explained.heatmaps)
    streamed = answers["ExplainStream"]
    assert [r.request_id for r in streamed] == ["a", "b"] and not any(r.HasField("error") for r in streamed)
    assert streamed[0].predictions == explained.predictions
    assert answers["Health"].status == health_pb2.HealthCheckResponse.SERVING
    assert answers["Reflection"][0].list_services_response.service


def test_a_tiny_deadline_fails_with_deadline_exceeded_and_the_server_keeps_serving(channel):
    explainer = pb_grpc.ExplainerStub(channel)
    with pytest.raises(grpc.RpcError) as failed:
        explainer.Explain(explain_request(), timeout=1e-6)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # A call this quick may beat gRPC's millisecond timers; it either answers or runs out of time.
    for quick in (lambda: explainer.ListModels(pb.ListModelsRequest(), timeout=1e-6).models,
                  lambda: explainer.GetModelMetadata(pb.GetModelMetadataRequest(model="tiny"), timeout=1e-6).name):
        try:
            assert quick()
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # A stream reports a failed request in-band (its response's error) or fails as a whole.
    try:
        responses = list(explainer.ExplainStream(iter([explain_request("late")]), timeout=1e-6))
        assert [r.error.code for r in responses] == [grpc.StatusCode.DEADLINE_EXCEEDED.value[0]]
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert call_every_rpc(channel, None)["Explain"].predictions


def test_the_servers_own_limit_applies_to_calls_without_a_deadline(models_dir):
    with running_server(models_dir, max_request_s=1e-6) as server, grpc.insecure_channel(server.address) as channel:
        explainer = pb_grpc.ExplainerStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            explainer.Explain(explain_request())
        assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        (streamed,) = explainer.ExplainStream(iter([explain_request("x")]))
        assert streamed.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert explainer.ListModels(pb.ListModelsRequest()).models  # metadata calls are not limited


@pytest.mark.parametrize("remaining", [None, float("inf"), float("nan"), 1e300, deadlines.NO_DEADLINE_S])
def test_no_deadline_in_any_form_is_none(remaining):
    assert deadlines.deadline_at(remaining) is None
    assert deadlines.wait_s(None) is None
    assert not deadlines.passed(None)


def test_the_earlier_of_the_callers_deadline_and_the_servers_limit_wins():
    now = time.monotonic()
    assert deadlines.deadline_at(5.0) == pytest.approx(now + 5.0, abs=1.0)
    assert deadlines.deadline_at(5.0, max_request_s=2.0) == pytest.approx(now + 2.0, abs=1.0)
    assert deadlines.deadline_at(None, max_request_s=2.0) == pytest.approx(now + 2.0, abs=1.0)
    assert deadlines.deadline_at(-3.0) <= time.monotonic()
    assert deadlines.passed(deadlines.deadline_at(0.0))


def test_waits_are_bounded_by_what_threading_accepts():
    far = time.monotonic() + 1e15  # a deadline the platform's time_t cannot hold
    assert deadlines.wait_s(far) == threading.TIMEOUT_MAX
    assert deadlines.wait_s(time.monotonic() - 10) == 0.0
    # The bounded wait is accepted where the unbounded one overflows.
    assert threading.Event().wait(timeout=min(deadlines.wait_s(far), 0.01)) is False
    with pytest.raises(OverflowError):
        threading.Event().wait(timeout=1e15)


def _forward_session() -> ort.InferenceSession:
    """pixels [N, 3, H, W] -> logits [N, 4]: global average pool and a linear layer, in ONNX Runtime."""
    weight = onnx.numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4) / 10, "weight")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]),
         onnx.helper.make_node("Flatten", ["pooled"], ["flat"]),
         onnx.helper.make_node("MatMul", ["flat", "weight"], ["logits"])],
        "forward", [onnx.helper.make_tensor_value_info("pixels", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 4])], [weight])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_gradient_free_loops_stop_between_chunks_when_told():
    """The check runs before each session run, so a passed deadline stops Score-CAM within a chunk."""
    forward = _forward_session()
    checks = []

    class Stop(Exception):
        pass

    def check() -> None:
        checks.append(time.monotonic())
        if len(checks) > 2:
            raise Stop

    rng = np.random.default_rng(0)
    activations = rng.standard_normal((1, 40, 3, 3)).astype(np.float32)
    pixels = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    with pytest.raises(Stop):
        gradient_free.score_cam(forward, pixels, activations, np.array([1]), batch_size=8, check=check)
    assert len(checks) == 3  # two chunks of 8 ran, the third was refused
    checks.clear()
    never = gradient_free.score_cam(forward, pixels, activations, np.array([1]), batch_size=8,
                                    check=lambda: checks.append(0))
    assert len(checks) == 5 and never.shape == (1, 3, 3)
    np.testing.assert_array_equal(never, gradient_free.score_cam(forward, pixels, activations, np.array([1])))
