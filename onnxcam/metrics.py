"""How good is a heatmap? The measures the CAM papers judge their maps with, numpy only.

Every function takes maps that are already prepared (ReLU'd, min-max normalised, upsampled: see
``onnxcam.evaluate_maps``) and, for the faithfulness measures, a ``score`` function that maps a batch
of model inputs [N, 3, H, W] to the target's softmax probability [N]. Nothing here knows about ONNX
Runtime, gRPC or torch, so the same code runs over a local session, a server, or (in the tests) a
torch model next to the reference implementations.

- Average Drop and Increase in Confidence (Chattopadhay et al. 2018, Grad-CAM++, section 5.1): the
  explanation E = input x map, as pytorch-grad-cam's ``CamMultImageConfidenceChange``;
  AD = mean_i max(0, Y_i - O_i) / Y_i x 100, IC = % of images with O_i > Y_i.
- Deletion and insertion (Petsiuk et al. 2018, RISE, as the authors' ``CausalMetric``): pixels in the
  map's order are set to the baseline (deletion) or revealed on a blurred copy (insertion), ceil(HW /
  steps) pixels per step; AUC = trapezoidal area under the probability curve on [0, 1].
- Pointing game (Zhang et al. 2016): a hit when the map's maximum lies within 15 px of a box.
- Energy-based pointing game (Wang et al. 2020, Score-CAM, section 4.3): the map's mass inside the boxes.
- Localisation (Selvaraju et al. 2017, Grad-CAM, section 4.1): threshold at 15% of the maximum, box
  around the largest connected component, IoU with the best-matching box; a hit when IoU >= 0.5.

Boxes are (x1, y1, x2, y2) in continuous pixel-edge coordinates of the map's image: pixel (row i,
column j) covers [j, j + 1] x [i, i + 1] and lies in a box when its centre does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

Box = tuple[float, float, float, float]
#: A batch of model inputs [N, 3, H, W] -> the target's softmax probability [N].
ScoreFn = Callable[[np.ndarray], np.ndarray]

DEFAULT_STEPS = 100
#: Zhang et al. 2016: "a hit ... with a 15-pixel tolerance".
POINTING_TOLERANCE_PX = 15.0
#: Selvaraju et al. 2017: "binarize [the map] with a threshold of 15% of the max intensity".
LOCALIZATION_THRESHOLD = 0.15
LOCALIZATION_IOU_HIT = 0.5
#: RISE's insertion substrate: its ``gkern(11, 5)``, a Gaussian of sigma 5 px on an 11 x 11 support.
BLUR_SIZE = 11
BLUR_SIGMA = 5.0


# ----------------------------------------------------------------------------------------------
# scores


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (the score every measure here uses)."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def explanation_input(pixels: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """E = the preprocessed input [3, H, W] times the map [H, W] in [0, 1] (pytorch-grad-cam's
    ``multiply_tensor_with_cam``): what the map keeps, the rest set to the normalisation's zero."""
    return (np.asarray(pixels, np.float32) * np.asarray(saliency, np.float32)[None]).astype(np.float32)


def drop(score: float, explanation_score: float) -> float:
    """One image's Average Drop term, max(0, Y - O) / Y x 100."""
    return max(0.0, score - explanation_score) / score * 100.0


def average_drop(scores: Sequence[float], explanation_scores: Sequence[float]) -> float:
    """mean_i max(0, Y_i - O_i) / Y_i x 100 (Grad-CAM++, eq. 19)."""
    y, o = np.asarray(scores, np.float64), np.asarray(explanation_scores, np.float64)
    return float(np.mean(np.maximum(0.0, y - o) / y) * 100.0)


def increase_in_confidence(scores: Sequence[float], explanation_scores: Sequence[float]) -> float:
    """% of images with O_i > Y_i (Grad-CAM++, eq. 20)."""
    y, o = np.asarray(scores, np.float64), np.asarray(explanation_scores, np.float64)
    return float(np.mean(o > y) * 100.0)


# ----------------------------------------------------------------------------------------------
# deletion and insertion


def pixel_order(saliency: np.ndarray, tie_break: np.ndarray | None = None) -> np.ndarray:
    """Flat pixel indices, most salient first. Equal values go in ``tie_break``'s ascending order
    (a seeded permutation in the evaluation, so that a flat region is removed in no systematic
    direction), else in raster order."""
    values = np.asarray(saliency, np.float64).ravel()
    if tie_break is None:
        return np.argsort(-values, kind="stable")
    return np.lexsort((np.asarray(tie_break).ravel(), -values))


def step_pixels(pixels: int, steps: int) -> int:
    """Pixels changed per step: RISE's ``step`` chosen so that ``steps`` steps change every pixel."""
    if steps < 1:
        raise ValueError(f"steps must be positive, not {steps}")
    return math.ceil(pixels / steps)


