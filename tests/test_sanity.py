"""``onnxcam sanity-check``: Spearman's rho as scipy computes it, the randomisation cascade on a real
module, and the check end to end on the tiny model (re-exported at each depth)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onnxcam import sanity
from onnxcam.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_spearman_equals_scipy_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = np.maximum(rng.normal(size=(7, 7)), 0)  # ReLU'd maps: many tied zeros
        b = np.maximum(a + rng.normal(scale=rng.uniform(0.1, 2), size=(7, 7)), 0)
        assert sanity.spearman(a, b) == pytest.approx(stats.spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-12)
    assert sanity.average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert np.isnan(sanity.spearman(np.zeros((2, 2)), np.eye(2)))


def test_schedule_starts_with_the_classifier() -> None:
    assert sanity.schedule(10, 4) == [1, 4, 7, 10]
    assert sanity.schedule(10, 1) == [1] and sanity.schedule(3, 9) == [1, 2, 3]
    with pytest.raises(ValueError):
        sanity.schedule(0, 2)


def test_verdict_fails_maps_that_stay_put() -> None:
    nan = float("nan")
    result = {"rho": {"still": [[0.9, 0.8], [nan, nan], [0.7, nan]], "moves": [[0.1, -0.2], [nan, nan], [0.0, 0.3]]}}
    summary = sanity.verdict(result, threshold=0.5)
    assert summary["still"] == {"mean_rho": [pytest.approx(0.85), None, 0.7], "passed": False,
                                "failing_depths": [1, 3]}  # depth 2 not measured (its export check failed)
    assert summary["moves"]["passed"] and summary["moves"]["mean_rho"][2] == pytest.approx(0.15)


def test_cascade_reinitialises_from_the_logits_down() -> None:
    torch = pytest.importorskip("torch")
    from tiny_models import TinyNet, seeded

    model = seeded(TinyNet()).eval()
    layers = sanity.parameterised_layers(model, torch.zeros(1, 3, 32, 32))
    assert layers[-1] == "fc" and layers[0] == "features.0.0" and len(layers) == 7  # 3 x (conv, bn) + fc
    changed = sanity.randomised(model, layers[::-1][:1], seed=0)
    before, after = model.state_dict(), changed.state_dict()
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("fc."))


@pytest.mark.slow
def test_sanity_check_on_the_tiny_model(tmp_path: Path, capsys) -> None:
    """Re-initialising the classifier leaves A as it was: EigenCAM (a function of A alone) keeps rho = 1
    and fails; Grad-CAM's gradients come from the new classifier and its maps change."""
    code = main(["-q", "sanity-check", "--model-file", f"{ROOT / 'tests' / 'tiny_models.py'}:TinyNet", "--input-size",
                 "32", "--methods", "gradcam,eigencam", "--depths", "1", "--out", str(tmp_path)])
    assert code == 1  # EigenCAM fails
    data = json.loads((tmp_path / "sanity.json").read_text())
    assert data["depths"] == [{"depth": 1, "randomised": 1, "deepest": "fc"}] and data["images"] == 4
    assert data["methods"]["eigencam"]["mean_rho"][0] == pytest.approx(1.0, abs=1e-6)
    assert not data["methods"]["eigencam"]["passed"] and data["methods"]["gradcam"]["passed"]
    assert data["methods"]["gradcam"]["mean_rho"][0] < 0.5
    assert (tmp_path / "sanity.png").stat().st_size > 1000
    assert "eigencam" in capsys.readouterr().out
