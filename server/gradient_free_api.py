"""Access to server.gradient_free (the gradient-free methods), which may be absent or broken.

The server must run without it: the methods are then reported as skipped, NOT_AVAILABLE. Each method
of onnxcam.methods of kind GRADIENT_FREE is reached through ``serve_<name>``; a module without
one leaves just that method off.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

from onnxcam import methods

log = logging.getLogger("onnxcam.server")

MODULE = "server.gradient_free"
REQUIRED = ("forward_count",)


@dataclass(frozen=True)
class GradientFree:
    module: ModuleType | None
    #: Why the module cannot be used ("" when it can).
    reason: str
    #: Method name -> serve function, for the methods the module has.
    serve: dict[str, Callable] = field(default_factory=dict)

    def unavailable(self, name: str) -> str:
        """Why ``name`` cannot be computed here ("" when it can)."""
        if self.module is None:
            return self.reason
        return "" if name in self.serve else f"{MODULE} has no serve_{name}"


def load() -> GradientFree:
    try:
        module = importlib.import_module(MODULE)
    except ModuleNotFoundError as error:
        if error.name != MODULE:
            log.warning("%s needs %s, which is missing: the gradient-free methods are off", MODULE, error.name)
            return GradientFree(None, f"{MODULE} cannot import {error.name}")
        return GradientFree(None, f"{MODULE} is not installed on this server")
    except Exception as error:  # a broken optional module must not stop the server
        log.warning("%s failed to import (%s): the gradient-free methods are off", MODULE, error)
        return GradientFree(None, f"{MODULE} failed to import: {error}")
    missing = [name for name in REQUIRED if not callable(getattr(module, name, None))]
    if missing:
        return GradientFree(None, f"{MODULE} lacks {', '.join(missing)}")
    serve = {m.name: getattr(module, f"serve_{m.name}") for m in methods.of_kind(methods.Kind.GRADIENT_FREE)
             if callable(getattr(module, f"serve_{m.name}", None))}
    return GradientFree(module, "", serve)
