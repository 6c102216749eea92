"""The Open Inference Protocol (KServe v2, ``inference.GRPCInferenceService``) on onnxcam's port.

Clients written for Triton or KServe (tritonclient, KServe's SDK) call the same models. ModelInfer is a
translation, not a second implementation: each row becomes an ``ExplainRequest`` that goes through
``Pipeline.explain`` (the batcher, limits, budget, deadlines and status codes of Explain), run side by
side so the batcher can put them into one session call, and the ``ExplainResponse``s become tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import numpy as np
from google.protobuf.descriptor import FieldDescriptor

import onnxcam
from onnxcam import methods as registry
from onnxcam.client import method_value
from onnxcam.proto import explainer_pb2 as pb
from onnxcam.proto import grpc_service_pb2 as oip
from onnxcam.proto import grpc_service_pb2_grpc as oip_grpc
from onnxcam.proto import model_config_pb2 as mc
from server import deadlines
from server import oip_interface as iface
from server.errors import RequestError, abort, invalid, not_found, quoted
from server.methods import NAME_BY_ENUM
from server.oip_tensors import Tensor, add_output, decode_inputs
from server.pipeline import Pipeline

log = logging.getLogger("onnxcam.server")

SERVICE_NAME = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
#: The only version of a model this server has (Triton's repositories number them; onnxcam's do not).
MODEL_VERSION = "1"
EXTENSIONS = ["model_configuration", "parameters"]
#: Requested outputs one ModelInfer may list: logits, top-k and three per method fit many times over;
#: a million copies of one name would otherwise each be read.
MAX_OUTPUTS = 256
#: ExplainRequest fields a request parameter of the same name sets.
BOOL_PARAMETERS = ("heatmap_png", "overlay_png")
INT_PARAMETERS = ("top_k", "max_render_side")
SAMPLING_FIELDS = {f.name: f for f in pb.Sampling.DESCRIPTOR.fields}
FLOAT_TYPES = (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT)


def _parameter(parameters, key: str) -> object | None:
    if key not in parameters:
        return None
    value = parameters[key]
    kind = value.WhichOneof("parameter_choice")
    return getattr(value, kind) if kind else None


def _as_bool(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise invalid(f"parameter {quoted(key)} must be a bool (or \"true\"/\"false\"), not {quoted(value)}")


def _as_number(key: str, value: object, kind: type) -> float | int:
    try:
        if isinstance(value, bool):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        kind_name = "an integer" if kind is int else "a number"
        raise invalid(f"parameter {quoted(key)} must be {kind_name}, not {quoted(value)}") from None


@dataclass
class Plan:
    """A ModelInfer request read: the ExplainRequest every row shares and what to send back."""

    template: pb.ExplainRequest
    methods: list[str]
    top_k: int
    outputs: list[str] = field(default_factory=list)


def _plan(request: oip.ModelInferRequest, model_name: str, served: list[str], num_classes: int) -> Plan:
    """Parameters (``methods``, ``top_k``, ``budget_ms``, ``heatmap_png``, ``overlay_png``,
    ``max_render_side``, the sampling fields) and requested outputs -> the shared ExplainRequest."""
    params = request.parameters
    if len(request.outputs) > MAX_OUTPUTS:
        raise invalid(f"{len(request.outputs)} outputs requested; at most {MAX_OUTPUTS}, each named once")
    wanted_outputs = [o.name for o in request.outputs]
    known = {iface.OUTPUT_LOGITS, iface.OUTPUT_TOP_K_INDEX, iface.OUTPUT_TOP_K_SCORE}
    implied: list[str] = []
    for name in wanted_outputs:
        parsed = iface.method_of_output(name)
        if (parsed is None and name not in known) or (parsed is not None and parsed[1] not in served):
            raise invalid(f"unknown output {quoted(name)}; this model has {iface.OUTPUT_LOGITS}, "
                          f"{iface.OUTPUT_TOP_K_INDEX}, {iface.OUTPUT_TOP_K_SCORE} and "
                          f"map_/heatmap_/overlay_<method> for {', '.join(served)}")
        if parsed is not None and parsed[1] not in implied:
            implied.append(parsed[1])
    text = _parameter(params, "methods")
    if text is not None and not isinstance(text, str):
        raise invalid(f"parameter 'methods' must be a string such as \"gradcam,layercam\", not {quoted(text)}")
    try:
        values = [method_value(m) for m in text.split(",") if m.strip()] if text else \
            [method_value(m) for m in implied]
    except ValueError as error:
        raise invalid(f"parameter 'methods': {error}") from None
    template = pb.ExplainRequest(model=model_name, methods=values, request_id=request.id, raw=True,
                                 top_k=num_classes)
    for key in BOOL_PARAMETERS:
        value = _parameter(params, key)
        setattr(template, key, _as_bool(key, value) if value is not None else
                any(n.startswith(iface.HEATMAP_PREFIX if key == "heatmap_png" else iface.OVERLAY_PREFIX)
                    for n in wanted_outputs))
    top_k = 5
    for key in INT_PARAMETERS:
        value = _parameter(params, key)
        if value is not None:
            number = int(_as_number(key, value, int))
            if number < 0:
                raise invalid(f"parameter {quoted(key)} must be 0 or positive, not {number}")
            if key == "top_k":
                top_k = min(number or 5, num_classes)
            else:
                template.max_render_side = number
    budget = _parameter(params, "budget_ms")
    if budget is not None:
        template.budget_ms = float(_as_number("budget_ms", budget, float))
    for key, descriptor in SAMPLING_FIELDS.items():
        value = _parameter(params, key)
        if value is None:
            continue
        if descriptor.enum_type is not None:
            if str(value).upper() not in descriptor.enum_type.values_by_name:
                raise invalid(f"parameter {quoted(key)} must be one of "
                              f"{', '.join(descriptor.enum_type.values_by_name)}")
            setattr(template.sampling, key, descriptor.enum_type.values_by_name[str(value).upper()].number)
        else:
            kind = float if descriptor.cpp_type in FLOAT_TYPES else int
            setattr(template.sampling, key, _as_number(key, value, kind))
    names = [NAME_BY_ENUM[v] for v in values if v in NAME_BY_ENUM]
    return Plan(template, names or ([] if pb.METHOD_NONE in values else list(registry.DEFAULT)), top_k,
                wanted_outputs)


def _rows(tensors: dict[str, Tensor], model_input: tuple[int, int], num_classes: int
          ) -> tuple[list[dict[str, object]], list[int]]:
    """Per row: the ExplainRequest input (``image`` bytes or a ``tensor``), and the rows' targets."""
    unknown = set(tensors) - {iface.INPUT_IMAGE, iface.INPUT_PIXELS, iface.INPUT_TARGET}
    if unknown:
        raise invalid(f"unknown input {quoted(sorted(unknown)[0])}; this model takes {iface.INPUT_IMAGE} (BYTES [N]: "
                      f"encoded images) or {iface.INPUT_PIXELS} (FP32 [N,3,H,W]), and optionally {iface.INPUT_TARGET} "
                      "(INT64 [N])")
    image, pixels = tensors.get(iface.INPUT_IMAGE), tensors.get(iface.INPUT_PIXELS)
    if (image is None) == (pixels is None):
        raise invalid(f"give exactly one of the inputs {iface.INPUT_IMAGE!r} (encoded images) and "
                      f"{iface.INPUT_PIXELS!r} (preprocessed FP32)")
    if image is not None:
        if image.datatype != "BYTES":
            raise invalid(f"input {iface.INPUT_IMAGE!r} must be BYTES (encoded JPEG/PNG/WebP), not "
                          f"{quoted(image.datatype)}")
        if len(image.shape) not in (1, 2) or (len(image.shape) == 2 and image.shape[1] != 1):
            raise invalid(f"input {iface.INPUT_IMAGE!r} must have shape [N] or [N, 1], not {quoted(list(image.shape))}")
        rows: list[dict[str, object]] = [{"image": bytes(value)} for value in image.values]
    else:
        height, width = model_input
        if pixels.datatype != "FP32":
            raise invalid(f"input {iface.INPUT_PIXELS!r} must be FP32, not {quoted(pixels.datatype)}")
        if len(pixels.shape) != 4 or tuple(pixels.shape[1:]) != (3, height, width):
            raise invalid(f"input {iface.INPUT_PIXELS!r} must have shape [N, 3, {height}, {width}], not "
                          f"{quoted(list(pixels.shape))}")
        rows = [{"tensor": pb.Tensor(shape=[3, height, width], data=row.ravel().tolist())} for row in pixels.values]
    if not rows:
        raise invalid("the request has 0 rows")
    targets = [-1] * len(rows)
    target = tensors.get(iface.INPUT_TARGET)
    if target is not None:
        if target.datatype not in ("INT64", "INT32"):
            raise invalid(f"input {iface.INPUT_TARGET!r} must be INT64 (class index per row, -1: the top-1), not "
                          f"{quoted(target.datatype)}")
        flat = np.asarray(target.values).ravel()
        if len(target.shape) not in (1, 2) or flat.size != len(rows) or \
                (len(target.shape) == 2 and target.shape[1] != 1):
            raise invalid(f"input {iface.INPUT_TARGET!r} must have shape [{len(rows)}] (one class per row), not "
                          f"{quoted(list(target.shape))}")
        for value in flat:
            if not -1 <= int(value) < num_classes:
                raise invalid(f"input {iface.INPUT_TARGET!r}: class index {int(value)} is out of range: the model "
                              f"has classes 0..{num_classes - 1} (-1: the row's top-1)")
        targets = [int(v) for v in flat]
    return rows, targets


