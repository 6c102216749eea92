"""``onnxcam evaluate``'s measuring against the reference implementations, on the same maps.

    python bench/evaluate.py [--quick] [--threads N] [--images N] [--steps S]

EfficientNet-Lite0 (real weights), the offline labelled photos (bench/evaluate_photos.py; the demo's
photos when foolbox and imgaug are not installed), Grad-CAM maps from explainer.onnx for the label,
prepared as the evaluation prepares them. The references get a map whose values are our pixel order's
ranks (the upsampled map has ties, which each library orders its own way), so every side deletes the
same pixels in the same order. Per image and map, timed side by side with the same thread count:

- ours: what ``onnxcam evaluate`` runs per map: O on E = input x map, the deletion and the insertion
  curves (``steps`` steps), batched through forward.onnx in ONNX Runtime;
- reference: pytorch-grad-cam's DropInConfidence and IncreaseInConfidence (the same O) and the RISE
  authors' CausalMetric for deletion and insertion (tests/metric_references.py; one torch forward per
  step, as their ``single_run``) on the torch model;
- deletion alone, ours against Quantus's PixelFlipping (torch, all images in one batch per step).
  Quantus wants features_in_step to divide H x W and flips C x H x W values, so it runs the divisor
  nearest to ``steps`` steps (at 224 px and 100 steps: 1568 values, about 523 pixels, a step, 96
  steps); the ratio is also given per curve point.
The curves are compared too (ours against RISE's; max absolute difference of the probabilities).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import CACHE, DEFAULT_MODEL_DIR, ensure_model, session, write_json  # noqa: E402

from onnxcam import annotations, contract, metrics  # noqa: E402
from onnxcam.evaluate_maps import prepare  # noqa: E402
from server import imaging  # noqa: E402
from server.model_info import load_model_info  # noqa: E402

DEMO_PHOTOS = Path(__file__).resolve().parent.parent / "onnxcam" / "demo_photos"


def quantus_step(pixels: int, steps: int, channels: int = 3) -> int:
    """Quantus's features_in_step: a divisor of H * W (its assertion) giving about ``steps`` steps."""
    divisors = [d for d in range(1, pixels + 1) if pixels % d == 0]
    return min(divisors, key=lambda d: abs(channels * pixels / d - steps))


