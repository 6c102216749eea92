"""The sampled methods: many rows of one exported graph per image, reduced to one map.

SmoothGrad (Smilkov et al. 2017), Smooth Grad-CAM++ (Omeiza et al. 2019), Integrated Gradients
(Sundararajan et al. 2017) and occlusion (Zeiler & Fergus 2014) are each a set of input rows
(noisy copies, points on a path, occluded copies) sent through ``input_gradients.onnx``,
``explainer.onnx`` or ``forward.onnx``, and a reduction of what comes back. Both halves live here,
in numpy only, so that the server (through its batchers) and an edge device (a plain ONNX Runtime
session, ``run_local``) compute the same map from the same rows:

    sampler = sampling.SAMPLERS["smoothgrad"](pixels, targets, sampling.Settings())
    session = onnxruntime.InferenceSession(folder / sampling.GRAPH_FILES[sampler.graph])
    maps = sampling.run_local(sampler, session)

Noise is reproducible: sample i of seed s is ``noise(s, i, shape) * sigma``, whatever the chunking.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from onnxcam import contract
from onnxcam.methods import Graph

#: Limits on one request's parameters: the work a request may cause is bounded before it starts.
MAX_SAMPLES = 256
MAX_STEPS = 512
MAX_PATCH_POSITIONS = 4096
MAX_NOISE_LEVEL = 10.0

DEFAULT_SAMPLES = 25  # SmoothGrad's recommendation (Smilkov et al. 2017, section 3.2)
DEFAULT_NOISE_LEVEL = 0.15  # 10-20% of the input range, ibid.
DEFAULT_SEED = 0
DEFAULT_STEPS = 50  # Captum IntegratedGradients' n_steps
#: Occlusion's patch and stride at a 224-pixel input, scaled with the input's shorter side.
DEFAULT_PATCH_AT_224 = 32
DEFAULT_STRIDE_AT_224 = 16

BASELINE_BLACK = "black"
BASELINE_ZERO = "zero"
BASELINES = (BASELINE_BLACK, BASELINE_ZERO)

#: Grad-CAM++'s denominator epsilon, as exporter/cam_formulas.gradcampp.
GRADCAMPP_EPS = 1e-6


@dataclass(frozen=True)
class Settings:
    """Parameters of the sampled methods; 0 means "the default" for the counts, as in the proto."""

    samples: int = DEFAULT_SAMPLES
    noise_level: float = DEFAULT_NOISE_LEVEL
    seed: int = DEFAULT_SEED
    steps: int = DEFAULT_STEPS
    baseline: str = BASELINE_BLACK
    #: Occlusion patch side and stride in input pixels; 0: the defaults scaled to the input size.
    patch: int = 0
    stride: int = 0
    #: The occluding patch's value in the normalised input (0: the normalisation's mean colour).
    fill: float = 0.0

    def resolved(self, height: int, width: int) -> Settings:
        """Defaults filled in for an input of ``height`` x ``width``, every limit checked (ValueError)."""
        side = min(height, width)
        patch = self.patch or max(1, round(DEFAULT_PATCH_AT_224 * side / 224))
        stride = self.stride or min(max(1, round(DEFAULT_STRIDE_AT_224 * side / 224)), patch)
        out = dataclasses.replace(self, samples=self.samples or DEFAULT_SAMPLES, steps=self.steps or DEFAULT_STEPS,
                                  noise_level=self.noise_level or DEFAULT_NOISE_LEVEL, patch=patch, stride=stride)
        problems = []
        if not 1 <= out.samples <= MAX_SAMPLES:
            problems.append(f"samples must be 1..{MAX_SAMPLES}, not {out.samples}")
        if not (math.isfinite(out.noise_level) and 0 < out.noise_level <= MAX_NOISE_LEVEL):
            problems.append(f"noise_level must be in (0, {MAX_NOISE_LEVEL:g}], not {out.noise_level}")
        if not 1 <= out.steps <= MAX_STEPS:
            problems.append(f"steps must be 1..{MAX_STEPS}, not {out.steps}")
        if out.baseline not in BASELINES:
            problems.append(f"baseline must be one of {', '.join(BASELINES)}, not {out.baseline!r}")
        if not 1 <= out.patch <= side:
            problems.append(f"patch must be 1..{side} (the input's shorter side), not {out.patch}")
        elif not 1 <= out.stride <= out.patch:
            problems.append(f"stride must be 1..{out.patch} (the patch), not {out.stride}")
        elif (positions := patch_positions(height, out.patch, out.stride) * patch_positions(width, out.patch,
                                                                                            out.stride)) \
                > MAX_PATCH_POSITIONS:
            problems.append(f"patch {out.patch} with stride {out.stride} makes {positions} occluded copies; at most "
                            f"{MAX_PATCH_POSITIONS} (a larger stride or patch makes fewer)")
        if not math.isfinite(out.fill):
            problems.append(f"fill must be finite, not {out.fill}")
        if out.seed < 0:
            problems.append(f"seed must be non-negative, not {out.seed}")
        if problems:
            raise ValueError("; ".join(problems))
        return out


def patch_positions(size: int, patch: int, stride: int) -> int:
    """Patch positions along one side, as Captum's Occlusion: ceil((size - patch) / stride) + 1, the
    last one cut at the border, so that every pixel is covered."""
    return math.ceil((size - patch) / stride) + 1


def noise(seed: int, index: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal noise of sample ``index`` under ``seed`` (float32): independent of chunking."""
    return np.random.default_rng([seed, index]).standard_normal(shape, dtype=np.float32)


