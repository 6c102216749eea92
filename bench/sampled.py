"""The sampled methods (SmoothGrad, guided SmoothGrad, Smooth Grad-CAM++, Integrated Gradients,
occlusion) against their reference libraries, measured side by side.

    python bench/sampled.py [--quick] [--threads N] [--repeats R] [--models ...] [--methods ...] [--resume]

Per model and method, one image (the demo's cat photo) and its top-1 class, from a preprocessed
tensor to the raw map: onnxcam.sampling.run_local over a plain ONNX Runtime session of the method's
graph against the reference on the same torch module, with the same samples, steps or patches, the
same noise (handed to Captum's NoiseTunnel and to torchcam), baseline and thread count; the plain
forward.onnx is timed with them for scale. References: Captum NoiseTunnel(Saliency, abs=True) and
NoiseTunnel(GuidedBackprop), IntegratedGradients (Gauss-Legendre, black baseline), Occlusion on the
softmax, torchcam SmoothGradCAMpp (the same 1 clean + 25 noisy forward/backward passes).

Both sides batch: ours sends ``chunk`` rows per session call, Captum ``nt_samples_batch_size``,
``internal_batch_size`` or ``perturbations_per_eval`` rows per pass; each side's batch is the fastest of
a few tried once (torchcam has no batching: one sample per pass). The maps are compared raw, relative
to the reference's largest value; Smooth Grad-CAM++ against Omeiza et al.'s formula written out with
autograd in float64 on the same noise (torchcam departs from it on three points, see
tests/test_sampled_methods.py; its own difference to the formula with those departures is reported
next to ours). Captum rewrites only nn.ReLU modules, so on EfficientNet-Lite0 (ReLU6) its guided
maps differ from ours by design. Models come from bench/.cache/ as in overhead.py (random weights,
EfficientNet-Lite0 with its real ones).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import QUICK_SIZE, RESULTS_DIR, interleaved, median_ms, session, write_json  # noqa: E402
from gradient_free import photo  # noqa: E402
from overhead import exported  # noqa: E402

from onnxcam import contract, sampling  # noqa: E402
from onnxcam import methods as registry  # noqa: E402

FULL_MODELS = ["resnet50", "efficientnet_lite0"]  # vgg16 works too (--models), at about 4x resnet50's time
QUICK_MODELS = ["resnet18"]
METHODS = list(registry.names(registry.Kind.SAMPLED))
#: The defaults: 25 samples, 50 steps, patch 32 and stride 16 at 224 px (169 positions).
FULL_SETTINGS = sampling.Settings()
QUICK_SETTINGS = sampling.Settings(samples=4, steps=4, patch=QUICK_SIZE // 2, stride=QUICK_SIZE // 2)
#: Rows per call tried for each side (clamped to the rows there are); the reference also tries its
#: library's default (all samples / steps at once; one perturbation per pass for Occlusion).
FULL_BATCHES = (8, 16, 32)
QUICK_BATCHES = (4,)
#: Where ours and the reference differ by more than this (relative), both are compared with the reference
#: run in float64: a random-weight network at 224 px is ill-conditioned in float32, whoever runs it.
FLOAT64_CHECK_ABOVE = 1e-3


def noise_batch(pixels: np.ndarray, settings: sampling.Settings):
    """The noise onnxcam adds, sample by sample: sigma * noise(seed, i) [samples, 3, H, W] (torch)."""
    import torch

    sigma = np.float32(sampling.noise_sigma(pixels, settings.noise_level))
    return torch.from_numpy(np.stack([sigma * sampling.noise(settings.seed, i, pixels.shape)
                                      for i in range(settings.samples)]))


@contextlib.contextmanager
def captum_noise(noise):
    """Captum's NoiseTunnel draws each batch's noise with torch.normal(0, stdev_expanded), stdev_expanded
    [batch, 3, H, W]: hand it our samples in order, batch after batch."""
    import torch

    real = torch.normal
    taken = 0

    def ours(mean, std, *args, **kwargs):
        nonlocal taken
        if isinstance(std, torch.Tensor) and tuple(std.shape[1:]) == tuple(noise.shape[1:]):
            part = noise[taken:taken + std.shape[0]].clone()
            taken += std.shape[0]
            assert len(part) == std.shape[0], "Captum asked for more samples than there are"
            return part
        return real(mean, std, *args, **kwargs)

    with mock.patch.object(torch, "normal", ours):
        yield


class Timed:
    """The session as run_local's ``run``, adding up the time spent inside ONNX Runtime."""

    def __init__(self, graph, outputs: tuple[str, ...]) -> None:
        self.graph, self.outputs, self.seconds = graph, list(outputs), 0.0

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        values = self.graph.run(self.outputs, inputs)
        self.seconds += time.perf_counter() - start
        return dict(zip(self.outputs, values, strict=True))


