"""Rewrites of a traced joint graph before ONNX export: what autograd writes generically, said cheaply.

On small networks the explainer's extra cost over a plain forward is a handful of backward ops; one of
them reads the whole classifier matrix: the backward of ``logits.gather(1, classes).sum()`` through the
last linear layer is a one-hot [N, classes] times the weights [classes, features]. That product is the
weights' rows of the chosen classes, exactly (every other term is 0 * w), so it becomes a row gather:
on a 1000-class head, 5 KB read per row instead of 5 MB per call. And the backward of a global
average pool broadcasts the gradient over the feature map, then divides it by h * w: the division
moves before the broadcast (the same numbers, computed on [N, K, 1, 1] rather than [N, K, h, w]).
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

aten = torch.ops.aten

_ZEROS = (aten.new_zeros.default, aten.zeros.default, aten.zeros_like.default)
_ONES = (aten.ones_like.default, aten.ones.default, aten.new_ones.default)


def _is_call(node: object, targets: tuple) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target in targets


def replace(graph: GraphModule, node: Node, replacement: Node) -> None:
    """``replacement`` takes ``node``'s place, users and metadata; ``node`` goes."""
    replacement.meta.update(node.meta)
    node.replace_all_uses_with(replacement)
    graph.graph.erase_node(node)


def tidy(graph: GraphModule, rewritten: int) -> int:
    """After ``rewritten`` replacements: drop what no longer has users and regenerate the code."""
    if rewritten:
        graph.graph.eliminate_dead_code()
        graph.recompile()
    return rewritten


def _is_ones(node: object) -> bool:
    """ones, or ones broadcast by ``expand`` (how sum's backward hands 1 to gather's backward)."""
    if _is_call(node, (aten.expand.default,)):
        node = node.args[0]
    return _is_call(node, _ONES)


def _one_hot_index(node: object) -> Node | None:
    """The [N, 1] class index of ``scatter_add(zeros [N, C], 1, index, ones)``; None for anything else."""
    if not _is_call(node, (aten.scatter_add.default,)):
        return None
    base, dim, index, source = node.args
    shape = getattr(index.meta.get("val"), "shape", None) if isinstance(index, Node) else None
    if dim not in (1, -1) or not _is_call(base, _ZEROS) or not _is_ones(source) or shape is None:
        return None
    return index if len(shape) == 2 and shape[1] == 1 else None


def _squeezed(graph: GraphModule, index: Node) -> Node:
    """[N] from the [N, 1] index: the input of ``unsqueeze(classes, 1)`` itself where it is one."""
    if _is_call(index, (aten.unsqueeze.default,)) and index.args[1] in (1, -1):
        return index.args[0]
    return graph.graph.call_function(aten.squeeze.dim, (index, 1))


def one_hot_products_as_gathers(graph: GraphModule) -> int:
    """Replace every ``mm(one_hot, matrix)`` by ``index_select(matrix, 0, index)``; returns how many."""
    rewritten = 0
    for node in list(graph.graph.nodes):
        if not _is_call(node, (aten.mm.default,)):
            continue
        one_hot, matrix = node.args
        index = _one_hot_index(one_hot)
        if index is None:
            continue
        with graph.graph.inserting_before(node):
            rows = _squeezed(graph, index)
            gathered = graph.graph.call_function(aten.index_select.default, (matrix, 0, rows))
        replace(graph, node, gathered)
        rewritten += 1
    return tidy(graph, rewritten)


def _is_number(value: object) -> bool:
    if isinstance(value, Node):
        value = value.meta.get("val")
    return isinstance(value, (int, float, torch.SymInt, torch.SymFloat))


def scaling_before_broadcast(graph: GraphModule) -> int:
    """Replace ``div(expand(x, size), scalar)`` by ``expand(div(x, scalar), size)``; returns how many."""
    rewritten = 0
    for node in list(graph.graph.nodes):
        if not _is_call(node, (aten.div.Scalar, aten.div.Tensor)) or node.kwargs:
            continue
        broadcast, divisor = node.args
        if not _is_call(broadcast, (aten.expand.default,)) or len(broadcast.users) != 1:
            continue
        if not _is_number(divisor):
            continue  # a tensor divisor may broadcast too; only numbers (symbolic sizes included) move
        source, size = broadcast.args[0], broadcast.args[1:]
        with graph.graph.inserting_before(node):
            scaled = graph.graph.call_function(node.target, (source, divisor))
            expanded = graph.graph.call_function(aten.expand.default, (scaled, *size))
        replace(graph, node, expanded)
        rewritten += 1
    return tidy(graph, rewritten)


def simplify(graph: GraphModule) -> GraphModule:
    """Every rewrite above, in place; values are unchanged (exactly, for finite weights)."""
    one_hot_products_as_gathers(graph)
    scaling_before_broadcast(graph)
    return graph