def noise_sigma(pixels: np.ndarray, level: float) -> float:
    """SmoothGrad's sigma: the noise level times the input's value range (max - min)."""
    return float(level) * float(pixels.max() - pixels.min())


def baseline_pixels(settings: Settings, mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
                    shape: tuple[int, int, int]) -> np.ndarray:
    """Integrated Gradients' baseline [3, H, W] in the normalised input: black is (0 - mean) / std."""
    if settings.baseline == BASELINE_ZERO or mean is None or std is None:
        return np.zeros(shape, np.float32)
    black = (-np.asarray(mean, np.float32) / np.asarray(std, np.float32)).astype(np.float32)
    return np.broadcast_to(black[:, None, None], shape).astype(np.float32)


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) on [0, 1]: Captum's default "gausslegendre" integration rule."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return 0.5 * (1 + nodes), 0.5 * weights


class Sampler:
    """Rows of one graph for one image and its targets, and their reduction to maps.

    ``shared``: one set of rows serves every target (forward.onnx returns every class); otherwise
    each target has its own ``count`` rows (the graph's backward pass starts from the target).
    """

    graph: Graph
    rule: int = contract.RULE_PLAIN
    shared: bool = False
    #: Outputs of ``graph`` that ``add`` reads.
    outputs: tuple[str, ...] = ()

    def __init__(self, pixels: np.ndarray, targets: np.ndarray, settings: Settings, *,
                 baseline: np.ndarray | None = None) -> None:
        self.pixels = np.ascontiguousarray(pixels, np.float32)
        if self.pixels.ndim != 3:
            raise ValueError(f"pixels must be one image [3, H, W], got shape {self.pixels.shape}")
        self.targets = np.asarray(targets, np.int64).reshape(-1)
        self.settings = settings.resolved(*self.pixels.shape[1:])
        self.baseline = np.zeros_like(self.pixels) if baseline is None else np.asarray(baseline, np.float32)
        self.count = self.rows_per_target(self.settings, *self.pixels.shape[1:])

    @classmethod
    def rows_per_target(cls, settings: Settings, height: int, width: int) -> int:
        """Rows one target costs (for a shared sampler: the request's rows), known before running."""
        raise NotImplementedError

    def rows(self, part: slice) -> np.ndarray:
        """Input rows ``part`` of ``count`` [m, 3, H, W]."""
        raise NotImplementedError

    def add(self, target_index: int | None, part: slice, outputs: dict[str, np.ndarray]) -> None:
        """Take the graph's outputs for rows ``part`` of one target (None: shared rows)."""
        raise NotImplementedError

    def maps(self) -> np.ndarray:
        """Raw maps, one per target: [T, H, W] or [T, 3, H, W] at input, [T, h, w] at feature resolution."""
        raise NotImplementedError

    def stats(self) -> list[dict[str, float]]:
        """Per target: numbers reported next to the map (Integrated Gradients' completeness)."""
        return [{} for _ in self.targets]


