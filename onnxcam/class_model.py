"""Class model visualisation (Simonyan et al. 2014): the input that maximises a class's score.

    I* = argmax_I S_c(I) - l2 * ||I||^2

found by gradient ascent from the zero image (the normalisation's mean colour), with S_c the
class's logit (unnormalised: maximising the softmax could also be done by pushing other classes
down). The gradient of S_c comes from ``input_gradients.onnx`` (plain rule), one row per step, so
this runs on ONNX Runtime only: in the server (the VisualizeClass RPC) and locally from a model
folder (``onnxcam visualize-class --model-dir``). Two regularisers beyond the paper's L2 are
options, both from the feature-visualisation literature (Yosinski et al. 2015; Mordvintsev et al.
2015): random jitter (the image is shifted by up to ``jitter`` pixels before each step and back
after) and a Gaussian blur every ``blur_every`` steps. Each step moves the image by
``learning_rate * g / mean(|g|)``: the gradient's scale varies by orders of magnitude between
models and over the run, its direction is what matters. The score of a ReLU network is far from
smooth at that scale (on EfficientNet-Lite0 a third of plain steps lowered it, whatever the step
size), so without jitter and blur the ascent backtracks (see ``ascend``).

numpy only: the server, the CLI and an edge device share it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from onnxcam import contract

MAX_STEPS = 2000
DEFAULT_STEPS = 200
DEFAULT_LEARNING_RATE = 0.1
DEFAULT_L2 = 1e-4
DEFAULT_REPORT_EVERY = 10
#: Limits that bound one request's work and memory (a blur's taps grow with sigma).
MAX_BLUR_SIGMA = 10.0
MAX_LEARNING_RATE = 10.0

#: (image rows [1, 3, H, W], target) -> (logits [1, C], d S_target / d image [1, 3, H, W]).
Gradient = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Options:
    steps: int = DEFAULT_STEPS
    learning_rate: float = DEFAULT_LEARNING_RATE
    l2: float = DEFAULT_L2
    jitter: int = 0
    blur_sigma: float = 0.0
    blur_every: int = 0
    seed: int = 0
    report_every: int = DEFAULT_REPORT_EVERY

    def resolved(self, height: int, width: int) -> Options:
        """0 means the default for steps, learning_rate, l2 and report_every; limits checked (ValueError)."""
        out = dataclasses.replace(self, steps=self.steps or DEFAULT_STEPS,
                                  learning_rate=self.learning_rate or DEFAULT_LEARNING_RATE,
                                  l2=self.l2 or DEFAULT_L2, report_every=self.report_every or DEFAULT_REPORT_EVERY)
        problems = []
        if not 1 <= out.steps <= MAX_STEPS:
            problems.append(f"steps must be 1..{MAX_STEPS}, not {out.steps}")
        for name, limit in (("learning_rate", MAX_LEARNING_RATE), ("l2", math.inf), ("blur_sigma", MAX_BLUR_SIGMA)):
            value = getattr(out, name)
            if not (math.isfinite(value) and 0 <= value <= limit):
                problems.append(f"{name} must be a finite number in [0, {limit:g}], not {value}")
        if not 0 <= out.jitter <= min(height, width) // 4:
            problems.append(f"jitter must be 0..{min(height, width) // 4} pixels, not {out.jitter}")
        if out.blur_every < 0 or out.report_every < 1:
            problems.append("blur_every must be >= 0 and report_every >= 1")
        if (out.blur_sigma > 0) != (out.blur_every > 0):
            problems.append("blur_sigma and blur_every go together (blur with this sigma every this many steps)")
        if out.seed < 0:
            problems.append(f"seed must be non-negative, not {out.seed}")
        if problems:
            raise ValueError("; ".join(problems))
        return out


@dataclass(frozen=True)
class Progress:
    step: int
    steps: int
    #: S_c of the image after ``step`` steps, the objective S_c - l2 ||I||^2, softmax probability of c.
    score: float
    objective: float
    probability: float
    top1: int


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of [3, H, W] (reflecting borders), radius 3 sigma."""
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    out = image
    for axis in (1, 2):
        padded = np.pad(out, [(0, 0)] + [(radius, radius) if a == axis else (0, 0) for a in (1, 2)], mode="reflect")
        length = out.shape[axis]
        out = sum(taps[k] * np.take(padded, range(k, k + length), axis=axis) for k in range(len(taps)))
    return out.astype(np.float32)


