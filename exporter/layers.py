"""Finding the target layer: by dotted path, or the last spatial feature map before global pooling."""

from __future__ import annotations

import difflib

import torch
from torch import nn

from exporter.errors import ExportError

_POOLING_TO_SKIP = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Dropout)


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


def default_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The outermost module producing the last 4-D map with more than one pixel before pooling.

    Modules that run more than once per forward (EfficientNet-Lite's one shared ``_swish``)
    are skipped: their output is not one layer's.

    One forward with hooks on every module records the outputs in completion order;
    an outer module completes after the inner ones that produce the same tensor, so
    the last qualifying entry is the outermost name (``layer4``, not ``layer4.1.relu``).
    """
    seen: list[str] = []
    calls: dict[str, int] = {}
    handles = []

    def record(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(module, _POOLING_TO_SKIP):
                return
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[2] * output.shape[3] > 1:
                seen.append(name)

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
    seen = [name for name in seen if calls[name] == 1]  # a shared activation module is no layer
    if not seen:
        raise ExportError(
            f"{type(model).__name__} has no module with a 4-D spatial output; pass target_layer explicitly"
        )
    return seen[-1]
