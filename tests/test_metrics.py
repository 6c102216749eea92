"""onnxcam.metrics against the written-out formulas and the reference implementations.

Each measure is checked twice: on small cases whose value is worked out by hand, and against the
implementation users compare with, on the same maps and the same torch model (TinyNet, seeded):
pytorch-grad-cam's DropInConfidence / IncreaseInConfidence, the RISE authors' CausalMetric (ported
in metric_references.py), Quantus's PixelFlipping, PointingGame and RelevanceMassAccuracy, and
OpenCV's connected components. Where a convention differs, the test pins the difference.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxcam import metrics

torch = pytest.importorskip("torch")

from metric_references import (  # noqa: E402
    RiseCausalMetric,
    rise_auc,
    rise_blur,
    rise_gkern,
    softmax_model,
    torch_scores,
)
from tiny_models import TinyNet, seeded  # noqa: E402

SIZE = 32


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest, and many thrash when other jobs share the cores
    yield seeded(TinyNet()).eval()
    torch.set_num_threads(threads)


def images(n: int, seed: int = 0, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, size, size)).astype(np.float32)


def smooth_maps(n: int, seed: int = 1, size: int = SIZE) -> np.ndarray:
    """Maps in [0, 1] without ties: a few random bumps plus a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        m = sum(np.exp(-((y - rng.random()) ** 2 + (x - rng.random()) ** 2) / 0.02) for _ in range(3))
        m = m + 1e-3 * rng.random((size, size))
        out.append((m - m.min()) / (m.max() - m.min()))
    return np.asarray(out, np.float32)


# ----------------------------------------------------------------------------------------------
# Average Drop, Increase in Confidence


def test_average_drop_and_increase_by_hand() -> None:
    y, o = [0.8, 0.5, 0.2, 0.4], [0.4, 0.6, 0.2, 0.1]
    # drops: 0.4/0.8 = 50%, 0 (O > Y), 0 (equal), 0.3/0.4 = 75% -> mean 31.25%; increases: only the second
    assert metrics.average_drop(y, o) == pytest.approx(31.25)
    assert metrics.increase_in_confidence(y, o) == pytest.approx(25.0)
    assert metrics.drop(0.4, 0.1) == pytest.approx(75.0)
    pixels = np.ones((3, 2, 2), np.float32) * np.arange(3)[:, None, None]
    cam = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
    assert np.array_equal(metrics.explanation_input(pixels, cam)[2], 2 * cam)


def test_confidence_measures_equal_pytorch_grad_cam(model) -> None:
    from exporter import sources

    sources._torchvision()
    pgc_metrics = pytest.importorskip("pytorch_grad_cam.metrics.cam_mult_image")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    x, cams = images(8), smooth_maps(8)
    with torch.no_grad():
        ranked = model(torch.from_numpy(x)).argsort(1, descending=True)
    targets = [int(ranked[i, i % 2]) for i in range(8)]  # top-1 and second classes: gains and drops both
    y = [float(torch_scores(model, t)(x[i:i + 1])[0]) for i, t in enumerate(targets)]
    o = [float(torch_scores(model, t)(metrics.explanation_input(x[i], cams[i])[None])[0])
         for i, t in enumerate(targets)]
    reference_targets = [ClassifierOutputSoftmaxTarget(t) for t in targets]
    drops = pgc_metrics.DropInConfidence()(torch.from_numpy(x), cams, reference_targets, model)
    increases = pgc_metrics.IncreaseInConfidence()(torch.from_numpy(x), cams, reference_targets, model)
    # pytorch-grad-cam's drop is absolute, max(0, Y - O); the paper's Average Drop divides by Y.
    assert np.allclose([max(0.0, a - b) for a, b in zip(y, o, strict=True)], drops, atol=1e-6)
    assert metrics.average_drop(y, o) == pytest.approx(float(np.mean(np.asarray(drops) / y) * 100), abs=1e-4)
    assert metrics.increase_in_confidence(y, o) == pytest.approx(float(np.mean(increases) * 100))
    assert 0 < metrics.increase_in_confidence(y, o) < 100 and metrics.average_drop(y, o) > 0  # not trivially equal


# ----------------------------------------------------------------------------------------------
# deletion and insertion


