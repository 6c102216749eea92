"""Generated gRPC stubs for protos/onnxcam/v1 (regenerate with ``python protos/generate.py``)."""
