"""Token-grid target layers: ViT token sequences and Swin channels-last grids, exported and served.

Layout detection and the refusals are checked without exporting; the small torchvision ViT and
Swin (32 px, random weights) are exported once each, served over gRPC, and their maps compared with
pytorch-grad-cam given the equivalent ``reshape_transform``, and ReciproCAM on the ViT with the token
masking of OpenVINO XAI's ViT-ReciproCAM.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from exporter import sources  # noqa: E402

sources._torchvision()  # the torchvision shim that pytorch-grad-cam's import needs
pytest.importorskip("pytorch_grad_cam")

import pytorch_grad_cam as pgc  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from test_reference_parity import displayed_like_pytorch_grad_cam, raw_map  # noqa: E402
from test_server_helpers import running_server  # noqa: E402
from tiny_models import TinyNet, seeded, tiny_swin, tiny_vit  # noqa: E402

from exporter import ExportError, export  # noqa: E402
from exporter.layers import default_layer, target_layer  # noqa: E402
from exporter.token_grid import NCHW, NHWC, TOKENS, Layout, detect  # noqa: E402
from onnxcam.client import ExplainerClient  # noqa: E402

VIT_LAYER = "encoder.layers.encoder_layer_1.ln_1"
SWIN_LAYER = "norm"
SIZE = 32
TOLERANCE = 1e-3
PARITY_METHODS = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
                  "layercam": "LayerCAM", "hirescam": "HiResCAM"}


def _images(count: int = 2) -> list[np.ndarray]:
    return [np.random.default_rng(seed).standard_normal((3, SIZE, SIZE)).astype(np.float32) for seed in range(count)]


# ---------------------------------------------------------------------------------------------
# layout detection, without exporting


@pytest.mark.parametrize(("shape", "expected"), [
    ((2, 768, 7, 7), Layout(NCHW)),
    ((2, 7, 7, 768), Layout(NHWC)),                   # Swin's norm: never [K=7, h=7, w=768]
    ((2, 197, 768), Layout(TOKENS, 1, (14, 14))),     # ViT-B/16: the class token + 14 x 14 patches
    ((2, 198, 384), Layout(TOKENS, 2, (14, 14))),     # DeiT distilled: class + distillation token
    ((2, 49, 768), Layout(TOKENS, 0, (7, 7))),        # no class token (global-pool ViTs)
])
def test_layouts_are_detected_from_the_shape_and_the_input_size(shape, expected) -> None:
    assert detect(torch.nn.Identity(), shape, (224, 224)) == expected


@pytest.mark.parametrize("shape", [(2, 1000), (2, 768), (2, 150, 768), (2, 768, 1, 1), (2, 5, 7, 768)])
def test_outputs_that_map_to_no_grid_are_none(shape) -> None:
    assert detect(torch.nn.Identity(), shape, (224, 224)) is None


def test_a_cube_is_channels_last_only_after_a_layer_norm_over_its_last_dimension() -> None:
    assert detect(torch.nn.LayerNorm(7), (2, 7, 7, 7), (224, 224)) == Layout(NHWC)
    assert detect(torch.nn.BatchNorm2d(7), (2, 7, 7, 7), (224, 224)) == Layout(NCHW)


def test_an_explicit_layout_overrides_the_detection_but_not_into_nonsense() -> None:
    assert detect(torch.nn.LayerNorm(7), (2, 7, 7, 7), (224, 224), NCHW) == Layout(NCHW)
    assert detect(torch.nn.Identity(), (2, 7, 7, 768), (224, 224), NCHW) is None  # w = 768 > the input's 224
    assert detect(torch.nn.Identity(), (2, 768, 7, 7), (224, 224), TOKENS) is None


def test_default_layers_are_the_last_blocks_first_norm_and_swins_final_norm() -> None:
    pixels = torch.randn(2, 3, SIZE, SIZE)
    assert default_layer(tiny_vit(), pixels) == VIT_LAYER
    assert default_layer(tiny_swin(), pixels) == SWIN_LAYER


@pytest.mark.slow  # builds the full swin_t and runs it at 224 px (about 10 s)
def test_swin_t_norm_is_channels_last_never_a_7_by_768_map() -> None:
    """torchvision swin_t at 224 px: ``norm`` outputs [N, 7, 7, 768]; taken as [N, K, h, w] it would give
    [7, 768] maps. It is the default layer and found channels-last: A is [768, 7, 7]."""
    model = sources.build_arch("swin_t").eval()
    pixels = torch.randn(1, 3, 224, 224)
    assert default_layer(model, pixels) == SWIN_LAYER
    target = target_layer(model, SWIN_LAYER, pixels)
    assert target.output_shape == (1, 7, 7, 768) and target.layout == Layout(NHWC)
    assert tuple(target.layout.to_grid(torch.zeros(target.output_shape)).shape) == (1, 768, 7, 7)


def test_a_layer_that_maps_to_no_grid_names_its_shape_and_the_layers_that_would_work(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"'heads.head' outputs \[2, 5\].*nearest layers that would work: "
                                          r".*encoder\.ln \[2, 17, 16\] \(tokens\)"):
        export(tiny_vit(), "heads.head", tmp_path / "x", input_size=(SIZE, SIZE))
    with pytest.raises(ExportError, match=r"'norm' outputs \[2, 8, 8, 8\].* as tokens.*norm \[2, 8, 8, 8\] \(nhwc\)"):
        export(tiny_swin(), "norm", tmp_path / "y", input_size=(SIZE, SIZE), layer_layout="tokens")
    with pytest.raises(ExportError, match=r"'fc' outputs \[2, 10\].*features \[2, 24, 8, 8\] \(nchw\)"):
        export(seeded(TinyNet()), "fc", tmp_path / "z", input_size=(SIZE, SIZE))
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# exported and served


@pytest.fixture(scope="module")
def transformer_repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("transformers")
    vit = export(tiny_vit(), None, root / "vit", input_size=(SIZE, SIZE), input_gradients=False)
    swin = export(tiny_swin(), None, root / "swin", input_size=(SIZE, SIZE), input_gradients=False)
    for report in (vit, swin):
        print(report.summary())
        assert report.passed
    return root


@pytest.fixture(scope="module")
def client(transformer_repo):
    with running_server(transformer_repo) as server, ExplainerClient(server.address, timeout=300) as client:
        yield client


@pytest.mark.slow
def test_exports_keep_the_contracts_grid_shapes(transformer_repo: Path) -> None:
    vit = json.loads((transformer_repo / "vit" / "model.json").read_text())
    swin = json.loads((transformer_repo / "swin" / "model.json").read_text())
    assert (vit["target_layer"], vit["activation_shape"]) == (VIT_LAYER, [16, 4, 4])
    assert vit["target_layout"] == {"kind": "tokens", "prefix_tokens": 1, "grid": [4, 4]}
    assert vit["head"]["inputs"] == ["activations", "pixels"]  # the residual and the class token read the pixels
    # Swin's norm is [N, 8, 8, 8] channels-last (a cube: told apart by its LayerNorm over the last dimension)
    assert (swin["target_layer"], swin["activation_shape"], swin["target_layout"]) == (
        SWIN_LAYER, [8, 8, 8], {"kind": "nhwc"})
    assert "cam" in swin["methods"]  # norm -> permute -> average pool -> linear: CAM applies


def expanded_weights(graph: Path) -> list[str]:
    """Expand nodes whose data input is a weight matrix (an initializer of rank 2, maybe transposed)."""
    import onnx

    model = onnx.load(graph, load_external_data=False)
    matrices = {i.name for i in model.graph.initializer if len(i.dims) == 2}
    producers = {output: node for node in model.graph.node for output in node.output}

    def weight(name: str) -> bool:
        while name in producers and producers[name].op_type in ("Transpose", "Identity", "Reshape"):
            name = producers[name].input[0]
        return name in matrices

    return [node.name for node in model.graph.node if node.op_type == "Expand" and weight(node.input[0])]


@pytest.mark.slow
def test_attention_projections_are_one_product_not_a_weight_expanded_per_token(transformer_repo: Path) -> None:
    # Traced with gradients on, the transposed sequence made matmul broadcast the in-projection weight to
    # [L, C, 3C]: 1.4 GB per block of ViT-B/16, built on every call (the full-size export ran out of memory)
    for graph in sorted((transformer_repo / "vit").glob("*.onnx")):
        assert expanded_weights(graph) == [], graph.name


def _vit_tokens_to_grid(tensor: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's documented ``reshape_transform`` for ViT: drop the class token, fold the patches."""
    patches = tensor[:, 1:, :]
    side = int(patches.shape[1] ** 0.5)
    return patches.reshape(tensor.shape[0], side, side, tensor.shape[2]).permute(0, 3, 1, 2)


