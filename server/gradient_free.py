"""Gradient-free CAM methods on ONNX Runtime: Ablation-CAM, Score-CAM, ReciproCAM and EigenCAM.

numpy and onnxruntime only (no torch). Every function takes the explainer run's outputs
(activations A [N, K, h, w], logits, resolved targets [N]) plus a session on one of the
exported graphs, and returns raw maps [N, h, w] at feature resolution, ReLU'd, before any
display normalisation (docs/DESIGN.md):

- Ablation-CAM (Desai & Ramaswamy 2020): w_k = (y_c - y_c^(k)) / y_c, y_c^(k) the class score
  with channel k of A set to zero; map = ReLU(sum_k w_k A_k). Rows of masked copies of A go
  through ``head.onnx``; with the head's linear layer (head = GAP + linear) the closed form
  w_k = W_ck * mean(A_k) / y_c needs no forward at all.
- Score-CAM (Wang et al. 2020, as pytorch-grad-cam): each A_k upsampled to the input
  size (bilinear, corners aligned), min-max normalised, multiplies the input; w = softmax over k of the target's
  softmax score on those inputs (``forward.onnx``); map = ReLU(sum_k w_k A_k).
- ReciproCAM (Byun & Lee 2022): h*w spatially masked copies of A through ``head.onnx``;
  map[i, j] = the target's softmax score of copy (i, j).
- EigenCAM (Muhammad & Yeasin 2020, as pytorch-grad-cam computes it): the projection of the
  channel-centred A on its first principal direction, ReLU'd. No forward at all.

The server reaches each method through ``serve_<name>(Inputs)`` (the name of onnxcam.methods), and
its cost through ``forward_count``: both are known before running, so a latency budget can decide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from onnxcam import contract

ABLATION = "ablationcam"
#: Ablation-CAM by the closed form (head = GAP + linear, ``linear`` given): no forward at all.
ABLATION_LINEAR = "ablationcam_linear"
SCORE = "scorecam"
RECIPRO = "reciprocam"
EIGEN = "eigencam"
METHODS: tuple[str, ...] = (ABLATION, ABLATION_LINEAR, SCORE, RECIPRO, EIGEN)

#: Score-CAM's min-max normalisation epsilon, (a - min) / (max - min + eps), as pytorch-grad-cam.
SCORE_CAM_EPS = 1e-8
#: Channels whose range max A_k - min A_k is at least this share a Score-CAM row with their positive
#: affine copies: the eps then scales the mask by less than 2^-24 relative, below float32's resolution
#: (see ``score_cam_plan``). Channels with a smaller range share a row only with an equal range.
SCORE_CAM_SHARED_RANGE = SCORE_CAM_EPS * 2.0**24
#: ReciproCAM's 3x3 Gaussian mosaic kernel (Byun & Lee; their reference code).
RECIPRO_KERNEL = np.array([[1 / 16, 1 / 8, 1 / 16], [1 / 8, 1 / 4, 1 / 8], [1 / 16, 1 / 8, 1 / 16]], np.float32)


# ----------------------------------------------------------------------------------------------
# cost


def forward_count(method: str, channels: int, height: int, width: int, *, top_r: int | None = None,
                  chunk_size: int = 256, linear: bool = False) -> int:
    """Rows one target sends through head.onnx / forward.onnx, known before running.

    ``channels``, ``height``, ``width`` are the activation map's K, h, w. Counts per target:

    - ``ablationcam``: one row per ablated channel (K, or min(top_r, K)) plus one unablated
      baseline row (y_c and y_c^(k) then come from the same graph, see ``ablation_cam``);
    - ``ablationcam_linear``, or ``ablationcam`` with ``linear`` (the closed form): 0;
    - ``scorecam``: K;
    - ``reciprocam``: h * w;
    - ``eigencam``: 0 (one SVD of A).

    This is exact in general and an upper bound when some channels are degenerate: Ablation-CAM
    skips channels that are zero everywhere (ablating them changes nothing, and A_k = 0 adds
    nothing to the map); Score-CAM sends all constant channels (their masks are zero, so their
    masked inputs are all-zero images) through one shared all-zero row, and runs each distinct
    mask of an image once (``score_cam_plan``: channels equal after min-max normalisation, such
    as the many ReLU'd maps that are nonzero at one position, share one row). Rows are packed across
    the images of a call in runs of ``chunk_size`` (head) or ``batch_size`` (Score-CAM), so a call
    makes ceil(N * count / chunk_size) session runs at most.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if min(channels, height, width) < 1:
        raise ValueError(f"activation shape must be positive, got K={channels}, h={height}, w={width}")
    if method == ABLATION and not linear:
        return _ablated_channels(channels, top_r) + 1
    if method in (ABLATION, ABLATION_LINEAR, EIGEN):
        return 0
    if method == SCORE:
        return channels
    if method == RECIPRO:
        return height * width
    raise ValueError(f"unknown gradient-free method {method!r}; expected one of {', '.join(METHODS)}")


def _ablated_channels(channels: int, top_r: int | None) -> int:
    if top_r is None:
        return channels
    if top_r < 1:
        raise ValueError(f"top_r must be positive, got {top_r}")
    return min(top_r, channels)


# ----------------------------------------------------------------------------------------------
# helpers


def _check(activations: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    activations = np.ascontiguousarray(activations, dtype=np.float32)
    if activations.ndim != 4:
        raise ValueError(f"activations must be [N, K, h, w], got shape {activations.shape}")
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    if targets.shape[0] != activations.shape[0]:
        raise ValueError(f"{targets.shape[0]} targets for {activations.shape[0]} images")
    if (targets < 0).any():
        raise ValueError("targets must be resolved class indices (no -1)")
    return activations, targets


def _check_classes(targets: np.ndarray, num_classes: int) -> None:
    if len(targets) and targets.max() >= num_classes:
        raise ValueError(f"target class {int(targets.max())} out of range for {num_classes} classes")


def _needs_pixels(session: ort.InferenceSession, pixels: np.ndarray | None, n: int) -> np.ndarray | None:
    names = [i.name for i in session.get_inputs()]
    if contract.INPUT_PIXELS not in names:
        return None
    if pixels is None:
        raise ValueError("this head.onnx reads the pixels too (model.json head.inputs); pass pixels=")
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    if pixels.shape[0] != n:
        raise ValueError(f"{pixels.shape[0]} pixel rows for {n} images")
    return pixels


#: Called before every session run of a loop; it raises to stop the work (a deadline passed, the
#: caller went away). The exception goes through to the caller unchanged.
Check = Callable[[], None]


def _chunks(total: int, size: int, check: Check | None = None) -> Iterator[slice]:
    """ceil(total / size) runs of at most ``size`` rows, as even as can be: no 1-row tail run
    (a head that starts with a large dense layer streams its whole weight matrix per run).
    ``check`` runs before each."""
    if size < 1:
        raise ValueError(f"chunk size must be positive, got {size}")
    runs = -(-total // size)
    start = 0
    for run in range(runs):
        if check is not None:
            check()
        stop = start + total // runs + (1 if run < total % runs else 0)
        yield slice(start, stop)
        start = stop


def _run_head(head: ort.InferenceSession, rows: np.ndarray, pixel_rows: np.ndarray | None) -> np.ndarray:
    feeds = {contract.INPUT_ACTIVATIONS: rows}
    if pixel_rows is not None:
        feeds[contract.INPUT_PIXELS] = pixel_rows
    (logits,) = head.run([contract.OUTPUT_LOGITS], feeds)
    return logits


def _softmax_at(logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """softmax(logits[r])[classes[r]] per row, in float64."""
    _check_classes(classes, logits.shape[1])
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp[np.arange(len(classes)), classes] / exp.sum(axis=1)


def _weighted_map(weights: np.ndarray, activations: np.ndarray) -> np.ndarray:
    """ReLU(sum_k w_k A_k) for weights [N, K], accumulated in float64."""
    cam = np.einsum("nk,nkij->nij", weights.astype(np.float64), activations.astype(np.float64))
    return np.maximum(cam, 0.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Ablation-CAM


def ablation_cam(head: ort.InferenceSession, activations: np.ndarray, logits: np.ndarray, targets: np.ndarray, *,
                 pixels: np.ndarray | None = None, linear: tuple[np.ndarray, np.ndarray] | None = None,
                 chunk_size: int = 256, top_r: int | None = None, check: Check | None = None) -> np.ndarray:
    """Ablation-CAM maps [N, h, w] (raw, ReLU'd).

    ``logits`` are the explainer run's; y_c = logits[n, targets[n]] is the denominator.

    With ``linear`` = (weight [C, K], bias [C]) of a GAP + linear head (cam_linear.npz), zeroing
    channel k lowers y_c by exactly W_ck * mean(A_k), so w_k = W_ck * mean(A_k) / y_c: no forward,
    and ``top_r``/``chunk_size`` are ignored.

    Otherwise rows of A with one channel zeroed run through ``head`` (``pixels`` too when the
    head reads them), ``chunk_size`` rows per session run, packed across images. One unablated
    row per image runs with them and gives the y_c of the difference y_c - y_c^(k): the ablation
    effect of one channel is ~y_c/K, so a y_c from the explainer graph, which rounds differently
    from head.onnx, would put a systematic error of ~K * 1e-7 relative on every weight.
    Channels that are zero everywhere are skipped (their weight cannot matter: A_k = 0).

    ``top_r``: ablate only the r channels of largest positive activation energy
    sum_ij ReLU(A_kij)^2 (plain energy on post-ReLU layers); the others get weight 0. Cost falls
    from K + 1 to r + 1 rows per image, but the map is an approximation: the contributions
    w_k A_k of the channels left out are lost, and nothing guarantees that low-energy channels
    carry small weights. Measured (bench/gradient_free.py --top-r-study, bench/gradient_free.md) on
    EfficientNet-Lite0 with its ImageNet weights at the package's ``_bn1``, before the head's
    ReLU6 (K = 1280, 224 px, 6 photos, top-1 class; maps min-max normalised as displayed,
    compared with the full map): r = 640 (50%)
    max abs diff 0.002 mean / 0.015 worst, Pearson 1.000; r = 320 (25%) 0.023 / 0.106, Pearson
    0.999, same peak 5/6; r = 128 (10%) 0.069 / 0.182, Pearson 0.997; r = 64 (5%) 0.18 / 0.51,
    Pearson 0.98. Ranking by the signed energy sum_ij A^2 instead is useless on such a
    pre-activation (BatchNorm) layer: r = 640 already gives max abs diff 0.55 mean, Pearson 0.78,
    because the largest-energy channels there are strongly negative ones that the head's ReLU6
    silences anyway.
    """
    activations, targets = _check(activations, targets)
    n, k, h, w = activations.shape
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[0] != n:
        raise ValueError(f"logits must be [N={n}, C], got shape {logits.shape}")
    _check_classes(targets, logits.shape[1])
    if n == 0:
        return np.zeros((0, h, w), np.float32)
    score = logits[np.arange(n), targets].astype(np.float64)

    if linear is not None:
        weight = np.asarray(linear[0], dtype=np.float64)
        if weight.ndim != 2 or weight.shape[1] != k:
            raise ValueError(f"linear weight must be [C, K={k}], got shape {weight.shape}")
        drops = weight[targets] * activations.astype(np.float64).mean(axis=(2, 3))
        return _weighted_map(_relative(drops, score), activations)

    r = _ablated_channels(k, top_r)
    channels = None
    if r < k:
        energy = np.square(np.maximum(activations, 0).astype(np.float64)).sum(axis=(2, 3))
        channels = [np.argsort(-e, kind="stable")[:r] for e in energy]
    drops = ablation_drops(head, activations, targets, channels=channels, pixels=pixels, chunk_size=chunk_size,
                           check=check)
    return _weighted_map(_relative(drops, score), activations)


def ablation_drops(head: ort.InferenceSession, activations: np.ndarray, targets: np.ndarray, *,
                   channels: list[np.ndarray] | None = None, pixels: np.ndarray | None = None,
                   chunk_size: int = 256, check: Check | None = None) -> np.ndarray:
    """y_c - y_c^(k) [N, K] (float64) from masked rows through ``head``; 0 where not ablated.

    ``channels[n]``: the channels of image n to ablate (default all). Channels that are zero
    everywhere are never run (their drop is 0). One unablated baseline row per image gives y_c.
    """
    activations, targets = _check(activations, targets)
    n, k, _, _ = activations.shape
    pixels = _needs_pixels(head, pixels, n)
    if n == 0:
        return np.zeros((0, k), np.float64)
    # (image, channel) per row; channel -1 is the image's unablated baseline row.
    row_image, row_channel = [], []
    for i in range(n):
        live = np.flatnonzero(np.any(activations[i] != 0, axis=(1, 2)))
        if channels is not None:
            live = np.intersect1d(live, np.asarray(channels[i], dtype=np.int64))
        row_image.append(np.full(len(live) + 1, i))
        row_channel.append(np.concatenate([[-1], live]))
    row_image = np.concatenate(row_image)
    row_channel = np.concatenate(row_channel)

    row_scores = np.empty(len(row_image), dtype=np.float64)
    for part in _chunks(len(row_image), chunk_size, check):
        images, chans = row_image[part], row_channel[part]
        rows = activations[images]  # a copy
        ablated = np.flatnonzero(chans >= 0)
        rows[ablated, chans[ablated]] = 0.0
        out = _run_head(head, rows, pixels[images] if pixels is not None else None)
        _check_classes(targets, out.shape[1])
        row_scores[part] = out[np.arange(len(images)), targets[images]]

    drops = np.zeros((n, k), dtype=np.float64)
    baseline = row_channel < 0
    base = np.empty(n, dtype=np.float64)
    base[row_image[baseline]] = row_scores[baseline]
    ablated = ~baseline
    drops[row_image[ablated], row_channel[ablated]] = base[row_image[ablated]] - row_scores[ablated]
    return drops


def _relative(drops: np.ndarray, score: np.ndarray) -> np.ndarray:
    """drops / y_c per row; a row with y_c == 0 has no defined weights and gets a zero map."""
    out = np.zeros_like(drops)
    np.divide(drops, score[:, None], out=out, where=score[:, None] != 0)
    return out


# ----------------------------------------------------------------------------------------------
# Score-CAM


def bilinear_matrix(in_size: int, out_size: int, *, align_corners: bool = False) -> np.ndarray:
    """[out, in] matrix of 1-D bilinear interpolation, as torch's ``F.interpolate(mode="bilinear")``.

    Half-pixel centres (``align_corners=False``): src = (dst + 0.5) * in/out - 0.5, clamped below
    at 0. Corners aligned (``align_corners=True``, ``nn.UpsamplingBilinear2d``): src = dst *
    (in - 1)/(out - 1). Neighbours i0 and min(i0 + 1, in - 1).
    """
    dst = np.arange(out_size, dtype=np.float32)
    if align_corners:
        scale = np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else np.float32(0)
        src = dst * scale
    else:
        scale = np.float32(in_size) / np.float32(out_size)
        src = np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam1 = (src - i0.astype(np.float32)).astype(np.float32)
    lam0 = (np.float32(1) - lam1).astype(np.float32)
    matrix = np.zeros((out_size, in_size), dtype=np.float32)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, i0), lam0)
    np.add.at(matrix, (rows, i1), lam1)
    return matrix


def upsample(maps: np.ndarray, height: int, width: int, *, align_corners: bool = False) -> np.ndarray:
    """Bilinear upsampling of [..., h, w] maps to [..., height, width] (see ``bilinear_matrix``)."""
    ry = bilinear_matrix(maps.shape[-2], height, align_corners=align_corners)
    rx = bilinear_matrix(maps.shape[-1], width, align_corners=align_corners)
    return np.matmul(np.matmul(ry, maps.astype(np.float32)), rx.T)


#: Score-CAM's masks are upsampled with corners aligned, as pytorch-grad-cam's ``UpsamplingBilinear2d``:
#: the implementation users compare with. The authors' code uses half-pixel centres; on EfficientNet-Lite0
#: and 20 ImageNet photos that moved maps by up to 0.039 (normalised) from pytorch-grad-cam's.
SCORE_CAM_ALIGN_CORNERS = True


def score_cam(forward: ort.InferenceSession, pixels: np.ndarray, activations: np.ndarray, targets: np.ndarray, *,
              batch_size: int = 32, check: Check | None = None) -> np.ndarray:
    """Score-CAM maps [N, h, w] (raw, ReLU'd): ReLU(sum_k w_k A_k), w from ``score_cam_weights``.

    The weights are close to uniform (a softmax over k of probabilities in [0, 1]), so the map is
    close to ReLU(mean_k A_k): on a layer whose output is signed (a BatchNorm before its
    activation, such as the EfficientNet-Lite package's own ``_bn1``) it can be zero everywhere.
    Target the activation's output instead (onnxcam's EfficientNet-Lite models do).
    """
    activations, targets = _check(activations, targets)
    return _weighted_map(score_cam_weights(forward, pixels, activations, targets, batch_size=batch_size,
                                           check=check), activations)


def score_cam_weights(forward: ort.InferenceSession, pixels: np.ndarray, activations: np.ndarray,
                      targets: np.ndarray, *, batch_size: int = 32, check: Check | None = None) -> np.ndarray:
    """Score-CAM channel weights [N, K] (float64).

    Masks: U_k = A_k upsampled to the input size (bilinear with corners aligned, as pytorch-grad-cam's
    ``UpsamplingBilinear2d``; see SCORE_CAM_ALIGN_CORNERS), then
    (U_k - min U_k) / (max U_k - min U_k + 1e-8) as pytorch-grad-cam. A channel with
    max A_k == min A_k gets the zero mask (pytorch-grad-cam: 0 / 1e-8; we decide on A_k itself,
    so float rounding in the upsampling of a constant channel cannot make a mask of noise).
    ``pixels * mask_k`` run through ``forward`` (``forward.onnx``), ``batch_size`` rows per run,
    packed across images; all constant channels of all images share one all-zero row, and the
    channels of an image with the same mask share one row (``score_cam_plan``).
    w = softmax over k of softmax(logits)[target]. This equals pytorch-grad-cam's ScoreCAM with
    ``ClassifierOutputSoftmaxTarget`` targets (the probability, as the Score-CAM authors' code
    scores); its default ``ClassifierOutputTarget`` scores with the raw logit instead.
    """
    activations, targets = _check(activations, targets)
    n, k, h, w = activations.shape
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    if pixels.ndim != 4 or pixels.shape[0] != n:
        raise ValueError(f"pixels must be [N={n}, 3, H, W], got shape {pixels.shape}")
    height, width = pixels.shape[2:]
    ry = bilinear_matrix(h, height, align_corners=SCORE_CAM_ALIGN_CORNERS)
    rx_t = np.ascontiguousarray(bilinear_matrix(w, width, align_corners=SCORE_CAM_ALIGN_CORNERS).T)

    plan = score_cam_plan(activations)
    row_scores = np.empty(len(plan.row_image), dtype=np.float64)
    for part in _chunks(len(plan.row_image), batch_size, check):
        images, channels = plan.row_image[part], plan.row_channel[part]
        up = np.matmul(np.matmul(ry, activations[images, channels]), rx_t)  # [m, H, W]
        low = up.min(axis=(1, 2), keepdims=True)
        high = up.max(axis=(1, 2), keepdims=True)
        masks = (up - low) / (high - low + np.float32(SCORE_CAM_EPS))
        batch = pixels[images] * masks[:, None]
        (out,) = forward.run([contract.OUTPUT_LOGITS], {contract.INPUT_PIXELS: batch})
        row_scores[part] = _softmax_at(out, targets[images])
    scores = np.zeros((n, k), dtype=np.float64)
    live = plan.row_of >= 0
    scores[live] = row_scores[plan.row_of[live]]
    if plan.constant.any():
        zero = np.zeros((1, *pixels.shape[1:]), dtype=np.float32)
        (out,) = forward.run([contract.OUTPUT_LOGITS], {contract.INPUT_PIXELS: zero})
        for i in np.flatnonzero(plan.constant.any(axis=1)):
            scores[i, plan.constant[i]] = _softmax_at(out, targets[i:i + 1])[0]

    if n == 0:
        return scores
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    return weights / weights.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class ScoreCamPlan:
    """The forward.onnx rows Score-CAM runs for a batch of activations [N, K, h, w]."""

    #: [N, K]: max A_k == min A_k; these channels share one all-zero row across all images.
    constant: np.ndarray
    #: [R]: the image and channel whose mask each row holds (one row per distinct mask).
    row_image: np.ndarray
    row_channel: np.ndarray
    #: [N, K]: the row whose score channel k takes (-1 for the constant channels).
    row_of: np.ndarray

    @property
    def rows(self) -> int:
        """Rows sent through forward.onnx, the shared all-zero row included."""
        return len(self.row_image) + int(self.constant.any())

    @property
    def duplicates(self) -> int:
        """Non-constant channels that take another channel's row."""
        return int((~self.constant).sum()) - len(self.row_image)


def score_cam_plan(activations: np.ndarray) -> ScoreCamPlan:
    """Which channels of each image share a Score-CAM mask, decided on A itself (no upsampling).

    Bilinear interpolation is affine with weights that sum to 1, so upsampling a positive affine
    copy alpha * A_k + beta of a channel gives alpha * U_k + beta, whose min-max normalisation is
    (U_k - min U_k) / (max U_k - min U_k + eps / alpha): the same mask but for the eps. This holds
    whatever the upsampled extremes are: they need not be A_k's own (with corners aligned, 7 -> 224
    samples only the corners of the 7 x 7 grid exactly), since the normalisation is applied after
    the upsampling and only its affine equivariance is used. Two channels of an image therefore
    share a row when their normalised maps (A_k - min A_k) / (max A_k - min A_k), computed in float64
    and rounded to float32, are equal bit for bit, and either both ranges max A_k - min A_k are at
    least SCORE_CAM_SHARED_RANGE (the eps then changes each mask by less than 2^-24 relative) or the
    two ranges are equal (a shifted copy: the same eps). Their exact masks then differ by at most
    one float32 rounding of the normalised map, within the float32 rounding of the mask formula
    itself, so a shared row changes the map only at float32 precision. Identical channels and the
    ReLU'd maps that are nonzero at one position (normalised: the same one-hot map) are the common
    case. Rows are never shared across images (the pixels differ), except the all-zero one.
    """
    activations = np.asarray(activations, dtype=np.float32)
    if activations.ndim != 4:
        raise ValueError(f"activations must be [N, K, h, w], got shape {activations.shape}")
    n, k, h, w = activations.shape
    flat = activations.reshape(n, k, h * w).astype(np.float64)
    low, high = flat.min(axis=2), flat.max(axis=2)
    spread = high - low
    constant = spread == 0
    row_image, row_channel = [], []
    row_of = np.full((n, k), -1, dtype=np.int64)
    offset = 0
    for i in range(n):
        live = np.flatnonzero(~constant[i])
        if not len(live):
            continue
        key = np.empty((len(live), flat.shape[2] + 1), dtype=np.float32)
        key[:, :-1] = (flat[i, live] - low[i, live, None]) / spread[i, live, None]
        key[:, -1] = np.where(spread[i, live] >= SCORE_CAM_SHARED_RANGE, 0.0, spread[i, live])
        raw = np.ascontiguousarray(key).view(np.dtype((np.void, key.shape[1] * key.itemsize))).ravel()
        _, first, inverse = np.unique(raw, return_index=True, return_inverse=True)  # bytes: exact equality
        order = np.sort(first)  # rows in channel order
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first)] = np.arange(len(first))
        row_of[i, live] = offset + rank[inverse.ravel()]
        offset += len(order)
        row_image.append(np.full(len(order), i, dtype=np.int64))
        row_channel.append(live[order])
    empty = np.zeros(0, dtype=np.int64)
    return ScoreCamPlan(constant, np.concatenate(row_image) if row_image else empty,
                        np.concatenate(row_channel) if row_channel else empty, row_of)


# ----------------------------------------------------------------------------------------------
# ReciproCAM


def recipro_cam(head: ort.InferenceSession, activations: np.ndarray, targets: np.ndarray, *,
                pixels: np.ndarray | None = None, chunk_size: int = 256, gaussian: bool = True,
                check: Check | None = None, own_features: bool = False) -> np.ndarray:
    """ReciproCAM maps [N, h, w] (raw; softmax scores, so already >= 0).

    Copy (i, j) of A is zero except around (i, j): with ``gaussian`` (the authors' mosaic) the
    3x3 neighbourhood of (i, j), clipped at the border, holds A[:, i, j] times the kernel
    [[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16; without, only (i, j) holds A[:, i, j]. The h*w copies
    per image run through ``head`` (``chunk_size`` rows per run, packed across images);
    map[i, j] = softmax(head(copy (i, j)))[target].

    ``own_features`` is ViT-ReciproCAM's mosaic (Byun & Lee 2023, as OpenVINO XAI masks tokens): each
    cell of the neighbourhood keeps its own features times the kernel, not the centre's; the class token
    passes through the head untouched (the head takes it from the pixels).
    """
    activations, targets = _check(activations, targets)
    n, k, h, w = activations.shape
    pixels = _needs_pixels(head, pixels, n)
    if n == 0:
        return np.zeros((0, h, w), np.float32)
    kernel = RECIPRO_KERNEL if gaussian else np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], np.float32)
    offsets = [(di, dj, kernel[di + 1, dj + 1]) for di in (-1, 0, 1) for dj in (-1, 0, 1)
               if kernel[di + 1, dj + 1] != 0]
    total = n * h * w
    row_image = np.repeat(np.arange(n), h * w)
    row_i = np.tile(np.repeat(np.arange(h), w), n)
    row_j = np.tile(np.tile(np.arange(w), h), n)
    scores = np.empty(total, dtype=np.float64)
    for part in _chunks(total, chunk_size, check):
        images, ii, jj = row_image[part], row_i[part], row_j[part]
        m = len(images)
        rows = np.zeros((m, k, h, w), dtype=np.float32)
        centre = activations[images, :, ii, jj]  # [m, K]
        for di, dj, g in offsets:
            ti, tj = ii + di, jj + dj
            ok = np.flatnonzero((ti >= 0) & (ti < h) & (tj >= 0) & (tj < w))
            source = activations[images[ok], :, ti[ok], tj[ok]] if own_features else centre[ok]
            rows[ok, :, ti[ok], tj[ok]] = source * g
        out = _run_head(head, rows, pixels[images] if pixels is not None else None)
        scores[part] = _softmax_at(out, targets[images])
    return scores.reshape(n, h, w).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# EigenCAM


