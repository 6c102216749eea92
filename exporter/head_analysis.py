"""What the network after the target layer (the head) is, found by probing it numerically.

Structural pattern matching breaks on every model zoo's own module names; probing the
head answers the two questions the exporter has for any model: is it global-average-pool +
linear (so CAM applies), and does it read earlier tensors.
"""

from __future__ import annotations

import torch
from torch import nn

from exporter.check import reference_head
from exporter.hooks import Capture, on_layer_output

PROBE_SEED = 1234


def _probe_inputs(activation_shape: torch.Size, input_shape: tuple[int, int, int], batch: int = 2):
    generator = torch.Generator().manual_seed(PROBE_SEED)
    activations = torch.randn((batch, *activation_shape[1:]), generator=generator)
    pixels = torch.randn((batch, *input_shape), generator=generator)
    return activations, pixels, generator


def head_reads_pixels(model: nn.Module, layer: nn.Module, activation_shape: torch.Size,
                      input_shape: tuple[int, int, int]) -> bool:
    """True when the logits change with the pixels while the target activations stay fixed."""
    activations, pixels, generator = _probe_inputs(activation_shape, input_shape)
    other_pixels = torch.randn(pixels.shape, generator=generator)
    first = reference_head(model, layer, activations, pixels)
    second = reference_head(model, layer, activations, other_pixels)
    return not torch.allclose(torch.from_numpy(first), torch.from_numpy(second), rtol=1e-6, atol=1e-7)


def _real_activations(model: nn.Module, layer: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The layer's output on ``pixels``, plus spatially shuffled and mixed copies of it: activations in
    the range the head really sees, laid out in ways only a global average pool cannot tell apart."""
    capture = Capture()
    with torch.no_grad(), on_layer_output(layer, capture.as_leaf):
        model(pixels)
    real = capture.activations.detach()
    n, k, h, w = real.shape
    order = torch.randperm(h * w, generator=torch.Generator().manual_seed(PROBE_SEED))
    shuffled = real.reshape(n, k, h * w)[:, :, order].reshape(n, k, h, w)
    return torch.cat([real, shuffled, 0.3 * real + 0.7 * shuffled.flip(0)])


def find_cam_linear(model: nn.Module, layer: nn.Module, activation_shape: torch.Size,
                    input_shape: tuple[int, int, int]) -> str | None:
    """Name of the Linear module (W, b) when logits = W · mean_ij(A) + b, else None.

    Probed with the layer's own activations (and rearrangements of them), not random ones: a head
    that applies the layer's activation again (EfficientNet-Lite's shared ReLU6 after ``_bn1``) is
    exactly GAP + linear on every A the model produces, while random activations would be clipped.
    """
    channels = activation_shape[1]
    candidates = [(name, m) for name, m in model.named_modules()
                  if isinstance(m, nn.Linear) and m.in_features == channels]
    if not candidates:
        return None
    name, linear = candidates[-1]
    _, pixels, _ = _probe_inputs(activation_shape, input_shape)
    activations = _real_activations(model, layer, pixels)
    logits = torch.from_numpy(reference_head(model, layer, activations, pixels.repeat(3, 1, 1, 1)))
    with torch.no_grad():
        expected = linear(activations.mean(dim=(2, 3))).double()
    if logits.shape != expected.shape:
        return None
    scale = float(expected.abs().max())
    if torch.allclose(logits, expected, rtol=1e-4, atol=1e-5 * max(scale, 1.0)):
        return name
    return None
