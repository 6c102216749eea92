"""Products with a weight matrix traced as one 2-D GEMM, not as a batch of copies of the weight.

``aten.linear`` on a [L, N, C] input becomes ``matmul``, and PyTorch's matmul folds the leading
dimensions into one only when that needs no copy of its input. Multi-head attention's input
projection gets a transposed, non-contiguous sequence, so matmul broadcasts instead: the [C, 3C]
weight is expanded to [L, C, 3C] and multiplied batch by batch, in the forward and again in the
backward. In ONNX that is an Expand of 1.4 GB per ViT-B block (197 × 768 × 2304 floats) in every
graph, which ONNX Runtime builds on every call (the export check of vit_b_16 ran out of memory).
The pass below rewrites each ``bmm(x, expand(W))`` of the traced graph into
``reshape(mm(reshape(x, [-1, C]), W))``, and the backward's ``bmm(g, expand(W)ᵀ)`` into the same with
Wᵀ: the same products, one GEMM each.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from exporter.graph_rewrites import replace, tidy

aten = torch.ops.aten
_VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)


def _broadcast_matrix(node: object) -> tuple[Node, bool] | None:
    """(W, transposed) when ``node`` is the 2-D W expanded to [B, K, M] (possibly viewed as that same
    shape), or that expansion with its last two dimensions swapped (the backward's product with W^T)."""
    transposed = False
    if isinstance(node, Node) and node.target == aten.transpose.int and \
            sorted(d % 3 for d in node.args[1:]) == [1, 2] and isinstance(node.args[0], Node):
        transposed, node = True, node.args[0]
    if isinstance(node, Node) and node.target in _VIEWS and isinstance(node.args[0], Node):
        if tuple(node.args[0].meta["val"].shape) != tuple(node.meta["val"].shape):
            return None
        node = node.args[0]
    if not (isinstance(node, Node) and node.target == aten.expand.default and isinstance(node.args[0], Node)):
        return None
    matrix = node.args[0]
    expanded = node.meta["val"].shape
    if matrix.meta["val"].dim() != 2 or len(expanded) != 3 or tuple(expanded[1:]) != tuple(matrix.meta["val"].shape):
        return None
    return matrix, transposed


def _output_sizes(graph, inputs: Node, product: Node) -> list:
    """bmm's output sizes [B, L, M] for the reshape: ints where known, ``sym_size`` nodes of the input
    where symbolic (a head traced from a grid has a symbolic token count as well as a symbolic batch)."""
    sizes: list = []
    for dim, size in enumerate(product.meta["val"].shape):
        if isinstance(size, int):
            sizes.append(size)
        else:
            node = graph.call_function(aten.sym_size.int, (inputs, dim))
            node.meta["val"] = inputs.meta["val"].shape[dim]
            sizes.append(node)
    return sizes


def fold_broadcast_matmuls(graph_module: GraphModule) -> int:
    """Rewrite every bmm with a broadcast weight matrix on its right into one mm; returns how many."""
    graph, folded = graph_module.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != aten.bmm.default:
            continue
        inputs, other = node.args
        found = _broadcast_matrix(other)
        inner = inputs.meta["val"].shape[-1]
        if found is None or not isinstance(inner, int) or not isinstance(node.meta["val"].shape[-1], int):
            continue
        matrix, transposed = found
        with graph.inserting_before(node):
            if transposed:
                matrix = graph.call_function(aten.t.default, (matrix,))
            rows = graph.call_function(aten.reshape.default, (inputs, [-1, inner]))
            product = graph.call_function(aten.mm.default, (rows, matrix))
            replacement = graph.call_function(aten.reshape.default, (product, _output_sizes(graph, inputs, node)))
        replace(graph_module, node, replacement)
        folded += 1
    return tidy(graph_module, folded)
