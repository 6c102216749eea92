"""Access to server.gradient_free (Ablation-CAM, Score-CAM), which may be absent or broken.

The server must run without it: the methods are then reported as skipped, NOT_AVAILABLE.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from types import ModuleType

log = logging.getLogger("onnxcam.server")

MODULE = "server.gradient_free"
REQUIRED = ("forward_count", "ablation_cam", "score_cam")


@dataclass(frozen=True)
class GradientFree:
    module: ModuleType | None
    #: Why the module cannot be used ("" when it can).
    reason: str


def load() -> GradientFree:
    try:
        module = importlib.import_module(MODULE)
    except ModuleNotFoundError as error:
        if error.name != MODULE:
            log.warning("%s needs %s, which is missing: Ablation-CAM and Score-CAM are off", MODULE, error.name)
            return GradientFree(None, f"{MODULE} cannot import {error.name}")
        return GradientFree(None, f"{MODULE} is not installed on this server")
    except Exception as error:  # a broken optional module must not stop the server
        log.warning("%s failed to import (%s): Ablation-CAM and Score-CAM are off", MODULE, error)
        return GradientFree(None, f"{MODULE} failed to import: {error}")
    missing = [name for name in REQUIRED if not callable(getattr(module, name, None))]
    if missing:
        return GradientFree(None, f"{MODULE} lacks {', '.join(missing)}")
    return GradientFree(module, "")