def reference(method: str, model, layer_name: str, pixels: np.ndarray, target: int, settings: sampling.Settings,
              baseline: np.ndarray, noise, batch: int | None):
    """A function running the reference for ``method`` (``batch`` rows per pass; None: the library's
    default), returning its map laid out as onnxcam's."""
    import torch
    from captum.attr import GuidedBackprop, IntegratedGradients, NoiseTunnel, Occlusion, Saliency

    x = torch.from_numpy(pixels[None])
    if method in ("smoothgrad", "smoothgrad_guided"):
        tunnel = NoiseTunnel(Saliency(model) if method == "smoothgrad" else GuidedBackprop(model))
        extra = {"abs": True} if method == "smoothgrad" else {}

        def run():
            with captum_noise(noise):
                out = tunnel.attribute(x, nt_type="smoothgrad", nt_samples=settings.samples,
                                       nt_samples_batch_size=batch, stdevs=1.0, target=target, **extra)[0]
            return out.amax(dim=0).detach().numpy() if method == "smoothgrad" else out.detach().numpy()
        return run
    if method == "integrated_gradients":
        integrated, start = IntegratedGradients(model), torch.from_numpy(baseline[None])

        def run():
            out = integrated.attribute(x, baselines=start, target=target, n_steps=settings.steps,
                                       internal_batch_size=batch)
            return out[0].sum(dim=0).detach().numpy()
        return run
    if method == "occlusion":
        occlusion = Occlusion(Softmax(model))

        def run():
            out = occlusion.attribute(x, sliding_window_shapes=(3, settings.patch, settings.patch),
                                      strides=(3, settings.stride, settings.stride), baselines=settings.fill,
                                      target=target, perturbations_per_eval=batch or 1)
            return out[0, 0].detach().numpy()
        return run
    if method == "smooth_gradcampp":
        return lambda: torchcam_smooth_gradcampp(model, layer_name, pixels, target, noise)
    raise ValueError(method)


class Softmax:
    """The model's probabilities, what Captum's Occlusion attributes here (a plain callable)."""

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, x):
        import torch

        return torch.softmax(self.model(x), dim=1)


def torchcam_smooth_gradcampp(model, layer_name: str, pixels: np.ndarray, target: int, noise) -> np.ndarray:
    """torchcam's SmoothGradCAMpp, its noise replaced by ours, raw (before its normalisation)."""
    import torch
    from torchcam.methods import SmoothGradCAMpp

    samples = iter(noise)
    with SmoothGradCAMpp(model, layer_name, num_samples=len(noise), input_shape=pixels.shape) as extractor:
        extractor._distrib = mock.Mock(sample=lambda shape: next(samples)[None])
        scores = model(torch.from_numpy(pixels[None]))
        (cam,) = extractor(target, scores, normalized=False)
    return cam[0].detach().numpy()


def smooth_gradcampp_formulas(model, layer, pixels: np.ndarray, target: int, noise) -> tuple[np.ndarray, np.ndarray]:
    """Omeiza et al.'s Smooth Grad-CAM++ written out with autograd in float64, and the same with torchcam
    0.5's three departures (as tests/test_sampled_methods.smooth_gradcampp_formula), from one set of passes."""
    import torch

    model = model.double()
    captured = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.__setitem__("a", out))
    try:
        def activations_and_gradients(x):
            score = model(x)[0, target]
            (gradients,) = torch.autograd.grad(score, captured["a"])
            return captured["a"].detach()[0], gradients[0]

        clean = torch.from_numpy(pixels[None]).double()
        activations, _ = activations_and_gradients(clean)
        noisy = [activations_and_gradients(clean + n[None].double()) for n in noise]
    finally:
        handle.remove()
        model.float()
    grads = torch.stack([g for _, g in noisy])
    d1, d2, d3 = grads.mean(0), (grads ** 2).mean(0), (grads ** 3).mean(0)
    alpha = d2 / (2 * d2 + activations.sum(dim=(1, 2), keepdim=True) * d3 + 1e-6)
    alpha = torch.where(d2 != 0, alpha, torch.zeros_like(alpha))
    formula = torch.relu(((alpha * torch.relu(d1)).sum(dim=(1, 2))[:, None, None] * activations).sum(0))
    alpha = d2 / (2 * d2 + (d3 * activations).sum(dim=(1, 2), keepdim=True) + 1e-8)
    weights = (alpha * torch.relu(grads[-1])).sum(dim=(1, 2))
    departures = torch.relu((weights[:, None, None] * noisy[-1][0]).sum(0))
    return formula.numpy(), departures.numpy()


