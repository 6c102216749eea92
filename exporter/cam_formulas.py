"""The Grad-CAM family as batched torch functions of activations A and gradients G.

These run inside the traced joint graph, so every op here ends up in explainer.onnx.
Shapes: A, G are [N, K, h, w]; every map is [N, h, w], raw (before normalisation).
Epsilons follow DESIGN.md (and pytorch-grad-cam).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


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


def cam(activations: Tensor, class_weights: Tensor) -> Tensor:
    """Zhou et al. 2016: the target's FC weights [N, K] applied to A (head = GAP + linear)."""
    return _weighted_sum(class_weights, activations)


#: Gradient-based methods in contract order (see onnxcam.contract.GRADIENT_METHODS).
GRADIENT_FORMULAS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "gradcam": gradcam,
    "gradcampp": gradcampp,
    "xgradcam": xgradcam,
    "layercam": layercam,
    "hirescam": hirescam,
}
