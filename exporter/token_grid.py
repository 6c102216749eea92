"""Target layers whose output is not [N, K, h, w]: token sequences (ViT, DeiT) and channels-last grids (Swin).

Every graph, map and the server speak [N, K, h, w]. A layout says how a layer's own output
becomes that grid and how a grid goes back into the layer's output, so the network after
the layer runs on it unchanged: ``tokens`` drops the leading class/distillation tokens and
folds the patch tokens [N, T, C] into [N, C, h, w] (the reshape pytorch-grad-cam's docs give
as ``reshape_transform``), ``nhwc`` permutes [N, h, w, C]. The reshape is traced into the graphs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from exporter.errors import ExportError

NCHW, TOKENS, NHWC = "nchw", "tokens", "nhwc"
AUTO = "auto"
LAYOUTS = (AUTO, NCHW, TOKENS, NHWC)
#: The most leading non-patch tokens (class, distillation, register tokens) a sequence may carry.
MAX_PREFIX_TOKENS = 8
#: How far the strides along height and width may differ (ceil rounding of odd sizes).
STRIDE_SLACK = 0.15


@dataclass(frozen=True)
class Layout:
    """How one layer's output maps to the [N, K, h, w] grid."""

    kind: str = NCHW
    #: Leading tokens that are not patches (``tokens`` only); they pass through untouched.
    prefix: int = 0
    #: (h, w) of the patch grid (``tokens`` only).
    grid: tuple[int, int] = (0, 0)

    def to_grid(self, output: torch.Tensor) -> torch.Tensor:
        """The layer's output as [N, K, h, w]."""
        if self.kind == TOKENS:
            patches = output[:, self.prefix:, :]
            return patches.transpose(1, 2).reshape(output.shape[0], output.shape[2], *self.grid)
        if self.kind == NHWC:
            return output.permute(0, 3, 1, 2)
        return output

    def from_grid(self, grid: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """``grid`` put back in the layer's own layout; the prefix tokens come from ``output``."""
        if self.kind == TOKENS:
            patches = grid.flatten(2).transpose(1, 2)
            return torch.cat([output[:, :self.prefix, :].to(grid.dtype), patches], dim=1).contiguous()
        if self.kind == NHWC:
            return grid.permute(0, 2, 3, 1).contiguous()
        return grid

    def describe(self) -> dict:
        """model.json's ``target_layout``."""
        if self.kind == TOKENS:
            return {"kind": self.kind, "prefix_tokens": self.prefix, "grid": list(self.grid)}
        return {"kind": self.kind}


@dataclass(frozen=True)
class TargetLayer:
    """The target module and the layout of its output: what every hook on the target receives."""

    module: nn.Module
    layout: Layout = Layout()
    #: The layer's own output shape at the batch it was found with.
    output_shape: tuple[int, ...] = ()


def _stride_fits(h: int, w: int, input_hw: tuple[int, int]) -> bool:
    """(h, w) could be a feature grid of an (H, W) input: inside it, more than one cell, equal strides."""
    height, width = input_hw
    if h < 1 or w < 1 or h > height or w > width or h * w < 2:
        return False
    stride_h, stride_w = height / h, width / w
    return abs(stride_h - stride_w) <= STRIDE_SLACK * max(stride_h, stride_w)


def token_grid(tokens: int, input_hw: tuple[int, int]) -> tuple[int, tuple[int, int]] | None:
    """(prefix, (h, w)) with tokens = prefix + h * w for a square patch p: h = H / p, w = W / p; fewest prefix first."""
    height, width = input_hw
    for prefix in range(0, MAX_PREFIX_TOKENS + 1):
        patches = tokens - prefix
        if patches < 2:
            break
        # patches = (H / p) * (W / p)  =>  p = sqrt(H * W / patches)
        patch = math.sqrt(height * width / patches)
        for p in {math.floor(patch), math.ceil(patch)}:
            if p >= 1 and height % p == 0 and width % p == 0 and (height // p) * (width // p) == patches:
                return prefix, (height // p, width // p)
    return None


def _channels_last_module(module: nn.Module, last_dim: int) -> bool:
    """A LayerNorm over the last dimension or a Linear: their output's last dimension is channels."""
    if isinstance(module, nn.LayerNorm):
        return tuple(module.normalized_shape) == (last_dim,)
    return isinstance(module, nn.Linear)


def detect(module: nn.Module, output_shape: tuple[int, ...], input_hw: tuple[int, int],
           requested: str = AUTO) -> Layout | None:
    """The layout of a layer's output, or None when it maps to no grid (a pooled vector, a wrong token count).

    Auto: a 3-D [N, T, C] output whose T is prefix + a patch grid of the input is ``tokens``; a 4-D
    output is NCHW when dims 2, 3 form a grid of the input, NHWC when dims 1, 2 do. When both
    could (a [N, 7, 7, 7] output), a LayerNorm over the last dimension or a Linear is NHWC and
    anything else NCHW. A 4-D output whose dims 2, 3 do not form a grid ([N, 7, 7, 768]) is never
    taken as NCHW: that was Swin's silent wrong map, [7, 768] instead of [7, 7].
    """
    shape = tuple(int(v) for v in output_shape)
    if requested not in LAYOUTS:
        raise ExportError(f"unknown layer layout {requested!r}; one of {', '.join(LAYOUTS)}")
    if len(shape) == 3 and requested in (AUTO, TOKENS):
        found = token_grid(shape[1], input_hw)
        return Layout(TOKENS, found[0], found[1]) if found else None
    if len(shape) != 4 or requested == TOKENS:
        return None
    as_nchw = _stride_fits(shape[2], shape[3], input_hw)
    as_nhwc = _stride_fits(shape[1], shape[2], input_hw)
    if requested == NCHW:  # the override settles an ambiguous shape; it never makes a grid of a non-grid
        return Layout(NCHW) if as_nchw else None
    if requested == NHWC:
        return Layout(NHWC) if as_nhwc else None
    if as_nchw and as_nhwc:
        return Layout(NHWC) if _channels_last_module(module, shape[-1]) else Layout(NCHW)
    if as_nhwc:
        return Layout(NHWC)
    if as_nchw:
        return Layout(NCHW)
    return None


def grid_shape(layout: Layout, output_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """[K, h, w] of the grid a layer's output of ``output_shape`` becomes."""
    shape = tuple(int(v) for v in output_shape)
    if layout.kind == TOKENS:
        return (shape[2], *layout.grid)
    if layout.kind == NHWC:
        return shape[3], shape[1], shape[2]
    return shape[1], shape[2], shape[3]
