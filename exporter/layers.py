"""Finding the target layer: by dotted path, or the last spatial feature map before global pooling.

A layer qualifies when its output maps to a [N, K, h, w] grid (``token_grid``): a 4-D feature map,
a ViT/DeiT token sequence or a Swin channels-last grid, and it runs once per forward.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from exporter.errors import ExportError
from exporter.hooks import Capture, on_layer_output
from exporter.token_grid import AUTO, NCHW, TOKENS, Layout, TargetLayer, detect

_POOLING_TO_SKIP = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Dropout)
#: How many working layers an error about a bad one suggests.
SUGGESTIONS = 5


def module_names(model: nn.Module) -> list[str]:
    """Every addressable module path of ``model`` (the root excluded)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, path: str) -> nn.Module:
    """The module at dotted ``path``; an unknown path lists the nearest valid names."""
    modules = dict(model.named_modules())
    if path in modules and path:
        return modules[path]
    names = module_names(model)
    near = difflib.get_close_matches(path, names, n=6, cutoff=0.5)
    if not near:
        near = [n for n in names if "." not in n][:12]
    raise ExportError(
        f"no layer named {path!r} in {type(model).__name__}; nearest valid names: {', '.join(near)}"
    )


@dataclass
class LayerOutput:
    """One module's output in one forward: what choosing and refusing target layers need."""

    name: str
    module: nn.Module
    shape: tuple[int, ...] | None  # None: not one tensor
    calls: int
    order: int  # completion order of the (last) call
    pure_permute: bool  # a parameter-free module that only reorders its input's dimensions

    def layout(self, input_hw: tuple[int, int], requested: str = AUTO) -> Layout | None:
        if self.shape is None or self.calls != 1 or isinstance(self.module, _POOLING_TO_SKIP):
            return None
        return detect(self.module, self.shape, input_hw, requested)


def _is_permuted_view(before: torch.Tensor, after: torch.Tensor) -> bool:
    """``after`` is ``before`` with its dimensions reordered: the same storage, the same sizes, other strides."""
    return (after.untyped_storage().data_ptr() == before.untyped_storage().data_ptr()
            and sorted(after.shape) == sorted(before.shape) and after.stride() != before.stride())


