"""Exporting the hand-written CNNs: graph contract, numbers against autograd, folder, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from autograd_reference import activations_and_gradients, maps, rel_error  # noqa: E402
from tiny_models import ClippedHeadNet, PoolNet, SkipNet, TinyNet, seeded  # noqa: E402

from exporter import ExportError, export  # noqa: E402
from onnxcam import contract  # noqa: E402


def _session(folder: Path, graph: str = contract.EXPLAINER_FILE) -> ort.InferenceSession:
    return ort.InferenceSession(str(folder / graph), providers=["CPUExecutionProvider"])


def _pixels(batch: int, seed: int, size: int = 32) -> torch.Tensor:
    return torch.randn((batch, 3, size, size), generator=torch.Generator().manual_seed(seed))


def test_contract_inputs_and_outputs(tiny_model_dir: Path) -> None:
    session = _session(tiny_model_dir)
    assert [i.name for i in session.get_inputs()] == ["pixels", "target"]
    assert [o.name for o in session.get_outputs()] == [
        "logits", "activations", "gradients", "cam_gradcam", "cam_gradcampp", "cam_xgradcam",
        "cam_layercam", "cam_hirescam", "cam_cam", "cam_gradcam_counterfactual"]
    assert session.get_inputs()[0].type == "tensor(float)"
    assert session.get_inputs()[1].type == "tensor(int64)"
    assert isinstance(session.get_inputs()[0].shape[0], str)  # dynamic batch


@pytest.mark.parametrize("targets", [[-1], [3, -1, 9, 0, -1]])
def test_outputs_match_independent_autograd(tiny_model_dir: Path, targets: list[int]) -> None:
    model = seeded(TinyNet())
    pixels = _pixels(len(targets), seed=len(targets) + 100)
    logits, a, g, classes = activations_and_gradients(model, model.features, pixels, targets)
    names = [o.name for o in _session(tiny_model_dir).get_outputs()]
    got = dict(zip(names, _session(tiny_model_dir).run(None, {
        "pixels": pixels.numpy(), "target": np.array(targets, dtype=np.int64)}), strict=True))
    assert rel_error(got["logits"], logits) < 1e-5
    assert rel_error(got["activations"], a) < 1e-5
    assert rel_error(got["gradients"], g) < 1e-5
    for method, reference in maps(a, g).items():
        assert rel_error(got[f"cam_{method}"], reference) < 1e-4, method
    cam_reference = torch.einsum("nk,nkij->nij", model.fc.weight.detach()[classes].double(), a.double()).clamp(min=0)
    assert rel_error(got["cam_cam"], cam_reference) < 1e-4
    # -1 rows explain their own top-1: identical to asking for that class explicitly.
    explicit = _session(tiny_model_dir).run(["gradients"], {
        "pixels": pixels.numpy(), "target": np.array(classes, dtype=np.int64)})[0]
    np.testing.assert_array_equal(explicit, got["gradients"])


def test_rows_do_not_influence_each_other(tiny_model_dir: Path) -> None:
    session = _session(tiny_model_dir)
    pixels = _pixels(4, seed=7).numpy()
    targets = np.array([1, -1, 5, 2], dtype=np.int64)
    batched = session.run(None, {"pixels": pixels, "target": targets})
    for row in range(4):
        alone = session.run(None, {"pixels": pixels[row:row + 1], "target": targets[row:row + 1]})
        for b, a in zip(batched, alone, strict=True):
            np.testing.assert_allclose(b[row:row + 1], a, rtol=1e-5, atol=1e-6)


def test_head_graph_maps_activations_to_logits(tiny_model_dir: Path) -> None:
    model = seeded(TinyNet())
    activations = torch.randn((3, 24, 8, 8), generator=torch.Generator().manual_seed(3)).clamp(min=0)
    (got,) = _session(tiny_model_dir, contract.HEAD_FILE).run(["logits"], {"activations": activations.numpy()})
    expected = model.fc(activations.mean(dim=(2, 3))).detach()
    assert rel_error(got, expected) < 1e-5
    linear = np.load(tiny_model_dir / contract.CAM_LINEAR_FILE)
    np.testing.assert_array_equal(linear["weight"], model.fc.weight.detach().numpy())


def test_forward_graph_is_the_plain_network(tiny_model_dir: Path) -> None:
    model = seeded(TinyNet())
    pixels = _pixels(2, seed=11)
    (got,) = _session(tiny_model_dir, contract.FORWARD_FILE).run(["logits"], {"pixels": pixels.numpy()})
    assert rel_error(got, model(pixels).detach()) < 1e-5


def test_model_json_and_onnx_metadata(tiny_model_dir: Path) -> None:
    info = json.loads((tiny_model_dir / contract.MODEL_JSON).read_text())
    assert info["name"] == "tiny"
    assert info["target_layer"] == "features" and info["target_layer_is_default"] is True
    assert info["input_size"] == [32, 32] and info["activation_shape"] == [24, 8, 8]
    assert info["labels"][3] == "thing 3" and info["num_classes"] == 10
    assert info["methods"] == ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "cam",
                               "gradcam_counterfactual"]
    assert info["source"]["module_class"] == "tiny_models.TinyNet"
    assert len(info["source"]["state_dict_sha256"]) == 64
    check = info["export_check"]
    assert check["explainer"]["passed"] and check["head"]["passed"] and check["forward"]["passed"]
    assert set(check["explainer"]["outputs"]) == set(info["explainer"]["outputs"])
    assert all(err["max_rel"] <= 1e-4 for err in check["explainer"]["outputs"].values())
    assert check["explainer"]["batches"] == [1, 3]
    for graph in (contract.EXPLAINER_FILE, contract.HEAD_FILE, contract.FORWARD_FILE):
        metadata = {p.key: p.value for p in onnx.load(str(tiny_model_dir / graph)).metadata_props}
        assert json.loads(metadata["onnxcam.labels"]) == info["labels"]
        assert json.loads(metadata["onnxcam.export_check"]) == check
        assert json.loads(metadata["onnxcam.target_layer"]) == "features"


def test_cam_is_found_when_the_head_reapplies_the_layers_activation() -> None:
    """EfficientNet-Lite's case: ReLU6 again after a ReLU6'd layer is GAP + linear on every real A."""
    from exporter.head_analysis import find_cam_linear

    clipped = seeded(ClippedHeadNet(), seed=4)
    assert find_cam_linear(clipped, clipped.features, torch.Size([2, 16, 16, 16]), (3, 32, 32)) == "fc"
    # A ReLU after a signed (BatchNorm) layer is not linear on that layer's real activations.
    tiny = seeded(TinyNet())
    assert find_cam_linear(tiny, tiny.features[2][1], torch.Size([2, 24, 8, 8]), (3, 32, 32)) is None
    assert find_cam_linear(tiny, tiny.features, torch.Size([2, 24, 8, 8]), (3, 32, 32)) == "fc"


def test_skip_connection_across_the_layer_makes_the_head_read_pixels(tmp_path: Path) -> None:
    model = seeded(SkipNet(), seed=3)
    report = export(model, "middle", tmp_path / "skip", input_size=(32, 32))
    assert report.passed and report.head_inputs == ["activations", "pixels"]
    assert "cam" not in report.methods  # the head is not GAP + linear of A
    assert not (tmp_path / "skip" / contract.CAM_LINEAR_FILE).exists()
    pixels = _pixels(2, seed=5)
    logits, a, _, _ = activations_and_gradients(model, model.middle, pixels, [-1, -1])
    (got,) = _session(tmp_path / "skip", contract.HEAD_FILE).run(
        ["logits"], {"activations": a.numpy(), "pixels": pixels.numpy()})
    assert rel_error(got, logits) < 1e-5


def test_backward_through_every_kind_of_pooling(tmp_path: Path) -> None:
    """avg_pool2d (padding, ceil_mode) and adaptive pooling backward are our decompositions."""
    model = seeded(PoolNet(), seed=4)
    report = export(model, "stem", tmp_path / "pool", input_size=(30, 30))
    assert report.passed
    pixels = _pixels(2, seed=8, size=30)
    _, a, g, _ = activations_and_gradients(model, model.stem, pixels, [2, -1])
    got = _session(tmp_path / "pool").run(["gradients"], {"pixels": pixels.numpy(),
                                                          "target": np.array([2, -1], dtype=np.int64)})[0]
    assert rel_error(got, g) < 1e-5


@pytest.mark.parametrize(("layer", "size"), [("features.0", 4), ("features", 8)])
def test_batch_stays_dynamic_when_a_feature_map_side_equals_the_trace_batch(tmp_path: Path, layer: str,
                                                                            size: int) -> None:
    """Activations of 8x2x2 and 24x2x2: a tracer that equates the side 2 with a batch of 2 fixes the
    batch in the graph (a strided conv in the head, as in resnet18's layer4 at 32 px, shows it)."""
    model = seeded(TinyNet(), seed=6)
    report = export(model, layer, tmp_path / "small", input_size=(size, size))
    assert report.passed
    module = model.get_submodule(layer)
    for batch in (1, 4):
        pixels = _pixels(batch, seed=batch, size=size)
        logits, a, g, _ = activations_and_gradients(model, module, pixels, [-1] * batch)
        got = _session(tmp_path / "small").run(["logits", "gradients"], {
            "pixels": pixels.numpy(), "target": np.full(batch, -1, dtype=np.int64)})
        assert rel_error(got[0], logits) < 1e-5 and rel_error(got[1], g) < 1e-5
        (head_logits,) = _session(tmp_path / "small", contract.HEAD_FILE).run(["logits"], {"activations": a.numpy()})
        assert rel_error(head_logits, logits) < 1e-5


def test_wrong_layer_name_lists_the_nearest(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"no layer named 'feature'.*nearest valid names: features"):
        export(seeded(TinyNet()), "feature", tmp_path / "x", input_size=(32, 32))
    assert not (tmp_path / "x").exists()


def test_layer_without_a_spatial_output_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="4-D"):
        export(seeded(TinyNet()), "fc", tmp_path / "x", input_size=(32, 32))


def test_shared_module_is_refused(tmp_path: Path) -> None:
    model = seeded(TinyNet())
    shared = torch.nn.ReLU()
    model.features[0][2] = shared
    model.features[1][2] = shared
    with pytest.raises(ExportError, match="runs 2 times"):
        export(model, "features.0.2", tmp_path / "x", input_size=(32, 32))


class _KthValue(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - torch.kthvalue(x, 2, dim=1, keepdim=True).values


def test_unexportable_op_names_the_op_and_its_module(tmp_path: Path) -> None:
    model = seeded(TinyNet())
    model.features.append(_KthValue())
    with pytest.raises(ExportError, match=r"aten\.kthvalue.*features\.3 \(_KthValue\)"):
        export(model, "features.1", tmp_path / "x", input_size=(32, 32))


def test_failed_check_leaves_the_folder_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    out.mkdir()
    (out / "model.json").write_text("{\"previous\": true}")
    with pytest.raises(ExportError, match="export check failed.*logits"):  # float32 logits vs float64
        export(seeded(TinyNet()), None, out, input_size=(32, 32), tolerance=0.0)
    assert sorted(p.name for p in out.iterdir()) == ["model.json"]
    assert json.loads((out / "model.json").read_text()) == {"previous": True}
