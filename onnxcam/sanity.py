"""``onnxcam sanity-check``: do a method's maps change when the model's weights are randomised?

Adebayo et al. 2018 (Sanity Checks for Saliency Maps), cascading model-parameter randomisation: the
layers with parameters are re-initialised from the logits down, one more group at each depth; after
each step the model is exported again and every method's maps on the same images and classes (the
original model's top-1) are compared with the original maps by Spearman rank correlation. A map that
explains the model must change when the model does: a method whose mean rho stays at or above the
threshold at a randomised depth fails the check.

Depths: 1 re-initialises the last layer with parameters (the classifier) alone, the next ones
cumulative, near-equal shares of the rest, the last one every layer. Re-initialisation is each
module's own ``reset_parameters()`` (PyTorch's default initialisation; BatchNorm back to identity
statistics) under a fixed seed. The maps are compared raw (feature resolution, ReLU'd; Spearman is
blind to the display normalisation), ties ranked by their average, as scipy.stats.spearmanr.
Needs the export extra (torch): ``pip install -e ".[export]"``; torch is imported inside the functions
that need it, so the CLI's parser builds without it. The command line is onnxcam.sanity_cli.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_METHODS = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigencam")
DEFAULT_DEPTHS = 4
DEFAULT_THRESHOLD = 0.5


# ----------------------------------------------------------------------------------------------
# numpy: the comparison


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, equal values sharing their average rank (scipy.stats.rankdata's "average")."""
    values = np.asarray(values, np.float64).ravel()
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    ranks = np.empty(values.size, np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho of two maps (Pearson correlation of their average ranks); NaN when one is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def schedule(layers: int, depths: int) -> list[int]:
    """How many layers (from the logits down) each depth re-initialises: the classifier alone, then
    near-equal steps down to all of them (``depths`` 1: the classifier only)."""
    if layers < 1:
        raise ValueError("the model has no layer with parameters")
    if depths < 1:
        raise ValueError(f"depths must be positive, not {depths}")
    depths = min(depths, layers)
    return [1] + [1 + math.ceil((layers - 1) * k / (depths - 1)) for k in range(1, depths)]


# ----------------------------------------------------------------------------------------------
# torch: the cascade


def parameterised_layers(model, example) -> list[str]:
    """Names of the modules that own parameters, in the order the forward pass first calls them."""
    import torch

    order: list[str] = []
    hooks = []
    for name, module in model.named_modules():
        if name and any(True for _ in module.parameters(recurse=False)):
            hooks.append(module.register_forward_hook(
                lambda _m, _i, _o, name=name: order.append(name) if name not in order else None))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return order


def randomised(model, names: Sequence[str], seed: int):
    """A copy of ``model`` whose modules ``names`` are re-initialised (``reset_parameters``)."""
    import copy

    import torch

    out = copy.deepcopy(model)
    torch.manual_seed(seed)
    for name in names:
        module = out.get_submodule(name)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        else:  # no own initialiser: a fresh normal draw of the same scale
            with torch.no_grad():
                for p in module.parameters(recurse=False):
                    p.normal_(0.0, float(p.std()) if p.numel() > 1 else 0.02)
    return out.eval()


def served_maps(folder: Path, images: list[bytes], targets: list[int] | None,
                methods: list[str]) -> tuple[list[dict[str, np.ndarray]], list[int]]:
    """Every image's raw maps from an in-process server on ``folder`` (targets None: the top-1)."""
    from onnxcam.client import ExplainerClient, method_name
    from onnxcam.evaluate_sources import local_server, raw_map

    out, used = [], []
    with local_server(folder) as address, ExplainerClient(address, timeout=None) as client:
        name = client.list_models()[0].name
        for n, image in enumerate(images):
            response = client.explain(image, name, methods=methods, raw=True,
                                      targets=[targets[n]] if targets is not None else [], timeout=None)
            out.append({method_name(h.method): raw_map(h) for h in response.heatmaps})
            used.append(response.heatmaps[0].target if response.heatmaps else response.predictions[0].index)
    return out, used


def _exported(net, layer: str | None, folder: Path, name: str, *, input_size: tuple[int, int],
              mean: Sequence[float], std: Sequence[float], input_gradients: bool, tolerance: float | None,
              log) -> None:
    """Export ``net`` into ``folder``, unless the folder already holds these very weights (a re-run). A
    failed export check is remembered next to the folder, so a re-run does not export it again."""
    from exporter import ExportError, export
    from exporter.identity import state_dict_sha256

    digest = state_dict_sha256(net)
    failed = folder.with_name(folder.name + ".failed.json")
    memo = {"state_dict_sha256": digest, "tolerance": tolerance}
    if failed.is_file() and {k: v for k, v in json.loads(failed.read_text()).items() if k != "error"} == memo:
        raise ExportError(json.loads(failed.read_text())["error"])
    meta_file = folder / "model.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        same = (meta.get("source", {}).get("state_dict_sha256") == digest
                and list(meta.get("input_size", [])) == list(input_size) and (layer is None or meta.get(
                    "target_layer") == layer) and (not input_gradients or meta.get("input_gradients")))
        if same:
            log(f"{name}: reusing {folder} (same weights)")
            return
    log(f"{name}: exporting to {folder} ...")
    kwargs = {} if tolerance is None else {"tolerance": tolerance}
    try:
        report = export(net, layer, folder, input_size=input_size, mean=mean, std=std, name=name,
                        input_gradients=input_gradients, **kwargs)
    except ExportError as error:
        folder.parent.mkdir(parents=True, exist_ok=True)
        failed.write_text(json.dumps({**memo, "error": str(error)}))
        raise
    log(f"{name}: {report.summary().splitlines()[0]}")