class OpenInferenceService(oip_grpc.GRPCInferenceServiceServicer):
    """The protocol's core RPCs; the rest of Triton's service answers UNIMPLEMENTED."""

    def __init__(self, pipeline: Pipeline, is_ready: Callable[[], bool], workers: int = 8) -> None:
        self.pipeline = pipeline
        self.is_ready = is_ready
        self._rows_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="oip")

    def _model(self, name: str, version: str, context: grpc.ServicerContext):
        try:
            model = self.pipeline.repository.get(name)
        except RequestError as error:
            abort(context, error)
        if version not in ("", MODEL_VERSION):
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"model {quoted(name)} has only version {MODEL_VERSION}, not {quoted(version)}")
        return model

    def ServerLive(self, request, context):
        return oip.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return oip.ServerReadyResponse(ready=self.is_ready() and bool(self.pipeline.repository.models))

    def ModelReady(self, request, context):
        known = request.name in self.pipeline.repository.models and request.version in ("", MODEL_VERSION)
        return oip.ModelReadyResponse(ready=known and self.is_ready())

    def ServerMetadata(self, request, context):
        return oip.ServerMetadataResponse(name="onnxcam", version=onnxcam.__version__, extensions=EXTENSIONS)

    def ModelMetadata(self, request, context):
        model = self._model(request.name, request.version, context)
        tensor = oip.ModelMetadataResponse.TensorMetadata
        return oip.ModelMetadataResponse(
            name=model.name, versions=[MODEL_VERSION], platform="onnxcam",
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in iface.inputs(model)],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in iface.outputs(model)])

    def ModelConfig(self, request, context):
        """The same tensors in Triton's ModelConfig terms (max_batch_size 0: the shapes carry the batch)."""
        model = self._model(request.name, request.version, context)
        config = mc.ModelConfig(name=model.name, platform="onnxcam", max_batch_size=0)
        for spec in iface.inputs(model):
            config.input.add(name=spec.name, data_type=mc.DataType.Value(iface.CONFIG_TYPES[spec.datatype]),
                             dims=spec.shape, optional=spec.optional)
        for spec in iface.outputs(model):
            config.output.add(name=spec.name, data_type=mc.DataType.Value(iface.CONFIG_TYPES[spec.datatype]),
                              dims=spec.shape)
        return oip.ModelConfigResponse(config=config)

    def ModelInfer(self, request, context):
        try:
            return self._infer(request, context)
        except RequestError as error:
            abort(context, error)

    def _infer(self, request: oip.ModelInferRequest, context: grpc.ServicerContext) -> oip.ModelInferResponse:
        repository = self.pipeline.repository
        if request.model_name not in repository.models:
            repository.get(request.model_name)  # NOT_FOUND naming the loaded models
        if request.model_version not in ("", MODEL_VERSION):
            raise not_found(f"model {quoted(request.model_name)} has only version {MODEL_VERSION}")
        model = repository.models[request.model_name]
        plan = _plan(request, model.name, list(model.methods), model.info.num_classes)
        rows, targets = _rows(decode_inputs(request), model.info.input_size, model.info.num_classes)
        if len(rows) > self.pipeline.config.max_queue:
            raise invalid(f"{len(rows)} rows in one request; this server queues at most "
                          f"{self.pipeline.config.max_queue} per model: send fewer")
        deadline_at = deadlines.deadline_at(context.time_remaining(), self.pipeline.config.max_request_s)
        futures = []
        for source, target in zip(rows, targets, strict=True):
            row = pb.ExplainRequest()
            row.CopyFrom(plan.template)
            if "image" in source:
                row.image = source["image"]
            else:
                row.tensor.CopyFrom(source["tensor"])
            if target >= 0:
                row.targets.append(target)
            futures.append(self._rows_pool.submit(self.pipeline.explain, row, deadline_at, context.is_active))
        answers = []
        for index, future in enumerate(futures):
            try:
                answers.append(future.result())
            except RequestError as error:
                for other in futures:
                    other.cancel()
                prefix = f"row {index}: " if len(futures) > 1 else ""
                raise RequestError(error.code, prefix + error.message, error.retryable) from None
            except Exception as error:
                log.exception("ModelInfer on model %r failed", model.name)
                raise RequestError(grpc.StatusCode.INTERNAL, f"internal error: {error}") from error
        return self._response(request, model.name, plan, answers)

    @staticmethod
    def _response(request: oip.ModelInferRequest, model_name: str, plan: Plan,
                  answers: list[pb.ExplainResponse]) -> oip.ModelInferResponse:
        response = oip.ModelInferResponse(model_name=model_name, model_version=MODEL_VERSION, id=request.id)
        num_classes = len(answers[0].predictions)
        logits = np.zeros((len(answers), num_classes), np.float32)
        scores = np.zeros((len(answers), plan.top_k), np.float32)
        indices = np.zeros((len(answers), plan.top_k), np.int64)
        for row, answer in enumerate(answers):
            for rank, prediction in enumerate(answer.predictions):
                logits[row, prediction.index] = prediction.logit
                if rank < plan.top_k:
                    scores[row, rank], indices[row, rank] = prediction.score, prediction.index
        tensors: dict[str, object] = {iface.OUTPUT_LOGITS: logits, iface.OUTPUT_TOP_K_INDEX: indices,
                                      iface.OUTPUT_TOP_K_SCORE: scores}
        skipped = {NAME_BY_ENUM.get(s.method, str(s.method)): s for a in answers for s in a.skipped}
        for name in plan.methods:
            if name in skipped:
                continue
            maps = [next(h for h in a.heatmaps if NAME_BY_ENUM.get(h.method) == name) for a in answers]
            raw = maps[0].raw
            shape = ([raw.channels] if raw.channels > 1 else []) + [raw.height, raw.width]
            tensors[iface.MAP_PREFIX + name] = np.stack([np.asarray(h.raw.values, np.float32).reshape(shape)
                                                        for h in maps])
            if plan.template.heatmap_png:
                tensors[iface.HEATMAP_PREFIX + name] = [h.heatmap_png for h in maps]
            if plan.template.overlay_png:
                tensors[iface.OVERLAY_PREFIX + name] = [h.overlay_png for h in maps]
        for name in plan.outputs or list(tensors):
            if name in tensors:
                add_output(response, name, tensors[name])  # type: ignore[arg-type]
        if skipped:
            response.parameters["skipped"].string_param = "; ".join(
                f"{name}: {pb.Skipped.Reason.Name(s.reason)} ({s.detail})" for name, s in skipped.items())
        return response

    def close(self) -> None:
        self._rows_pool.shutdown(wait=True)
