"""PyTorch classifier -> ONNX explainer graph (backward pass inside) + head graph + model.json.

Names load lazily: ``onnxcam`` registers ``exporter.cli`` on machines without torch too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exporter.api import ExportReport, export
    from exporter.errors import ExportError

__all__ = ["ExportError", "ExportReport", "export"]


def __getattr__(name: str) -> Any:
    if name in ("export", "ExportReport"):
        from exporter import api

        return getattr(api, name)
    if name == "ExportError":
        from exporter.errors import ExportError

        return ExportError
    raise AttributeError(f"module 'exporter' has no attribute {name!r}")