def curve_points(pixels: int, steps: int) -> int:
    """Points on a deletion/insertion curve: RISE's n_steps + 1 (n_steps = ``steps`` unless the
    division leaves nothing for the last steps, e.g. 1024 pixels in 100 steps of 11 make 94)."""
    step = step_pixels(pixels, steps)
    return math.ceil(pixels / step) + 1


def gaussian_kernel(size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """RISE's 1-D blur kernel: ``scipy.ndimage.gaussian_filter`` of a centred delta on ``size``
    samples (truncate 4, reflecting borders), of which ``gkern`` is the outer product."""
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = np.zeros(size)
    centre = size // 2
    for position in range(size):
        for offset, weight in zip(range(-radius, radius + 1), taps, strict=True):
            source = position + offset
            while not 0 <= source < size:  # scipy's "reflect": d c b a | a b c d | d c b a
                source = -source - 1 if source < 0 else 2 * size - source - 1
            if source == centre:
                out[position] += weight
    return out


def blurred(pixels: np.ndarray, size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """RISE's insertion start: each channel convolved with ``gkern(size, sigma)``, zero padding
    (``conv2d(x, kern, padding=size // 2)``), so the border fades towards the normalisation's zero."""
    kernel = gaussian_kernel(size, sigma)
    pad = size // 2
    x = np.pad(np.asarray(pixels, np.float64), ((0, 0), (pad, pad), (pad, pad)))
    height, width = pixels.shape[1:]
    rows = sum(kernel[k] * x[:, k:k + height, :] for k in range(size))
    return sum(kernel[k] * rows[:, :, k:k + width] for k in range(size)).astype(np.float32)


def causal_rows(start: np.ndarray, finish: np.ndarray, order: np.ndarray, step: int,
                indices: Sequence[int]) -> np.ndarray:
    """Rows [len(indices), 3, H, W]: row i is ``start`` with its first min(i * step, HW) pixels in
    ``order`` taken from ``finish`` (``indices`` ascending)."""
    channels = start.shape[0]
    current = np.array(start, np.float32).reshape(channels, -1)
    target = np.asarray(finish, np.float32).reshape(channels, -1)
    out = np.empty((len(indices), *start.shape), np.float32)
    done = 0
    for row, index in enumerate(indices):
        upto = min(index * step, order.size)
        if upto < done:
            raise ValueError("indices must be ascending")
        changed = order[done:upto]
        current[:, changed] = target[:, changed]
        done = upto
        out[row] = current.reshape(start.shape)
    return out


def causal_curve(score: ScoreFn, start: np.ndarray, finish: np.ndarray, order: np.ndarray, steps: int, *,
                 chunk: int = 32, ends: tuple[float, float] | None = None) -> np.ndarray:
    """The target's probability after 0, 1, ... n_steps steps of moving pixels from ``start`` to
    ``finish`` in ``order`` (RISE's ``single_run``). ``ends``: the known scores of ``start`` and
    ``finish`` themselves (they do not depend on the map), so only the steps between are run."""
    pixels = order.size
    step = step_pixels(pixels, steps)
    points = curve_points(pixels, steps)
    curve = np.empty(points, np.float64)
    inner = list(range(1, points - 1)) if ends is not None else list(range(points))
    if ends is not None:
        curve[0], curve[-1] = ends
    for part in _chunks(inner, chunk):
        curve[part] = score(causal_rows(start, finish, order, step, part))
    return curve


def _chunks(indices: list[int], chunk: int) -> Iterator[list[int]]:
    for begin in range(0, len(indices), chunk):
        yield indices[begin:begin + chunk]


def deletion_curve(score: ScoreFn, pixels: np.ndarray, saliency: np.ndarray, steps: int = DEFAULT_STEPS, *,
                   tie_break: np.ndarray | None = None, chunk: int = 32,
                   ends: tuple[float, float] | None = None) -> np.ndarray:
    """RISE's deletion: the most salient pixels first set to the baseline 0 (the normalisation's
    mean colour, RISE's ``torch.zeros_like`` substrate)."""
    order = pixel_order(saliency, tie_break)
    return causal_curve(score, pixels, np.zeros_like(pixels), order, steps, chunk=chunk, ends=ends)


def insertion_curve(score: ScoreFn, pixels: np.ndarray, saliency: np.ndarray, steps: int = DEFAULT_STEPS, *,
                    tie_break: np.ndarray | None = None, substrate: np.ndarray | None = None, chunk: int = 32,
                    ends: tuple[float, float] | None = None) -> np.ndarray:
    """RISE's insertion: the most salient pixels first revealed on the blurred image."""
    order = pixel_order(saliency, tie_break)
    start = blurred(pixels) if substrate is None else substrate
    return causal_curve(score, start, pixels, order, steps, chunk=chunk, ends=ends)


def auc(curve: np.ndarray) -> float:
    """RISE's normalised area: trapezoids over [0, 1], (sum - c_0 / 2 - c_n / 2) / n."""
    curve = np.asarray(curve, np.float64)
    return float((curve.sum() - curve[0] / 2 - curve[-1] / 2) / (curve.size - 1))


# ----------------------------------------------------------------------------------------------
# boxes


def _pixel_span(low: float, high: float, size: int) -> tuple[int, int]:
    """First and last pixel index whose centre lies in [low, high] (last < first: none)."""
    return max(math.ceil(low - 0.5), 0), min(math.floor(high - 0.5), size - 1)


def box_mask(shape: tuple[int, int], boxes: Sequence[Box]) -> np.ndarray:
    """The pixels whose centre lies in one of ``boxes``."""
    height, width = shape
    mask = np.zeros(shape, bool)
    for x1, y1, x2, y2 in boxes:
        top, bottom = _pixel_span(y1, y2, height)
        left, right = _pixel_span(x1, x2, width)
        if top <= bottom and left <= right:
            mask[top:bottom + 1, left:right + 1] = True
    return mask


def maximum_point(saliency: np.ndarray) -> tuple[int, int] | None:
    """(row, column) of the map's first maximum in raster order; None for an empty map (all zero)."""
    if not np.any(saliency > 0):
        return None
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(saliency)), saliency.shape))


