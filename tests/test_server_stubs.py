"""The committed gRPC stubs in onnxcam/proto are what protos/generate.py makes of the .proto today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_committed_stubs_are_current():
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) generates the stubs")
    result = subprocess.run([sys.executable, "protos/generate.py", "--check"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_stubs_carry_the_contract_names():
    from onnxcam.proto import explainer_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["Explainer"]
    assert {m.name for m in service.methods} == {"Explain", "ListModels", "GetModelMetadata", "ExplainStream",
                                                 "VisualizeClass"}
    stream = service.methods_by_name["ExplainStream"]
    assert stream.client_streaming and stream.server_streaming
    visualize = service.methods_by_name["VisualizeClass"]
    assert not visualize.client_streaming and visualize.server_streaming
    assert list(pb.Method.keys()) == ["METHOD_UNSPECIFIED", "METHOD_NONE", "CAM", "GRADCAM", "GRADCAMPP", "XGRADCAM",
                                      "LAYERCAM", "HIRESCAM", "ABLATIONCAM", "SCORECAM", "GRADCAM_COUNTERFACTUAL",
                                      "EIGENCAM", "RECIPROCAM", "SALIENCY", "DECONVNET", "GUIDED_BACKPROP",
                                      "GUIDED_GRADCAM", "SMOOTHGRAD", "SMOOTHGRAD_GUIDED", "SMOOTH_GRADCAMPP",
                                      "INTEGRATED_GRADIENTS", "OCCLUSION"]
    request = pb.ExplainRequest.DESCRIPTOR
    assert [f.name for f in request.oneofs_by_name["input"].fields] == ["image", "tensor"]