def _nhwc_to_grid(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.permute(0, 3, 1, 2)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "build", "layer", "reshape", "grid"), [
    ("vit", tiny_vit, VIT_LAYER, _vit_tokens_to_grid, (4, 4)), ("swin", tiny_swin, SWIN_LAYER, _nhwc_to_grid, (8, 8))])
def test_served_maps_equal_pytorch_grad_cam_with_its_reshape_transform(client, name, build, layer, reshape,
                                                                       grid) -> None:
    model = build()
    module = model.get_submodule(layer)
    worst = dict.fromkeys(PARITY_METHODS, 0.0)
    for pixels in _images():
        for target in (None, 3):
            response = client.explain(pixels, name, methods=list(PARITY_METHODS), raw=True,
                                      targets=[target] if target is not None else ())
            assert not response.skipped, response.skipped
            for method, heatmap in zip(PARITY_METHODS, response.heatmaps, strict=True):
                assert (heatmap.raw.height, heatmap.raw.width) == grid
                with getattr(pgc, PARITY_METHODS[method])(model=model, target_layers=[module],
                                                          reshape_transform=reshape) as cam:
                    theirs = cam(input_tensor=torch.from_numpy(pixels[None]),
                                 targets=[ClassifierOutputTarget(heatmap.target)])[0]
                assert np.ptp(theirs) > 0, (name, method)
                ours = displayed_like_pytorch_grad_cam(raw_map(heatmap), (SIZE, SIZE))
                worst[method] = max(worst[method], float(np.abs(ours - theirs).max()))
    print(f"{name}: worst difference per method {worst}")
    assert max(worst.values()) <= TOLERANCE, worst