def relative(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def fastest(candidates: list, make, label: str, warmup: bool) -> tuple[object, dict[str, float], np.ndarray]:
    """The candidate batch whose function ``make(candidate)`` runs fastest, timed once each (after one
    warm-up run of the last, the largest batch, if ``warmup``); every candidate's time (ms), and the
    fastest one's map."""
    if warmup:
        make(candidates[-1])()
    times, outputs = {}, {}
    for candidate in candidates:
        function = make(candidate)
        start = time.perf_counter()
        outputs[str(candidate)] = function()
        times[str(candidate)] = (time.perf_counter() - start) * 1000.0
    best = min(candidates, key=lambda c: times[str(c)])
    print(f"    {label}: " + ", ".join(f"{c} {t:.0f} ms" for c, t in times.items()) + f" -> {best}", flush=True)
    return best, times, outputs[str(best)]


def reference_batches(method: str, settings: sampling.Settings, rows: int, batches: tuple[int, ...],
                      library_default: bool = True) -> list:
    """The reference's batch sizes to try: ours clamped to its rows, and its library's default."""
    if method == "smooth_gradcampp":
        return [None]  # torchcam runs one noisy copy per pass
    count = {"smoothgrad": settings.samples, "smoothgrad_guided": settings.samples,
             "integrated_gradients": settings.steps, "occlusion": rows - 1}[method]
    tried = sorted({min(b, count) for b in batches})
    default = 1 if method == "occlusion" else None  # NoiseTunnel / IntegratedGradients: all at once
    if not library_default:
        return tried
    return [default] + [b for b in tried if b != (default or count)]


def compare(arch: str, threads: int, repeats: int, settings: sampling.Settings, batches: tuple[int, ...],
            methods: list[str], warmup: bool = True, check_float64: bool = True,
            done: Callable[[dict], None] = lambda row: None, size: int = 224) -> list[dict]:
    """The rows of ``methods`` on model ``arch``; ``done`` gets each row as soon as it is measured."""
    import torch

    torch.set_num_threads(threads)
    model, folder, info = exported(arch, size)
    layer_name = info["target_layer"]
    preprocess = info["preprocess"]
    size = info["input_size"][0]
    pixels = photo(size, preprocess["mean"], preprocess["std"])[0]
    forward = session(folder / contract.FORWARD_FILE, threads)
    clean = {contract.INPUT_PIXELS: pixels[None]}
    (logits,) = forward.run([contract.OUTPUT_LOGITS], clean)
    target = int(logits[0].argmax())
    used = settings.resolved(*pixels.shape[1:])
    baseline = sampling.baseline_pixels(used, tuple(preprocess["mean"]), tuple(preprocess["std"]), pixels.shape)
    noise = noise_batch(pixels, used)
    rows = []
    print(f"  {arch}: class {target}, {threads} threads, {used.samples} samples, {used.steps} steps, patch "
          f"{used.patch} stride {used.stride}", flush=True)
    for method in methods:
        kind = sampling.SAMPLERS[method]
        graph_file = sampling.GRAPH_FILES[kind.graph]
        # a session per method: its memory arena, grown to the largest chunk tried, goes with it
        graph = session(folder / graph_file, threads)
        count = kind.rows_per_target(used, *pixels.shape[1:])
        # ours adds two rows to Integrated Gradients' path (S at both ends, for the completeness gap)
        reference_rows = used.steps if method == "integrated_gradients" else count
        last_timed = {}

        def ours(chunk, kind=kind, graph=graph, last_timed=last_timed):
            def run():
                timed = Timed(graph, kind.outputs)
                out = sampling.run_local(kind(pixels, [target], used, baseline=baseline), timed, chunk=chunk)[0]
                last_timed["graph_s"] = timed.seconds
                return out
            return run

        def theirs(batch, method=method):
            return reference(method, model, layer_name, pixels, target, used, baseline, noise, batch)

        chunk, chunk_times, our_map = fastest(sorted({min(b, count) for b in batches}), ours,
                                              f"{method} ours, rows per call", warmup)
        batch, batch_times, their_map = fastest(reference_batches(method, used, count, batches, warmup), theirs,
                                                f"{method} reference, rows per pass", warmup)
        row = {"model": arch, "method": method, "rows": count, "chunk": chunk, "chunk_ms": chunk_times,
               "reference_batch": batch, "reference_batch_ms": batch_times}
        if method == "smooth_gradcampp":
            formula, departures = smooth_gradcampp_formulas(model, model.get_submodule(layer_name), pixels, target,
                                                            noise)
            row["max_rel_difference"] = relative(our_map, formula)
            row["reference_vs_its_formula"] = relative(their_map, departures)
            row["ours_vs_reference"] = relative(our_map, their_map)
        else:
            row["max_rel_difference"] = relative(our_map, their_map)
            if check_float64 and row["max_rel_difference"] > FLOAT64_CHECK_ABOVE:
                model.double()
                try:
                    exact = reference(method, model, layer_name, pixels.astype(np.float64), target, used,
                                      baseline.astype(np.float64), noise.double(), batch)()
                finally:
                    model.float()
                row["ours_vs_float64_reference"] = relative(our_map, exact)
                row["reference_vs_float64_reference"] = relative(their_map, exact)
        times = interleaved({
            "forward": lambda: forward.run([contract.OUTPUT_LOGITS], clean),
            "ours": ours(chunk),
            "reference": theirs(batch),
        }, repeats, warmup=0)  # every function has just run at least once
        f, o, r = (median_ms(times[k]) for k in ("forward", "ours", "reference"))
        graph_ms = last_timed["graph_s"] * 1000.0
        row.update({"forward_ms": f, "ours_ms": o, "reference_ms": r, "ours_vs_forward": o / f,
                    "speedup_vs_reference": r / o, "ours_graph_ms_last_run": graph_ms,
                    "ours_ms_per_row": o / count, "reference_rows": reference_rows,
                    "reference_ms_per_row": r / reference_rows, "load_average": os.getloadavg()})
        if method == "smooth_gradcampp":
            extra = (f"vs formula {row['max_rel_difference']:.1e} (torchcam vs its formula "
                     f"{row['reference_vs_its_formula']:.1e})")
        else:
            extra = f"max rel difference {row['max_rel_difference']:.1e}"
            if "ours_vs_float64_reference" in row:
                extra += (f" (vs float64: ours {row['ours_vs_float64_reference']:.1e}, reference "
                          f"{row['reference_vs_float64_reference']:.1e})")
        print(f"  {arch:<18} {method:<20} forward {f:7.1f} ms | ours {o:8.1f} ms ({o / f:5.1f}x forward, chunk "
              f"{chunk}) | reference {r:8.1f} ms (batch {batch}) | {r / o:5.2f}x faster | {extra}", flush=True)
        rows.append(row)
        done(row)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"resnet18 at {QUICK_SIZE} px, tiny settings, one repeat")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--models", nargs="*")
    parser.add_argument("--methods", nargs="*", choices=METHODS)
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows of the results file already written, measure only the missing ones")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")  # Captum's guided backprop, every call
    models = args.models or (QUICK_MODELS if args.quick else FULL_MODELS)
    repeats = args.repeats or (1 if args.quick else 3)
    settings = QUICK_SETTINGS if args.quick else FULL_SETTINGS
    batches = QUICK_BATCHES if args.quick else FULL_BATCHES
    methods = args.methods or METHODS
    name = "sampled" + ("-quick" if args.quick else "")
    payload = {"threads": args.threads, "repeats": repeats, "settings": dataclasses.asdict(settings),
               "batches_tried": list(batches), "rows": []}
    previous = RESULTS_DIR / f"{name}.json"
    if args.resume and previous.exists():
        payload["rows"] = json.loads(previous.read_text())["rows"]
    measured = {(row["model"], row["method"]) for row in payload["rows"]}

    def done(row: dict) -> None:  # written after every row: a run of many minutes may be cut short
        payload["rows"].append(row)
        write_json(name, payload)

    print(f"sampled methods vs Captum / torchcam ({args.threads} threads, median of {repeats} interleaved runs)")
    for arch in models:
        missing = [method for method in methods if (arch, method) not in measured]
        if missing:
            compare(arch, args.threads, repeats, settings, batches, missing, warmup=not args.quick,
                    check_float64=not args.quick, done=done, size=QUICK_SIZE if args.quick else 224)
    print(f"wrote {write_json(name, payload)}")
    return payload


if __name__ == "__main__":
    main()