def test_steps_and_auc_by_hand() -> None:
    assert metrics.step_pixels(224 * 224, 100) == 502 and metrics.curve_points(224 * 224, 100) == 101
    assert metrics.step_pixels(1024, 100) == 11 and metrics.curve_points(1024, 100) == 94 + 1
    assert metrics.auc(np.array([1.0, 0.5, 0.0])) == pytest.approx(0.5)
    assert metrics.auc(np.array([0.2, 0.2, 0.2, 0.2])) == pytest.approx(0.2)
    order = metrics.pixel_order(np.array([[0.1, 0.9], [0.9, 0.0]]))
    assert order.tolist() == [1, 2, 0, 3]  # ties in raster order without a tie break
    assert metrics.pixel_order(np.array([[0.1, 0.9], [0.9, 0.0]]), np.array([3, 2, 1, 0])).tolist() == [2, 1, 0, 3]
    start, finish = np.zeros((3, 2, 2), np.float32), np.ones((3, 2, 2), np.float32)
    rows = metrics.causal_rows(start, finish, np.array([3, 0, 1, 2]), 1, [0, 2, 4])
    assert rows[:, 0].reshape(3, 4).tolist() == [[0, 0, 0, 0], [1, 0, 0, 1], [1, 1, 1, 1]]


def test_blur_equals_rise_kernel() -> None:
    kernel = metrics.gaussian_kernel()
    assert np.allclose(np.outer(kernel, kernel), rise_gkern()[0, 0].numpy(), atol=1e-8)
    x = images(1, seed=5)
    assert np.allclose(metrics.blurred(x[0]), rise_blur(torch.from_numpy(x))[0].numpy(), atol=1e-6)


@pytest.mark.parametrize("steps", [64, 100])  # 1024 pixels: 64 steps of 16, or 94 steps of 11 (RISE's rounding)
def test_deletion_and_insertion_equal_rise(model, steps: int) -> None:
    x, maps = images(3, seed=2), smooth_maps(3, seed=3)
    step = metrics.step_pixels(SIZE * SIZE, steps)
    probabilities = softmax_model(model)
    for i in range(3):
        with torch.no_grad():
            target = int(model(torch.from_numpy(x[i:i + 1])).argmax())  # RISE scores the top-1 class
        score = torch_scores(model, target)
        ours_del = metrics.deletion_curve(score, x[i], maps[i], steps, chunk=7)
        ours_ins = metrics.insertion_curve(score, x[i], maps[i], steps, chunk=7)
        theirs_del = RiseCausalMetric(probabilities, "del", step, torch.zeros_like).single_run(
            torch.from_numpy(x[i:i + 1].copy()), maps[i])
        theirs_ins = RiseCausalMetric(probabilities, "ins", step, rise_blur).single_run(
            torch.from_numpy(x[i:i + 1].copy()), maps[i])
        assert ours_del.shape == theirs_del.shape == (metrics.curve_points(SIZE * SIZE, steps),)
        assert np.abs(ours_del - theirs_del).max() < 1e-6
        assert np.abs(ours_ins - theirs_ins).max() < 1e-6
        assert metrics.auc(ours_del) == pytest.approx(rise_auc(theirs_del), abs=1e-6)
        assert metrics.auc(ours_ins) == pytest.approx(rise_auc(theirs_ins), abs=1e-6)
        assert np.ptp(ours_del) > 0.01 and np.ptp(ours_ins) > 0.01  # the curves move: a real comparison


def test_known_ends_give_the_same_curve(model) -> None:
    x, m = images(1, seed=4)[0], smooth_maps(1, seed=4)[0]
    score = torch_scores(model, 3)
    full = metrics.deletion_curve(score, x, m, 50)
    ends = (float(score(x[None])[0]), float(score(np.zeros_like(x)[None])[0]))
    assert np.allclose(metrics.deletion_curve(score, x, m, 50, ends=ends), full, atol=1e-12)


def test_deletion_equals_quantus_pixel_flipping(model) -> None:
    """Quantus perturbs C*H*W features; a map broadcast over colours without ties flips whole pixels in
    runs of 3, so ``features_in_step = 3 * step`` is RISE's deletion (Quantus wants it to divide H * W:
    48 x 48 pixels in 96 steps of 24). Quantus's curve starts after the first step (no unperturbed
    point) and its AUC is np.trapz with dx = 1 (not normalised): ours is (Y + its curve) with
    trapezoids over [0, 1]."""
    quantus = pytest.importorskip("quantus")
    size, steps = 48, 96
    x, maps = images(4, seed=6, size=size), smooth_maps(4, seed=7, size=size)
    step = metrics.step_pixels(size * size, steps)
    with torch.no_grad():
        targets = model(torch.from_numpy(x)).argmax(1).numpy()
    metric = quantus.PixelFlipping(features_in_step=3 * step, perturb_baseline=0.0, normalise=False, abs=False,
                                   disable_warnings=True, display_progressbar=False)
    theirs = np.asarray(metric(model=model, x_batch=x, y_batch=targets, a_batch=maps[:, None], softmax=True,
                               channel_first=True, device="cpu"))
    for i in range(4):
        ours = metrics.deletion_curve(torch_scores(model, int(targets[i])), x[i], maps[i], steps)
        assert np.abs(ours[1:] - theirs[i]).max() < 1e-6
        assert metrics.auc(ours) == pytest.approx(np.trapezoid(np.concatenate([[ours[0]], theirs[i]])) / steps,
                                                  abs=1e-6)


