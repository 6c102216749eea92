"""The export check of an INT8 explainer, against the float32 explainer on the calibration images.

Agreement is reported, not gated (how close int8 comes depends on the model and the images): top-1
agreement and, per map, the Spearman rank correlation of each image's map (mean and worst), both
explainers asked for the float32 graph's top-1 class. Exactness is gated: the float32 head's
backward in the graph against autograd on the quantised activations the graph returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from exporter import check as export_check
from exporter.errors import ExportError
from exporter.hooks import on_layer_output
from onnxcam import contract


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as Spearman's coefficient needs)."""
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    average = np.cumsum(counts) - (counts - 1) / 2.0
    return average[inverse.ravel()]


def spearman(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman's rank correlation of two maps; 1 where both are constant, 0 where only one is."""
    a, b = _ranks(first.ravel()), _ranks(second.ravel())
    a, b = a - a.mean(), b - b.mean()
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if norm == 0.0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float((a * b).sum() / norm)


def _run(session: ort.InferenceSession, pixels: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for row, row_target in zip(pixels, target, strict=True):  # one row at a time: the edge's batch of one
        for name, value in zip(names, session.run(None, {contract.INPUT_PIXELS: row[None],
                                                          contract.INPUT_TARGET: row_target[None]}), strict=True):
            outputs[name].append(value)
    return {name: np.concatenate(values) for name, values in outputs.items()}


def _gradient_errors(
    model: nn.Module, layer: nn.Module, pixels: np.ndarray, got: dict[str, np.ndarray], classes: np.ndarray,
    cam_weight: torch.Tensor | None,
) -> dict[str, export_check.OutputError]:
    """The int8 graph's logits, gradients and maps against autograd through the float32 head on its own A."""
    activations = torch.from_numpy(got[contract.OUTPUT_ACTIVATIONS].copy()).requires_grad_(True)
    target = torch.from_numpy(classes)
    with torch.enable_grad(), on_layer_output(layer, lambda _: activations):
        logits = model(torch.from_numpy(pixels))
        score = logits.gather(1, target[:, None]).sum()
        (gradients,) = torch.autograd.grad(score, activations)
    maps = export_check.reference_maps(activations.detach(), gradients, target, cam_weight)
    floors = export_check.rounding_floor(activations.detach().double(), gradients.double(), target, cam_weight, maps)
    reference = {contract.OUTPUT_LOGITS: logits.detach().double(), contract.OUTPUT_GRADIENTS: gradients.double(),
                 **maps}
    errors = {name: export_check.compare(got[name], value.numpy()) for name, value in reference.items()}
    for name, floor in floors.items():
        errors[name].float32_floor_rel = floor
    return errors


def check_quantized(
    float_explainer: Path, int8_explainer: Path, pixels: np.ndarray, model: nn.Module, layer: nn.Module,
    cam_weight: torch.Tensor | None, tolerance: float = export_check.TOLERANCE,
) -> dict[str, Any]:
    """Top-1 agreement, map rank correlations and gradient exactness of ``int8_explainer``.

    ``outputs`` holds the exactness: logits, gradients and maps of the int8 graph against autograd
    through the float32 head on the graph's own quantised activations.

    Raises ExportError when the gradients or maps are not exact for the quantised activations.
    """
    top1 = -np.ones(len(pixels), np.int64)
    reference = _run(_session(float_explainer), pixels, top1)
    classes = reference[contract.OUTPUT_LOGITS].argmax(axis=1)
    got = _run(_session(int8_explainer), pixels, classes)
    int8_top1 = got[contract.OUTPUT_LOGITS].argmax(axis=1)
    maps = [name for name in reference if name.startswith("cam_")]
    correlations = {name: [spearman(reference[name][i], got[name][i]) for i in range(len(pixels))] for name in maps}
    errors = _gradient_errors(model, layer, pixels, got, classes, cam_weight)
    failures = [f"{name} rel error {error.max_rel:.2e}" for name, error in errors.items()
                if error.max_rel > error.allowed(tolerance)]
    if failures:
        raise ExportError("the int8 explainer's head is not exact on its quantised activations: "
                          + "; ".join(failures))
    return {  # passed/tolerance_rel/outputs as every graph's check, so the served metadata lists them
        "passed": True,
        "tolerance_rel": tolerance,
        "outputs": {name: {"max_abs": e.max_abs, "max_rel": e.max_rel, "float32_floor_rel": e.float32_floor_rel}
                    for name, e in errors.items()},
        "images": len(pixels),
        "top1_agreement": float(np.mean(int8_top1 == classes)),
        "map_spearman": {name: {"mean": float(np.mean(values)), "worst": float(np.min(values))}
                         for name, values in correlations.items()},
    }
