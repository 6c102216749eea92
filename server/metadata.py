"""ListModels and GetModelMetadata answers, built from a loaded model."""

from __future__ import annotations

import json

from onnxcam import contract
from onnxcam.proto import explainer_pb2 as pb
from server.loaded_model import LoadedModel
from server.methods import ENUM_BY_NAME


def summary(model: LoadedModel) -> pb.ModelSummary:
    info = model.info
    return pb.ModelSummary(name=info.name, num_classes=info.num_classes, input_height=info.input_size[0],
                           input_width=info.input_size[1], methods=[ENUM_BY_NAME[m] for m in model.methods])


def _export_check(report: dict) -> pb.ExportCheck:
    check = pb.ExportCheck(passed=bool(report) and all(g.get("passed", False) for g in report.values()))
    tolerances = [g.get("tolerance_rel") for g in report.values() if g.get("tolerance_rel") is not None]
    check.tolerance_rel = float(max(tolerances)) if tolerances else 0.0
    for graph, result in report.items():
        for output, err in (result.get("outputs") or {}).items():
            check.outputs[f"{graph}.{output}"].CopyFrom(
                pb.OutputError(max_abs=float(err.get("max_abs", 0.0)), max_rel=float(err.get("max_rel", 0.0))))
    return check


def metadata(model: LoadedModel) -> pb.ModelMetadata:
    info = model.info
    pre = info.preprocess
    # folders exported before base names were the rule may hold the exporting machine's paths
    recorded = info.raw.get("source")
    source = contract.source_without_paths(recorded if isinstance(recorded, dict) else {})
    if info.raw.get("quantized"):  # an INT8 edge explainer: say so, and on how many images it was calibrated
        source.update(quantized=info.raw["quantized"], calibration_images=info.raw.get("calibration_images", 0))
    return pb.ModelMetadata(
        name=info.name, labels=list(info.labels), num_classes=info.num_classes, input_height=info.input_size[0],
        input_width=info.input_size[1], target_layer=info.target_layer, activation_shape=list(info.activation_shape),
        methods=[ENUM_BY_NAME[m] for m in model.methods],
        preprocess=pb.Preprocess(color=pre.color, layout=pre.layout, resize_shorter_side=pre.resize_shorter_side,
                                 crop_height=pre.crop[0], crop_width=pre.crop[1], scale=pre.scale, mean=pre.mean,
                                 std=pre.std),
        export_check=_export_check(info.raw.get("export_check") or {}),
        opset=info.opset,
        source={str(k): v if isinstance(v, str) else json.dumps(v) for k, v in source.items()},
        method_cost_ms=model.costs.as_dict(model.methods),
        providers=model.providers,
        unavailable=[pb.Skipped(method=ENUM_BY_NAME[m], reason=reason, detail=detail)
                     for m, (reason, detail) in model.unavailable.items()],
    )
