"""The export check: the written graphs in ONNX Runtime against autograd on the original module.

Inputs are fresh random tensors, never the trace example (a graph that froze values seen
at trace time would pass on those). Errors are reported per output as the max absolute
difference and that difference relative to the largest magnitude of the reference.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from exporter.cam_formulas import gradcam, graph_maps, graph_methods
from exporter.errors import ExportError
from exporter.hooks import Capture, on_layer_output
from exporter.token_grid import TargetLayer
from exporter.tracing import resolve_targets, ruled_backward
from onnxcam import contract

TOLERANCE = 1e-4
#: A map fails only beyond this many times its rounding floor (and beyond TOLERANCE).
FLOOR_FACTOR = 10.0
FLOAT32_EPS = 2.0**-23
CHECK_SEED = 20160604  # any seed other than the trace example's


@dataclass
class OutputError:
    max_abs: float
    max_rel: float
    reference_max: float
    #: For maps: how far the formula's float64 value moves when A and G move by float32 rounding
    #: (see ``rounding_floor``); large where the formula is ill-conditioned (XGrad-CAM divides by
    #: sum_ij A, which cancels to near zero on pre-ReLU layers).
    float32_floor_rel: float = 0.0

    def worst(self, other: OutputError) -> OutputError:
        return self if self.excess >= other.excess else other

    def allowed(self, tolerance: float) -> float:
        """An output fails only beyond both the tolerance and what float32 itself must give away."""
        return max(tolerance, FLOOR_FACTOR * self.float32_floor_rel)

    @property
    def excess(self) -> float:
        return self.max_rel / self.allowed(TOLERANCE)


def compare(got: np.ndarray, reference: np.ndarray) -> OutputError:
    """Max abs error, and that error over max |reference| (absolute where the reference is all zero)."""
    if got.shape != reference.shape:
        raise ExportError(f"output shape {got.shape} differs from PyTorch's {reference.shape}")
    max_abs = float(np.max(np.abs(got.astype(np.float64) - reference))) if got.size else 0.0
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    return OutputError(max_abs=max_abs, max_rel=max_abs / scale if scale > 0 else max_abs, reference_max=scale)


def reference_maps(
    activations: torch.Tensor, gradients: torch.Tensor, classes: torch.Tensor, cam_weight: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """Every map of the graph from A and G by the docs/DESIGN.md formulas, evaluated in float64."""
    activations, gradients = activations.double(), gradients.double()
    class_weights = cam_weight.detach().double()[classes] if cam_weight is not None else None
    return graph_maps(graph_methods(cam_weight is not None), activations, gradients, class_weights)


def rounding_floor(
    activations: torch.Tensor, gradients: torch.Tensor, classes: torch.Tensor, cam_weight: torch.Tensor | None,
    exact: dict[str, torch.Tensor], draws: int = 3,
) -> dict[str, float]:
    """Relative change of each map when A and G carry float32-sized errors.

    A float32 sum of n = h*w terms errs by about eps * sqrt(n) of its terms' size, so A and G
    are perturbed by that relative amount (random signs) and the formulas re-evaluated in float64.
    Where a map is ill-conditioned no float32 implementation, ours or pytorch-grad-cam's, can do
    better than this.
    """
    generator = torch.Generator().manual_seed(CHECK_SEED + 2)
    size = FLOAT32_EPS * float(activations.shape[2] * activations.shape[3]) ** 0.5
    floors = dict.fromkeys(exact, 0.0)
    for _ in range(draws):
        noise_a = 1 + size * (2 * torch.rand(activations.shape, generator=generator, dtype=torch.float64) - 1)
        noise_g = 1 + size * (2 * torch.rand(gradients.shape, generator=generator, dtype=torch.float64) - 1)
        moved = reference_maps(activations * noise_a, gradients * noise_g, classes, cam_weight)
        for name, value in moved.items():
            floors[name] = max(floors[name], compare(value.numpy(), exact[name].numpy()).max_rel)
    return floors


def reference_explain(
    model: nn.Module, layer: nn.Module, pixels: torch.Tensor, target: torch.Tensor,
    cam_weight: torch.Tensor | None,
) -> dict[str, np.ndarray]:
    """What explainer.onnx must return, from the unmodified module and torch.autograd."""
    capture = Capture()
    with torch.enable_grad(), on_layer_output(layer, capture.keep_graph):
        logits = model(pixels)
        classes = resolve_targets(logits, target)
        score = logits.gather(1, classes[:, None]).sum()
        (gradients,) = torch.autograd.grad(score, capture.activations)
    activations = capture.activations.detach()
    out = {
        contract.OUTPUT_LOGITS: logits.detach(),
        contract.OUTPUT_ACTIVATIONS: activations,
        contract.OUTPUT_GRADIENTS: gradients,
        **reference_maps(activations, gradients, classes, cam_weight),
    }
    return {name: value.double().numpy() for name, value in out.items()}


def reference_head(model: nn.Module, layer: nn.Module, activations: torch.Tensor, pixels: torch.Tensor) -> np.ndarray:
    """Logits of the module with the target layer's output replaced by ``activations``."""
    with torch.no_grad(), on_layer_output(layer, lambda _: activations.clone()):
        return model(pixels).double().numpy()