def eigen_cam(activations: np.ndarray) -> np.ndarray:
    """EigenCAM maps [N, h, w] (raw, ReLU'd), as pytorch-grad-cam's ``get_2d_projection``.

    Per image, A as a [h*w, K] matrix, each channel centred on its spatial mean; the map is its
    projection on the first right singular vector. A singular vector's sign is arbitrary: like
    pytorch-grad-cam we keep the one LAPACK returns (the same call, so the same sign), which can
    leave a map that is zero after the ReLU. NaN activations count as 0, as there.
    """
    activations = np.asarray(activations, dtype=np.float32)
    activations = np.where(np.isnan(activations), np.float32(0), activations)
    if activations.ndim != 4:
        raise ValueError(f"activations must be [N, K, h, w], got shape {activations.shape}")
    n, k, h, w = activations.shape
    maps = np.zeros((n, h, w), np.float32)
    for i in range(n):
        flat = activations[i].reshape(k, h * w).T
        flat = flat - flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat, full_matrices=True)
        maps[i] = (flat @ vt[0]).reshape(h, w)
    return np.maximum(maps, 0.0)


# ----------------------------------------------------------------------------------------------
# what the server calls


@dataclass(frozen=True)
class Inputs:
    """Everything a gradient-free method may need from one explainer run, handed over by the server."""

    activations: np.ndarray
    logits: np.ndarray
    #: Resolved class indices, one per row.
    targets: np.ndarray
    #: The preprocessed input rows [N, 3, H, W].
    pixels: np.ndarray
    head: ort.InferenceSession
    forward: ort.InferenceSession
    #: Weight and bias of a GAP + linear head (cam_linear.npz), else None.
    linear: tuple[np.ndarray, np.ndarray] | None = None
    check: Check | None = None
    #: forward.onnx rows per run (Score-CAM): ``check`` runs between runs, so this bounds how long a
    #: caller that went away keeps the server busy.
    forward_rows: int = 32
    #: head.onnx rows per run (Ablation-CAM, ReciproCAM), for the same reason: 256 for a CNN's head of a
    #: few layers, down to 1 where every head row costs a forward (a ViT's head reads the pixels).
    head_rows: int = 256
    #: The target is a ViT's token sequence: ReciproCAM masks tokens as ViT-ReciproCAM does.
    tokens: bool = False

    @property
    def head_pixels(self) -> np.ndarray | None:
        """The pixels, for a head that reads them too (a skip connection crosses the layer)."""
        names = {i.name for i in self.head.get_inputs()}
        return self.pixels if contract.INPUT_PIXELS in names else None


def serve_ablationcam(x: Inputs) -> np.ndarray:
    return ablation_cam(x.head, x.activations, x.logits, x.targets, pixels=x.head_pixels, linear=x.linear,
                        chunk_size=x.head_rows, check=x.check)


def serve_scorecam(x: Inputs) -> np.ndarray:
    return score_cam(x.forward, x.pixels, x.activations, x.targets, batch_size=x.forward_rows, check=x.check)


def serve_reciprocam(x: Inputs) -> np.ndarray:
    return recipro_cam(x.head, x.activations, x.targets, pixels=x.head_pixels, chunk_size=x.head_rows, check=x.check,
                       own_features=x.tokens)


def serve_eigencam(x: Inputs) -> np.ndarray:
    return eigen_cam(x.activations)
