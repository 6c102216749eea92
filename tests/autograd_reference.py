"""An independent reference: the pytorch-grad-cam way (forward hook + tensor hook + backward),
with maps from DESIGN.md's formulas written out in plain torch. Shares no code with the exporter."""

from __future__ import annotations

import torch
from torch import nn


def activations_and_gradients(model: nn.Module, layer: nn.Module, pixels: torch.Tensor, targets: list[int]):
    """Logits, A and dlogit[target]/dA per row, from loss.backward() on the original module."""
    store: dict[str, torch.Tensor] = {}

    def forward_hook(module, inputs, output):
        store["activations"] = output.detach().clone()
        output.register_hook(lambda grad: store.__setitem__("gradients", grad.detach().clone()))

    handle = layer.register_forward_hook(forward_hook)
    try:
        pixels = pixels.clone().requires_grad_(True)
        logits = model(pixels)
        classes = [int(logits[i].argmax()) if t < 0 else t for i, t in enumerate(targets)]
        model.zero_grad()
        sum(logits[i, c] for i, c in enumerate(classes)).backward()
    finally:
        handle.remove()
    return logits.detach(), store["activations"], store["gradients"], classes


def maps(a: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """DESIGN.md formulas, one line each."""
    a, g = a.double(), g.double()
    s = a.sum(dim=(2, 3), keepdim=True)
    alpha = torch.where(g != 0, g**2 / (2 * g**2 + s * g**3 + 1e-6), torch.zeros_like(g))
    weighted = {
        "gradcam": g.mean(dim=(2, 3)),
        "gradcampp": (alpha * g.clamp(min=0)).sum(dim=(2, 3)),
        "xgradcam": (g * a / (s + 1e-7)).sum(dim=(2, 3)),
    }
    out = {name: torch.einsum("nk,nkij->nij", w, a).clamp(min=0) for name, w in weighted.items()}
    out["layercam"] = (g.clamp(min=0) * a).sum(dim=1).clamp(min=0)
    out["hirescam"] = (g * a).sum(dim=1).clamp(min=0)
    return out


def rel_error(got, reference) -> float:
    got = torch.as_tensor(got, dtype=torch.float64)
    reference = torch.as_tensor(reference, dtype=torch.float64)
    scale = float(reference.abs().max())
    return float((got - reference).abs().max()) / (scale if scale > 0 else 1.0)
