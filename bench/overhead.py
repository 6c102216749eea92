"""Explanation cost against a plain forward, and against pytorch-grad-cam, measured side by side.

    python bench/overhead.py [--quick] [--threads N] [--repeats R]

Part 1, per model and batch size (1, 8): forward.onnx (plain network) vs explainer.onnx (logits,
A, G and every Grad-CAM-family map in one call) vs explainer + every map normalised and upsampled
to the input size. Part 2, batch 1: from a preprocessed tensor to one normalised, upsampled map,
ours vs pytorch-grad-cam's GradCAM / GradCAMPlusPlus / LayerCAM on the same torch model with the
same thread count; the maps are compared after the same normalisation.
Models are exported once into bench/.cache/ (random weights, except EfficientNet-Lite0).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CACHE, QUICK_SIZE, image_batch, interleaved, median_ms, session, write_json  # noqa: E402

from onnxcam import contract  # noqa: E402
from onnxcam import methods as registry  # noqa: E402
from server.heatmaps import normalize, upsample  # noqa: E402
from server.imaging import Geometry  # noqa: E402

FULL_MODELS = ["resnet50", "vgg16", "efficientnet_lite0", "mobilenet_v3_large", "vit_b_16"]
QUICK_MODELS = ["resnet18"]
PEER_METHODS = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "layercam": "LayerCAM"}


def exported(arch: str, size: int):
    """(torch model, model folder, target layer name); exports on first use."""
    import torch

    from exporter import export
    from exporter.sources import LITE_MEAN, LITE_STD, PRETRAINED, build_arch

    torch.manual_seed(0)
    model = build_arch(arch).eval()
    folder = CACHE / f"{arch}-{size}"
    if not all((folder / name).exists() for name in (contract.MODEL_JSON, contract.INPUT_GRADIENTS_FILE)):
        print(f"exporting {arch} at {size} into {folder} (once, or again after an exporter change)...", flush=True)
        kwargs = {"mean": LITE_MEAN, "std": LITE_STD} if arch in PRETRAINED else {}
        export(model, None, folder, input_size=(size, size), **kwargs)
    import json

    info = json.loads((folder / contract.MODEL_JSON).read_text())
    return model, folder, info


def postprocess(maps: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Every map of every row normalised and upsampled to the input size, as the server shows it."""
    geometry = Geometry(height=size, width=size, box_top=0.0, box_left=0.0, box_height=size, box_width=size)
    return [upsample(normalize(row), geometry) for batch in maps for row in batch]


def min_max(image: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's last display step (scale_cam_image without a size)."""
    image = image - image.min()
    return image / (1e-7 + image.max())


def overhead(folder: Path, info: dict, threads: int, repeats: int, batches: list[int]) -> list[dict]:
    size = info["input_size"][0]
    forward, explainer = session(folder / contract.FORWARD_FILE, threads), session(folder / contract.EXPLAINER_FILE,
                                                                                    threads)
    map_names = [registry.get(m).output for m in info["methods"]]
    rows = []
    for batch in batches:
        pixels = image_batch(batch, size)
        feeds = {"pixels": pixels, "target": np.full(batch, -1, np.int64)}
        times = interleaved({
            "forward": lambda pixels=pixels: forward.run(["logits"], {"pixels": pixels}),
            "explain": lambda feeds=feeds: explainer.run(None, feeds),
            "explain+post": lambda feeds=feeds: postprocess(explainer.run(map_names, feeds), size),
        }, repeats)
        f, e, p = (median_ms(times[k]) for k in ("forward", "explain", "explain+post"))
        rows.append({"model": info["name"], "batch": batch, "forward_ms": f, "explain_ms": e, "explain_post_ms": p,
                     "explain_ratio": e / f, "explain_post_ratio": p / f, "maps": len(map_names)})
        print(f"  {info['name']:<20} batch {batch}: forward {f:8.1f} ms | explain {e:8.1f} ms ({e / f:.2f}x) | "
              f"+ upsample/normalise {p:8.1f} ms ({p / f:.2f}x)", flush=True)
    return rows


def reshape_transform(info: dict):
    """pytorch-grad-cam's ``reshape_transform`` for the target's layout in model.json (None: [N, K, h, w])."""
    layout = info.get("target_layout", {"kind": "nchw"})
    if layout["kind"] == "tokens":
        prefix, (h, w) = layout["prefix_tokens"], layout["grid"]
        return lambda t: t[:, prefix:, :].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)
    if layout["kind"] == "nhwc":
        return lambda t: t.permute(0, 3, 1, 2)
    return None


