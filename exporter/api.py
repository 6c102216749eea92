"""``export()``: a PyTorch classifier and a target layer in, a checked model folder out."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from exporter import check as export_check
from exporter.cam_formulas import graph_methods
from exporter.errors import ExportError
from exporter.head_analysis import find_cam_linear, head_reads_pixels
from exporter.hooks import Capture, on_layer_output
from exporter.identity import module_class, state_dict_sha256
from exporter.layers import check_reaches_logits, default_layer
from exporter.layers import target_layer as find_target
from exporter.model_folder import (
    FORMAT_VERSION,
    check_preprocessing,
    onnx_metadata,
    staging_dir,
    swap_in,
    write_model_json,
)
from exporter.onnx_export import OPSET, set_metadata, write_onnx
from exporter.quantize import QUANTIZE_NEEDS_PLAIN_HEAD, calibration_rows, quantize_graphs, quantize_request
from exporter.token_grid import AUTO, TargetLayer
from exporter.tracing import explainer_function, forward_function, head_function, input_gradients_function, trace
from onnxcam import contract
from onnxcam import methods as registry
from onnxcam.preprocess import spec_from_dict

log = logging.getLogger("onnxcam.exporter")

TRACE_SEED = 0
#: Everything an export writes into a model folder; anything else there (recipe.json) is kept.
EXPORTED_FILES = {contract.EXPLAINER_FILE, contract.HEAD_FILE, contract.FORWARD_FILE, contract.INPUT_GRADIENTS_FILE,
                  contract.CAM_LINEAR_FILE, contract.MODEL_JSON}
INPUT_GRADIENTS_INPUTS = [contract.INPUT_PIXELS, contract.INPUT_TARGET, contract.INPUT_RULE]
INPUT_GRADIENTS_OUTPUTS = [contract.OUTPUT_LOGITS, contract.OUTPUT_INPUT_GRADIENTS, contract.OUTPUT_SALIENCY,
                           contract.OUTPUT_GUIDED_GRADCAM]


def trace_batch(*shapes: tuple[int, ...]) -> int:
    """The batch size to trace with: at least 2, and equal to no other dimension of the traced inputs.

    A batch of 1 lets the tracer specialise the batch dimension. A batch equal to another input
    dimension (a 2x2 feature map traced at batch 2) gets the same symbol from the tracer's duck
    shaping, so the exporter sees the batch tied to a fixed size and writes it as a constant.
    """
    taken = {int(d) for shape in shapes for d in shape}
    return next(b for b in range(2, 2 + len(taken) + 1) if b not in taken)


@dataclass
class ExportReport:
    """What was written and how well it matches PyTorch."""

    name: str
    out_dir: Path
    target_layer: str
    target_layer_is_default: bool
    methods: list[str]
    head_inputs: list[str]
    activation_shape: list[int]
    num_classes: int
    opset: int
    explainer_check: export_check.CheckResult
    #: None when exported with ``input_gradients=False``.
    input_gradients_check: export_check.CheckResult | None
    head_check: export_check.CheckResult
    forward_check: export_check.CheckResult
    seconds: dict[str, float] = field(default_factory=dict)
    #: The INT8 check (top-1 agreement, map rank correlations, exactness); None for float32 exports.
    quantized_check: dict[str, Any] | None = None
    sizes_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in (self.explainer_check, self.input_gradients_check, self.head_check,
                                      self.forward_check) if c is not None)

    def max_errors(self) -> dict[str, float]:
        """Worst relative error per output (head logits as ``head.logits``)."""
        errors = {name: err.max_rel for name, err in self.explainer_check.errors.items()}
        if self.input_gradients_check is not None:
            errors.update({f"input_gradients.{name}": err.max_rel
                           for name, err in self.input_gradients_check.errors.items()})
        errors.update({f"head.{name}": err.max_rel for name, err in self.head_check.errors.items()})
        errors.update({f"forward.{name}": err.max_rel for name, err in self.forward_check.errors.items()})
        return errors

    def summary(self) -> str:
        worst = max(self.max_errors().values())
        default = " (default)" if self.target_layer_is_default else ""
        size = self.sizes_bytes.get(contract.EXPLAINER_FILE, 0) / 2**20
        int8 = ""
        if self.quantized_check:
            worst_rank = min(v["worst"] for v in self.quantized_check["map_spearman"].values())
            int8 = (f"; int8 body: top-1 agreement {self.quantized_check['top1_agreement']:.0%}, "
                    f"worst map rank correlation {worst_rank:.3f}")
        return (f"{self.name}: layer {self.target_layer}{default}, A {self.activation_shape}, "
                f"methods {', '.join(self.methods)}; check {'passed' if self.passed else 'FAILED'} "
                f"(worst rel error {worst:.2e}); {self.seconds.get('total', 0):.1f} s; explainer {size:.1f} MiB{int8}")


def _shapes(model: nn.Module, layer: TargetLayer, layer_name: str,
            example: torch.Tensor) -> tuple[torch.Size, torch.Size]:
    """Activation and logits shapes from one forward; rejects a layer that runs more than once."""
    capture = Capture()
    calls = 0

    def count(output: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return capture.as_leaf(output)

    with torch.no_grad(), on_layer_output(layer, count):
        logits = model(example)
    if calls > 1:
        raise ExportError(f"layer {layer_name!r} runs {calls} times in one forward (a shared module); "
                          "pick a module that runs once, such as the block or norm layer around it")
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ExportError(f"the model must return logits [N, classes]; it returned "
                          f"{getattr(logits, 'shape', type(logits).__name__)}")
    if capture.activations is None:
        raise ExportError("the target layer was never called in the forward pass")
    return capture.activations.shape, logits.shape


def _labels(labels: Sequence[str] | None, num_classes: int) -> list[str]:
    if labels is None:
        return [f"class_{i}" for i in range(num_classes)]
    labels = [str(label) for label in labels]
    if len(labels) != num_classes:
        raise ExportError(f"{len(labels)} labels given for a model with {num_classes} classes")
    return labels


def _write_cam_linear(path: Path, linear: nn.Linear) -> None:
    weight = linear.weight.detach().float().numpy()
    bias = linear.bias.detach().float().numpy() if linear.bias is not None else np.zeros(weight.shape[0], np.float32)
    with open(path, "wb") as handle:
        np.savez(handle, weight=weight, bias=bias)


@contextmanager
def _step(seconds: dict[str, float], key: str, message: str) -> Iterator[None]:
    """Log a step as it starts and record how long it took under ``key``."""
    log.info("%s...", message)
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = round(time.perf_counter() - start, 3)


def _write_input_gradients(model: nn.Module, layer: nn.Module, example: tuple[torch.Tensor, torch.Tensor],
                           path: Path, seconds: dict[str, float]) -> None:
    """Trace and write input_gradients.onnx: every ReLU rule is exercised by the example rows."""
    pixels, target = example
    rule = torch.arange(len(pixels), dtype=torch.int64) % 3
    with _step(seconds, "trace_input_gradients", "tracing the backward pass to the pixels (ReLU rules)"):
        graph = trace(input_gradients_function(model, layer), model, pixels, target, rule)
    with _step(seconds, "onnx_input_gradients", "writing input_gradients.onnx"):
        write_onnx(graph, model, (pixels, target, rule), path, INPUT_GRADIENTS_INPUTS, INPUT_GRADIENTS_OUTPUTS,
                   kind="input_gradients", pixels_example=pixels)


def export(
    model: nn.Module,
    target_layer: str | None,
    out_dir: str | os.PathLike,
    *,
    input_size: tuple[int, int] = (224, 224),
    labels: Sequence[str] | None = None,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    name: str | None = None,
    resize: int | None = None,
    source: dict[str, Any] | None = None,
    weights: str | None = None,
    tolerance: float = export_check.TOLERANCE,
    input_gradients: bool = True,
    quantize: str | None = None,
    calibration: str | os.PathLike | None = None,
    layer_layout: str = AUTO,
) -> ExportReport:
    """Write explainer.onnx, input_gradients.onnx, head.onnx, forward.onnx and model.json into ``out_dir``.

    ``target_layer`` is a dotted module path; ``None`` picks the last 4-D feature map before
    global pooling. The whole folder is written beside ``out_dir`` (a hidden sibling) and swapped in
    only when complete: a failed check, or any failure before the swap, raises and leaves ``out_dir``
    as it was (files an export does not write, such as recipe.json, are carried over).
    Invalid preprocessing (a zero std, a crop larger than the resize) raises ExportError at once.
    ``resize`` is the shorter side before the center crop (default: input size * 256/224);
    ``source`` adds facts (architecture, weights origin) to the recorded identity; ``weights`` says
    where the weights came from, recorded as model.json's ``weights`` so that a served model can say
    it is untrained (``contract.WEIGHTS_RANDOM``, "random"); ``tolerance``
    is the largest relative error the check accepts. ``input_gradients=False`` leaves out
    input_gradients.onnx (saliency, deconvnet, guided backpropagation, Guided Grad-CAM): a backward
    pass through the whole network is the slowest graph to trace and export on deep networks.
    ``quantize="int8"`` with ``calibration`` (a folder of images) writes the INT8 edge explainer:
    see exporter/quantize.py; explainer.onnx and forward.onnx get a statically quantised body.
    ``layer_layout`` says how the target layer's output is laid out: ``auto`` (detected from its
    shape and the input size), ``nchw`` [N, K, h, w], ``tokens`` [N, T, C] (ViT/DeiT: the leading
    class/distillation tokens are dropped, the patch tokens folded into the grid) or ``nhwc``
    [N, h, w, C] (Swin); every graph works on the [N, K, h, w] grid.
    """
    started = time.perf_counter()
    calibration_files = quantize_request(quantize, calibration)
    out_dir = Path(out_dir)
    name = name or out_dir.name
    seconds: dict[str, float] = {}
    was_training = model.training
    model.eval()
    try:
        height, width = (int(v) for v in input_size)
        preprocess = check_preprocessing((height, width), resize, mean, std)
        input_shape = (3, height, width)
        probe = torch.randn((2, *input_shape), generator=torch.Generator().manual_seed(TRACE_SEED))
        is_default = target_layer is None
        if target_layer is None:
            target_layer = default_layer(model, probe)
            log.info("target layer not given; using %r (last feature map or token grid before pooling)",
                     target_layer)
        layer = find_target(model, target_layer, probe, layer_layout)
        activation_shape, logits_shape = _shapes(model, layer, target_layer, probe)
        check_reaches_logits(model, layer, target_layer, probe)
        batch = trace_batch(input_shape, activation_shape[1:], layer.output_shape[1:])
        example = torch.randn((batch, *input_shape), generator=torch.Generator().manual_seed(TRACE_SEED))
        num_classes = int(logits_shape[1])
        label_list = _labels(labels, num_classes)
        cam_linear = find_cam_linear(model, layer, activation_shape, input_shape)
        needs_pixels = head_reads_pixels(model, layer, activation_shape, input_shape)
        methods = [m.name for m in graph_methods(cam_linear is not None)]
        if calibration_files and needs_pixels:
            raise ExportError(QUANTIZE_NEEDS_PLAIN_HEAD)
        log.info("layer %s (%s): activations %s, %d classes, CAM %s, head reads pixels: %s", target_layer,
                 layer.layout.kind, list(activation_shape[1:]), num_classes, "yes" if cam_linear else "no",
                 needs_pixels)

        staging = staging_dir(out_dir)  # the whole folder is written here, then swapped in
        explainer_tmp = staging / contract.EXPLAINER_FILE
        head_tmp = staging / contract.HEAD_FILE
        forward_tmp = staging / contract.FORWARD_FILE
        input_tmp = staging / contract.INPUT_GRADIENTS_FILE
        temporaries = {explainer_tmp: contract.EXPLAINER_FILE, head_tmp: contract.HEAD_FILE,
                       forward_tmp: contract.FORWARD_FILE}
        if input_gradients:
            temporaries[input_tmp] = contract.INPUT_GRADIENTS_FILE
        outputs = [contract.OUTPUT_LOGITS, contract.OUTPUT_ACTIVATIONS, contract.OUTPUT_GRADIENTS]
        outputs += [registry.get(m).output for m in methods]
        target_example = torch.tensor([-1] + [0] * (batch - 1), dtype=torch.int64)
        try:
            with _step(seconds, "trace_explainer", "tracing forward + backward"):
                graph = trace(explainer_function(model, layer, cam_linear), model, example, target_example)
            with _step(seconds, "onnx_explainer", "writing explainer.onnx"):
                write_onnx(graph, model, (example, target_example), explainer_tmp,
                           [contract.INPUT_PIXELS, contract.INPUT_TARGET], outputs, pixels_example=example)
            if input_gradients:
                _write_input_gradients(model, layer, (example, target_example), input_tmp, seconds)
            head_example: tuple[torch.Tensor, ...] = (torch.randn((batch, *activation_shape[1:])),)
            head_inputs = [contract.INPUT_ACTIVATIONS]
            if needs_pixels:
                head_example += (example,)
                head_inputs.append(contract.INPUT_PIXELS)
            with _step(seconds, "trace_head", "tracing the head (target layer -> logits)"):
                head_graph = trace(head_function(model, layer, None if needs_pixels else input_shape),
                                   model, *head_example)
            with _step(seconds, "onnx_head", "writing head.onnx"):
                write_onnx(head_graph, model, head_example, head_tmp, head_inputs, [contract.OUTPUT_LOGITS],
                           kind="head", pixels_example=example)
            with _step(seconds, "forward", "tracing and writing forward.onnx (pixels -> logits)"):
                forward_graph = trace(forward_function(model), model, example)
                write_onnx(forward_graph, model, (example,), forward_tmp, [contract.INPUT_PIXELS],
                           [contract.OUTPUT_LOGITS], kind="forward", pixels_example=example)
            linear = model.get_submodule(cam_linear) if cam_linear else None
            cam_weight = linear.weight if linear is not None else None
            with _step(seconds, "check", "checking the graphs against PyTorch autograd (batch 1 and 3)"):
                explainer_result = export_check.check_explainer(explainer_tmp, model, layer, input_shape,
                                                                num_classes, cam_weight, tolerance)
                input_result = (export_check.check_input_gradients(input_tmp, model, layer, input_shape,
                                                                   num_classes, tolerance) if input_gradients else None)
                head_result = export_check.check_head(head_tmp, model, layer, input_shape, num_classes, tolerance)
                forward_result = export_check.check_forward(forward_tmp, model, input_shape, num_classes, tolerance)
            failures = (explainer_result.failures()
                        + [f"input_gradients {f}" for f in (input_result.failures() if input_result else [])]
                        + [f"head {f}" for f in head_result.failures()]
                        + [f"forward {f}" for f in forward_result.failures()])
            if failures:
                raise ExportError(f"export check failed (tolerance {tolerance:g} relative): "
                                  + "; ".join(failures))
            quantized_check = None
            if calibration_files:
                with _step(seconds, "quantize", f"quantising the body to {quantize} "
                                                f"({len(calibration_files)} calibration images)"):
                    spec = spec_from_dict(preprocess, (height, width))
                    quantized_check = quantize_graphs(explainer_tmp, forward_tmp, calibration_rows(
                        calibration_files, spec), model, layer, cam_weight, tolerance)
            seconds["total"] = round(time.perf_counter() - started, 3)
            model_json = {
                "format_version": FORMAT_VERSION,
                "name": name,
                "weights": weights or contract.WEIGHTS_UNSPECIFIED,
                "input_size": [height, width],
                "preprocess": preprocess,
                "labels": label_list,
                "num_classes": num_classes,
                "target_layer": target_layer,
                "target_layer_is_default": is_default,
                "target_layout": layer.layout.describe(),
                "activation_shape": [int(v) for v in activation_shape[1:]],
                "methods": methods,
                "input_methods": list(registry.names(registry.Kind.INPUT)) if input_gradients else [],
                "gradient_free_methods": list(registry.names(registry.Kind.GRADIENT_FREE)),
                "cam": ({"linear_module": cam_linear, "file": contract.CAM_LINEAR_FILE} if cam_linear else None),
                "input_gradients": ({"file": contract.INPUT_GRADIENTS_FILE, "inputs": INPUT_GRADIENTS_INPUTS,
                                     "outputs": INPUT_GRADIENTS_OUTPUTS} if input_gradients else None),
                "head": {"file": contract.HEAD_FILE, "inputs": head_inputs},
                "forward": {"file": contract.FORWARD_FILE, "inputs": [contract.INPUT_PIXELS]},
                "explainer": {"file": contract.EXPLAINER_FILE,
                              "inputs": [contract.INPUT_PIXELS, contract.INPUT_TARGET], "outputs": outputs},
                "opset": OPSET,
                "source": contract.source_without_paths({"module_class": module_class(model),
                                                         "state_dict_sha256": state_dict_sha256(model),
                                                         **(source or {})}),
                "export_check": {"explainer": explainer_result.to_dict(), "head": head_result.to_dict(),
                                 "forward": forward_result.to_dict(),
                                 **({"input_gradients": input_result.to_dict()} if input_result else {}),
                                 **({"quantized": quantized_check} if quantized_check else {})},
                **({"quantized": quantize, "calibration_images": len(calibration_files)}
                   if calibration_files else {}),
                "export_seconds": dict(seconds),
                "versions": {"torch": torch.__version__, "onnx": onnx.__version__},
            }
            try:
                metadata = onnx_metadata(model_json)
            except (TypeError, ValueError) as error:
                raise ExportError(f"model.json cannot hold what was given (labels, source...): {error}") from error
            for tmp in temporaries:
                set_metadata(tmp, metadata)
            if linear is not None:
                _write_cam_linear(staging / contract.CAM_LINEAR_FILE, linear)
            write_model_json(staging, model_json)
            swap_in(staging, out_dir, EXPORTED_FILES)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        model.train(was_training)

    report = ExportReport(
        name=name, out_dir=out_dir, target_layer=target_layer, target_layer_is_default=is_default,
        methods=methods, head_inputs=head_inputs, activation_shape=[int(v) for v in activation_shape[1:]],
        num_classes=num_classes, opset=OPSET, explainer_check=explainer_result,
        input_gradients_check=input_result, head_check=head_result,
        forward_check=forward_result,
        seconds=seconds, quantized_check=quantized_check,
        sizes_bytes={name: (out_dir / name).stat().st_size for name in temporaries.values()},
    )
    return report  # the caller prints report.summary(): the CLI and `models build` print it once, on stdout
