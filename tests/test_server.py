"""The explainer server over real gRPC on loopback, against the exported tiny model.

References come from ONNX Runtime sessions opened here on the same graphs, from torchvision's
transforms (preprocessing) and from torch's interpolate (upsampling).
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from PIL import Image
from test_server_helpers import encode, make_repository, png_from_chunks, rgb_image, running_server

from onnxcam import methods as registry
from onnxcam.client import ExplainerClient
from onnxcam.proto import explainer_pb2 as pb
from server.heatmaps import normalize

INPUT = (32, 32)


@pytest.fixture(scope="module")
def models_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return make_repository(tiny_model_dir, tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def server(models_dir):
    with running_server(models_dir) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with ExplainerClient(server.address, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """Batch-1 runs of explainer.onnx, done here: what the server must reproduce."""
    session = ort.InferenceSession(str(tiny_model_dir / "explainer.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(pixels: np.ndarray, target: int = -1) -> dict[str, np.ndarray]:
        values = session.run(None, {"pixels": pixels[None].astype(np.float32),
                                    "target": np.asarray([target], np.int64)})
        return {n: v[0] for n, v in zip(names, values, strict=True)}

    return run


@pytest.fixture(scope="module")
def model_json(tiny_model_dir) -> dict:
    return json.loads((tiny_model_dir / "model.json").read_text())


def tensor(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((3, *INPUT)).astype(np.float32)


def raw_of(heatmap: pb.Heatmap) -> np.ndarray:
    return np.asarray(heatmap.raw.values, np.float32).reshape(heatmap.raw.height, heatmap.raw.width)


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def torch_heatmap(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    torch = pytest.importorskip("torch")
    up = torch.nn.functional.interpolate(torch.from_numpy(normalize(raw))[None, None].double(), size=size,
                                         mode="bilinear", align_corners=False)[0, 0].numpy()
    return np.clip(np.rint(up * 255), 0, 255)


# ---- discovery -----------------------------------------------------------------------------------------


def test_list_models_skips_the_broken_folder(server, client):
    assert [m.name for m in client.list_models()] == ["nocam", "tiny"]
    assert any(Path(folder).name == "broken" for folder in server.repository.skipped)
    tiny = {m.name: m for m in client.list_models()}["tiny"]
    assert (tiny.num_classes, tiny.input_height, tiny.input_width) == (10, 32, 32)
    assert pb.CAM in tiny.methods and pb.GRADCAM in tiny.methods


def test_model_metadata(client, model_json):
    meta = client.metadata("tiny")
    assert list(meta.labels) == [f"thing {i}" for i in range(10)]
    assert meta.target_layer == "features" and list(meta.activation_shape) == [24, 8, 8]
    assert (meta.input_height, meta.input_width, meta.opset) == (32, 32, model_json["opset"])
    assert meta.preprocess.resize_shorter_side == 37 and meta.preprocess.crop_height == 32
    assert meta.export_check.passed and "explainer.cam_gradcam" in meta.export_check.outputs
    assert meta.source["module_class"] == "tiny_models.TinyNet"
    assert {"predict", "explainer"} <= set(meta.method_cost_ms)
    assert "CPUExecutionProvider" in meta.providers
    with pytest.raises(grpc.RpcError) as error:
        client.metadata("nope")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND and "tiny" in error.value.details()


def test_health_and_reflection(server):
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "onnxcam.v1.Explainer"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        database = ProtoReflectionDescriptorDatabase(channel)
        assert {"onnxcam.v1.Explainer", "grpc.health.v1.Health"} <= set(database.get_services())
        file = database.FindFileContainingSymbol("onnxcam.v1.ExplainRequest")
        assert file.name == "onnxcam/v1/explainer.proto"
        assert "Method" in [e.name for e in file.enum_type]


# ---- what comes back ------------------------------------------------------------------------------------


def test_tensor_input_matches_the_graph(client, reference):
    pixels = tensor(1)
    names = ["gradcam", "gradcampp", "cam", "gradcam_counterfactual"]
    response = client.explain(pixels, "tiny", methods=names, raw=True, heatmap_png=True, overlay_png=True)
    expected = reference(pixels)
    logits = expected["logits"]
    order = np.argsort(-logits)[:5]
    assert [p.index for p in response.predictions] == order.tolist()
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    for p in response.predictions:
        assert p.label == f"thing {p.index}"
        assert p.logit == pytest.approx(logits[p.index], rel=1e-5, abs=1e-5)
        assert p.score == pytest.approx(probabilities[p.index], rel=1e-5, abs=1e-7)
    assert [h.method for h in response.heatmaps] == [pb.GRADCAM, pb.GRADCAMPP, pb.CAM, pb.GRADCAM_COUNTERFACTUAL]
    for heatmap, name in zip(response.heatmaps, names, strict=True):
        assert heatmap.target == order[0] and heatmap.target_label == f"thing {order[0]}"
        np.testing.assert_allclose(raw_of(heatmap), expected[f"cam_{name}"], rtol=1e-5, atol=1e-6)
        gray = png(heatmap.heatmap_png)
        assert gray.mode == "L" and gray.size == INPUT
        assert np.abs(np.asarray(gray, np.float64) - torch_heatmap(expected[f"cam_{name}"], INPUT)).max() <= 1
        overlay = png(heatmap.overlay_png)
        assert overlay.mode == "RGB" and overlay.size == INPUT
    assert (response.image_height, response.image_width) == INPUT
    assert response.timing.total_ms > 0 and response.timing.batch_rows >= 1
    assert not response.skipped


def test_image_preprocessing_follows_model_json(client, reference, model_json):
    torch = pytest.importorskip("torch")
    from exporter.sources import _torchvision

    transforms = _torchvision().transforms
    image = rgb_image(45, 70, seed=2)
    pre = model_json["preprocess"]
    expected_pixels = transforms.Compose([
        transforms.Resize(pre["resize_shorter_side"]), transforms.CenterCrop(pre["center_crop"]),
        transforms.ToTensor(), transforms.Normalize(pre["mean"], pre["std"]),
    ])(Image.fromarray(image))
    with torch.no_grad():
        expected = reference(expected_pixels.numpy())
    response = client.explain(encode(image), "tiny", heatmap_png=True, overlay_png=True)
    got = {p.index: p.logit for p in response.predictions}
    for index, logit in got.items():
        assert logit == pytest.approx(expected["logits"][index], abs=1e-4)
    assert (response.image_height, response.image_width) == (45, 70)
    heatmap = response.heatmaps[0]
    assert png(heatmap.heatmap_png).size == (70, 45) and png(heatmap.overlay_png).size == (70, 45)
    assert not heatmap.raw.values  # not asked for
    assert response.timing.decode_ms > 0 and response.timing.preprocess_ms > 0


def test_exif_orientation_is_honoured(client):
    upright = rgb_image(40, 52, seed=3)
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # what a camera held sideways writes
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    rotated = client.explain(encode(stored, exif=exif.tobytes()), "tiny", raw=True, heatmap_png=True)
    plain = client.explain(encode(upright), "tiny", raw=True, heatmap_png=True)
    assert (rotated.image_height, rotated.image_width) == (40, 52)
    assert png(rotated.heatmaps[0].heatmap_png).size == (52, 40)
    assert [p.logit for p in rotated.predictions] == [p.logit for p in plain.predictions]
    assert raw_of(rotated.heatmaps[0]).tolist() == raw_of(plain.heatmaps[0]).tolist()


def test_several_targets_one_heatmap_each(client, reference):
    pixels = tensor(4)
    response = client.explain(pixels, "tiny", methods=["gradcam", "layercam"], targets=[3, 7, 3], raw=True)
    assert [(h.method, h.target) for h in response.heatmaps] == [
        (pb.GRADCAM, 3), (pb.GRADCAM, 7), (pb.LAYERCAM, 3), (pb.LAYERCAM, 7)]
    for heatmap in response.heatmaps:
        name = "gradcam" if heatmap.method == pb.GRADCAM else "layercam"
        np.testing.assert_allclose(raw_of(heatmap), reference(pixels, heatmap.target)[f"cam_{name}"],
                                   rtol=1e-5, atol=1e-6)


def test_prediction_only_and_top_k(client):
    response = client.explain(tensor(5), "tiny", methods=["none"], top_k=3)
    assert len(response.predictions) == 3 and not response.heatmaps and not response.skipped
    everything = client.explain(tensor(5), "tiny", methods=["none"], top_k=100)
    assert len(everything.predictions) == 10
    assert sum(p.score for p in everything.predictions) == pytest.approx(1.0, abs=1e-5)
    default = client.explain(tensor(5), "tiny")
    assert len(default.predictions) == 5 and [h.method for h in default.heatmaps] == [pb.GRADCAM]
    assert len(default.heatmaps[0].raw.values) == 64  # no output switch: raw only


def test_gradient_free_methods(client, server, reference, tiny_model_dir):
    model = server.repository.get("tiny")
    if "scorecam" not in model.methods:
        pytest.skip(f"gradient-free methods are off on this server: {model.unavailable}")
    from server import gradient_free

    pixels = tensor(6)
    response = client.explain(pixels, "tiny", methods=["ablationcam", "scorecam", "reciprocam", "eigencam"],
                              targets=[2], raw=True, heatmap_png=True)
    expected = reference(pixels, 2)
    forward = ort.InferenceSession(str(tiny_model_dir / "forward.onnx"), providers=["CPUExecutionProvider"])
    with np.load(tiny_model_dir / "cam_linear.npz") as linear:
        weights = (linear["weight"], linear["bias"])
    head = ort.InferenceSession(str(tiny_model_dir / "head.onnx"), providers=["CPUExecutionProvider"])
    args = (expected["activations"][None], expected["logits"][None], np.asarray([2]))
    ablation = gradient_free.ablation_cam(head, *args, linear=weights)[0]
    score = gradient_free.score_cam(forward, pixels[None], expected["activations"][None], np.asarray([2]))[0]
    recipro = gradient_free.recipro_cam(head, expected["activations"][None], np.asarray([2]))[0]
    eigen = gradient_free.eigen_cam(expected["activations"][None])[0]
    assert [h.method for h in response.heatmaps] == [pb.ABLATIONCAM, pb.SCORECAM, pb.RECIPROCAM, pb.EIGENCAM]
    for heatmap, reference_map in zip(response.heatmaps, (ablation, score, recipro, eigen), strict=True):
        np.testing.assert_allclose(raw_of(heatmap), reference_map, rtol=1e-5, atol=1e-6)
        assert heatmap.heatmap_png.startswith(b"\x89PNG")
    costs = client.metadata("tiny").method_cost_ms
    assert {"ablationcam", "scorecam", "reciprocam", "eigencam"} <= set(costs)


def test_budget_skips_methods_but_never_predictions(client):
    methods = list(registry.names())
    tight = client.explain(tensor(7), "tiny", methods=methods, budget_ms=0.001, overlay_png=True)
    assert len(tight.predictions) == 5 and not tight.heatmaps
    budget = [s for s in tight.skipped if s.reason == pb.Skipped.BUDGET]
    assert {s.method for s in budget} | {s.method for s in tight.skipped if s.reason == pb.Skipped.NOT_AVAILABLE} \
        == {pb.Method.Value(registry.get(m).enum) for m in methods}
    assert all("budget" in s.detail for s in budget)
    roomy = client.explain(tensor(7), "tiny", methods=methods, budget_ms=1e7, overlay_png=True)
    assert not [s for s in roomy.skipped if s.reason == pb.Skipped.BUDGET]
    assert len(roomy.heatmaps) == len(methods) - len(roomy.skipped)


def test_method_the_model_cannot_do_is_skipped(client):
    response = client.explain(tensor(8), "nocam", methods=["cam", "gradcam"])
    assert [h.method for h in response.heatmaps] == [pb.GRADCAM]
    assert [(s.method, s.reason) for s in response.skipped] == [(pb.CAM, pb.Skipped.NOT_SUPPORTED)]
    assert "linear" in response.skipped[0].detail


def test_stream_answers_in_order_and_survives_bad_requests(client):
    from onnxcam.client import build_request

    requests = [build_request(tensor(9), "tiny", request_id="a"), build_request(b"junk", "tiny", request_id="b"),
                build_request(encode(rgb_image(20, 30)), "tiny", methods=["hirescam"], request_id="c"),
                build_request(tensor(9), "missing", request_id="d")]
    responses = list(client.explain_stream(requests))
    assert [r.request_id for r in responses] == ["a", "b", "c", "d"]
    assert responses[0].predictions and responses[2].heatmaps[0].method == pb.HIRESCAM
    assert responses[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert responses[3].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert not responses[0].HasField("error")


# ---- errors ---------------------------------------------------------------------------------------------


def jpeg_with_height(data: bytes, height: int) -> bytes:
    sof = data.index(b"\xff\xc0")  # baseline start-of-frame: marker, length, precision, height, width
    return data[:sof + 5] + struct.pack(">H", height) + data[sof + 7:]


GOOD = encode(rgb_image(24, 24, seed=10))
JPEG = encode(rgb_image(64, 64, seed=11), "JPEG", quality=90)

BAD_REQUESTS = {
    "corrupt": (dict(image=b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4), "INVALID_ARGUMENT", "corrupt"),
    "random bytes": (dict(image=np.random.default_rng(0).bytes(500)), "INVALID_ARGUMENT", "not a readable"),
    "truncated png": (dict(image=GOOD[: len(GOOD) // 2]), "INVALID_ARGUMENT", "truncated"),
    "truncated jpeg": (dict(image=JPEG[: len(JPEG) // 2]), "INVALID_ARGUMENT", "truncated"),
    "bmp": (dict(image=encode(rgb_image(8, 8), "BMP")), "INVALID_ARGUMENT", "unsupported image format BMP"),
    "gif": (dict(image=encode(rgb_image(8, 8), "GIF")), "INVALID_ARGUMENT", "unsupported image format GIF"),
    "empty": (dict(image=b""), "INVALID_ARGUMENT", "image is empty"),
    "no input": (dict(), "INVALID_ARGUMENT", "no input"),
    "zero width": (dict(image=png_from_chunks(0, 16)), "INVALID_ARGUMENT", "zero size (0x16)"),
    "zero height jpeg": (dict(image=jpeg_with_height(JPEG, 0)), "INVALID_ARGUMENT", "zero size (64x0)"),
    "too many pixels": (dict(image=png_from_chunks(8000, 6000)), "INVALID_ARGUMENT", "too many pixels"),
    "bomb": (dict(image=png_from_chunks(100_000, 100_000)), "INVALID_ARGUMENT", "too many pixels"),
    "tensor shape": (dict(tensor=pb.Tensor(shape=[3, 16, 16], data=[0.0] * 768)), "INVALID_ARGUMENT",
                     "[3, 32, 32]"),
    "tensor size": (dict(tensor=pb.Tensor(shape=[3, 32, 32], data=[0.0] * 10)), "INVALID_ARGUMENT", "3072"),
    "class too large": (dict(image=GOOD, targets=[10]), "INVALID_ARGUMENT", "out of range"),
    "class negative": (dict(image=GOOD, targets=[-1]), "INVALID_ARGUMENT", "out of range"),
    "none and more": (dict(image=GOOD, methods=[pb.METHOD_NONE, pb.GRADCAM]), "INVALID_ARGUMENT", "METHOD_NONE"),
    "unspecified method": (dict(image=GOOD, methods=[pb.METHOD_UNSPECIFIED]), "INVALID_ARGUMENT", "not a valid"),
    "negative top_k": (dict(image=GOOD, top_k=-1), "INVALID_ARGUMENT", "top_k"),
    "negative budget": (dict(image=GOOD, budget_ms=-5), "INVALID_ARGUMENT", "budget_ms"),
    "unknown model": (dict(image=GOOD, model="resnet9000"), "NOT_FOUND", "resnet9000"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(client, case):
    fields, code, words = BAD_REQUESTS[case]
    request = pb.ExplainRequest(**{"model": "tiny", **fields})
    with pytest.raises(grpc.RpcError) as error:
        client.explain_request(request)
    assert error.value.code() == getattr(grpc.StatusCode, code), error.value.details()
    assert words in error.value.details()
    assert client.explain(GOOD, "tiny").predictions


def test_oversized_request_is_refused_by_the_size_limit(server, client):
    options = [("grpc.max_send_message_length", 64 * 2**20)]
    with grpc.insecure_channel(server.address, options=options) as channel:
        explain = channel.unary_unary("/onnxcam.v1.Explainer/Explain",
                                      request_serializer=pb.ExplainRequest.SerializeToString,
                                      response_deserializer=pb.ExplainResponse.FromString)
        with pytest.raises(grpc.RpcError) as error:
            explain(pb.ExplainRequest(model="tiny", image=b"\0" * (17 * 2**20)), timeout=60)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.explain(GOOD, "tiny").predictions


def test_a_folder_exported_before_input_gradients_serves_the_rest(tiny_model_dir, tmp_path):
    """No input_gradients.onnx: the input-gradient methods are NOT_SUPPORTED with the way out, the rest serve."""
    import shutil

    old = tmp_path / "models" / "old"
    shutil.copytree(tiny_model_dir, old)
    meta = json.loads((old / "model.json").read_text())
    del meta["input_gradients"]
    meta["name"] = "old"
    (old / "model.json").write_text(json.dumps(meta))
    (old / "input_gradients.onnx").unlink()
    with running_server(tmp_path / "models") as running, ExplainerClient(running.address, timeout=60) as client:
        response = client.explain(tensor(9), "old", methods=["guided_gradcam", "gradcam", "saliency"])
        assert [h.method for h in response.heatmaps] == [pb.GRADCAM]
        assert [(s.method, s.reason) for s in response.skipped] == [
            (pb.GUIDED_GRADCAM, pb.Skipped.NOT_SUPPORTED), (pb.SALIENCY, pb.Skipped.NOT_SUPPORTED)]
        assert "re-export" in response.skipped[0].detail
        assert pb.SALIENCY not in client.metadata("old").methods


def test_input_gradient_maps_render_as_rgb_gradient_images(client):
    image = encode(rgb_image(40, 60))
    response = client.explain(image, "tiny", methods=["guided_backprop", "saliency"], heatmap_png=True,
                              overlay_png=True, raw=True)
    guided, saliency = response.heatmaps
    assert guided.raw.channels == 3 and len(guided.raw.values) == 3 * 32 * 32
    assert saliency.raw.channels == 0 and len(saliency.raw.values) == 32 * 32
    for heatmap, mode in ((guided, "RGB"), (saliency, "L")):
        picture = png(heatmap.heatmap_png)
        assert picture.mode == mode and picture.size == (60, 40)  # the original image's size
        assert png(heatmap.overlay_png).size == (60, 40)
    inside = np.asarray(png(guided.heatmap_png), np.float64)[:, 10:50]  # the 40x40 centre crop the model saw
    assert inside.std() > 1 and abs(np.median(inside) - 128) < 20  # grey 0.5 where the gradient is ~0
