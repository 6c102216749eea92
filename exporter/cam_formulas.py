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
    return torch.relu((weights[:, :, None, None] * activations).sum(dim=1))


def gradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Selvaraju et al. 2017: weights are the spatial mean of the gradients."""
    return _weighted_sum(gradients.mean(dim=(2, 3)), activations)


def gradcampp(activations: Tensor, gradients: Tensor) -> Tensor:
    """Chattopadhay et al. 2018, closed form for an exponential score."""
    grads_2 = gradients * gradients
    grads_3 = grads_2 * gradients
    sum_activations = activations.sum(dim=(2, 3), keepdim=True)
    alpha = grads_2 / (2.0 * grads_2 + sum_activations * grads_3 + 1e-6)
    alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
    weights = (alpha * torch.relu(gradients)).sum(dim=(2, 3))
    return _weighted_sum(weights, activations)


def xgradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Fu et al. 2020: gradients weighted by normalised activations."""
    sum_activations = activations.sum(dim=(2, 3), keepdim=True)
    weights = (gradients * activations / (sum_activations + 1e-7)).sum(dim=(2, 3))
    return _weighted_sum(weights, activations)


def layercam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Jiang et al. 2021: element-wise positive gradients times activations."""
    return torch.relu((torch.relu(gradients) * activations).sum(dim=1))


def hirescam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Draelos & Carin 2020: element-wise gradients times activations."""
    return torch.relu((gradients * activations).sum(dim=1))


def gradcam_counterfactual(activations: Tensor, gradients: Tensor) -> Tensor:
    """Selvaraju et al. 2017, section 5: Grad-CAM with negated gradients, the regions whose removal
    would raise the class score (what argues against the class)."""
    return _weighted_sum(-gradients.mean(dim=(2, 3)), activations)


def cam(activations: Tensor, class_weights: Tensor) -> Tensor:
    """Zhou et al. 2016: the target's FC weights [N, K] applied to A (head = GAP + linear)."""
    return _weighted_sum(class_weights, activations)


#: The formula of each GRAPH method, by name; CAM takes the target's FC weights instead of G.
FORMULAS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    m.name: globals()[m.name] for m in registry.of_kind(registry.Kind.GRAPH)}


def graph_methods(linear_head: bool) -> list[registry.Method]:
    """The maps an explainer graph carries, in output order: CAM only with a GAP + linear head."""
    return [m for m in registry.of_kind(registry.Kind.GRAPH) if linear_head or not m.needs_linear_head]


def graph_maps(methods: list[registry.Method], activations: Tensor, gradients: Tensor,
               class_weights: Tensor | None) -> dict[str, Tensor]:
    """Output name -> map for ``methods``; ``class_weights`` [N, K] are the targets' FC weights."""
    maps = {}
    for method in methods:
        second = class_weights if method.needs_linear_head else gradients
        if second is None:
            raise ValueError(f"{method.title} needs the head's linear weights")
        maps[method.output] = FORMULAS[method.name](activations, second)
    return maps
