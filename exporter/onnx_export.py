"""Writing a traced FX graph to ONNX with the dynamo exporter, batch dimension dynamic."""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn
from torch.fx import GraphModule

from exporter.diagnose import describe_op
from exporter.errors import ExportError
from exporter.graph_rewrites import simplify

OPSET = 18
MAX_BATCH = 4096


class _GraphModule(nn.Module):
    """The traced graph (weights inside as constants) behind a named signature for torch.export."""

    def __init__(self, graph: GraphModule) -> None:
        super().__init__()
        self.graph_module = graph


class _ExplainerModule(_GraphModule):
    def forward(self, pixels: torch.Tensor, target: torch.Tensor):
        return self.graph_module(pixels, target)


class _InputGradientsModule(_GraphModule):
    def forward(self, pixels: torch.Tensor, target: torch.Tensor, rule: torch.Tensor):
        return self.graph_module(pixels, target, rule)


class _ForwardModule(_GraphModule):
    def forward(self, pixels: torch.Tensor):
        return self.graph_module(pixels)


class _HeadModule(_GraphModule):
    def forward(self, activations: torch.Tensor, pixels: torch.Tensor | None = None):
        if pixels is None:
            return self.graph_module(activations)
        return self.graph_module(activations, pixels)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _explain_failure(error: Exception, model: nn.Module, example: torch.Tensor) -> ExportError:
    """Name the op and the module it came from; fall back to the exporter's own summary line."""
    text = _ANSI.sub("", f"{error}\n{error.__cause__ or ''}")
    summary = next((line.strip() for line in text.splitlines() if "No ONNX function found" in line
                    or "Error:" in line), text.strip().splitlines()[0] if text.strip() else repr(error))
    ops = re.findall(r"(?:aten|prims)\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?", text)
    for op in dict.fromkeys(ops):
        where = describe_op(model, example, op)
        if where:
            return ExportError(f"cannot export op {op} (from module {where}) to ONNX: {summary}")
    if ops:
        return ExportError(f"cannot export op {ops[0]} to ONNX: {summary}")
    return ExportError(f"ONNX export failed: {summary}")


def write_onnx(
    graph: GraphModule,
    model: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    *,
    pixels_example: torch.Tensor,
    kind: str = "explainer",
) -> None:
    """Export ``graph`` (with ``model``'s weights) to ``path``; every input has a dynamic batch.

    ``kind`` is the graph's signature: explainer (pixels, target), input_gradients (pixels, target,
    rule), head (activations[, pixels]) or forward (pixels). ``pixels_example`` serves only to name the
    module of an op that fails. The graph is simplified in place first (exporter/graph_rewrites.py).
    """
    simplify(graph)
    wrapper = {"explainer": _ExplainerModule, "input_gradients": _InputGradientsModule, "head": _HeadModule,
               "forward": _ForwardModule}[kind](graph)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    dynamic = tuple({0: batch} for _ in example)
    log = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper, example, dynamo=True, dynamic_shapes=dynamic, input_names=input_names,
                output_names=output_names, opset_version=OPSET, optimize=True, verbose=False,
            )
    except Exception as error:  # the exporter raises many types; all become one clear message
        raise _explain_failure(error, model, pixels_example) from error
    if program is None:
        raise ExportError(f"ONNX export produced nothing:\n{log.getvalue()[-2000:]}")
    program.save(str(path))
    _check_io_names(path, input_names, output_names)


def _check_io_names(path: Path, input_names: list[str], output_names: list[str]) -> None:
    model = onnx.load(str(path), load_external_data=False)
    got_in = [i.name for i in model.graph.input]
    got_out = [o.name for o in model.graph.output]
    if got_in != input_names or got_out != output_names:
        raise ExportError(f"exported graph has inputs {got_in} and outputs {got_out}, "
                          f"expected {input_names} and {output_names}")


def set_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Write ``metadata`` into the graph's metadata_props so a bare .onnx is self-describing."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