def vit_reciprocam_reference(model: torch.nn.Module, layer: torch.nn.Module, pixels: np.ndarray,
                             target: int) -> np.ndarray:
    """ViT-ReciproCAM as OpenVINO XAI's torch implementation masks tokens (Gaussian mosaic, class token
    kept): for each patch (i, j), the target norm's output keeps its class token and the patch tokens
    of the 3 x 3 neighbourhood of (i, j) times [[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16, the others zero;
    the rest of the network runs unchanged; map[i, j] = softmax(logits)[target] (onnxcam's ReciproCAM
    score)."""
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    image = torch.from_numpy(pixels[None])
    with torch.no_grad():
        tokens = {}
        handle = layer.register_forward_hook(lambda m, i, o: tokens.setdefault("out", o))
        model(image)
        handle.remove()
        out = tokens["out"][0]  # [T, C]
        side = int((out.shape[0] - 1) ** 0.5)
        patches = out[1:].reshape(side, side, -1)
        mosaics = []
        for i in range(side):
            for j in range(side):
                mask = torch.zeros(side + 2, side + 2)
                mask[i:i + 3, j:j + 3] = kernel
                masked = patches * mask[1:-1, 1:-1, None]
                mosaics.append(torch.cat([out[:1], masked.reshape(side * side, -1)]))
        mosaic = torch.stack(mosaics)
        handle = layer.register_forward_hook(lambda m, i, o: mosaic)
        logits = model(image.repeat(len(mosaic), 1, 1, 1))
        handle.remove()
    return torch.softmax(logits, dim=1)[:, target].reshape(side, side).numpy()