def pointing_hit(saliency: np.ndarray, boxes: Sequence[Box], tolerance: float = POINTING_TOLERANCE_PX) -> bool:
    """Zhang et al. 2016, as TorchRay's ``PointingGame`` (Fong et al.'s reference code) scores it: a hit
    when a pixel of a box lies less than ``tolerance`` px (pixel-index distance) from the map's first
    maximum, or the maximum lies in a box. An empty map points nowhere: a miss."""
    point = maximum_point(saliency)
    if point is None:
        return False
    row, column = point
    height, width = saliency.shape
    for x1, y1, x2, y2 in boxes:
        top, bottom = _pixel_span(y1, y2, height)
        left, right = _pixel_span(x1, x2, width)
        if top > bottom or left > right:
            continue
        dy, dx = max(top - row, 0, row - bottom), max(left - column, 0, column - right)
        if dy == dx == 0 or dy * dy + dx * dx < tolerance * tolerance:
            return True
    return False


def energy_share(saliency: np.ndarray, boxes: Sequence[Box]) -> float:
    """Score-CAM's energy-based pointing game: sum of the map inside the boxes (their union) over
    its total sum; 0 for an empty map."""
    saliency = np.asarray(saliency, np.float64)
    total = saliency.sum()
    if total <= 0:
        return 0.0
    return float(saliency[box_mask(saliency.shape, boxes)].sum() / total)


def largest_component_box(mask: np.ndarray) -> Box | None:
    """The bounding box (pixel edges) of the largest 8-connected component of ``mask``; among equal
    sizes the one reached first in raster order. None when the mask is empty.

    Run-length labelling: the runs of each row are joined to the runs of the row above that touch
    them (diagonals included) with a union-find, so the work grows with the number of runs."""
    mask = np.asarray(mask, bool)
    padded = np.pad(mask, ((0, 0), (1, 1))).astype(np.int8)
    edges = np.diff(padded, axis=1)
    start_rows, start_cols = np.nonzero(edges == 1)
    _, end_cols = np.nonzero(edges == -1)  # the same runs, in the same raster order; ends exclusive
    if start_rows.size == 0:
        return None
    parent = list(range(start_rows.size))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    bounds = np.searchsorted(start_rows, np.arange(mask.shape[0] + 1))
    for row in range(1, mask.shape[0]):
        above = range(bounds[row - 1], bounds[row])
        for run in range(bounds[row], bounds[row + 1]):
            for other in above:
                # 8-connected: [s1, e1) and [s2, e2) touch when s1 <= e2 and s2 <= e1
                if start_cols[other] <= end_cols[run] and start_cols[run] <= end_cols[other]:
                    a, b = root(run), root(other)
                    if a != b:
                        parent[max(a, b)] = min(a, b)  # the earlier run stays the root
    roots = np.array([root(i) for i in range(start_rows.size)])
    sizes = np.bincount(roots, weights=end_cols - start_cols, minlength=roots.size)
    best = int(np.argmax(sizes))  # roots are each component's first run: ties go to raster order
    members = roots == best
    return (float(start_cols[members].min()), float(start_rows[members].min()), float(end_cols[members].max()),
            float(start_rows[members].max() + 1))


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(width, 0.0) * max(height, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def localization_box(saliency: np.ndarray, threshold: float = LOCALIZATION_THRESHOLD) -> Box | None:
    """Grad-CAM's weakly supervised box: pixels >= ``threshold`` x max, largest component's box;
    None for an empty map."""
    peak = float(np.max(saliency))
    if peak <= 0:
        return None
    return largest_component_box(saliency >= threshold * peak)


def localization_iou(saliency: np.ndarray, boxes: Sequence[Box], threshold: float = LOCALIZATION_THRESHOLD) -> float:
    """IoU of the map's box with the best-matching ground-truth box; 0 for an empty map."""
    found = localization_box(saliency, threshold)
    if found is None or not boxes:
        return 0.0
    return max(iou(found, box) for box in boxes)
