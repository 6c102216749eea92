"""Maps served by onnxcam against the reference implementations users compare with.

Every map goes through the server over gRPC, raw; the reference runs on the same torch module, image
and class: pytorch-grad-cam for the CAM family, Captum for the input-gradient maps (and
pytorch-grad-cam's GuidedBackpropReLUModel). CAM maps get pytorch-grad-cam's own display steps
(ReLU, min-max, resize, min-max again: ``scale_cam_image``) so that maps are compared, not two
normalisations; input-gradient maps are compared raw, relative to the reference's largest value.
The fast cases use the tiny exported model; the slow ones resnet50 and vgg16 (random weights) and
the default model with its real ImageNet weights on the bundled photos.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from exporter import sources  # noqa: E402

sources._torchvision()  # the torchvision shim that pytorch-grad-cam's import needs (CPU torch, CUDA torchvision wheel)
pytest.importorskip("pytorch_grad_cam")
pytest.importorskip("captum")

import pytorch_grad_cam as pgc  # noqa: E402
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget  # noqa: E402
from test_server_helpers import make_repository, running_server  # noqa: E402
from tiny_models import TinyNet, seeded  # noqa: E402

from onnxcam import methods as registry  # noqa: E402
from onnxcam.client import ExplainerClient  # noqa: E402
from onnxcam.proto import explainer_pb2 as pb  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: After the same display steps (CAM family) or relative to the reference's scale (input gradients).
TOLERANCE = 1e-3


class NegatedScore:
    """A pytorch-grad-cam target whose gradient is minus the class score's: the counterfactual."""

    def __init__(self, category: int) -> None:
        self.category = category

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return -model_output[..., self.category]


#: method -> (pytorch-grad-cam class, target). Score-CAM scores with the softmax probability, as ours
#: (and the authors' code) does; pytorch-grad-cam's default target would score with the logit.
CAM_REFERENCES = {
    "gradcam": ("GradCAM", ClassifierOutputTarget), "gradcampp": ("GradCAMPlusPlus", ClassifierOutputTarget),
    "xgradcam": ("XGradCAM", ClassifierOutputTarget), "layercam": ("LayerCAM", ClassifierOutputTarget),
    "hirescam": ("HiResCAM", ClassifierOutputTarget), "gradcam_counterfactual": ("GradCAM", NegatedScore),
    "eigencam": ("EigenCAM", ClassifierOutputTarget), "ablationcam": ("AblationCAM", ClassifierOutputTarget),
    "scorecam": ("ScoreCAM", ClassifierOutputSoftmaxTarget),
}
INPUT_METHODS = [m.name for m in registry.of_kind(registry.Kind.INPUT)]


def cam_reference(model: torch.nn.Module, layer: torch.nn.Module, method: str, pixels: np.ndarray,
                  target: int) -> np.ndarray:
    class_name, target_type = CAM_REFERENCES[method]
    with getattr(pgc, class_name)(model=model, target_layers=[layer]) as cam:
        return cam(input_tensor=torch.from_numpy(pixels[None]), targets=[target_type(target)])[0]


def captum_reference(model: torch.nn.Module, layer: torch.nn.Module, method: str, pixels: np.ndarray,
                     target: int) -> np.ndarray:
    """Captum's attribution for ``method`` on one preprocessed image, laid out as the graph's output."""
    from captum.attr import Deconvolution, GuidedBackprop, GuidedGradCam, Saliency

    tensor = torch.from_numpy(pixels[None]).requires_grad_(True)
    if method == "saliency":
        return Saliency(model).attribute(tensor, target=target, abs=True)[0].amax(dim=0).detach().numpy()
    if method == "deconvnet":
        return Deconvolution(model).attribute(tensor, target=target)[0].detach().numpy()
    if method == "guided_backprop":
        return GuidedBackprop(model).attribute(tensor, target=target)[0].detach().numpy()
    return GuidedGradCam(model, layer).attribute(tensor, target=target, interpolate_mode="bilinear")[0].detach().numpy()