def peer(model, folder: Path, info: dict, threads: int, repeats: int) -> list[dict]:
    import torch

    import exporter.sources  # noqa: F401  (the torchvision shim pytorch-grad-cam's import needs)

    try:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        print("  pytorch-grad-cam is not installed (pip install grad-cam): peer comparison skipped")
        return []
    torch.set_num_threads(threads)
    size = info["input_size"][0]
    explainer = session(folder / contract.EXPLAINER_FILE, threads)
    pixels = image_batch(1, size, seed=1)
    tensor = torch.from_numpy(pixels)
    logits = explainer.run(["logits"], {"pixels": pixels, "target": np.array([-1])})[0]
    target = int(logits[0].argmax())
    layer = model.get_submodule(info["target_layer"])
    rows = []
    for method, class_name in PEER_METHODS.items():
        output = registry.get(method).output

        def ours(output=output):
            (raw,) = explainer.run([output], {"pixels": pixels, "target": np.array([target])})
            return postprocess([raw], size)[0]

        with getattr(pgc, class_name)(model=model, target_layers=[layer],
                                      reshape_transform=reshape_transform(info)) as cam:
            def theirs(cam=cam):
                return cam(input_tensor=tensor, targets=[ClassifierOutputTarget(target)])[0]

            times = interleaved({"ours": ours, "theirs": theirs}, repeats)
            their_map = theirs()
            their_raw = np.maximum(cam.get_cam_image(tensor, layer, [ClassifierOutputTarget(target)],
                                                     cam.activations_and_grads.activations[0].numpy(),
                                                     cam.activations_and_grads.gradients[0].numpy(), False)[0], 0)
        (our_raw,) = explainer.run([output], {"pixels": pixels, "target": np.array([target])})
        raw_difference = float(np.max(np.abs(np.maximum(our_raw[0], 0) - their_raw)) / their_raw.max())
        # pytorch-grad-cam min-maxes again after resizing (bilinear interpolation lowers a sharp peak,
        # by up to 1.6e-2 on vgg16 LayerCAM); compared after that same last step:
        difference = float(np.max(np.abs(min_max(ours()) - their_map)))
        o, t = median_ms(times["ours"]), median_ms(times["theirs"])
        rows.append({"model": info["name"], "method": method, "ours_ms": o, "pytorch_grad_cam_ms": t,
                     "speedup": t / o, "max_abs_map_difference": difference,
                     "max_rel_raw_map_difference": raw_difference})
        print(f"  {info['name']:<20} {method:<10} ours {o:8.1f} ms | pytorch-grad-cam {t:8.1f} ms | "
              f"{t / o:5.1f}x faster | max |map diff| {difference:.1e}, raw {raw_difference:.1e}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"resnet18 at {QUICK_SIZE} px, few repeats")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--models", nargs="*")
    args = parser.parse_args(argv)
    models = args.models or (QUICK_MODELS if args.quick else FULL_MODELS)
    repeats = args.repeats or (5 if args.quick else 30)
    print(f"explanation overhead ({args.threads} threads, median of {repeats} interleaved runs)")
    overhead_rows, peer_rows = [], []
    for arch in models:
        model, folder, info = exported(arch, QUICK_SIZE if args.quick else 224)
        overhead_rows += overhead(folder, info, args.threads, repeats, [1] if args.quick else [1, 8])
        peer_rows += peer(model, folder, info, args.threads, repeats)
    payload = {"threads": args.threads, "repeats": repeats, "overhead": overhead_rows, "peer": peer_rows}
    print(f"wrote {write_json('overhead' + ('-quick' if args.quick else ''), payload)}")
    return payload


if __name__ == "__main__":
    main()
