"""Linear layers on batched token sequences traced as one matrix product, not a batch of them.

``aten.linear`` on a [L, N, C] input becomes ``matmul``, and PyTorch's matmul folds the leading
dimensions into one only when that needs no copy of an input that requires grad. Multi-head
attention's input projection gets a transposed, non-contiguous sequence while the explainer is traced
with gradients on, so matmul broadcasts instead: the [C, 3C] weight is expanded to [L, C, 3C] and
multiplied batch by batch. In ONNX that is an Expand of 1.4 GB per ViT-B block (197 × 768 × 2304
floats) in every graph, which ONNX Runtime materialises on every call. Folded here first, the
product is one [L·N, C] × [C, 3C] GEMM; the values are the same.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

_LINEARS = (torch.nn.functional.linear, torch._C._nn.linear)


class FoldedLinear(TorchFunctionMode):
    """While tracing: ``linear`` on an input of more than two dimensions runs on its 2-D reshape."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _LINEARS and args and isinstance(args[0], torch.Tensor) and args[0].dim() > 2:
            inputs, weight, *rest = args
            bias = rest[0] if rest else kwargs.get("bias")
            flat = func(inputs.reshape(-1, inputs.shape[-1]), weight, bias)
            return flat.reshape(*inputs.shape[:-1], flat.shape[-1])
        return func(*args, **kwargs)
