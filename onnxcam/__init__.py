"""onnxcam: class activation maps from ONNX Runtime, with the backward pass inside the graph."""

__version__ = "0.1.0"
