"""Identity of the source model: its class and a digest of its weights."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over every state-dict entry (name, dtype, shape, bytes) in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def module_class(model: nn.Module) -> str:
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"
