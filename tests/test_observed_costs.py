"""Method costs that no single noisy measurement decides (issue 17, item 7): the median of several
load-time timings, updated from the costs observed on requests."""

from __future__ import annotations

import numpy as np
import pytest
from test_server_helpers import running_server

from onnxcam.client import ExplainerClient
from server.loaded_model import TIMING_RUNS
from server.observed_costs import WINDOW, RobustCost


def test_one_outlier_moves_nothing_a_lasting_change_takes_over():
    cost = RobustCost([100.0, 110.0, 90.0])
    assert cost.ms == 100.0
    cost.observe(1812.0)  # one start on a busy machine, or one request that waited for the CPU
    assert cost.ms == pytest.approx(105.0)
    for _ in range(WINDOW // 2):
        cost.observe(1000.0)
    assert cost.ms == 1000.0  # a majority of the window: the new level
    for _ in range(WINDOW):
        cost.observe(50.0)
    assert cost.ms == 50.0 and len(cost) == WINDOW  # old observations leave the window


def test_bad_observations_are_ignored_and_a_cost_needs_a_measurement():
    cost = RobustCost([10.0])
    cost.observe(-1.0)
    cost.observe(float("inf"))
    assert cost.ms == 10.0 and len(cost) == 1
    with pytest.raises(ValueError):
        RobustCost([])


def test_a_served_model_times_quick_methods_several_times_and_learns_from_requests(tiny_model_dir):
    with running_server(tiny_model_dir) as server, ExplainerClient(server.address) as client:
        model = server.repository.get("tiny")
        assert model.observations("eigencam") == TIMING_RUNS  # quick: timed TIMING_RUNS times, not once
        client.explain(np.zeros((3, 32, 32), np.float32), "tiny", methods=["eigencam"])
        assert model.observations("eigencam") == TIMING_RUNS + 1  # a request's cost is observed
        loaded = model.costs.extra_ms["eigencam"]
        model.observe("eigencam", loaded * 1000)
        assert model.costs.extra_ms["eigencam"] < loaded * 10  # one outlier
        for _ in range(WINDOW):
            model.observe("eigencam", 123.0)
        assert model.costs.extra_ms["eigencam"] == 123.0
        assert client.metadata("tiny").method_cost_ms["eigencam"] == 123.0  # what the budget and limits use
