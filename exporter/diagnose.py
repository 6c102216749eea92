"""Which module an op came from, for export errors that name an aten op.

Run only after a failure: one eager forward + backward under a dispatch mode that notes the
innermost running module of every aten op. A backward op (``aten.foo_backward``) is traced
to the module whose forward ran ``aten.foo``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.utils._python_dispatch import TorchDispatchMode


class _OpOrigins(TorchDispatchMode):
    def __init__(self, names: dict[int, str]) -> None:
        super().__init__()
        self.names = names
        self.stack: list[str] = []
        self.origin: dict[str, str] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = str(func.overloadpacket)  # e.g. aten.kthvalue
        if self.stack and packet not in self.origin:
            self.origin[packet] = self.stack[-1]
        return func(*args, **(kwargs or {}))


def op_origins(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """Map 'aten.op' -> 'module.path (Class)' for the first module that ran it."""
    names = {id(m): f"{name or '<root>'} ({type(m).__name__})" for name, m in model.named_modules()}
    mode = _OpOrigins(names)

    def push(module, inputs):
        mode.stack.append(names.get(id(module), type(module).__name__))

    def pop(module, inputs, output):
        if mode.stack:
            mode.stack.pop()

    handles = [module_hooks.register_module_forward_pre_hook(push), module_hooks.register_module_forward_hook(pop)]
    try:
        with mode, torch.enable_grad():
            pixels = example.clone().requires_grad_(True)
            logits = model(pixels)
            logits.max(dim=1).values.sum().backward(inputs=[pixels])
    except Exception:  # noqa: BLE001 - diagnosis is best effort; the caller still has the real error
        pass
    finally:
        for handle in handles:
            handle.remove()
    return mode.origin


def describe_op(model: nn.Module, example: torch.Tensor, op: str) -> str | None:
    """'layer3.0.conv1 (Conv2d)' for an op such as 'aten.kthvalue.default' or its backward."""
    packet = op.split(".")[0] + "." + op.split(".")[1] if op.count(".") >= 1 else op
    origins = op_origins(model, example)
    if packet in origins:
        return origins[packet]
    if packet.endswith("_backward"):
        return origins.get(packet[: -len("_backward")])
    return None
