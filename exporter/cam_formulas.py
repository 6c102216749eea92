"""The Grad-CAM family as batched torch functions of activations A and gradients G.

These run inside the traced joint graph, so every op here ends up in explainer.onnx; the export
check evaluates the same functions in float64 as the reference. Every method of kind GRAPH in
onnxcam.methods has its function here under its name. Shapes: A, G are [N, K, h, w]; every map is
[N, h, w], raw (before normalisation). Epsilons follow docs/DESIGN.md (and pytorch-grad-cam).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from onnxcam import methods as registry


def _weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """ReLU(sum_k w_k A_k) for per-channel weights [N, K]."""
    return _weighted_sums(weights[:, None], activations)[:, 0]


def _weighted_sums(weights: Tensor, activations: Tensor) -> Tensor:
    """ReLU(sum_k w_mk A_k) for M sets of per-channel weights [N, M, K], as one matrix product: [N, M, h, w]."""
    return torch.relu(weights @ activations.flatten(2)).unflatten(2, activations.shape[2:])


def gradcam_weights(activations: Tensor, gradients: Tensor) -> Tensor:
    """Selvaraju et al. 2017: the spatial mean of the gradients."""
    return gradients.mean(dim=(2, 3))


def gradcampp_weights(activations: Tensor, gradients: Tensor) -> Tensor:
    """Chattopadhay et al. 2018, closed form for an exponential score: sum_ij alpha_ij ReLU(G_ij).

    alpha is defined as 0 where G = 0; there ReLU(G) is 0 as well and alpha = 0 / 1e-6 finite, so the
    product is 0 without a select (it would differ only for infinite activations).
    """
    grads_2 = gradients * gradients
    sum_activations = activations.sum(dim=(2, 3))[:, :, None, None]  # one node with XGrad-CAM's sum
    alpha = grads_2 / (2.0 * grads_2 + sum_activations * (grads_2 * gradients) + 1e-6)
    return (alpha * torch.relu(gradients)).sum(dim=(2, 3))


def xgradcam_weights(activations: Tensor, gradients: Tensor) -> Tensor:
    """Fu et al. 2020: sum_ij G_ij A_ij / (sum_ij A_ij + 1e-7), the division once per channel."""
    return (gradients * activations).sum(dim=(2, 3)) / (activations.sum(dim=(2, 3)) + 1e-7)


def gradcam_counterfactual_weights(activations: Tensor, gradients: Tensor) -> Tensor:
    """Selvaraju et al. 2017, section 5: Grad-CAM's weights of the negated gradients."""
    return -gradcam_weights(activations, gradients)


def cam_weights(activations: Tensor, class_weights: Tensor) -> Tensor:
    """Zhou et al. 2016: the target's FC weights [N, K] (head = GAP + linear)."""
    return class_weights


def gradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Selvaraju et al. 2017: weights are the spatial mean of the gradients."""
    return _weighted_sum(gradcam_weights(activations, gradients), activations)


def gradcampp(activations: Tensor, gradients: Tensor) -> Tensor:
    """Chattopadhay et al. 2018, closed form for an exponential score."""
    return _weighted_sum(gradcampp_weights(activations, gradients), activations)


def xgradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Fu et al. 2020: gradients weighted by normalised activations."""
    return _weighted_sum(xgradcam_weights(activations, gradients), activations)


def layercam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Jiang et al. 2021: element-wise positive gradients times activations."""
    return torch.relu((torch.relu(gradients) * activations).sum(dim=1))


def hirescam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Draelos & Carin 2020: element-wise gradients times activations."""
    return torch.relu((gradients * activations).sum(dim=1))


def gradcam_counterfactual(activations: Tensor, gradients: Tensor) -> Tensor:
    """Selvaraju et al. 2017, section 5: Grad-CAM with negated gradients, the regions whose removal
    would raise the class score (what argues against the class)."""
    return _weighted_sum(gradcam_counterfactual_weights(activations, gradients), activations)


def cam(activations: Tensor, class_weights: Tensor) -> Tensor:
    """Zhou et al. 2016: the target's FC weights [N, K] applied to A (head = GAP + linear)."""
    return _weighted_sum(cam_weights(activations, class_weights), activations)


#: The formula of each GRAPH method, by name; CAM takes the target's FC weights instead of G.
FORMULAS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    m.name: globals()[m.name] for m in registry.of_kind(registry.Kind.GRAPH)}


def graph_methods(linear_head: bool) -> list[registry.Method]:
    """The maps an explainer graph carries, in output order: CAM only with a GAP + linear head."""
    return [m for m in registry.of_kind(registry.Kind.GRAPH) if linear_head or not m.needs_linear_head]


#: The per-channel weights [N, K] of each channel-weighted method (map = ReLU(sum_k w_k A_k)).
CHANNEL_WEIGHTS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    name: globals()[f"{name}_weights"] for name in FORMULAS if f"{name}_weights" in globals()}


def graph_maps(methods: list[registry.Method], activations: Tensor, gradients: Tensor,
               class_weights: Tensor | None) -> dict[str, Tensor]:
    """Output name -> map for ``methods``; ``class_weights`` [N, K] are the targets' FC weights.

    Every channel-weighted map comes out of one matrix product of the stacked weights with A (one
    graph node for all of them, where a product and a channel sum per map cost two passes over A
    each); shared terms (sum_ij A, ReLU(G), G * A) are one node each after export.
    """
    weighted = [m for m in methods if m.name in CHANNEL_WEIGHTS]
    maps: dict[str, Tensor] = {}
    if weighted:
        rows = []
        for method in weighted:
            second = class_weights if method.needs_linear_head else gradients
            if second is None:
                raise ValueError(f"{method.title} needs the head's linear weights")
            rows.append(CHANNEL_WEIGHTS[method.name](activations, second))
        sums = _weighted_sums(torch.stack(rows, dim=1), activations)
        maps = {method.output: sums[:, i] for i, method in enumerate(weighted)}
    for method in methods:
        if method.output not in maps:
            maps[method.output] = FORMULAS[method.name](activations, gradients)
    return {method.output: maps[method.output] for method in methods}