def photos(count: int) -> tuple[Path, list[annotations.Item]]:
    """The offline labelled photos when foolbox and imgaug are installed, else the demo photos (top-1)."""
    try:
        import evaluate_photos

        labels = evaluate_photos.write(CACHE / "photos")
        loaded = annotations.load_csv(labels, annotations.Classes([str(i) for i in range(1000)]))
        return labels.parent, loaded.items[:count]
    except SystemExit as missing:
        print(f"{missing}; using the demo photos, top-1 class", flush=True)
        return DEMO_PHOTOS, annotations.image_folder_items(DEMO_PHOTOS)[:count]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 image, 10 steps")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--images", type=int)
    parser.add_argument("--steps", type=int)
    args = parser.parse_args(argv)
    count = args.images or (1 if args.quick else 8)
    steps = args.steps or (10 if args.quick else metrics.DEFAULT_STEPS)

    import torch
    from metric_references import RiseCausalMetric, rise_blur, softmax_model

    from exporter import sources

    sources._torchvision()  # pytorch-grad-cam imports torchvision (CPU torch, CUDA torchvision wheel)
    import quantus
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    torch.set_num_threads(args.threads)
    ensure_model(DEFAULT_MODEL_DIR)
    info = load_model_info(DEFAULT_MODEL_DIR)
    forward = session(DEFAULT_MODEL_DIR / contract.FORWARD_FILE, args.threads)
    explainer = session(DEFAULT_MODEL_DIR / contract.EXPLAINER_FILE, args.threads)
    model = sources.build_arch("efficientnet_lite0").eval()
    probabilities_model = softmax_model(model)
    folder, items = photos(count)
    print(f"evaluation vs references: {len(items)} images, Grad-CAM, {steps} steps, {args.threads} threads",
          flush=True)

    pixels, maps, targets = [], [], []
    for item in items:
        prepared = imaging.prepare_image(imaging.decode((folder / item.image).read_bytes(), 10**9), info.preprocess)
        (logits,) = forward.run([contract.OUTPUT_LOGITS], {contract.INPUT_PIXELS: prepared.pixels[None]})
        target = int(logits.argmax()) if item.label is None else item.label
        (cam,) = explainer.run(["cam_gradcam"], {contract.INPUT_PIXELS: prepared.pixels[None],
                                                 contract.INPUT_TARGET: np.array([target])})
        pixels.append(prepared.pixels)
        maps.append(prepare(cam[0], info.input_size, prepared.geometry).at_input)
        targets.append(target)
    x, saliency = np.stack(pixels), np.stack(maps)
    ranks = np.empty(saliency.shape, np.float32)  # the references' map: our order as descending values
    for i, m in enumerate(saliency):
        ranks[i].reshape(-1)[metrics.pixel_order(m)] = np.arange(m.size, 0, -1)
    step = metrics.step_pixels(saliency[0].size, steps)
    features_in_step = quantus_step(saliency[0].size, steps)

    def ours(i: int) -> tuple[np.ndarray, np.ndarray]:
        def score(rows: np.ndarray) -> np.ndarray:
            out = [forward.run([contract.OUTPUT_LOGITS], {contract.INPUT_PIXELS: rows[k:k + 32]})[0]
                   for k in range(0, len(rows), 32)]
            return metrics.softmax(np.concatenate(out))[:, targets[i]]

        substrate = metrics.blurred(x[i])
        clean, deleted, blurred = score(np.stack([x[i], np.zeros_like(x[i]), substrate]))
        score(metrics.explanation_input(x[i], saliency[i])[None])
        deletion = metrics.deletion_curve(score, x[i], saliency[i], steps, ends=(clean, deleted))
        insertion = metrics.insertion_curve(score, x[i], saliency[i], steps, substrate=substrate,
                                            ends=(blurred, clean))
        return deletion, insertion

    def ours_deletion(i: int) -> np.ndarray:
        def score(rows: np.ndarray) -> np.ndarray:
            out = [forward.run([contract.OUTPUT_LOGITS], {contract.INPUT_PIXELS: rows[k:k + 32]})[0]
                   for k in range(0, len(rows), 32)]
            return metrics.softmax(np.concatenate(out))[:, targets[i]]

        return metrics.deletion_curve(score, x[i], saliency[i], steps)

    def reference(i: int) -> tuple[np.ndarray, np.ndarray]:
        tensor = torch.from_numpy(x[i:i + 1].copy())
        softmax_target = [ClassifierOutputSoftmaxTarget(targets[i])]
        DropInConfidence()(tensor, saliency[i:i + 1], softmax_target, model)
        IncreaseInConfidence()(tensor, saliency[i:i + 1], softmax_target, model)
        deletion = RiseCausalMetric(probabilities_model, "del", step, torch.zeros_like)
        insertion = RiseCausalMetric(probabilities_model, "ins", step, rise_blur)
        return deletion.single_run(tensor.clone(), ranks[i]), insertion.single_run(tensor.clone(), ranks[i])

    def quantus_deletion() -> None:
        metric = quantus.PixelFlipping(features_in_step=features_in_step, perturb_baseline=0.0,
                                       normalise=False, abs=False, disable_warnings=True)
        metric(model=model, x_batch=x, y_batch=np.array(targets), a_batch=ranks[:, None], softmax=True,
               channel_first=True, device="cpu", batch_size=len(x))

    # RISE's code always scores the model's top-1 class: the curves are compared where that is the label
    # (the work timed is the same either way).
    times: dict[str, list[float]] = {"ours": [], "reference": [], "ours_deletion": [], "quantus_deletion": []}
    differences = []
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        quantus_deletion()  # warm-up (imports, first forwards)
        ours(0)
        for i in range(len(x)):
            start = time.perf_counter()
            our_curves = ours(i)
            times["ours"].append(time.perf_counter() - start)
            start = time.perf_counter()
            their_curves = reference(i)
            times["reference"].append(time.perf_counter() - start)
            start = time.perf_counter()
            ours_deletion(i)
            times["ours_deletion"].append(time.perf_counter() - start)
            if int(model(torch.from_numpy(x[i:i + 1])).argmax()) == targets[i]:
                differences.append(max(float(np.abs(a - b).max()) for a, b in zip(our_curves, their_curves,
                                                                                      strict=True)))
            print(f"  image {i + 1}/{len(x)}: ours {times['ours'][-1]:.2f} s, reference "
                  f"{times['reference'][-1]:.2f} s", flush=True)
        start = time.perf_counter()
        quantus_deletion()
        times["quantus_deletion"] = [(time.perf_counter() - start) / len(x)] * len(x)
    per_image = {k: float(np.median(v)) for k, v in times.items()}
    points = metrics.curve_points(saliency[0].size, steps)
    quantus_points = 3 * saliency[0].size // features_in_step
    rows = [
        {"comparison": "AD + IC + deletion + insertion", "reference": "pytorch-grad-cam metrics + RISE CausalMetric",
         "ours_s_per_image": per_image["ours"], "reference_s_per_image": per_image["reference"],
         "speedup": per_image["reference"] / per_image["ours"],
         "max_curve_difference": max(differences) if differences else None, "curves_compared": len(differences)},
        {"comparison": "deletion", "reference": f"Quantus PixelFlipping ({features_in_step} values a step)",
         "ours_s_per_image": per_image["ours_deletion"], "reference_s_per_image": per_image["quantus_deletion"],
         "speedup": per_image["quantus_deletion"] / per_image["ours_deletion"], "max_curve_difference": None,
         "curves_compared": 0, "ours_points": points, "reference_points": quantus_points,
         "speedup_per_point": (per_image["quantus_deletion"] / quantus_points) / (per_image["ours_deletion"] / points)},
    ]
    for row in rows:
        print(f"{row['comparison']:<32} ours {row['ours_s_per_image']:6.2f} s/image | {row['reference']:<46} "
              f"{row['reference_s_per_image']:6.2f} s/image | {row['speedup']:5.2f}x"
              + (f" ({row['speedup_per_point']:.2f}x per curve point)" if "speedup_per_point" in row else ""),
              flush=True)
    if differences:
        print(f"curves: ours vs RISE's code, max |difference| {max(differences):.1e} over {len(differences)} images")
    payload = {"threads": args.threads, "images": len(x), "steps": steps, "curve_points": points, "rows": rows,
        "seconds": {k: [float(t) for t in v] for k, v in times.items()}}
    print(f"wrote {write_json('evaluate' + ('-quick' if args.quick else ''), payload)}")
    return payload


if __name__ == "__main__":
    main()