def displayed_like_pytorch_grad_cam(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """pytorch-grad-cam's steps after its raw map: ReLU, scale to the input size, scale again."""
    return scale_cam_image(scale_cam_image(np.maximum(raw, 0)[None], (size[1], size[0]))[:, None].mean(1))[0]


def raw_map(heatmap: pb.Heatmap) -> np.ndarray:
    shape = (heatmap.raw.channels,) if heatmap.raw.channels > 1 else ()
    return np.asarray(heatmap.raw.values, np.float32).reshape(*shape, heatmap.raw.height, heatmap.raw.width)


def relative(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def parity(client: ExplainerClient, name: str, model: torch.nn.Module, layer_name: str, images: list[np.ndarray],
           methods: list[str], targets: tuple[int | None, ...] = (None,)) -> dict[str, float]:
    """Worst difference per method over ``images`` x ``targets`` (None: the top-1 class), each image and
    target's maps served by one Explain call; asserts each is within TOLERANCE.

    Every method must be served, and its reference must be non-trivial on at least one image (a
    counterfactual map of the top-1 class may well be empty). An input gradient passes through every
    ReLU gate of the network, and where many activations sit at a gate (EfficientNet-Lite's saturated
    ReLU6), float32 rounding flips some gates, in PyTorch as in ONNX Runtime, by chance. Where ours and
    the reference differ beyond TOLERANCE, both are measured against the reference run in float64,
    and ours must be within the larger of TOLERANCE and the worst error of the float32 reference on
    these images: no float32 implementation can promise better on this model.
    """
    model = model.eval()
    layer = model.get_submodule(layer_name)
    exact_model = None
    worst = dict.fromkeys(methods, 0.0)
    nontrivial = dict.fromkeys(methods, False)
    reference_error = dict.fromkeys(methods, 0.0)  # the float32 reference against float64, where measured
    for pixels in images:
        for target in targets:
            response = client.explain(pixels, name, methods=methods, raw=True,
                                      targets=[target] if target is not None else ())
            assert not response.skipped, response.skipped
            for method, heatmap in zip(methods, response.heatmaps, strict=True):
                assert heatmap.method == pb.Method.Value(registry.get(method).enum)
                if method in CAM_REFERENCES:
                    theirs = cam_reference(model, layer, method, pixels, heatmap.target)
                    ours = displayed_like_pytorch_grad_cam(raw_map(heatmap), pixels.shape[1:])
                    difference = float(np.abs(ours - theirs).max())
                else:
                    theirs = captum_reference(model, layer, method, pixels, heatmap.target)
                    difference = relative(raw_map(heatmap), theirs) if np.ptp(theirs) > 0 else 0.0
                    if difference > TOLERANCE:
                        exact_model = exact_model or copy.deepcopy(model).double()
                        exact = captum_reference(exact_model, exact_model.get_submodule(layer_name), method,
                                                 pixels.astype(np.float64), heatmap.target)
                        difference = relative(raw_map(heatmap), exact)
                        reference_error[method] = max(reference_error[method], relative(theirs, exact))
                        print(f"{name} {method}: ours {difference:.2e} from float64, the reference "
                              f"{relative(theirs, exact):.2e}")
                nontrivial[method] |= bool(np.ptp(theirs) > 0)
                worst[method] = max(worst[method], difference)
    assert all(nontrivial.values()), f"trivial reference maps prove nothing: {nontrivial}"
    print(f"{name}: worst difference per method {worst}")
    allowed = {m: max(TOLERANCE, reference_error[m]) for m in methods}
    assert all(worst[m] <= allowed[m] for m in methods), (name, worst, allowed)
    return worst


@pytest.fixture(scope="module")
def tiny_client(tiny_model_dir, tmp_path_factory):
    with running_server(make_repository(tiny_model_dir, tmp_path_factory.mktemp("repo"))) as server, \
            ExplainerClient(server.address, timeout=120) as client:
        yield client


def test_tiny_model_maps_equal_the_references(tiny_client):
    model = seeded(TinyNet()).eval()
    images = [np.random.default_rng(seed).standard_normal((3, 32, 32)).astype(np.float32) for seed in range(3)]
    parity(tiny_client, "tiny", model, "features", images, [*CAM_REFERENCES, *INPUT_METHODS], (None, 7))


#: Methods compared on the big models: all but the two that run a forward per channel on both sides
#: (minutes per image; they are compared on the tiny model above).
BIG_MODEL_METHODS = [m for m in CAM_REFERENCES if m not in ("scorecam", "ablationcam")]


def served_parity(folder: Path, name: str, model: torch.nn.Module, layer_name: str, images: list[np.ndarray],
                  methods: list[str]) -> dict[str, float]:
    """``parity`` against a server started on the repository holding ``folder``, for the top-1 class and
    class 0 (a class the image is unlikely to be, for which the counterfactual map has something to show)."""
    with running_server(folder.parent) as server, ExplainerClient(server.address, timeout=600) as client:
        return parity(client, name, model, layer_name, images, methods, (None, 0))


@pytest.mark.slow
def test_default_model_with_real_weights_on_photos():
    """EfficientNet-Lite0: every CAM method and saliency equal the references on the bundled photos.

    Its activations are ReLU6, which Captum's deconvnet and guided rules leave alone (they rewrite
    nn.ReLU modules only), so those are measured here and reported, not compared.
    """
    pytest.importorskip("efficientnet_lite_pytorch")
    from exporter.recipes import build_all, find_recipes
    from exporter.sources import build_arch
    from server.imaging import decode, prepare_image
    from server.model_info import load_model_info

    models = ROOT / "models"
    build_all(models, only=["efficientnet_lite0"])
    (recipe,) = [r for r in find_recipes(models) if r.name == "efficientnet_lite0"]
    info = load_model_info(recipe.folder)
    # two of the bundled photos (a cat and a cup): each costs minutes of float64 references on CI's two cores
    images = [prepare_image(decode((ROOT / "onnxcam" / "demo_photos" / photo).read_bytes(), 10**8),
                            info.preprocess).pixels for photo in ("chelsea.jpg", "coffee.jpg")]
    model = build_arch(recipe.spec["arch"])
    served_parity(recipe.folder, recipe.name, model, recipe.spec["target_layer"], images,
                  [*BIG_MODEL_METHODS, "saliency"])
    with running_server(models) as server, ExplainerClient(server.address, timeout=600) as client:
        from captum.attr import Deconvolution, Saliency

        pixels = torch.from_numpy(images[0][None]).requires_grad_(True)
        (heatmap,) = client.explain(images[0], recipe.name, methods=["deconvnet"], raw=True).heatmaps
        by_design = relative(raw_map(heatmap), Deconvolution(model).attribute(pixels, target=heatmap.target)[0]
                             .detach().numpy())
    plain = Saliency(model).attribute(pixels, target=heatmap.target, abs=False)[0].detach().numpy()
    no_rewrite = relative(Deconvolution(model).attribute(pixels, target=heatmap.target)[0].detach().numpy(), plain)
    print(f"deconvnet on ReLU6 against Captum's, which rewrites nn.ReLU only: {by_design:.2f} relative; "
          f"Captum's deconvnet there against its plain gradient: {no_rewrite:.1e}")
    assert no_rewrite < 1e-6 < by_design  # Captum left every ReLU6 alone; we did not


def test_tiny_model_guided_backprop_equals_pytorch_grad_cam(tiny_client):
    from pytorch_grad_cam import GuidedBackpropReLUModel

    model = seeded(TinyNet()).eval()
    pixels = np.random.default_rng(20).standard_normal((3, 32, 32)).astype(np.float32)
    (heatmap,) = tiny_client.explain(pixels, "tiny", methods=["guided_backprop"], targets=[4], raw=True).heatmaps
    ours = np.asarray(heatmap.raw.values, np.float32).reshape(3, 32, 32).transpose(1, 2, 0)
    theirs = GuidedBackpropReLUModel(model=model, device="cpu")(torch.from_numpy(pixels[None]), target_category=4)
    assert relative(ours, theirs) < TOLERANCE
