"""Forward hooks on the target layer, shared by tracing, the export check and head detection."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from exporter.errors import ExportError
from exporter.token_grid import NCHW, TargetLayer


@contextmanager
def on_layer_output(layer: nn.Module | TargetLayer,
                    transform: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Pass the layer's output, as the [N, K, h, w] grid, through ``transform`` for the duration of the block.

    A ``TargetLayer`` with a token or channels-last layout is folded into the grid before
    ``transform`` and the result unfolded back, so the rest of the network runs on it; a plain
    module must output [N, K, h, w] itself. A module called more than once (a shared ReLU) is
    transformed at every call; callers that record the output keep the last one, as
    pytorch-grad-cam does.
    """
    target = layer if isinstance(layer, TargetLayer) else TargetLayer(layer)
    layout = target.layout

    def hook(module: nn.Module, inputs, output):
        if not isinstance(output, torch.Tensor):
            raise ExportError(
                f"target layer {type(module).__name__} returns {type(output).__name__}, not a tensor; "
                "pick a layer whose output is one [N, K, h, w] tensor"
            )
        if layout.kind == NCHW and output.dim() != 4:
            raise ExportError(
                f"target layer {type(module).__name__} outputs shape {tuple(output.shape)}; "
                "a class activation map needs a 4-D [N, K, h, w] output"
            )
        return layout.from_grid(transform(layout.to_grid(output)), output)

    handle = target.module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class Capture:
    """Records the target layer's output as a fresh autograd leaf so d score / dA can be taken.

    The layer returns a clone of the leaf: an in-place op after the layer (ReLU(inplace=True))
    then changes the clone, never the recorded activations. Both are made contiguous: a
    permuted layout (ConvNeXt) otherwise makes pooling emit ``as_strided_``, whose backward
    has no ONNX form.
    """

    def __init__(self) -> None:
        self.activations: torch.Tensor | None = None

    def as_leaf(self, output: torch.Tensor) -> torch.Tensor:
        leaf = output.detach().contiguous().requires_grad_(True)
        self.activations = leaf
        return leaf.clone(memory_format=torch.contiguous_format)

    def keep_graph(self, output: torch.Tensor) -> torch.Tensor:
        """For autograd on the original module: keep ``output`` in the graph, hand on a clone.

        A frozen prefix (no parameter requires grad) gives an output outside autograd; it
        becomes a leaf then, which yields the same d score / dA.
        """
        if not output.requires_grad:
            output = output.detach().requires_grad_(True)
        self.activations = output
        return output.clone()
