"""The Open Inference Protocol on onnxcam serve, called by Triton's own client (tritonclient.grpc) over
real gRPC on loopback, against the exported tiny model; every answer is compared with Explain's."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from test_server_helpers import encode, make_repository, rgb_image, running_server

from onnxcam.client import ExplainerClient

tritongrpc = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (dev extra) is the client under test")
from tritonclient.utils import InferenceServerException  # noqa: E402

INPUT = (32, 32)


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    with running_server(make_repository(tiny_model_dir, tmp_path_factory.mktemp("repo"))) as running:
        yield running


@pytest.fixture(scope="module")
def triton(server):
    client = tritongrpc.InferenceServerClient(server.address)
    yield client
    client.close()


@pytest.fixture(scope="module")
def explainer(server):
    with ExplainerClient(server.address, timeout=60) as client:
        yield client


def image_input(*images: bytes):
    item = tritongrpc.InferInput("image", [len(images)], "BYTES")
    item.set_data_from_numpy(np.asarray(images, dtype=object))
    return item


def array_input(name: str, array: np.ndarray, datatype: str):
    item = tritongrpc.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array)
    return item


def explain_map(response, method: int) -> np.ndarray:
    heatmap = next(h for h in response.heatmaps if h.method == method)
    return np.asarray(heatmap.raw.values, np.float32).reshape(heatmap.raw.height, heatmap.raw.width)


def failure(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as error:
        call()
    return error.value


def test_liveness_readiness_and_server_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("tiny") and triton.is_model_ready("tiny", "1")
    assert not triton.is_model_ready("nope") and not triton.is_model_ready("tiny", "2")
    meta = triton.get_server_metadata()
    assert meta.name == "onnxcam" and "model_configuration" in meta.extensions


def test_model_metadata_and_config_describe_the_tensors(triton, server):
    meta = triton.get_model_metadata("tiny")
    assert meta.name == "tiny" and list(meta.versions) == ["1"]
    inputs = {t.name: (t.datatype, list(t.shape)) for t in meta.inputs}
    assert inputs == {"image": ("BYTES", [-1]), "pixels": ("FP32", [-1, 3, *INPUT]), "target": ("INT64", [-1])}
    outputs = {t.name: (t.datatype, list(t.shape)) for t in meta.outputs}
    assert outputs["logits"] == ("FP32", [-1, 10])
    assert outputs["map_gradcam"] == ("FP32", [-1, 8, 8]) and outputs["map_eigencam"] == ("FP32", [-1, 8, 8])
    assert outputs["heatmap_gradcam"] == ("BYTES", [-1])
    served = server.repository.models["tiny"].methods
    assert {name for name in outputs if name.startswith("map_")} == {f"map_{m}" for m in served}
    if "saliency" in served:
        assert outputs["map_saliency"] == ("FP32", [-1, *INPUT])
        assert outputs["map_guided_backprop"] == ("FP32", [-1, 3, *INPUT])
    config = triton.get_model_config("tiny").config
    assert config.name == "tiny" and config.max_batch_size == 0
    assert {i.name: list(i.dims) for i in config.input}["pixels"] == [-1, 3, *INPUT]
    assert {o.name for o in config.output} == set(outputs)
    with pytest.raises(InferenceServerException) as error:
        triton.get_model_metadata("nope")
    assert "NOT_FOUND" in error.value.status() and "tiny" in error.value.message()


def test_infer_on_an_image_equals_explain(triton, explainer):
    """The done-when check: the same top-5 and the same raw Grad-CAM map (<= 1e-5) as Explain."""
    png = encode(rgb_image(48, 40, seed=3))
    result = triton.infer("tiny", [image_input(png)], parameters={"methods": "gradcam,layercam", "top_k": 5})
    response = explainer.explain(png, "tiny", methods=["gradcam", "layercam"], raw=True, top_k=5)
    assert result.as_numpy("top_k_index")[0].tolist() == [p.index for p in response.predictions]
    np.testing.assert_allclose(result.as_numpy("top_k_score")[0], [p.score for p in response.predictions], atol=1e-6)
    logits = result.as_numpy("logits")
    assert logits.shape == (1, 10)
    np.testing.assert_allclose(logits[0, [p.index for p in response.predictions]],
                               [p.logit for p in response.predictions], atol=1e-5)
    for name, method in (("gradcam", 3), ("layercam", 6)):
        served = result.as_numpy(f"map_{name}")
        assert served.shape == (1, 8, 8) and served.dtype == np.float32
        assert np.abs(served[0] - explain_map(response, method)).max() <= 1e-5
    assert result.get_response().model_version == "1"


def test_infer_pixels_in_a_batch_with_targets(triton, explainer):
    pixels = np.random.default_rng(5).standard_normal((3, 3, *INPUT)).astype(np.float32)
    targets = np.asarray([-1, 2, 7], np.int64)
    result = triton.infer("tiny", [array_input("pixels", pixels, "FP32"), array_input("target", targets, "INT64")],
                          outputs=[tritongrpc.InferRequestedOutput("map_gradcam"),
                                   tritongrpc.InferRequestedOutput("logits")])
    assert {o.name for o in result.get_response().outputs} == {"map_gradcam", "logits"}
    maps, logits = result.as_numpy("map_gradcam"), result.as_numpy("logits")
    assert maps.shape == (3, 8, 8) and logits.shape == (3, 10)
    for row, target in enumerate(targets):
        response = explainer.explain(pixels[row], "tiny", methods=["gradcam"], raw=True,
                                     targets=[] if target < 0 else [int(target)])
        assert response.heatmaps[0].target == (int(np.argmax(logits[row])) if target < 0 else target)
        assert np.abs(maps[row] - explain_map(response, 3)).max() <= 1e-5


def test_infer_pngs_are_explains(triton, explainer):
    png = encode(rgb_image(30, 50, seed=4))
    result = triton.infer("tiny", [image_input(png)], parameters={"methods": "gradcam", "heatmap_png": True,
                                                                   "overlay_png": True})
    response = explainer.explain(png, "tiny", methods=["gradcam"], heatmap_png=True, overlay_png=True)
    assert result.as_numpy("heatmap_gradcam")[0] == response.heatmaps[0].heatmap_png
    assert result.as_numpy("overlay_gradcam")[0] == response.heatmaps[0].overlay_png


def test_outputs_asked_for_by_name_choose_the_methods(triton):
    png = encode(rgb_image(32, 32, seed=1))
    result = triton.infer("tiny", [image_input(png)], outputs=[tritongrpc.InferRequestedOutput("map_eigencam"),
                                                               tritongrpc.InferRequestedOutput("heatmap_hirescam")])
    names = {o.name for o in result.get_response().outputs}
    assert names == {"map_eigencam", "heatmap_hirescam"}
    assert result.as_numpy("heatmap_hirescam")[0].startswith(b"\x89PNG")


def test_budget_skips_are_reported_in_the_parameters(triton):
    png = encode(rgb_image(32, 32, seed=2))
    result = triton.infer("tiny", [image_input(png)], parameters={"methods": "gradcam,scorecam", "budget_ms": 1e-6})
    response = result.get_response()
    assert result.as_numpy("logits").shape == (1, 10)
    assert "scorecam: BUDGET" in response.parameters["skipped"].string_param
    assert result.as_numpy("map_scorecam") is None


@pytest.mark.parametrize("case, code, named", [
    ("pixels FP64", "INVALID_ARGUMENT", "pixels"),
    ("pixels wrong shape", "INVALID_ARGUMENT", "pixels"),
    ("target wrong datatype", "INVALID_ARGUMENT", "target"),
    ("target wrong length", "INVALID_ARGUMENT", "target"),
    ("target out of range", "INVALID_ARGUMENT", "target"),
    ("image and pixels", "INVALID_ARGUMENT", "exactly one"),
    ("unknown input", "INVALID_ARGUMENT", "mask"),
    ("corrupt image", "INVALID_ARGUMENT", "not a readable"),
    ("unknown method", "INVALID_ARGUMENT", "methods"),
    ("unknown output", "INVALID_ARGUMENT", "map_nope"),
    ("unknown model", "NOT_FOUND", "tiny"),
    ("bad parameter", "INVALID_ARGUMENT", "top_k"),
])
def test_bad_requests_get_explains_codes(triton, case, code, named):
    pixels = np.zeros((1, 3, *INPUT), np.float32)
    png = encode(rgb_image(32, 32))
    model, params, outputs = "tiny", None, None
    inputs = {
        "pixels FP64": [array_input("pixels", pixels.astype(np.float64), "FP64")],
        "pixels wrong shape": [array_input("pixels", np.zeros((1, 3, 16, 16), np.float32), "FP32")],
        "target wrong datatype": [image_input(png), array_input("target", np.asarray([1.0], np.float32), "FP32")],
        "target wrong length": [image_input(png), array_input("target", np.asarray([1, 2], np.int64), "INT64")],
        "target out of range": [image_input(png), array_input("target", np.asarray([10], np.int64), "INT64")],
        "image and pixels": [image_input(png), array_input("pixels", pixels, "FP32")],
        "unknown input": [image_input(png), array_input("mask", pixels, "FP32")],
        "corrupt image": [image_input(png[:40])],
    }.get(case, [image_input(png)])
    if case == "unknown method":
        params = {"methods": "gradcam,nope"}
    elif case == "bad parameter":
        params = {"top_k": "many"}
    elif case == "unknown output":
        outputs = [tritongrpc.InferRequestedOutput("map_nope")]
    elif case == "unknown model":
        model = "nope"
    error = failure(lambda: triton.infer(model, inputs, outputs=outputs, parameters=params))
    assert error.status() == f"StatusCode.{code}", (error.status(), error.message())
    assert named in error.message(), error.message()
    assert triton.is_server_live() and triton.infer("tiny", [image_input(png)]).as_numpy("logits") is not None


def test_health_and_reflection_know_the_protocol(server):
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=10)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        database = ProtoReflectionDescriptorDatabase(channel)
        assert {"onnxcam.v1.Explainer", "inference.GRPCInferenceService"} <= set(database.get_services())
        found = database.FindFileContainingSymbol("inference.GRPCInferenceService")
        assert found.name == "grpc_service.proto" and "model_config.proto" in found.dependency


def test_the_stubs_live_beside_tritonclients():
    """The server's Open Inference Protocol stubs and tritonclient's define the same messages in
    different descriptor pools: both import in one process, and their messages are wire-compatible."""
    from tritonclient.grpc import service_pb2

    from onnxcam.proto import grpc_service_pb2

    ours = grpc_service_pb2.ModelInferRequest(model_name="tiny", id="7")
    ours.parameters["methods"].string_param = "gradcam"
    theirs = service_pb2.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.model_name == "tiny" and theirs.parameters["methods"].string_param == "gradcam"
    assert grpc_service_pb2.DESCRIPTOR.pool is not service_pb2.DESCRIPTOR.pool

