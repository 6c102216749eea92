"""The onnxcam gRPC explainer server: model folders in, predictions with heatmaps out.

Runs on numpy, Pillow, ONNX Runtime and grpcio only; nothing here imports torch.
"""
