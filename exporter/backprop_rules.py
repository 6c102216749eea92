"""ReLU backward rules for the input-gradient methods, applied to every ReLU on the path.

One traced backward pass serves three rules, chosen per row by the graph input ``rule``:

- plain (saliency, Simonyan et al. 2014): the ordinary gradient, g * [x > 0];
- deconvnet (Zeiler & Fergus 2014): only positive gradients pass, whatever the forward input: ReLU(g);
- guided backpropagation (Springenberg et al. 2015): positive gradients where the forward input was
  positive: ReLU(g) * [x > 0].

Written with two per-row flags p (keep positive gradients only) and m (mask by the forward input),
grad_in = (g - p * min(g, 0)) * (m * [x > 0] + 1 - m): plain p=0, m=1; deconvnet p=1, m=0; guided
p=1, m=1. A TorchFunctionMode swaps in the rule for every ReLU however it is called: ``nn.ReLU``,
``F.relu``, ``torch.relu``, ``Tensor.relu`` and their in-place forms (torchvision DenseNet's final
``F.relu(..., inplace=True)`` included). Clipped ReLUs (``ReLU6``, ``hardtanh``) get the same rule
with their own linear region as the mask, [low < x < high]. Smooth activations (SiLU, GELU,
hardswish, sigmoid) keep their ordinary gradient: the rules are defined for ReLU's on/off gate only.
Captum rewrites only ``nn.ReLU`` modules, so on networks with ReLU6 or functional ReLUs its
deconvnet and guided maps differ from these (and from the papers' definition).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from onnxcam import contract


class RuleState:
    """The flags the ReLU backward reads when it runs; ``use`` switches them between backward passes."""

    def __init__(self, rule: torch.Tensor, dtype: torch.dtype) -> None:
        self.row_positive = (rule != contract.RULE_PLAIN).to(dtype)
        self.row_masked = (rule != contract.RULE_DECONVNET).to(dtype)
        self.positive, self.masked = self.row_positive, self.row_masked

    def use_plain(self) -> None:
        """The ordinary gradient for every row (Grad-CAM's gradient inside the same graph)."""
        self.positive, self.masked = torch.zeros_like(self.row_positive), torch.ones_like(self.row_masked)

    def use_rows(self) -> None:
        self.positive, self.masked = self.row_positive, self.row_masked

    def flags(self, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (-1,) + (1,) * (dim - 1)
        return self.positive.reshape(shape), self.masked.reshape(shape)


class _RuledClamp(torch.autograd.Function):
    """clamp(x, low, high) forward; the state's rule backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, low: float, high: float | None, state: RuleState) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.low, ctx.high, ctx.state = low, high, state
        return torch.clamp(x, min=low) if high is None else torch.clamp(x, low, high)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        inside = x > ctx.low
        if ctx.high is not None:
            inside = inside & (x < ctx.high)
        positive, masked = ctx.state.flags(x.dim())
        grad = grad - positive * torch.clamp(grad, max=0)
        return grad * (inside.to(grad.dtype) * masked + (1 - masked)), None, None, None


_RELU = {torch.relu, torch.relu_, F.relu, torch.Tensor.relu, torch.Tensor.relu_}
_RELU6 = {F.relu6, torch._C._nn.relu6, torch._C._nn.relu6_}
_HARDTANH = {F.hardtanh, F.hardtanh_, torch._C._nn.hardtanh, torch._C._nn.hardtanh_}


class _RuleMode(TorchFunctionMode):
    def __init__(self, state: RuleState) -> None:
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU:
            return _RuledClamp.apply(args[0], 0.0, None, self.state)
        if func in _RELU6:
            return _RuledClamp.apply(args[0], 0.0, 6.0, self.state)
        if func in _HARDTANH:
            low = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
            high = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
            return _RuledClamp.apply(args[0], float(low), float(high), self.state)
        return func(*args, **kwargs)


@contextmanager
def ruled_relus(state: RuleState) -> Iterator[RuleState]:
    """Every ReLU called in the block takes its backward rule from ``state``."""
    with _RuleMode(state):
        yield state
