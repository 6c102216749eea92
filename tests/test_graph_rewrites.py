"""The exporter's graph simplifications: the one-hot backward product becomes a row gather, values unchanged,
and the joint map formulas equal each method's own formula."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402

from exporter import cam_formulas  # noqa: E402
from exporter.graph_rewrites import one_hot_products_as_gathers, scaling_before_broadcast  # noqa: E402
from onnxcam import contract  # noqa: E402

aten = torch.ops.aten


def _targets(graph) -> list:
    return [node.target for node in graph.graph.nodes if node.op == "call_function"]


def _score_gradient(weights: torch.Tensor):
    """d (sum_n logits[n, classes[n]]) / d features through a linear layer, as autograd writes it."""

    def gradient(features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        features = features.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = features @ weights.t()
            score = logits.gather(1, classes[:, None]).sum()
            (grad,) = torch.autograd.grad(score, features)
        return grad

    return gradient


def test_one_hot_product_becomes_a_gather_with_the_same_values() -> None:
    weights = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    features, classes = torch.randn(3, 5), torch.tensor([6, 0, 6])
    graph = make_fx(_score_gradient(weights), _allow_non_fake_inputs=True)(features, classes)
    assert aten.scatter_add.default in _targets(graph)
    before = graph(features, classes)

    assert one_hot_products_as_gathers(graph) == 1
    assert aten.mm.default not in _targets(graph) and aten.scatter_add.default not in _targets(graph)
    assert aten.index_select.default in _targets(graph)
    after = graph(features, classes)
    assert torch.equal(after, before)
    assert torch.equal(after, weights[classes])


def test_a_product_with_anything_but_ones_scattered_is_kept() -> None:
    weights = torch.randn(7, 5)

    def weighted(classes: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        scattered = torch.zeros(classes.shape[0], 7).scatter_add(1, classes[:, None], values[:, None])
        return scattered @ weights

    classes, values = torch.tensor([1, 2]), torch.tensor([0.5, 2.0])
    graph = make_fx(weighted, _allow_non_fake_inputs=True)(classes, values)
    assert one_hot_products_as_gathers(graph) == 0
    assert aten.mm.default in _targets(graph)


def test_explainer_graph_gathers_the_target_rows_instead_of_a_one_hot_product(tiny_model_dir: Path) -> None:
    ops = [node.op_type for node in onnx.load(str(tiny_model_dir / contract.EXPLAINER_FILE)).graph.node]
    assert "ScatterElements" not in ops
    assert ops.count("MatMul") == 1  # the stacked channel-weighted maps; no backward product is left


@pytest.mark.parametrize("linear_head", [True, False])
def test_joint_maps_equal_each_methods_own_formula(linear_head: bool) -> None:
    generator = torch.Generator().manual_seed(3)
    activations = torch.randn(2, 6, 4, 5, generator=generator, dtype=torch.float64)
    gradients = 0.1 * torch.randn(2, 6, 4, 5, generator=generator, dtype=torch.float64)
    class_weights = torch.randn(2, 6, generator=generator, dtype=torch.float64)
    methods = cam_formulas.graph_methods(linear_head)
    joint = cam_formulas.graph_maps(methods, activations, gradients, class_weights if linear_head else None)
    assert list(joint) == [m.output for m in methods]
    for method in methods:
        second = class_weights if method.needs_linear_head else gradients
        alone = cam_formulas.FORMULAS[method.name](activations, second)
        assert joint[method.output].shape == (2, 4, 5)
        np.testing.assert_allclose(joint[method.output].numpy(), alone.numpy(), rtol=1e-12, atol=1e-12)
    assert all(float(m.max()) > 0 for m in joint.values())


def test_global_pool_backward_divides_before_it_broadcasts() -> None:
    def pooled_gradient(features: torch.Tensor) -> torch.Tensor:
        features = features.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(features.mean(dim=(2, 3)).pow(2).sum(), features)
        return grad

    features = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    graph = make_fx(pooled_gradient, _allow_non_fake_inputs=True)(features)
    before = graph(features)
    assert scaling_before_broadcast(graph) == 1
    divisions = [n for n in graph.graph.nodes if n.op == "call_function" and n.target in (aten.div.Scalar,
                                                                                          aten.div.Tensor)]
    assert divisions and all(d.args[0].target is not aten.expand.default for d in divisions)
    assert torch.equal(graph(features), before)
