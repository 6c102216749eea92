"""export(quantize="int8"): a quantised body only, an exact float32 head, a folder the server serves as is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from test_server_helpers import encode, rgb_image, running_server  # noqa: E402
from tiny_models import SkipNet, TinyNet, seeded  # noqa: E402

from exporter import ExportError, export  # noqa: E402
from exporter.quantize import body_nodes, quantized_nodes  # noqa: E402
from exporter.quantized_check import spearman  # noqa: E402
from onnxcam import contract  # noqa: E402
from onnxcam.client import ExplainerClient  # noqa: E402
from onnxcam.preprocess import preprocess, read_spec  # noqa: E402

CALIBRATION_IMAGES = 6
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("calibration")
    for seed in range(CALIBRATION_IMAGES):
        (folder / f"image_{seed}.png").write_bytes(encode(rgb_image(40, 48, seed)))
    (folder / "notes.txt").write_text("not an image: skipped")
    return folder


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory, calibration: Path) -> Path:
    out = tmp_path_factory.mktemp("repo") / "tiny_int8"
    export(seeded(TinyNet()), None, out, input_size=(32, 32), quantize="int8", calibration=calibration,
           input_gradients=False)
    return out


def _graph(folder: Path, name: str) -> onnx.GraphProto:
    return onnx.load(str(folder / name)).graph


def test_only_the_body_is_quantised(int8_dir: Path) -> None:
    explainer = _graph(int8_dir, contract.EXPLAINER_FILE)
    body = set(body_nodes(explainer))
    qdq = {node.name for node in quantized_nodes(explainer)}
    assert qdq and qdq <= body  # every Quantize/DequantizeLinear feeds the activations
    assert all(contract.INPUT_PIXELS not in node.input for node in quantized_nodes(explainer))  # stem float32
    head_ops = {node.op_type for node in explainer.node if node.name not in body}
    assert "Gemm" in head_ops or "MatMul" in head_ops  # the float32 head and backward are still there
    assert quantized_nodes(_graph(int8_dir, contract.FORWARD_FILE))
    assert not quantized_nodes(_graph(int8_dir, contract.HEAD_FILE))


def test_model_json_records_the_quantisation_and_sane_check_figures(int8_dir: Path) -> None:
    info = json.loads((int8_dir / contract.MODEL_JSON).read_text())
    assert info["quantized"] == "int8" and info["calibration_images"] == CALIBRATION_IMAGES
    check = info["export_check"]["quantized"]
    assert check["images"] == CALIBRATION_IMAGES and 0.0 <= check["top1_agreement"] <= 1.0
    assert set(check["map_spearman"]) == {f"cam_{m}" for m in info["methods"]}
    for figures in check["map_spearman"].values():
        assert -1.0 <= figures["worst"] <= figures["mean"] <= 1.0
    assert check["passed"] and check["outputs"]["gradients"]["max_rel"] <= check["tolerance_rel"]
    assert check["outputs"]["cam_gradcam"]["max_rel"] <= check["tolerance_rel"]
    assert 0 < check["body_nodes"] < len(_graph(int8_dir, contract.EXPLAINER_FILE).node)


def test_forward_gives_the_explainers_logits(int8_dir: Path, calibration: Path) -> None:
    pixels = preprocess(calibration / "image_1.png", read_spec(int8_dir))[None]
    explainer = ort.InferenceSession(str(int8_dir / contract.EXPLAINER_FILE), providers=["CPUExecutionProvider"])
    forward = ort.InferenceSession(str(int8_dir / contract.FORWARD_FILE), providers=["CPUExecutionProvider"])
    logits = explainer.run([contract.OUTPUT_LOGITS], {"pixels": pixels, "target": np.array([-1])})[0]
    np.testing.assert_allclose(forward.run(None, {"pixels": pixels})[0], logits, rtol=1e-5, atol=1e-6)


def test_the_server_serves_the_quantised_folder(int8_dir: Path, calibration: Path) -> None:
    image = (calibration / "image_2.png").read_bytes()
    pixels = preprocess(image, read_spec(int8_dir))[None]
    session = ort.InferenceSession(str(int8_dir / contract.EXPLAINER_FILE), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"pixels": pixels, "target": np.array([-1])})
    with running_server(int8_dir.parent) as server, ExplainerClient(server.address, timeout=60) as client:
        response = client.explain(image, "tiny_int8", methods=["gradcam"], raw=True)
        assert response.predictions[0].index == int(expected[0].argmax())
        np.testing.assert_allclose(np.asarray(response.heatmaps[0].raw.values),
                                   expected[3].ravel(), rtol=1e-5, atol=1e-6)
        assert response.predictions[0].logit == pytest.approx(float(expected[0].max()), rel=1e-5)
        only = client.explain(image, "tiny_int8", methods=["none"])  # forward.onnx
        assert only.predictions[0].logit == pytest.approx(float(expected[0].max()), rel=1e-5)
        metadata = client.metadata("tiny_int8")
        assert metadata.source["quantized"] == "int8"
        assert metadata.source["calibration_images"] == str(CALIBRATION_IMAGES)
        assert metadata.export_check.passed and "quantized.gradients" in metadata.export_check.outputs


def test_spearman_ranks_ties_and_constant_maps() -> None:
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    assert spearman(np.array([0.0, 0.0, 1.0, 2.0]), np.array([0.0, 0.0, 1.0, 2.0])) == pytest.approx(1.0)
    assert spearman(np.zeros(4), np.zeros(4)) == 1.0 and spearman(np.zeros(4), np.arange(4.0)) == 0.0


@pytest.mark.parametrize(("quantize", "calibration", "message"), [
    ("int8", None, "needs --calibration"), ("int4", ".", "not supported"), (None, ".", "only read with"),
    ("int8", "missing-folder", "is not a folder")])
def test_bad_quantise_requests_are_refused_before_exporting(tmp_path: Path, quantize, calibration, message) -> None:
    with pytest.raises(ExportError, match=message):
        export(seeded(TinyNet()), None, tmp_path / "out", input_size=(32, 32), quantize=quantize,
               calibration=None if calibration is None else tmp_path / calibration)
    assert not (tmp_path / "out" / contract.MODEL_JSON).exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--quantize", "int8"], "--quantize int8 needs --calibration DIR"),
    (["--quantize", "int8", "--calibration", "no-such-folder"], "--calibration no-such-folder is not a folder"),
    (["--calibration", "."], "--calibration is only read with --quantize int8")])
def test_the_cli_refuses_incomplete_quantise_options_before_exporting(tmp_path: Path, extra, message) -> None:
    result = subprocess.run([sys.executable, "-m", "onnxcam.cli", "export", "--arch", "resnet18", "--out",
                             str(tmp_path / "out"), *extra], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert "building resnet18" not in result.stderr and not (tmp_path / "out").exists()


def test_a_head_that_reads_the_pixels_is_refused_before_tracing(tmp_path: Path, calibration: Path) -> None:
    """A skip connection across the layer: the head would share quantised tensors with the body."""
    with pytest.raises(ExportError, match="skip connection crosses this layer"):
        export(seeded(SkipNet()), "middle", tmp_path / "out", input_size=(32, 32), quantize="int8",
               calibration=calibration)
    assert not (tmp_path / "out" / contract.EXPLAINER_FILE).exists()