# ----------------------------------------------------------------------------------------------
# pointing game, energy, localisation


def test_box_measures_by_hand() -> None:
    m = np.zeros((100, 120), np.float32)
    m[50, 70] = 1.0
    m[10:20, 10:30] = 0.5  # an energy 200 * 0.5 = 100 outside the box, 1 inside
    box = (60.0, 40.0, 80.0, 60.0)  # pixels 60..79 x 40..59
    assert metrics.box_mask(m.shape, [box]).sum() == 20 * 20
    assert metrics.pointing_hit(m, [box]) and metrics.energy_share(m, [box]) == pytest.approx(1 / 101)
    far = (90.0, 40.0, 110.0, 60.0)  # nearest box pixel column 90: 20 px from the maximum
    assert not metrics.pointing_hit(m, [far]) and metrics.pointing_hit(m, [far], tolerance=20.5)
    assert not metrics.pointing_hit(m, [(85.0, 40.0, 110.0, 60.0)])  # 15 px: a miss (TorchRay: < 15)
    assert metrics.pointing_hit(m, [(84.0, 40.0, 110.0, 60.0)])  # 14 px: a hit
    empty = np.zeros_like(m)
    assert not metrics.pointing_hit(empty, [box]) and metrics.energy_share(empty, [box]) == 0
    assert metrics.localization_iou(empty, [box]) == 0
    # localisation: the largest component above 15% of the max is the 10 x 20 block
    assert metrics.localization_box(m) == (10.0, 10.0, 30.0, 20.0)
    assert metrics.localization_iou(m, [(10.0, 10.0, 30.0, 30.0), box]) == pytest.approx(0.5)
    assert metrics.iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)


def test_pointing_and_energy_equal_quantus() -> None:
    """Quantus's PointingGame has no tolerance: on the box mask dilated by 15 px (distance to the nearest
    box pixel < 15, scipy's exact distance transform) it is ours. Quantus counts a hit when any of
    several equal maxima lies in the mask, ours (and TorchRay) takes the first: the maps here have one."""
    quantus = pytest.importorskip("quantus")
    from scipy.ndimage import distance_transform_edt

    rng = np.random.default_rng(8)
    shape = (48, 64)
    maps = rng.random((12, *shape)).astype(np.float32)
    boxes = []
    for _ in range(12):
        x1, y1 = rng.uniform(0, 40), rng.uniform(0, 30)
        boxes.append([(x1, y1, x1 + rng.uniform(3, 24), y1 + rng.uniform(3, 18))])
    box_masks = np.stack([metrics.box_mask(shape, b) for b in boxes])
    dilated = np.stack([distance_transform_edt(~mask) < metrics.POINTING_TOLERANCE_PX for mask in box_masks])
    hits = quantus.PointingGame(disable_warnings=True, abs=False, normalise=False)(
        model=None, x_batch=np.zeros((12, 1, *shape), np.float32), y_batch=np.zeros(12, int),
        a_batch=maps[:, None], s_batch=dilated[:, None].astype(np.float32), channel_first=True)
    ours = [metrics.pointing_hit(m, b) for m, b in zip(maps, boxes, strict=True)]
    assert ours == [bool(h) for h in hits] and 0 < sum(ours) < 12
    mass = quantus.RelevanceMassAccuracy(disable_warnings=True, abs=False, normalise=False)(
        model=None, x_batch=np.zeros((12, 1, *shape), np.float32), y_batch=np.zeros(12, int),
        a_batch=maps[:, None], s_batch=box_masks[:, None].astype(np.float32), channel_first=True)
    assert np.allclose([metrics.energy_share(m, b) for m, b in zip(maps, boxes, strict=True)], mass, atol=1e-6)


def test_largest_component_equals_opencv() -> None:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(9)
    for n in range(30):
        shape = (int(rng.integers(5, 90)), int(rng.integers(5, 90)))
        mask = rng.random(shape) < rng.uniform(0.2, 0.6)  # many components, with diagonal contacts and U shapes
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        if count == 1:
            assert metrics.largest_component_box(mask) is None
            continue
        areas = stats[1:, cv2.CC_STAT_AREA]
        x, y, w, h = stats[1 + int(np.argmax(areas)), :4]  # OpenCV numbers components in raster order too
        assert metrics.largest_component_box(mask) == (x, y, x + w, y + h), n


def test_localization_thresholds_at_fifteen_percent() -> None:
    m = np.zeros((20, 20), np.float32)
    m[2:6, 2:6] = 1.0
    m[10:19, 10:19] = 0.16  # larger and above 15% of the maximum: it wins
    assert metrics.localization_box(m) == (10.0, 10.0, 19.0, 19.0)
    m[10:19, 10:19] = 0.14  # below: only the small block is left
    assert metrics.localization_box(m) == (2.0, 2.0, 6.0, 6.0)