def run_check(model, layer: str | None, images: list[bytes], methods: list[str], *, input_size: tuple[int, int],
              mean: Sequence[float], std: Sequence[float], depths: int = DEFAULT_DEPTHS, seed: int = 0,
              work: Path | None = None, tolerance: float | None = None, log=print) -> dict[str, Any]:
    """The cascade on ``model``: rho per method, depth and image, with the layers re-initialised.

    A depth whose export fails its check (the randomised network's graphs disagree with PyTorch beyond
    ``tolerance``) is reported with the reason and its rho left NaN; the other depths go on."""
    import torch

    from exporter import ExportError
    from onnxcam import methods as registry

    work = Path(work or tempfile.mkdtemp(prefix="onnxcam-sanity-"))
    example = torch.zeros((1, 3, *input_size))
    layers = parameterised_layers(model.eval(), example)[::-1]  # logits first
    steps = schedule(len(layers), depths)
    options = dict(input_size=input_size, mean=mean, std=std, tolerance=tolerance, log=log,
                   input_gradients=any(registry.get(m).kind is registry.Kind.INPUT for m in methods))

    _exported(model, layer, work / "depth0", "depth0", **options)  # the original: a failure here stops the check
    original, targets = served_maps(work / "depth0", images, None, methods)
    rho: dict[str, list[list[float]]] = {m: [] for m in methods}
    info = []
    for depth, count in enumerate(steps, 1):
        entry: dict[str, Any] = {"depth": depth, "randomised": count, "deepest": layers[count - 1]}
        try:
            _exported(randomised(model, layers[:count], seed), layer, work / f"depth{depth}", f"depth{depth}",
                      **options)
            changed, _ = served_maps(work / f"depth{depth}", images, targets, methods)
        except ExportError as error:
            entry["error"] = str(error)
            log(f"depth {depth}: not measured: {error}")
            changed = None
        for method in methods:
            rho[method].append([float("nan")] * len(images) if changed is None else
                               [spearman(np.maximum(a[method], 0), np.maximum(b[method], 0))
                                for a, b in zip(original, changed, strict=True)])
        info.append(entry)
    return {"layers": len(layers), "depths": info, "targets": targets, "rho": rho}


def verdict(result: dict[str, Any], threshold: float) -> dict[str, dict[str, Any]]:
    """Per method: mean rho per depth (NaN images left out) and whether it passes (below ``threshold``
    at every depth)."""
    out = {}
    for method, per_depth in result["rho"].items():
        means = [float(np.nanmean(v)) if np.isfinite(v).any() else None for v in per_depth]
        failing = [d + 1 for d, m in enumerate(means) if m is not None and m >= threshold]
        out[method] = {"mean_rho": means, "passed": not failing, "failing_depths": failing}
    return out