class _Noisy(Sampler):
    """Rows x + sigma * noise(seed, i)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sigma = noise_sigma(self.pixels, self.settings.noise_level)

    def noisy(self, part: slice) -> np.ndarray:
        indices = range(*part.indices(self.settings.samples))
        out = np.empty((len(indices), *self.pixels.shape), np.float32)
        for row, i in enumerate(indices):
            out[row] = self.pixels + np.float32(self.sigma) * noise(self.settings.seed, i, self.pixels.shape)
        return out


class SmoothGrad(_Noisy):
    """Smilkov et al. 2017 on saliency: mean_i |d S_c / d x (x + eps_i)|, then max over colour channels
    (as ``saliency``). Captum: NoiseTunnel(Saliency), nt_type="smoothgrad", abs=True."""

    graph = Graph.INPUT_GRADIENTS
    outputs = (contract.OUTPUT_INPUT_GRADIENTS,)

    @classmethod
    def rows_per_target(cls, settings: Settings, height: int, width: int) -> int:
        return settings.samples

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.total = np.zeros((len(self.targets), *self.pixels.shape), np.float64)

    def rows(self, part: slice) -> np.ndarray:
        return self.noisy(part)

    def gradient_term(self, gradients: np.ndarray) -> np.ndarray:
        return np.abs(gradients)

    def add(self, target_index: int | None, part: slice, outputs: dict[str, np.ndarray]) -> None:
        self.total[target_index] += self.gradient_term(outputs[contract.OUTPUT_INPUT_GRADIENTS]).sum(axis=0)

    def maps(self) -> np.ndarray:
        return (self.total / self.settings.samples).max(axis=1).astype(np.float32)


class SmoothGradGuided(SmoothGrad):
    """Smilkov et al. 2017 on guided backpropagation: mean_i of the guided gradient at x + eps_i [3, H, W].
    Captum: NoiseTunnel(GuidedBackprop), nt_type="smoothgrad"."""

    rule = contract.RULE_GUIDED

    def gradient_term(self, gradients: np.ndarray) -> np.ndarray:
        return gradients

    def maps(self) -> np.ndarray:
        return (self.total / self.settings.samples).astype(np.float32)


class SmoothGradCAMpp(_Noisy):
    """Omeiza et al. 2019: Grad-CAM++ whose gradient powers are means over noisy copies.

    D_p = mean_i G(x + eps_i)^p (p = 1, 2, 3); alpha = D_2 / (2 D_2 + sum_ab A_ab * D_3 + 1e-6), 0
    where D_2 = 0; w_k = sum_ij alpha * ReLU(D_1); map = ReLU(sum_k w_k A_k), A the clean image's
    activations (row 0 of the rows, the noisy copies follow). torchcam's SmoothGradCAMpp differs on
    three points (README): it weights ReLU of the last copy's gradient, multiplies by the last copy's
    activations, and sums A * D_3 over the map in the denominator.
    """

    graph = Graph.EXPLAINER
    outputs = (contract.OUTPUT_ACTIVATIONS, contract.OUTPUT_GRADIENTS)

    @classmethod
    def rows_per_target(cls, settings: Settings, height: int, width: int) -> int:
        return settings.samples + 1

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.activations: list[np.ndarray | None] = [None] * len(self.targets)
        self.powers: list[np.ndarray | None] = [None] * len(self.targets)

    def rows(self, part: slice) -> np.ndarray:
        start, stop, _ = part.indices(self.count)
        clean = [self.pixels[None]] if start == 0 else []
        return np.concatenate(clean + [self.noisy(slice(max(start - 1, 0), stop - 1))])

    def add(self, target_index: int | None, part: slice, outputs: dict[str, np.ndarray]) -> None:
        start, _, _ = part.indices(self.count)
        gradients = outputs[contract.OUTPUT_GRADIENTS].astype(np.float64)
        if start == 0:
            self.activations[target_index] = outputs[contract.OUTPUT_ACTIVATIONS][0].astype(np.float64)
            gradients = gradients[1:]
        if len(gradients):
            powers = np.stack([gradients.sum(0), (gradients ** 2).sum(0), (gradients ** 3).sum(0)])
            current = self.powers[target_index]
            self.powers[target_index] = powers if current is None else current + powers

    def maps(self) -> np.ndarray:
        out = []
        for activations, powers in zip(self.activations, self.powers, strict=True):
            d1, d2, d3 = powers / self.settings.samples
            sum_a = activations.sum(axis=(1, 2), keepdims=True)
            alpha = d2 / (2 * d2 + sum_a * d3 + GRADCAMPP_EPS)
            alpha = np.where(d2 != 0, alpha, 0.0)
            weights = (alpha * np.maximum(d1, 0)).sum(axis=(1, 2))
            out.append(np.maximum(np.einsum("k,kij->ij", weights, activations), 0))
        return np.asarray(out, np.float32)


class IntegratedGradients(Sampler):
    """Sundararajan et al. 2017 with Captum's default rule: attributions (x - x') * sum_i w_i
    dS_c/dx (x' + alpha_i (x - x')), (alpha_i, w_i) the Gauss-Legendre nodes on [0, 1]; the map is
    their sum over colour channels [H, W]. Two more rows, x' and x, give S(x') and S(x) for the
    completeness gap sum(attributions) - (S(x) - S(x'))."""

    graph = Graph.INPUT_GRADIENTS
    outputs = (contract.OUTPUT_INPUT_GRADIENTS, contract.OUTPUT_LOGITS)

    @classmethod
    def rows_per_target(cls, settings: Settings, height: int, width: int) -> int:
        return settings.steps + 2

    def __init__(self, pixels: np.ndarray, targets: np.ndarray, settings: Settings, *,
                 baseline: np.ndarray | None = None) -> None:
        if baseline is None and settings.baseline == BASELINE_BLACK:
            raise ValueError("a black baseline depends on the model's normalisation: pass "
                             "baseline=baseline_pixels(settings, mean, std, shape), or use Settings(baseline='zero')")
        super().__init__(pixels, targets, settings, baseline=baseline)
        self.alphas, self.weights = gauss_legendre(self.settings.steps)
        # the path row alpha_i and the two end rows (alpha 0: the baseline, alpha 1: the image)
        self.row_alphas = np.concatenate([self.alphas, [0.0, 1.0]]).astype(np.float32)
        self.row_weights = np.concatenate([self.weights, [0.0, 0.0]])
        self.total = np.zeros((len(self.targets), *self.pixels.shape), np.float64)
        self.ends = np.zeros((len(self.targets), 2), np.float64)

    def rows(self, part: slice) -> np.ndarray:
        alphas = self.row_alphas[part][:, None, None, None]
        return (self.baseline[None] + alphas * (self.pixels - self.baseline)[None]).astype(np.float32)

    def add(self, target_index: int | None, part: slice, outputs: dict[str, np.ndarray]) -> None:
        weights = self.row_weights[part]
        gradients = outputs[contract.OUTPUT_INPUT_GRADIENTS].astype(np.float64)
        self.total[target_index] += np.tensordot(weights, gradients, axes=1)
        target = self.targets[target_index]
        for row, index in enumerate(range(*part.indices(self.count))):
            if index >= self.settings.steps:  # the end rows
                self.ends[target_index, index - self.settings.steps] = outputs[contract.OUTPUT_LOGITS][row, target]

    def attributions(self) -> np.ndarray:
        """[T, 3, H, W], what Captum's IntegratedGradients returns."""
        return (self.pixels - self.baseline).astype(np.float64)[None] * self.total

    def maps(self) -> np.ndarray:
        return self.attributions().sum(axis=1).astype(np.float32)

    def stats(self) -> list[dict[str, float]]:
        sums = self.attributions().sum(axis=(1, 2, 3))
        difference = self.ends[:, 1] - self.ends[:, 0]
        return [{"completeness_gap": float(s - d), "score_difference": float(d)} for s, d in zip(sums, difference,
                                                                                               strict=True)]


class Occlusion(Sampler):
    """Zeiler & Fergus 2014, as Captum's Occlusion on the softmax: a square patch of value ``fill``
    slides over the input; each pixel's map value is the mean, over the patch positions covering it,
    of p_c(x) - p_c(x with the patch). One forward row per position plus the clean image; the rows
    serve every target."""

    graph = Graph.FORWARD
    shared = True
    outputs = (contract.OUTPUT_LOGITS,)

    @classmethod
    def rows_per_target(cls, settings: Settings, height: int, width: int) -> int:
        return patch_positions(height, settings.patch, settings.stride) * patch_positions(
            width, settings.patch, settings.stride) + 1

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        height, width = self.pixels.shape[1:]
        s = self.settings
        self.ys = [i * s.stride for i in range(patch_positions(height, s.patch, s.stride))]
        self.xs = [j * s.stride for j in range(patch_positions(width, s.patch, s.stride))]
        self.probabilities = np.zeros((self.count, len(self.targets)), np.float64)

    def window(self, index: int) -> tuple[slice, slice]:
        y, x = self.ys[index // len(self.xs)], self.xs[index % len(self.xs)]
        return slice(y, y + self.settings.patch), slice(x, x + self.settings.patch)

    def rows(self, part: slice) -> np.ndarray:
        indices = range(*part.indices(self.count))
        out = np.repeat(self.pixels[None], len(indices), axis=0)
        for row, index in enumerate(indices):
            if index < self.count - 1:  # the last row is the clean image
                ys, xs = self.window(index)
                out[row, :, ys, xs] = self.settings.fill
        return out

    def add(self, target_index: int | None, part: slice, outputs: dict[str, np.ndarray]) -> None:
        logits = outputs[contract.OUTPUT_LOGITS].astype(np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        self.probabilities[part] = (exp / exp.sum(axis=1, keepdims=True))[:, self.targets]

    def maps(self) -> np.ndarray:
        height, width = self.pixels.shape[1:]
        total = np.zeros((len(self.targets), height, width), np.float64)
        covered = np.zeros((height, width), np.float64)
        drops = self.probabilities[-1] - self.probabilities[:-1]  # [positions, T]
        for index in range(self.count - 1):
            ys, xs = self.window(index)
            total[:, ys, xs] += drops[index][:, None, None]
            covered[ys, xs] += 1
        return (total / np.maximum(covered, 1)).astype(np.float32)


#: The sampler of each method of kind SAMPLED in onnxcam.methods, by name.
SAMPLERS: dict[str, type[Sampler]] = {
    "smoothgrad": SmoothGrad,
    "smoothgrad_guided": SmoothGradGuided,
    "smooth_gradcampp": SmoothGradCAMpp,
    "integrated_gradients": IntegratedGradients,
    "occlusion": Occlusion,
}


def rows_needed(name: str, settings: Settings, targets: int, height: int, width: int) -> int:
    """Graph rows a request costs for one image: known before running, for the budget and the limits."""
    sampler = SAMPLERS[name]
    count = sampler.rows_per_target(settings.resolved(height, width), height, width)
    return count if sampler.shared else count * targets


def feed(sampler: Sampler, pixels: np.ndarray, target_index: int | None) -> dict[str, np.ndarray]:
    """The graph inputs for ``pixels`` rows of one target (shared rows: pixels only)."""
    if sampler.graph is Graph.FORWARD:
        return {contract.INPUT_PIXELS: pixels}
    target = np.full((len(pixels),), sampler.targets[target_index], np.int64)
    inputs = {contract.INPUT_PIXELS: pixels, contract.INPUT_TARGET: target}
    if sampler.graph is Graph.INPUT_GRADIENTS:
        inputs[contract.INPUT_RULE] = np.full((len(pixels),), sampler.rule, np.int64)
    return inputs


def parts(sampler: Sampler, chunk: int) -> Iterator[tuple[int | None, slice]]:
    """(target index, rows) of every graph call, at most ``chunk`` rows each, target by target."""
    if chunk < 1:
        raise ValueError(f"chunk must be positive, not {chunk}")
    for target_index in [None] if sampler.shared else range(len(sampler.targets)):
        for start in range(0, sampler.count, chunk):
            yield target_index, slice(start, min(start + chunk, sampler.count))


#: Graph file of each graph a sampler runs.
GRAPH_FILES = {Graph.EXPLAINER: contract.EXPLAINER_FILE, Graph.INPUT_GRADIENTS: contract.INPUT_GRADIENTS_FILE,
               Graph.FORWARD: contract.FORWARD_FILE}


def run_local(sampler: Sampler, run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | object,
              chunk: int = 16, check: Callable[[], None] | None = None) -> np.ndarray:
    """Run every row of ``sampler`` through ``run`` and return its maps.

    ``run``: an onnxruntime.InferenceSession of the sampler's graph, or a function feed -> outputs.
    ``check`` runs before every call and may raise to stop (a deadline).
    """
    if not callable(run):
        session = run

        def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return dict(zip(sampler.outputs, session.run(list(sampler.outputs), inputs), strict=True))

    for target_index, part in parts(sampler, chunk):
        if check is not None:
            check()
        sampler.add(target_index, part, run(feed(sampler, sampler.rows(part), target_index)))
    return sampler.maps()
