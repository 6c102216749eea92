"""A request whose measured cost cannot fit its deadline is answered at once, with the numbers and
the ways out; ``onnxcam explain`` says up front when a call will take a while.

The tiny model is fast everywhere, so its Score-CAM cost is set to what the server measured on
resnet50 on a loaded machine (81.7 s): the server's state, not a stand-in for ONNX Runtime or gRPC.
"""

from __future__ import annotations

import dataclasses
import re

import grpc
import numpy as np
import pytest
from test_cli_errors import assert_one_error, onnxcam
from test_server_helpers import encode, rgb_image, running_server

from onnxcam import sampling
from onnxcam.cli_estimate import announcement, estimate_ms
from onnxcam.client import ExplainerClient
from onnxcam.proto import explainer_pb2 as pb
from server import budget

SCORECAM_MS = 81_700.0


@pytest.fixture(scope="module")
def slow_scorecam(tiny_model_dir):
    with running_server(tiny_model_dir, max_work_s=0) as server:  # no compute limit: the 81.7 s call may run
        model = server.repository.get("tiny")
        assert "scorecam" in model.methods
        model.costs = dataclasses.replace(model.costs, extra_ms={**model.costs.extra_ms, "scorecam": SCORECAM_MS})
        yield server, model


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(encode(rgb_image(40, 48, seed=5)))
    return path


def rows_run(model) -> int:
    return sum(b.rows_run for b in (model.explain_batcher, model.predict_batcher, model.input_batcher) if b)


def test_a_deadline_the_measured_cost_cannot_fit_is_refused_before_any_work(slow_scorecam):
    server, model = slow_scorecam
    before = rows_run(model)
    with ExplainerClient(server.address) as client:
        with pytest.raises(grpc.RpcError) as refused:
            client.explain(np.zeros((3, 32, 32), np.float32), "tiny", methods=["scorecam"], timeout=20)
        assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        message = refused.value.details()
        assert "scorecam on tiny would take about 81.7 s by the server's measurement at load" in message
        assert re.search(r"load, but the deadline leaves (19|20)\.\d s;", message), message  # 20 s less the trip
        for way_out in ("budget_ms (onnxcam explain --budget-ms)", "--timeout, at least 123 s", "another method ("):
            assert way_out in message
        assert rows_run(model) == before  # nothing was queued or run for it
        # the same request with a budget keeps the predictions and skips what does not fit
        kept = client.explain(np.zeros((3, 32, 32), np.float32), "tiny", methods=["gradcam", "scorecam"],
                              budget_ms=5000, timeout=20)
        assert [h.method for h in kept.heatmaps] == [pb.GRADCAM] and kept.skipped[0].reason == pb.Skipped.BUDGET
    # without a deadline (gRPC's default) nothing is refused: the method runs
    with ExplainerClient(server.address, timeout=None) as client:
        assert client.explain(np.zeros((3, 32, 32), np.float32), "tiny", methods=["scorecam"]).heatmaps


def test_the_cli_announces_a_long_call_and_fails_in_one_line(slow_scorecam, photo):
    server, _ = slow_scorecam
    result = onnxcam("explain", "--server", server.address, "--method", "scorecam", "--timeout", "20", str(photo),
                     timeout=120)
    assert "scorecam on tiny: about 81.7 s by the server's measurement at load; the deadline is 20 s" in result.stderr
    assert_one_error(result, 1, "DEADLINE_EXCEEDED: not started: scorecam on tiny would take about 81.7 s",
                     "--budget-ms")


def test_the_clients_estimate_is_the_servers(tiny_model_dir):
    """cli_estimate rebuilds server.budget's estimate from GetModelMetadata alone."""
    with running_server(tiny_model_dir) as server, ExplainerClient(server.address) as client:
        meta = client.metadata("tiny")
        costs = server.repository.get("tiny").costs
    settings = sampling.Settings(samples=7).resolved(32, 32)
    for methods, targets in ((["gradcam"], 1), (["scorecam", "ablationcam"], 2), (["smoothgrad", "saliency"], 3)):
        sampled = {m: sampling.rows_needed(m, settings, targets, 32, 32) for m in methods if m == "smoothgrad"}
        expected = budget.set_cost(costs, methods, targets, 0.0, sampled)
        assert estimate_ms(meta.method_cost_ms, methods, targets, settings, (32, 32)) == pytest.approx(expected)
    assert announcement("m", ["gradcam"], 1, 2000.0, 30.0) is None  # quick calls stay quiet
    assert "no deadline" not in announcement("m", ["scorecam"], 4, 2000.0, 30.0)
