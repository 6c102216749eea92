"""Products with a weight matrix stay one GEMM in the traced graphs (exporter/folded_linear.py).

Multi-head attention's input projection on a transposed sequence made matmul expand the weight per
token, forward and backward: 1.4 GB per ViT-B block in every ONNX graph. The tiny ViT shows the
same pattern at a small size; traced without the fold it is there, with it it is gone, and the
folded graph computes the same input gradients as eager PyTorch.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from tiny_models import tiny_vit  # noqa: E402

from exporter.layers import target_layer  # noqa: E402
from exporter.tracing import detached_state, head_function, input_gradients_function, trace  # noqa: E402

aten = torch.ops.aten
LAYER = "encoder.layers.encoder_layer_1.ln_1"


def expanded_matrices(graph) -> list[str]:
    """aten.expand nodes whose input is a matrix (a weight, possibly transposed)."""
    return [n.name for n in graph.graph.nodes if n.target == aten.expand.default and n.args[0].meta["val"].dim() == 2]


@pytest.fixture(scope="module")
def traced():
    torch.manual_seed(0)
    model = tiny_vit().eval()
    pixels = torch.randn(2, 3, 32, 32)
    function = input_gradients_function(model, target_layer(model, LAYER, pixels))
    example = (pixels, torch.tensor([0, 1]), torch.tensor([0, 2]))
    return model, function, trace(function, model, *example), trace(function, model, *example, fold_matmuls=False)


def test_the_weights_are_no_longer_expanded_per_token_forward_or_backward(traced) -> None:
    _, _, folded, unfolded = traced
    # each block's in-projection weight, used forward and (transposed) backward
    assert len(expanded_matrices(unfolded)) == 2
    assert expanded_matrices(folded) == []


def test_the_folded_graph_computes_what_eager_pytorch_does(traced) -> None:
    model, function, folded, _ = traced
    params, buffers = detached_state(model)
    pixels, target, rule = torch.randn(3, 3, 32, 32), torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2])
    for ours, reference in zip(folded(pixels, target, rule), function(params, buffers, pixels, target, rule),
                               strict=True):
        assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-6 * float(reference.abs().max()))


def test_a_head_traced_from_the_grid_folds_with_a_symbolic_token_count() -> None:
    # head.onnx starts from the [N, K, h, w] grid, so the token count is a symbol as well as the batch
    torch.manual_seed(0)
    model = tiny_vit().eval()
    pixels = torch.randn(2, 3, 32, 32)
    function = head_function(model, target_layer(model, LAYER, pixels), None)
    grid = torch.randn(2, 16, 4, 4)
    unfolded = trace(function, model, grid, pixels, fold_matmuls=False)
    folded = trace(function, model, grid, pixels)
    assert len(expanded_matrices(unfolded)) == 2  # both blocks (the class token comes through the pixels)
    assert expanded_matrices(folded) == []
    params, buffers = detached_state(model)
    grid, pixels = torch.randn(2, 16, 4, 4), torch.randn(2, 3, 32, 32)
    reference = function(params, buffers, grid, pixels)
    assert torch.allclose(folded(grid, pixels), reference, rtol=1e-5, atol=1e-6 * float(reference.abs().max()))
