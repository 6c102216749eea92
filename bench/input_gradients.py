"""The input-gradient methods (saliency, deconvnet, guided backpropagation, Guided Grad-CAM) against
Captum, measured side by side.

    python bench/input_gradients.py [--quick] [--threads N] [--repeats R]

Per model, batch 1, from a preprocessed tensor to the method's raw map: one input_gradients.onnx row
with the method's ReLU rule (ONNX Runtime) against Captum's attribution on the same torch module,
same image, class and thread count; the plain forward.onnx is timed with them for scale. The maps are
compared raw, relative to Captum's largest value. Models come from bench/.cache/ as in overhead.py
(random weights, EfficientNet-Lite0 with its real ones). Captum rewrites only nn.ReLU modules, so on
EfficientNet-Lite0 (ReLU6) its deconvnet and guided maps differ from ours by design: the table says so.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import QUICK_SIZE, image_batch, interleaved, median_ms, session, write_json  # noqa: E402
from overhead import exported  # noqa: E402

from onnxcam import contract  # noqa: E402
from onnxcam import methods as registry  # noqa: E402

FULL_MODELS = ["resnet50", "vgg16", "efficientnet_lite0"]
QUICK_MODELS = ["resnet18"]


def captum_attribution(model, layer, method: str, pixels: np.ndarray, target: int) -> np.ndarray:
    """Captum's map for ``method``, laid out as the graph's output (saliency: max over channels of |g|)."""
    import torch
    from captum.attr import Deconvolution, GuidedBackprop, GuidedGradCam, Saliency

    tensor = torch.from_numpy(pixels).requires_grad_(True)
    if method == "saliency":
        return Saliency(model).attribute(tensor, target=target, abs=True).amax(dim=1).detach().numpy()
    if method == "deconvnet":
        return Deconvolution(model).attribute(tensor, target=target).detach().numpy()
    if method == "guided_backprop":
        return GuidedBackprop(model).attribute(tensor, target=target).detach().numpy()
    return GuidedGradCam(model, layer).attribute(tensor, target=target, interpolate_mode="bilinear").detach().numpy()


def compare(arch: str, threads: int, repeats: int, size: int = 224) -> list[dict]:
    import torch

    torch.set_num_threads(threads)
    model, folder, info = exported(arch, size)
    layer = model.get_submodule(info["target_layer"])
    graph = session(folder / contract.INPUT_GRADIENTS_FILE, threads)
    forward = session(folder / contract.FORWARD_FILE, threads)
    pixels = image_batch(1, size, seed=1)
    (logits,) = forward.run([contract.OUTPUT_LOGITS], {contract.INPUT_PIXELS: pixels})
    target = int(logits[0].argmax())
    rows = []
    for method in registry.of_kind(registry.Kind.INPUT):
        feed = {contract.INPUT_PIXELS: pixels, contract.INPUT_TARGET: np.array([target]),
                contract.INPUT_RULE: np.array([method.rule])}
        ours = graph.run([method.output], feed)[0]
        theirs = captum_attribution(model, layer, method.name, pixels, target)
        difference = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
        times = interleaved({
            "forward": lambda: forward.run([contract.OUTPUT_LOGITS], {contract.INPUT_PIXELS: pixels}),
            "ours": lambda feed=feed, method=method: graph.run([method.output], feed),
            "captum": lambda method=method: captum_attribution(model, layer, method.name, pixels, target),
        }, repeats)
        f, o, c = (median_ms(times[k]) for k in ("forward", "ours", "captum"))
        rows.append({"model": arch, "method": method.name, "forward_ms": f, "ours_ms": o, "captum_ms": c,
                     "ours_vs_forward": o / f, "speedup_vs_captum": c / o, "max_rel_difference": difference})
        print(f"  {arch:<20} {method.name:<16} forward {f:7.1f} ms | ours {o:7.1f} ms ({o / f:.2f}x forward) | "
              f"captum {c:7.1f} ms | {c / o:5.2f}x faster | max rel difference {difference:.1e}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"resnet18 at {QUICK_SIZE} px, few repeats")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--models", nargs="*")
    args = parser.parse_args(argv)
    models = args.models or (QUICK_MODELS if args.quick else FULL_MODELS)
    repeats = args.repeats or (3 if args.quick else 15)
    print(f"input-gradient methods vs Captum ({args.threads} threads, median of {repeats} interleaved runs)")
    rows = [row for arch in models for row in compare(arch, args.threads, repeats,
                                                                     QUICK_SIZE if args.quick else 224)]
    payload = {"threads": args.threads, "repeats": repeats, "rows": rows}
    print(f"wrote {write_json('input-gradients' + ('-quick' if args.quick else ''), payload)}")
    return payload


if __name__ == "__main__":
    main()