def _cases(input_shape: tuple[int, int, int], num_classes: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batch 1 (top-1) and batch 3 (explicit targets with a top-1 row between them)."""
    generator = torch.Generator().manual_seed(CHECK_SEED)
    cases = []
    for targets in ([-1], [int(torch.randint(num_classes, (1,), generator=generator)), -1, num_classes - 1]):
        pixels = torch.randn((len(targets), *input_shape), generator=generator)
        cases.append((pixels, torch.tensor(targets, dtype=torch.int64)))
    return cases


@dataclass
class CheckResult:
    """Worst error per output over all cases, and whether all are within tolerance.

    ``errors`` gate the export: logits, activations and gradients against autograd, each map
    against its formula applied (in float64) to the graph's own A and G, allowed the larger of
    the tolerance and FLOOR_FACTOR times its float32 rounding floor on those A and G. ``end_to_end`` holds
    each map against the formula on autograd's A and G; it is reported, not gated, because
    some formulas amplify float32 rounding in A (XGrad-CAM divides by sum_ij A, near zero on
    pre-ReLU layers), which says nothing about the graph.
    """

    errors: dict[str, OutputError]
    batches: list[int]
    end_to_end: dict[str, OutputError] = field(default_factory=dict)
    tolerance: float = TOLERANCE

    @property
    def passed(self) -> bool:
        return all(err.max_rel <= err.allowed(self.tolerance) for err in self.errors.values())

    def failures(self) -> list[str]:
        return [f"{name}: rel {err.max_rel:.3g} (abs {err.max_abs:.3g}, allowed {err.allowed(self.tolerance):.3g})"
                for name, err in self.errors.items() if err.max_rel > err.allowed(self.tolerance)]

    def to_dict(self) -> dict:
        return {
            "passed": self.passed, "tolerance_rel": self.tolerance, "float32_floor_factor": FLOOR_FACTOR,
            "batches": self.batches,
            "outputs": {name: asdict(err) for name, err in self.errors.items()},
            "maps_end_to_end": {name: asdict(err) for name, err in self.end_to_end.items()},
        }


def _run(session: ort.InferenceSession, path: Path, outputs: list[str], feeds: dict[str, np.ndarray]) -> list:
    """session.run, with a failure (a graph that fixed a dimension it should not have) as an ExportError."""
    try:
        return session.run(outputs, feeds)
    except Exception as error:  # noqa: BLE001 - ORT raises its own exception types
        shapes = ", ".join(f"{name} {list(value.shape)}" for name, value in feeds.items())
        message = " ".join(str(error).split())
        raise ExportError(f"export check: the written {path.name.strip('.').removesuffix('.tmp')} does not run on "
                          f"{shapes}: {message}") from error


def _accumulate(errors: dict[str, OutputError], name: str, err: OutputError) -> None:
    errors[name] = err if name not in errors else errors[name].worst(err)


def check_explainer(
    path: Path, model: nn.Module, layer: nn.Module, input_shape: tuple[int, int, int],
    num_classes: int, cam_weight: torch.Tensor | None, tolerance: float = TOLERANCE,
) -> CheckResult:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    errors: dict[str, OutputError] = {}
    end_to_end: dict[str, OutputError] = {}
    cases = _cases(input_shape, num_classes)
    for pixels, target in cases:
        got = dict(zip(names, _run(session, path, names, {contract.INPUT_PIXELS: pixels.numpy(),
                                                          contract.INPUT_TARGET: target.numpy()}), strict=True))
        reference = reference_explain(model, layer, pixels, target, cam_weight)
        if sorted(names) != sorted(reference):
            raise ExportError(f"graph outputs {names} do not match the contract {sorted(reference)}")
        classes = resolve_targets(torch.from_numpy(got[contract.OUTPUT_LOGITS]), target)
        graph_a = torch.from_numpy(got[contract.OUTPUT_ACTIVATIONS]).double()
        graph_g = torch.from_numpy(got[contract.OUTPUT_GRADIENTS]).double()
        from_graph = reference_maps(graph_a, graph_g, classes, cam_weight)
        floors = rounding_floor(graph_a, graph_g, classes, cam_weight, from_graph)
        for name, value in got.items():
            if name in from_graph:
                error = compare(value, from_graph[name].numpy())
                error.float32_floor_rel = floors[name]
                _accumulate(errors, name, error)
                _accumulate(end_to_end, name, compare(value, reference[name]))
            else:
                _accumulate(errors, name, compare(value, reference[name]))
    return CheckResult(errors=errors, batches=[len(t) for _, t in cases], end_to_end=end_to_end,
                       tolerance=tolerance)


def reference_input_gradients(model: nn.Module, layer: nn.Module, pixels: torch.Tensor, target: torch.Tensor,
                              rule: torch.Tensor) -> dict[str, np.ndarray]:
    """What input_gradients.onnx must return, from the module run eagerly: rows with the plain rule by
    torch.autograd alone, the others with the ReLU rules of backprop_rules applied eagerly."""
    logits, activations, layer_gradients, classes, gradients = ruled_backward(model, layer, pixels, target, rule)
    plain = rule == contract.RULE_PLAIN
    if plain.any():  # independent of the rule code: ordinary autograd on the unmodified module
        with torch.enable_grad():
            pixels_plain = pixels.detach()[plain].requires_grad_(True)
            out = model(pixels_plain)
            (gradients_plain,) = torch.autograd.grad(out.gather(1, classes[plain][:, None]).sum(), pixels_plain)
        gradients = gradients.detach().clone()
        gradients[plain] = gradients_plain
    cam = gradcam(activations.double(), layer_gradients.double())
    upsampled = torch.nn.functional.interpolate(cam[:, None], size=tuple(pixels.shape[2:]), mode="bilinear",
                                                align_corners=False)
    gradients = gradients.detach().double()
    return {contract.OUTPUT_LOGITS: logits.detach().double().numpy(),
            contract.OUTPUT_INPUT_GRADIENTS: gradients.numpy(),
            contract.OUTPUT_SALIENCY: gradients.abs().amax(dim=1).numpy(),
            contract.OUTPUT_GUIDED_GRADCAM: (gradients * upsampled).numpy()}


def check_input_gradients(
    path: Path, model: nn.Module, layer: nn.Module, input_shape: tuple[int, int, int], num_classes: int,
    tolerance: float = TOLERANCE,
) -> CheckResult:
    """input_gradients.onnx with every rule: batch 1 guided (top-1), batch 3 plain, deconvnet, guided."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    errors: dict[str, OutputError] = {}
    cases = _cases(input_shape, num_classes)
    rules = ([contract.RULE_GUIDED], [contract.RULE_PLAIN, contract.RULE_DECONVNET, contract.RULE_GUIDED])
    for (pixels, target), rule in zip(cases, rules, strict=True):
        rule = torch.tensor(rule, dtype=torch.int64)
        feeds = {contract.INPUT_PIXELS: pixels.numpy(), contract.INPUT_TARGET: target.numpy(),
                 contract.INPUT_RULE: rule.numpy()}
        got = dict(zip(names, _run(session, path, names, feeds), strict=True))
        reference = reference_input_gradients(model, layer, pixels, target, rule)
        if sorted(names) != sorted(reference):
            raise ExportError(f"graph outputs {names} do not match the contract {sorted(reference)}")
        exact = None
        for name, value in got.items():
            error = compare(value, reference[name])
            if error.max_rel > tolerance:
                # Through thousands of ReLU gates float32 rounding flips some of them, in PyTorch as in
                # ONNX Runtime: judge against float64, allowing FLOOR_FACTOR x PyTorch's own float32 error.
                exact = exact or _float64_input_gradients(model, layer, pixels, target, rule)
                error = compare(value, exact[name])
                error.float32_floor_rel = compare(reference[name], exact[name]).max_rel
            _accumulate(errors, name, error)
    return CheckResult(errors=errors, batches=[len(t) for _, t in cases], tolerance=tolerance)


def _float64_input_gradients(model: nn.Module, layer: nn.Module | TargetLayer, pixels: torch.Tensor,
                             target: torch.Tensor, rule: torch.Tensor) -> dict[str, np.ndarray]:
    """``reference_input_gradients`` on a float64 copy of the module: the exact values float32 rounds.
    The copy's target keeps the original's layout (a token sequence folds the same way)."""
    target_layer = layer if isinstance(layer, TargetLayer) else TargetLayer(layer)
    layer_name = next(name for name, module in model.named_modules() if module is target_layer.module)
    exact_model = copy.deepcopy(model).double()
    exact_layer = dataclasses.replace(target_layer, module=exact_model.get_submodule(layer_name))
    return reference_input_gradients(exact_model, exact_layer, pixels.double(), target, rule)


def check_head(
    path: Path, model: nn.Module, layer: nn.Module, input_shape: tuple[int, int, int], num_classes: int,
    tolerance: float = TOLERANCE,
) -> CheckResult:
    """head.onnx on activations with random channels zeroed, as Ablation-CAM feeds it."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_names = [i.name for i in session.get_inputs()]
    errors: dict[str, OutputError] = {}
    generator = torch.Generator().manual_seed(CHECK_SEED + 1)
    cases = _cases(input_shape, num_classes)
    for pixels, target in cases:
        activations = torch.from_numpy(
            reference_explain(model, layer, pixels, target, None)[contract.OUTPUT_ACTIVATIONS]
        ).float()
        keep = (torch.rand(activations.shape[:2], generator=generator) > 0.5).float()[:, :, None, None]
        activations = activations * keep
        feeds = {contract.INPUT_ACTIVATIONS: activations.numpy(), contract.INPUT_PIXELS: pixels.numpy()}
        (got,) = _run(session, path, [contract.OUTPUT_LOGITS], {name: feeds[name] for name in input_names})
        _accumulate(errors, contract.OUTPUT_LOGITS, compare(got, reference_head(model, layer, activations, pixels)))
    return CheckResult(errors=errors, batches=[len(t) for _, t in cases], tolerance=tolerance)


def check_forward(path: Path, model: nn.Module, input_shape: tuple[int, int, int], num_classes: int,
                  tolerance: float = TOLERANCE) -> CheckResult:
    """forward.onnx against the module's own forward."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    errors: dict[str, OutputError] = {}
    cases = _cases(input_shape, num_classes)
    for pixels, _ in cases:
        (got,) = _run(session, path, [contract.OUTPUT_LOGITS], {contract.INPUT_PIXELS: pixels.numpy()})
        with torch.no_grad():
            reference = model(pixels).double().numpy()
        _accumulate(errors, contract.OUTPUT_LOGITS, compare(got, reference))
    return CheckResult(errors=errors, batches=[len(t) for _, t in cases], tolerance=tolerance)
