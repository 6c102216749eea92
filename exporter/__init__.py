"""PyTorch classifier -> ONNX explainer graph (backward pass inside) + head graph + model.json."""

from exporter.api import ExportReport, export
from exporter.errors import ExportError

__all__ = ["ExportError", "ExportReport", "export"]
