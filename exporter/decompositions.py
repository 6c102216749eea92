"""Decompositions that turn the backward ops of a traced joint graph into ONNX-exportable ops.

The dynamo ONNX exporter has no translation for ``aten.convolution_backward``; its
input-gradient is a transposed convolution with the same weights, which ONNX has. Nor
for ``aten._adaptive_avg_pool2d_backward`` and ``aten.avg_pool2d_backward``: both poolings are
separable and linear, so their gradients are products with constant per-axis matrices.
Every other ``*_backward`` op uses PyTorch's own decomposition into forward ops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch._decomp import decomposition_table
from torch.overrides import TorchFunctionMode

from exporter.errors import ExportError

aten = torch.ops.aten


def _output_padding(
    in_sizes: Sequence[int], out_sizes: Sequence[int], weight_sizes: Sequence[int],
    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
) -> list[int]:
    """Extra rows/cols a transposed conv needs to give back the forward input's exact size."""
    return [
        int(size_in) - ((int(size_out) - 1) * s - 2 * p + d * (k - 1) + 1)
        for size_in, size_out, k, s, p, d in zip(
            in_sizes, out_sizes, weight_sizes, stride, padding, dilation, strict=True
        )
    ]


def convolution_backward_input(
    grad_output: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor,
    bias_sizes, stride, padding, dilation, transposed: bool, output_padding, groups: int,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor | None, None, None]:
    """d loss / d input of a convolution; weight and bias gradients are never needed here."""
    if output_mask[1] or output_mask[2]:
        raise ExportError("the explainer graph needs no weight gradients; parameters must not require grad")
    if not output_mask[0]:
        return (None, None, None)
    if transposed:
        grad_input = aten.convolution(grad_output, weight, None, stride, padding, dilation, False,
                                      [0] * len(stride), groups)
    else:
        pad = _output_padding(inputs.shape[2:], grad_output.shape[2:], weight.shape[2:], stride, padding, dilation)
        grad_input = aten.convolution(grad_output, weight, None, stride, padding, dilation, True, pad, groups)
    return (grad_input, None, None)


def _adaptive_pool_matrix(in_size: int, out_size: int, like: torch.Tensor) -> torch.Tensor:
    """[out, in] averaging matrix of adaptive average pooling along one axis (PyTorch's bins)."""
    matrix = torch.zeros((out_size, in_size), dtype=like.dtype)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix.to(like.device)


def adaptive_avg_pool2d_backward(grad_output: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Adaptive average pooling is separable and linear: grad_in = P_h^T · grad_out · P_w."""
    in_h, in_w = (int(v) for v in inputs.shape[-2:])
    out_h, out_w = (int(v) for v in grad_output.shape[-2:])
    rows = _adaptive_pool_matrix(in_h, out_h, grad_output)
    cols = _adaptive_pool_matrix(in_w, out_w, grad_output)
    return torch.einsum("...ij,ia,jb->...ab", grad_output, rows, cols)


def _avg_pool_matrix(in_size: int, out_size: int, kernel: int, stride: int, padding: int,
                     count_include_pad: bool, divisor_override: int | None, like: torch.Tensor) -> torch.Tensor:
    """[out, in] matrix of avg_pool2d along one axis, with PyTorch's window and divisor rules."""
    matrix = torch.zeros((out_size, in_size), dtype=like.dtype)
    for i in range(out_size):
        start = i * stride - padding
        end = min(start + kernel, in_size + padding)
        padded_length = end - start
        start, end = max(start, 0), min(end, in_size)
        if end <= start:
            continue
        divisor = 1 if divisor_override else (padded_length if count_include_pad else end - start)
        matrix[i, start:end] = 1.0 / divisor
    return matrix.to(like.device)


def avg_pool2d_backward(grad_output: torch.Tensor, inputs: torch.Tensor, kernel_size, stride, padding,
                        ceil_mode: bool, count_include_pad: bool, divisor_override: int | None) -> torch.Tensor:
    """avg_pool2d is separable per axis (its divisor is a product of per-axis lengths)."""
    def pair(value, default=None):
        value = value if value else default
        return (int(value[0]), int(value[-1])) if isinstance(value, (list, tuple)) else (int(value), int(value))

    kernel, strides, pads = pair(kernel_size), pair(stride, kernel_size), pair(padding)
    (in_h, in_w), (out_h, out_w) = inputs.shape[-2:], grad_output.shape[-2:]
    rows = _avg_pool_matrix(int(in_h), int(out_h), kernel[0], strides[0], pads[0], count_include_pad,
                            divisor_override, grad_output)
    cols = _avg_pool_matrix(int(in_w), int(out_w), kernel[1], strides[1], pads[1], count_include_pad,
                            divisor_override, grad_output)
    grad_input = torch.einsum("...ij,ia,jb->...ab", grad_output, rows, cols)
    return grad_input / divisor_override if divisor_override else grad_input


class ContiguousPoolingInputs(TorchFunctionMode):
    """Feeds adaptive average pooling a contiguous input while tracing.

    On a channels-last input (ConvNeXt's permuted blocks) PyTorch's global-pool shortcut
    re-strides its output with ``as_strided_``; the backward of that op becomes
    ``as_strided_scatter``, which has no ONNX form. Values are unchanged either way.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ADAPTIVE_POOLS and args and isinstance(args[0], torch.Tensor):
            args = (args[0].contiguous(), *args[1:])
        return func(*args, **kwargs)


_ADAPTIVE_POOLS = (torch.nn.functional.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d)


def backward_decompositions() -> dict[torch._ops.OpOverload, Callable]:
    """Decomposition table for make_fx: every backward op PyTorch can decompose, plus convolution."""
    table = {op: fn for op, fn in decomposition_table.items() if "backward" in op.name()}
    table[aten.convolution_backward.default] = convolution_backward_input
    table[aten._adaptive_avg_pool2d_backward.default] = adaptive_avg_pool2d_backward
    table[aten.avg_pool2d_backward.default] = avg_pool2d_backward
    return table