def survey(model: nn.Module, example: torch.Tensor) -> list[LayerOutput]:
    """Every module's output shape from one forward, in completion order (inner modules first)."""
    records: dict[str, LayerOutput] = {}
    counter = iter(range(10**9))
    handles = []

    def record(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            permuted = (isinstance(output, torch.Tensor) and first is not None
                        and not any(True for _ in module.parameters()) and _is_permuted_view(first, output))
            calls = records[name].calls + 1 if name in records else 1
            records[name] = LayerOutput(name, module, shape, calls, next(counter), permuted)

        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(record(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return sorted(records.values(), key=lambda r: r.order)


def _default_token_layer(outputs: list[LayerOutput], input_hw: tuple[int, int]) -> LayerOutput | None:
    """The last transformer block's first LayerNorm over a token sequence (ViT's ``ln_1``, timm's ``norm1``).

    After the final norm only the class token reaches the head, so its patch tokens' gradients are
    zero; the first norm of the last block is what pytorch-grad-cam's docs recommend.
    """
    norms = [r for r in outputs if isinstance(r.module, nn.LayerNorm)
             and (layout := r.layout(input_hw)) is not None and layout.kind == TOKENS]
    by_parent: dict[str, list[LayerOutput]] = {}
    for record in norms:
        by_parent.setdefault(record.name.rpartition(".")[0], []).append(record)
    blocks = [group for group in by_parent.values() if len(group) >= 2]
    if not blocks:
        return None
    last_block = max(blocks, key=lambda group: group[-1].order)
    return min(last_block, key=lambda r: r.order)


def default_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The last layer that maps to a grid before pooling: a feature map or a channels-last grid (the
    outermost module producing it), or for a token network the last block's first LayerNorm.

    Modules that run more than once per forward (EfficientNet-Lite's one shared ``_swish``)
    are skipped: their output is not one layer's; so are parameter-free permutes (Swin's
    ``permute``: its input, the final norm, is the same map). An outer module completes after
    the inner ones that produce the same tensor, so the last qualifying entry is the outermost
    name (``layer4``, not ``layer4.1.relu``).
    """
    input_hw = (int(example.shape[2]), int(example.shape[3]))
    outputs = survey(model, example)
    grids = [r for r in outputs if not r.pure_permute and (layout := r.layout(input_hw)) is not None
             and layout.kind != TOKENS]
    tokens = _default_token_layer(outputs, input_hw)
    if tokens is not None and (not grids or tokens.order > grids[-1].order):
        return tokens.name
    if not grids:
        raise ExportError(
            f"{type(model).__name__} has no module with a 4-D spatial or token-grid output; "
            "pass target_layer explicitly"
        )
    return grids[-1].name


def target_layer(model: nn.Module, name: str, example: torch.Tensor, layout: str = AUTO) -> TargetLayer:
    """The module at ``name`` with the layout of its output; a layer that maps to no grid is refused,
    naming its output shape and the nearest layers that would work."""
    module = resolve_layer(model, name)
    input_hw = (int(example.shape[2]), int(example.shape[3]))
    outputs = survey(model, example)
    record = next((r for r in outputs if r.module is module), None)
    if record is None:
        raise ExportError(f"the target layer {name!r} was never called in the forward pass")
    if record.calls > 1:
        raise ExportError(f"layer {name!r} runs {record.calls} times in one forward (a shared module); "
                          "pick a module that runs once, such as the block or norm layer around it")
    found = record.layout(input_hw, layout)
    if found is not None:
        return TargetLayer(module, found, tuple(record.shape))
    shape = list(record.shape) if record.shape is not None else "not one tensor"
    working = [r for r in outputs if r.layout(input_hw) is not None and not r.pure_permute]
    nearest = sorted(working, key=lambda r: abs(r.order - record.order))[:SUGGESTIONS]
    near_text = ", ".join(f"{r.name} {list(r.shape)} ({r.layout(input_hw).kind})"
                          for r in sorted(nearest, key=lambda r: r.order)) or "none found"
    how = "" if layout == AUTO else f" as {layout}"
    raise ExportError(
        f"layer {name!r} outputs {shape} (batch {int(example.shape[0])}) for a {input_hw[0]}x{input_hw[1]} input, "
        f"which maps to no [N, K, h, w] grid{how}: a class activation map needs a 4-D feature map, a token "
        f"sequence [N, T, C] with T = leading tokens + a patch grid of the input, or a channels-last grid "
        f"[N, h, w, C] (--layer-layout overrides the detection); nearest layers that would work: {near_text}"
    )


def check_reaches_logits(model: nn.Module, target: TargetLayer, name: str, example: torch.Tensor) -> None:
    """Refuse a layer whose grid has no influence on the logits: every gradient map would be zero.

    After a ViT's final norm only the class token reaches the classifier; the patch tokens' gradients
    are exactly zero there. The logits are weighted randomly, so a model that ends in a softmax
    (whose outputs always sum to one) is not mistaken for one.
    """
    capture = Capture()
    with torch.enable_grad(), on_layer_output(target, capture.keep_graph):
        logits = model(example)
    if capture.activations is None or not logits.requires_grad:
        return
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(0))
    (gradients,) = torch.autograd.grad((logits * weights).sum(), capture.activations, allow_unused=True)
    if gradients is not None and bool(gradients.abs().max() > 0):
        return
    suggestion = default_layer(model, example)
    raise ExportError(
        f"layer {name!r}'s [N, K, h, w] grid does not reach the logits (d logits / dA is zero everywhere: after a "
        "ViT's final norm only the class token reaches the classifier), so every gradient map would be zero; "
        + (f"pick an earlier layer, such as the default {suggestion!r}" if suggestion != name
           else "pick an earlier layer")
    )


__all__ = ["NCHW", "check_reaches_logits", "default_layer", "module_names", "resolve_layer", "survey", "target_layer"]
