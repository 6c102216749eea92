"""The graph's CAM formulas against DESIGN.md written out element by element in numpy."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from exporter import cam_formulas  # noqa: E402


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    activations = rng.normal(size=(2, 4, 3, 5))
    gradients = rng.normal(size=(2, 4, 3, 5)) * 0.1
    gradients[0, 1, 0, :] = 0.0  # Grad-CAM++ must give alpha = 0 where G = 0
    return activations, gradients


def _channel_weighted(weights: np.ndarray, activations: np.ndarray) -> np.ndarray:
    n, k, h, w = activations.shape
    out = np.zeros((n, h, w))
    for b in range(n):
        for i in range(h):
            for j in range(w):
                out[b, i, j] = max(0.0, sum(weights[b, c] * activations[b, c, i, j] for c in range(k)))
    return out


def gradcam_loops(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    n, k, h, w = a.shape
    weights = np.array([[sum(g[b, c, i, j] for i in range(h) for j in range(w)) / (h * w) for c in range(k)]
                        for b in range(n)])
    return _channel_weighted(weights, a)


def gradcampp_loops(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    n, k, h, w = a.shape
    weights = np.zeros((n, k))
    for b in range(n):
        for c in range(k):
            total_a = sum(a[b, c, x, y] for x in range(h) for y in range(w))
            for i in range(h):
                for j in range(w):
                    grad = g[b, c, i, j]
                    alpha = 0.0 if grad == 0 else grad**2 / (2 * grad**2 + total_a * grad**3 + 1e-6)
                    weights[b, c] += alpha * max(grad, 0.0)
    return _channel_weighted(weights, a)


def xgradcam_loops(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    n, k, h, w = a.shape
    weights = np.zeros((n, k))
    for b in range(n):
        for c in range(k):
            total_a = sum(a[b, c, x, y] for x in range(h) for y in range(w))
            weights[b, c] = sum(g[b, c, i, j] * a[b, c, i, j] for i in range(h) for j in range(w)) / (total_a + 1e-7)
    return _channel_weighted(weights, a)


def layercam_loops(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    n, k, h, w = a.shape
    return np.array([[[max(0.0, sum(max(g[b, c, i, j], 0.0) * a[b, c, i, j] for c in range(k)))
                       for j in range(w)] for i in range(h)] for b in range(n)])


def hirescam_loops(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    n, k, h, w = a.shape
    return np.array([[[max(0.0, sum(g[b, c, i, j] * a[b, c, i, j] for c in range(k)))
                       for j in range(w)] for i in range(h)] for b in range(n)])


def gradcam_counterfactual_loops(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Grad-CAM of the negated gradients (Selvaraju et al. 2017, section 5)."""
    return gradcam_loops(a, -g)


LOOPS = {
    "gradcam": gradcam_loops,
    "gradcam_counterfactual": gradcam_counterfactual_loops,
    "gradcampp": gradcampp_loops,
    "xgradcam": xgradcam_loops,
    "layercam": layercam_loops,
    "hirescam": hirescam_loops,
}


@pytest.mark.parametrize("method", sorted(LOOPS))
def test_formula_matches_written_out_definition(method: str) -> None:
    activations, gradients = _inputs()
    got = cam_formulas.FORMULAS[method](torch.from_numpy(activations), torch.from_numpy(gradients))
    expected = LOOPS[method](activations, gradients)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert expected.max() > 0  # the inputs do produce a non-trivial map


def test_cam_uses_the_target_rows_of_the_fc_weights() -> None:
    activations, _ = _inputs(1)
    fc = np.random.default_rng(2).normal(size=(7, 4))
    targets = [3, 6]
    got = cam_formulas.cam(torch.from_numpy(activations), torch.from_numpy(fc)[targets])
    np.testing.assert_allclose(got.numpy(), _channel_weighted(fc[targets], activations), rtol=1e-10, atol=1e-12)


def test_every_graph_method_has_a_formula_and_a_written_out_check() -> None:
    from onnxcam import methods

    graph = methods.names(methods.Kind.GRAPH)
    assert tuple(cam_formulas.FORMULAS) == graph
    assert set(LOOPS) | {"cam"} == set(graph)  # every formula is checked above (CAM just above)
    assert [m.name for m in cam_formulas.graph_methods(linear_head=False)] == [m for m in graph if m != "cam"]