@pytest.mark.slow
def test_reciprocam_on_a_vit_is_vit_reciprocam(client) -> None:
    model = tiny_vit()
    module = model.get_submodule(VIT_LAYER)
    for pixels in _images():
        response = client.explain(pixels, "vit", methods=["reciprocam", "ablationcam", "eigencam"], raw=True)
        assert not response.skipped, response.skipped
        ours = raw_map(response.heatmaps[0])
        theirs = vit_reciprocam_reference(model, module, pixels, response.heatmaps[0].target)
        assert np.ptp(theirs) > 0
        assert np.abs(ours - theirs).max() <= 1e-5 * max(1.0, np.abs(theirs).max()), (ours, theirs)
        for heatmap in response.heatmaps[1:]:  # the other gradient-free maps come back on the [4, 4] grid
            assert (heatmap.raw.height, heatmap.raw.width) == (4, 4)


TIMM_STYLE_VIT = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class DistilledViT(nn.Module):
    """timm's layout: patch_embed, cls_token + dist_token, blocks[i].norm1/norm2, norm, head."""

    def __init__(self, dim=16, classes=4):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 8, 8)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dist_token = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.Sequential(Block(dim), Block(dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), self.dist_token.expand(len(x), -1, -1), x], 1)
        return self.head(self.norm(self.blocks(x))[:, 0])


def build():
    return DistilledViT().eval()
'''


def test_a_timm_style_model_file_gets_its_last_blocks_norm1_with_two_leading_tokens(tmp_path: Path) -> None:
    """What ``onnxcam export --model-file my_vit.py:build`` starts from: a DeiT-like module with a class and a
    distillation token, timm's module names."""
    path = tmp_path / "my_vit.py"
    path.write_text(TIMM_STYLE_VIT)
    model = sources.model_from_file(f"{path}:build")
    pixels = torch.randn(2, 3, SIZE, SIZE)
    assert default_layer(model, pixels) == "blocks.1.norm1"
    target = target_layer(model, "blocks.1.norm1", pixels)
    assert target.output_shape == (2, 18, 16) and target.layout == Layout(TOKENS, 2, (4, 4))


def test_the_export_command_takes_the_layout_and_refuses_a_reading_that_is_no_grid(tmp_path: Path) -> None:
    """``onnxcam export --layer-layout tokens`` on Swin's channels-last norm: one error line naming the layer,
    its shape and the layers that would work, exit 2, nothing written."""
    from test_cli_errors import assert_one_error, onnxcam

    path = tmp_path / "swin.py"
    tests = str(Path(__file__).parent)
    path.write_text(f"import sys\nsys.path.insert(0, {tests!r})\nfrom tiny_models import tiny_swin as build\n")
    result = onnxcam("export", "--model-file", f"{path}:build", "--layer", "norm", "--layer-layout", "tokens",
                     "--input-size", str(SIZE), "--out", str(tmp_path / "out"))
    assert_one_error(result, 2, "'norm' outputs [2, 8, 8, 8]", "as tokens", "norm [2, 8, 8, 8] (nhwc)")
    assert not (tmp_path / "out").exists()


def test_a_layer_whose_grid_never_reaches_the_logits_is_refused(tmp_path: Path) -> None:
    """A ViT's final norm maps to a token grid, but only its class token reaches the classifier: every
    gradient map would be zero. Refused, with the default layer as the way out."""
    with pytest.raises(ExportError, match=rf"'encoder.ln'.*does not reach the logits.*default '{VIT_LAYER}'"):
        export(tiny_vit(), "encoder.ln", tmp_path / "x", input_size=(SIZE, SIZE))
    assert not (tmp_path / "x").exists()