def _progress(logits: np.ndarray, image: np.ndarray, target: int, l2: float, step: int, steps: int) -> Progress:
    logits = logits.astype(np.float64)
    exp = np.exp(logits - logits.max())
    score = float(logits[target])
    return Progress(step, steps, score, score - l2 * float(np.square(image, dtype=np.float64).sum()),
                    float(exp[target] / exp.sum()), int(np.argmax(logits)))


def ascend(gradient: Gradient, shape: tuple[int, int, int], target: int, options: Options, *,
           check: Callable[[], None] | None = None) -> Iterator[tuple[Progress, np.ndarray | None]]:
    """Gradient ascent, step by step: (progress, None) at step 0 and every ``report_every`` steps,
    then (final progress, the class model image [3, H, W] in the normalised input space) last.

    Without jitter and blur the objective is deterministic, and a step that would lower it is not
    taken: the next step retries from the same image at half the step size (backtracking), so the
    reported objective never falls. One gradient call per step, plus one at the start.
    ``check`` runs before every step and may raise to stop (a deadline, a cancelled call).
    """
    options = options.resolved(*shape[1:])
    rng = np.random.default_rng(options.seed)
    blur = options.blur_every > 0 and options.blur_sigma > 0
    backtrack = not options.jitter and not blur

    def evaluate(image: np.ndarray, step: int) -> tuple[Progress, np.ndarray]:
        """Progress at ``image`` (seen shifted by the jitter) and the objective's gradient there."""
        dy, dx = (int(v) for v in rng.integers(-options.jitter, options.jitter + 1, size=2)) if options.jitter \
            else (0, 0)
        shifted = np.roll(image, (dy, dx), axis=(1, 2))
        logits, grad = gradient(shifted[None], target)
        direction = np.roll(grad[0], (-dy, -dx), axis=(1, 2)) - 2 * options.l2 * image
        return _progress(logits[0], shifted, target, options.l2, step, options.steps), direction

    image = np.zeros(shape, np.float32)
    learning_rate = options.learning_rate
    current, direction = evaluate(image, 0)
    yield current, None
    for step in range(1, options.steps + 1):
        if check is not None:
            check()
        candidate = image + np.float32(learning_rate) * direction / np.float32(np.abs(direction).mean() + 1e-12)
        if blur and step % options.blur_every == 0:
            candidate = gaussian_blur(candidate, options.blur_sigma)
        progress, candidate_direction = evaluate(candidate, step)
        if backtrack and progress.objective < current.objective:
            learning_rate *= 0.5
            current = dataclasses.replace(current, step=step)
        else:  # taken; the step size grows back towards the asked-for one
            image, current, direction = candidate.astype(np.float32), progress, candidate_direction
            learning_rate = min(learning_rate * 1.5, options.learning_rate)
        if step % options.report_every == 0 and step < options.steps:
            yield current, None
    if options.jitter:  # the last progress saw a shifted image; report the image itself
        logits, _ = gradient(image[None], target)
        current = _progress(logits[0], image, target, options.l2, options.steps, options.steps)
    yield current, image


def visualize(gradient: Gradient, shape: tuple[int, int, int], target: int, options: Options, *,
              on_progress: Callable[[Progress], None] | None = None,
              check: Callable[[], None] | None = None) -> tuple[np.ndarray, list[Progress]]:
    """``ascend`` to the end: (the image, every progress reported, the final one last)."""
    history, final = [], None
    for progress, image in ascend(gradient, shape, target, options, check=check):
        history.append(progress)
        final = image if image is not None else final
        if on_progress is not None:
            on_progress(progress)
    return final, history


def session_gradient(session: object) -> Gradient:
    """The Gradient of an onnxruntime.InferenceSession of input_gradients.onnx (plain rule)."""

    def gradient(image: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
        feed = {contract.INPUT_PIXELS: image.astype(np.float32), contract.INPUT_TARGET: np.array([target], np.int64),
                contract.INPUT_RULE: np.array([contract.RULE_PLAIN], np.int64)}
        logits, grad = session.run([contract.OUTPUT_LOGITS, contract.OUTPUT_INPUT_GRADIENTS], feed)
        return logits, grad

    return gradient


def to_rgb(image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], scale: float) -> np.ndarray:
    """uint8 [H, W, 3] for display: de-normalised to pixel values, then the 0.5-99.5 percentile range
    stretched to 0..255 (the ascent leaves the natural range; a plain clip would show mostly flat colour)."""
    pixels = (image * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]) / scale
    low, high = np.percentile(pixels, [0.5, 99.5])
    stretched = (pixels - low) / max(float(high - low), 1e-6)
    return np.clip(np.rint(stretched * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0)
