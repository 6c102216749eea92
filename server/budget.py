"""Latency budget: per-model costs measured at load, and the richest method set that fits.

Costs are per row (one image x one target) at batch 1, in milliseconds. Every graph method comes
out of the same explainer call, so the first one pays ``explainer_ms`` and the others only their
postprocessing; gradient-free methods pay their own masked forwards on top; input-gradient
methods pay one input_gradients.onnx row per ReLU rule (guided backpropagation and Guided Grad-CAM
share one). Without any method the
request runs the plain forward graph (``predict_ms``), which is always paid: predictions are never
skipped.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from onnxcam import methods as registry

#: Subsets are enumerated exhaustively; beyond this many candidates it falls back to greedy order.
MAX_EXHAUSTIVE = 12


@dataclass(frozen=True)
class Costs:
    predict_ms: float
    explainer_ms: float
    #: Extra cost of a gradient-free method per row, beyond the explainer call.
    extra_ms: dict[str, float] = field(default_factory=dict)
    #: Postprocessing of one map per megapixel of output (upsample + PNG + overlay).
    render_ms_per_mpixel: float = 0.0
    #: One row of input_gradients.onnx; methods that share a ReLU rule share the row.
    input_ms: float = 0.0

    def row_ms(self, graph: registry.Graph) -> float:
        """One row of a graph that sampled methods run (a noisy copy, a path point, an occluded copy)."""
        return {registry.Graph.EXPLAINER: self.explainer_ms, registry.Graph.INPUT_GRADIENTS: self.input_ms,
                registry.Graph.FORWARD: self.predict_ms}[graph]

    def as_dict(self, methods: Sequence[str] = ()) -> dict[str, float]:
        """GetModelMetadata's method_cost_ms; a sampled method's entry is the cost of one of its rows."""
        out = {"predict": self.predict_ms, "explainer": self.explainer_ms,
               "render_per_mpixel": self.render_ms_per_mpixel, "input_gradients": self.input_ms}
        out.update(self.extra_ms)
        for name in methods:
            method = registry.get(name)
            if method.kind is registry.Kind.SAMPLED:
                out[name] = self.row_ms(method.runs)
        return out


def set_cost(costs: Costs, methods: Sequence[str], rows: int, render_ms: float,
             sampled_rows: Mapping[str, int] | None = None) -> float:
    """Estimated ms for computing ``methods`` for ``rows`` rows, predictions included: the explainer
    call when a CAM-family method is asked for, one input-gradient row per ReLU rule, the
    gradient-free methods' own runs, a sampled method's ``sampled_rows[name]`` rows of its graph
    (the whole request's), and rendering."""
    if not methods:
        return costs.predict_ms
    declared = [registry.get(m) for m in methods]
    rules = {m.rule for m in declared if m.kind is registry.Kind.INPUT}
    total = costs.input_ms * len(rules) * rows
    if any(m.kind in (registry.Kind.GRAPH, registry.Kind.GRADIENT_FREE) for m in declared):
        total += costs.explainer_ms * rows
    elif not rules:
        total += costs.predict_ms  # sampled methods alone: the forward pass gives the predictions
    for method in declared:
        extra = costs.extra_ms.get(method.name, 0.0) if method.kind is registry.Kind.GRADIENT_FREE else 0.0
        total += (render_ms + extra) * rows
        if method.kind is registry.Kind.SAMPLED:
            total += costs.row_ms(method.runs) * (sampled_rows or {}).get(method.name, 0)
    return total


def select(costs: Costs, methods: Sequence[str], rows: int, available_ms: float,
           render_ms: float, sampled_rows: Mapping[str, int] | None = None) -> tuple[list[str], list[str]]:
    """(chosen, skipped): the most methods that fit in ``available_ms``; among equally many, the
    ones asked for first. Order is kept as requested."""
    methods = list(methods)

    def cost(chosen: Sequence[str]) -> float:
        return set_cost(costs, chosen, rows, render_ms, sampled_rows)

    if cost(methods) <= available_ms:
        return methods, []
    best: tuple[int, ...] = ()
    if len(methods) <= MAX_EXHAUSTIVE:
        for size in range(len(methods), 0, -1):
            fitting = [combo for combo in itertools.combinations(range(len(methods)), size)
                       if cost([methods[i] for i in combo]) <= available_ms]
            if fitting:  # combinations come in lexicographic order: the earliest-requested set first
                best = fitting[0]
                break
    else:
        chosen: list[int] = []
        for i in range(len(methods)):
            if cost([methods[j] for j in chosen + [i]]) <= available_ms:
                chosen.append(i)
        best = tuple(chosen)
    chosen_names = [methods[i] for i in best]
    return chosen_names, [m for m in methods if m not in chosen_names]

