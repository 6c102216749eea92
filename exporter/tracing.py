"""Tracing the forward and backward passes into one FX graph with make_fx.

``torch.export`` cannot trace ``torch.autograd.grad``; ``make_fx`` runs the autograd engine
while tracing and records the backward ops it executes. Parameters go in through
``torch.func.functional_call`` as detached tensors (no weight gradients get traced) and the
batch dimension stays symbolic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import GraphModule
from torch.fx.experimental.proxy_tensor import make_fx
from torch.nn.attention import SDPBackend, sdpa_kernel

from exporter.backprop_rules import RuleState, ruled_relus
from exporter.cam_formulas import gradcam, graph_maps, graph_methods
from exporter.decompositions import ContiguousPoolingInputs, backward_decompositions
from exporter.folded_linear import fold_broadcast_matmuls
from exporter.hooks import Capture, on_layer_output

Params = dict[str, torch.Tensor]


def resolve_targets(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row class: the given index, or the row's top-1 where ``target`` is negative."""
    return torch.where(target < 0, logits.argmax(dim=1), target)


def explainer_function(model: nn.Module, layer: nn.Module, cam_linear: str | None) -> Callable:
    """(params, buffers, pixels, target) -> (logits, activations, gradients, cam_* maps...).

    Rows are independent: the score is the sum of each row's own selected logit, and BatchNorm
    runs in eval mode, so d score / dA of row n involves row n only.
    """
    methods = graph_methods(cam_linear is not None)

    def explain(params: Params, buffers: Params, pixels: torch.Tensor, target: torch.Tensor):
        capture = Capture()
        with torch.enable_grad(), on_layer_output(layer, capture.as_leaf):
            logits = torch.func.functional_call(model, (params, buffers), (pixels,))
            classes = resolve_targets(logits, target)
            score = logits.gather(1, classes[:, None]).sum()
            activations = capture.activations
            (gradients,) = torch.autograd.grad(score, activations)
        activations = activations.detach()
        class_weights = params[f"{cam_linear}.weight"][classes] if cam_linear is not None else None
        maps = graph_maps(methods, activations, gradients, class_weights)
        return (logits.detach(), activations, gradients, *maps.values())

    return explain


def ruled_backward(run: Callable[[torch.Tensor], torch.Tensor], layer: nn.Module, pixels: torch.Tensor,
                   target: torch.Tensor, rule: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(logits, A, G, classes, d score / d pixels): one forward of ``run``, then the plain backward
    through the head only (Grad-CAM's G, for Guided Grad-CAM, as the paper defines it) and the backward
    to the pixels with each row's ReLU rule (backprop_rules). Traced into input_gradients.onnx and run
    eagerly by the export check."""
    capture = Capture()
    state = RuleState(rule, pixels.dtype)
    pixels = pixels.detach().requires_grad_(True)
    with torch.enable_grad(), on_layer_output(layer, capture.keep_graph), ruled_relus(state):
        logits = run(pixels)
        classes = resolve_targets(logits, target)
        score = logits.gather(1, classes[:, None]).sum()
        state.use_plain()
        (layer_gradients,) = torch.autograd.grad(score, capture.activations, retain_graph=True)
        state.use_rows()
        (gradients,) = torch.autograd.grad(score, pixels)
    return logits.detach(), capture.activations.detach(), layer_gradients, classes, gradients


def input_gradients_function(model: nn.Module, layer: nn.Module) -> Callable:
    """(params, buffers, pixels, target, rule) -> (logits, input_gradients, saliency, guided_gradcam).

    Rows stay independent, as in the explainer.
    """

    def input_gradients(params: Params, buffers: Params, pixels: torch.Tensor, target: torch.Tensor,
                        rule: torch.Tensor):
        logits, activations, layer_gradients, _, gradients = ruled_backward(
            lambda x: torch.func.functional_call(model, (params, buffers), (x,)), layer, pixels, target, rule)
        cam = gradcam(activations, layer_gradients)
        upsampled = F.interpolate(cam[:, None], size=tuple(pixels.shape[2:]), mode="bilinear", align_corners=False)
        return logits, gradients, gradients.abs().amax(dim=1), gradients * upsampled

    return input_gradients


def head_function(model: nn.Module, layer: nn.Module, input_shape: tuple[int, int, int] | None) -> Callable:
    """(params, buffers, activations[, pixels]) -> logits: the network after the target layer.

    With ``input_shape`` given, the head does not read the pixels and the prefix runs on
    zeros that the exporter removes as dead code; otherwise ``pixels`` is a real input.
    """

    def run_head(params: Params, buffers: Params, activations: torch.Tensor, pixels: torch.Tensor):
        with torch.no_grad(), on_layer_output(layer, lambda _: activations.clone()):
            return torch.func.functional_call(model, (params, buffers), (pixels,))

    if input_shape is None:
        return run_head

    def head_without_pixels(params: Params, buffers: Params, activations: torch.Tensor):
        zeros = activations.new_zeros((activations.shape[0], *input_shape))
        return run_head(params, buffers, activations, zeros)

    return head_without_pixels


def forward_function(model: nn.Module) -> Callable:
    """(params, buffers, pixels) -> logits: the unmodified network."""

    def forward(params: Params, buffers: Params, pixels: torch.Tensor):
        with torch.no_grad():
            return torch.func.functional_call(model, (params, buffers), (pixels,))

    return forward


def detached_state(model: nn.Module) -> tuple[Params, Params]:
    """Parameters and buffers as plain tensors: no weight gradients get traced."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.detach() for name, b in model.named_buffers()}
    return params, buffers


@contextmanager
def plain_attention() -> Iterator[None]:
    """Attention as matmul + softmax: the fused kernels (flash attention's forward and backward, the
    MultiheadAttention fast path) have no ONNX translation; the math path is ordinary ops both ways."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def trace(function: Callable, model: nn.Module, *example: torch.Tensor, fold_matmuls: bool = True) -> GraphModule:
    """make_fx with a symbolic batch and every backward op decomposed to exportable ops.

    Weights are closed over, not traced inputs: as inputs every one of their dimensions would
    become a symbol too, which makes tracing about ten times slower for nothing. Products with a
    weight matrix broadcast over a batch are folded into one GEMM (``fold_broadcast_matmuls``; off only to
    show in a test what it removes).
    """
    params, buffers = detached_state(model)

    def bound(*inputs: torch.Tensor):
        return function(params, buffers, *inputs)

    with ContiguousPoolingInputs(), plain_attention():
        graph = make_fx(
            bound,
            decomposition_table=backward_decompositions(),
            tracing_mode="symbolic",
            _allow_non_fake_inputs=True,  # the closed-over weights become graph constants
        )(*example)
    if fold_matmuls:
        fold_broadcast_matmuls(graph)
    return graph
