"""One Explain request end to end, without gRPC: decode, preprocess, choose methods, batch, postprocess.

The gRPC service and the in-process benchmark both call ``Pipeline.explain``; every refusal is a
RequestError carrying its status code.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np
from PIL import Image

from onnxcam import contract, sampling
from onnxcam import methods as registry
from onnxcam.methods import Kind
from onnxcam.proto import explainer_pb2 as pb
from server import budget, deadlines, fits, heatmaps, imaging, methods, sampled, work
from server.batcher import BatchResult
from server.config import ServerConfig
from server.errors import cancelled, deadline, invalid
from server.loaded_model import LoadedModel
from server.repository import Repository

DEFAULT_TOP_K = 5
#: Entries the request's ``methods`` field may hold: every method once.
MAX_METHODS_LISTED = len(pb.Method.values())


@dataclass(frozen=True)
class Options:
    methods: list[str]
    #: Class indices to explain; empty means the top-1.
    targets: list[int]
    top_k: int
    budget_ms: float
    raw: bool
    heatmap_png: bool
    overlay_png: bool
    #: The sampled methods' parameters, defaults filled in for the model's input size.
    sampling: sampling.Settings
    #: Largest side of the PNGs: the request's when smaller than the server's cap; 0: none.
    max_render_side: int = 0


def parse_options(request: pb.ExplainRequest, model: LoadedModel, config: ServerConfig) -> Options:
    num_classes = model.info.num_classes
    # Raw counts first: duplicates are merged below, but a million copies of one target still cost
    # the server a million loop turns and would be accepted.
    if len(request.targets) > config.max_targets:
        distinct = len(set(request.targets))
        raise invalid(f"{len(request.targets)} targets given ({distinct} distinct); at most {config.max_targets} "
                      "per request")
    if len(request.methods) > MAX_METHODS_LISTED:
        raise invalid(f"{len(request.methods)} methods given; list each at most once (at most {MAX_METHODS_LISTED})")
    targets: list[int] = []
    for target in request.targets:
        if not 0 <= target < num_classes:
            raise invalid(f"class index {target} is out of range: model {model.name} has classes 0..{num_classes - 1}")
        if target not in targets:
            targets.append(target)
    if len(targets) > config.max_targets:
        raise invalid(f"{len(targets)} targets asked for; at most {config.max_targets} per request")
    if request.top_k < 0:
        raise invalid(f"top_k must be 0 (default {DEFAULT_TOP_K}) or positive, not {request.top_k}")
    if not math.isfinite(request.budget_ms) or request.budget_ms < 0:
        raise invalid(f"budget_ms must be 0 (no budget) or positive, not {request.budget_ms}")
    if request.max_render_side < 0:
        raise invalid(f"max_render_side must be 0 (the server's cap) or positive, not {request.max_render_side}")
    caps = [side for side in (request.max_render_side, config.max_render_side) if side > 0]
    any_output = request.raw or request.heatmap_png or request.overlay_png
    requested = methods.requested(request.methods)
    return Options(
        methods=requested,
        targets=targets,
        top_k=min(request.top_k or DEFAULT_TOP_K, num_classes),
        budget_ms=float(request.budget_ms),
        raw=request.raw or not any_output,
        heatmap_png=request.heatmap_png,
        overlay_png=request.overlay_png,
        # checked only when a sampled method is asked for: other requests ignore the field
        sampling=(sampled.settings(request.sampling, *model.info.input_size)
                  if any(registry.get(m).kind is Kind.SAMPLED for m in requested)
                  else sampling.Settings().resolved(*model.info.input_size)),
        max_render_side=min(caps) if caps else 0,
    )


@dataclass(frozen=True)
class Source:
    """The request's input before decoding: its size (from the image header, or the tensor's)."""

    height: int
    width: int
    #: The lazily opened image; None for a tensor input.
    header: Image.Image | None = None


def _ms(start: float, end: float) -> float:
    return (end - start) * 1000.0


def _require_finite(values: np.ndarray, what: str, request: pb.ExplainRequest, model: LoadedModel) -> None:
    """Refuse NaN or infinite outputs: finite but huge inputs (a tensor of 3e38) overflow inside the
    network, and a response of NaN scores and maps with OK would look like an answer."""
    if np.isfinite(values).all():
        return
    if request.WhichOneof("input") == "tensor":
        pre = model.info.preprocess
        ends = [(end * pre.scale - m) / s for end in (0.0, 255.0) for m, s in zip(pre.mean, pre.std, strict=True)]
        given = (f"a tensor must hold preprocessed pixels, {min(ends):.2f} to {max(ends):.2f} for this model (an "
                 f"image's range); this one holds values up to {np.abs(np.asarray(request.tensor.data)).max():.3g}")
    else:
        given = "the model overflows on this image"
    raise invalid(f"the model's {what} are not finite (NaN or infinite) for this input: {given}")


#: RawMap.values' key on the wire: field 3, length-delimited (a packed repeated float).
_RAW_VALUES_KEY = bytes([3 << 3 | 2])


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def set_raw_values(raw_map: pb.RawMap, values: np.ndarray) -> None:
    """Append a float32 array to ``raw_map.values`` as the packed field's wire bytes: protobuf parses
    them in one pass, where ``extend`` converts every value to a Python float and back (15 ms for a
    3 x 224 x 224 input-gradient map, 0.13 ms this way); the message is the same to the byte."""
    data = np.ascontiguousarray(values, dtype="<f4").tobytes()
    raw_map.MergeFromString(_RAW_VALUES_KEY + _varint(len(data)) + data)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max()
    e = np.exp(z)
    return e / e.sum()


class Pipeline:
    def __init__(self, repository: Repository, config: ServerConfig) -> None:
        self.repository = repository
        self.config = config

    def _open(self, request: pb.ExplainRequest, model: LoadedModel) -> tuple[Source, float]:
        """The input with its size known and nothing decoded yet, and the ms that took."""
        kind = request.WhichOneof("input")
        start = time.perf_counter()
        if kind == "image":
            header = imaging.open_header(request.image, self.config.max_image_pixels, self.config.image_formats)
            width, height = header.size  # EXIF rotation may swap them; area and longer side stay
            return Source(height, width, header), _ms(start, time.perf_counter())
        if kind == "tensor":
            return Source(*model.info.preprocess.crop), _ms(start, time.perf_counter())
        raise invalid("the request has no input: set image (encoded bytes) or tensor")

    def _prepare(self, request: pb.ExplainRequest, model: LoadedModel,
                 source: Source) -> tuple[imaging.Prepared, float, float]:
        """(prepared input, decode ms, preprocess ms)."""
        start = time.perf_counter()
        if source.header is not None:
            image = imaging.load(source.header)
            decoded = time.perf_counter()
            prepared = imaging.prepare_image(image, model.info.preprocess)
        else:
            data = np.asarray(request.tensor.data, dtype=np.float32)
            decoded = time.perf_counter()
            prepared = imaging.prepare_tensor(list(request.tensor.shape), data, model.info.preprocess)
        return prepared, _ms(start, decoded), _ms(decoded, time.perf_counter())

    def _check_work(self, model: LoadedModel, source: Source, chosen: list[str], rows: int, options: Options) -> None:
        """Refuse, before decoding, what cannot fit the response limit or the pixel-work limit."""
        work.check(work.Request(source.height, source.width, chosen, rows, options.raw, options.heatmap_png,
                                options.overlay_png, options.max_render_side, model.info.activation_shape[1:],
                                model.info.input_size),
                   self.config.max_send_bytes, self.config.max_work_mpixels)

    def _skip(self, model: LoadedModel, wanted: list[str]) -> tuple[list[str], list[pb.Skipped]]:
        usable, skipped = [], []
        for name in wanted:
            if name in model.methods:
                usable.append(name)
            else:
                reason, detail = model.unavailable.get(name, (pb.Skipped.NOT_SUPPORTED, "not supported"))
                skipped.append(pb.Skipped(method=methods.ENUM_BY_NAME[name], reason=reason, detail=detail))
        return usable, skipped

    def _sampled_rows(self, model: LoadedModel, usable: list[str], options: Options, rows: int) -> dict[str, int]:
        """Graph rows each sampled method will cost, refused before any work beyond the server's limit."""
        height, width = model.info.input_size
        needed = {name: sampling.rows_needed(name, options.sampling, rows, height, width) for name in usable
                  if registry.get(name).kind is Kind.SAMPLED}
        total = sum(needed.values())
        if total > self.config.max_sampled_rows:
            detail = ", ".join(f"{name} {count}" for name, count in needed.items())
            raise invalid(f"the sampled methods need {total} graph rows ({detail}); this server allows "
                          f"{self.config.max_sampled_rows} per request: ask for fewer samples, steps, targets or "
                          "patch positions (a larger occlusion stride)")
        return needed

    @staticmethod
    def _render_ms(model: LoadedModel, options: Options, pixels: int) -> float:
        """Estimated PNG/overlay drawing per map: only paid when pictures are asked for."""
        outputs = options.heatmap_png or options.overlay_png
        return model.costs.render_ms_per_mpixel * pixels / 1e6 if outputs else 0.0

    def _budget(self, model: LoadedModel, usable: list[str], options: Options, rows: int, spent_ms: float,
                render_ms: float, sampled_rows: dict[str, int]) -> tuple[list[str], list[pb.Skipped]]:
        if not options.budget_ms or not usable:
            return usable, []
        available = options.budget_ms - spent_ms
        chosen, left_out = budget.select(model.costs, usable, rows, available, render_ms, sampled_rows)
        skipped = []
        for name in left_out:
            need = budget.set_cost(model.costs, chosen + [name], rows, render_ms, sampled_rows)
            skipped.append(pb.Skipped(method=methods.ENUM_BY_NAME[name], reason=pb.Skipped.BUDGET,
                                      detail=f"needs about {need:.2f} ms with the methods kept; {available:.2f} ms "
                                             f"of the {options.budget_ms:g} ms budget were left"))
        return chosen, skipped

    @staticmethod
    def wait(future: Future, deadline_at: float | None) -> BatchResult:
        try:
            return future.result(timeout=deadlines.wait_s(deadline_at))
        except (FutureTimeout, CancelledError):
            future.cancel()
            raise deadline("the deadline passed before inference finished") from None

    @staticmethod
    def _input_feed(pixels: np.ndarray, target: np.ndarray, rules: list[int]) -> dict[str, np.ndarray]:
        """One input_gradients.onnx row per (rule, target), rule-major."""
        return {contract.INPUT_PIXELS: np.concatenate([pixels] * len(rules)),
                contract.INPUT_TARGET: np.tile(target, len(rules)),
                contract.INPUT_RULE: np.repeat(np.asarray(rules, np.int64), len(target))}

    def explain(self, request: pb.ExplainRequest, deadline_at: float | None = None,
                is_active: Callable[[], bool] | None = None) -> pb.ExplainResponse:
        """Serve one request; ``deadline_at`` is a time.monotonic() instant or None; ``is_active`` says
        whether the caller is still there (multi-pass work stops at its next chunk when not)."""
        start = time.perf_counter()
        model = self.repository.get(request.model)
        options = parse_options(request, model, self.config)
        source, header_ms = self._open(request, model)
        usable, skipped = self._skip(model, options.methods)
        rows = max(len(options.targets), 1)
        sampled_rows = self._sampled_rows(model, usable, options, rows)
        render_ms = self._render_ms(model, options, math.prod(heatmaps.render_size(
            source.height, source.width, options.max_render_side)))
        chosen, over_budget = self._budget(model, usable, options, rows, _ms(start, time.perf_counter()),
                                           render_ms, sampled_rows)
        skipped += over_budget
        self._check_work(model, source, chosen, rows, options)
        costs = model.costs
        fits.check(costs, model.name, chosen, rows, render_ms, sampled_rows, deadline_at, options.budget_ms,
                   model.methods)
        work.check_compute(costs, model.name, chosen, rows, render_ms, sampled_rows, self.config.max_work_s)
        prepared, decode_ms, preprocess_ms = self._prepare(request, model, source)
        decode_ms += header_ms
        geometry = prepared.geometry
        declared = {name: registry.get(name) for name in chosen}
        rules = sorted({m.rule for m in declared.values() if m.kind is Kind.INPUT})
        # one row (one target, the common case) is a view: the batcher copies rows into the batch anyway
        pixels = prepared.pixels[None] if rows == 1 else np.repeat(prepared.pixels[None], rows, axis=0)
        target = np.asarray(options.targets or [-1], dtype=np.int64)
        # Both graphs are queued before waiting on either, so their batchers run them side by side.
        pending: list[Future] = []
        if any(m.kind in (Kind.GRAPH, Kind.GRADIENT_FREE) for m in declared.values()):
            pending.append(model.explain_batcher.submit({contract.INPUT_PIXELS: pixels, contract.INPUT_TARGET: target},
                                                        deadline_at))
        if rules:
            pending.append(model.input_batcher.submit(self._input_feed(pixels, target, rules), deadline_at))
        if not pending:
            pending.append(model.predict_batcher.submit({contract.INPUT_PIXELS: pixels[:1]}, deadline_at))
        results = [self.wait(future, deadline_at) for future in pending]
        outputs = {name: value for result in reversed(results) for name, value in result.outputs.items()}
        inference_ms = sum(result.run_s for result in results) * 1000.0
        logits = results[0].outputs[contract.OUTPUT_LOGITS]
        _require_finite(logits[:rows], "logits", request, model)
        targets = np.asarray(options.targets or [int(np.argmax(logits[0]))], dtype=np.int64)
        maps = {}
        for name, method in declared.items():
            if method.kind is Kind.GRAPH:
                maps[name] = outputs[method.output]
            elif method.kind is Kind.INPUT:
                first = rules.index(method.rule) * rows
                maps[name] = results[-1].outputs[method.output][first:first + rows]
        gradient_free_start = time.perf_counter()

        def check_deadline() -> None:
            if deadlines.passed(deadline_at):
                raise deadline("the deadline passed during inference")
            if is_active is not None and not is_active():
                raise cancelled("the caller went away")

        stats: dict[str, list[dict[str, float]]] = {}
        multi_pass = [name for name in declared if model.is_multi_pass(name)]
        with model.multipass.enter(deadline_at, is_active) if multi_pass else contextlib.nullcontext():
            for name, method in declared.items():
                if method.kind is Kind.GRADIENT_FREE:
                    check_deadline()
                    started = time.perf_counter()
                    maps[name] = model.gradient_free_map(name, outputs[contract.OUTPUT_ACTIVATIONS], logits[:rows],
                                                         targets, pixels, check=check_deadline)
                    model.observe(name, _ms(started, time.perf_counter()) / rows)
                elif method.kind is Kind.SAMPLED:
                    pre = model.info.preprocess
                    baseline = sampling.baseline_pixels(options.sampling, pre.mean, pre.std, prepared.pixels.shape)
                    sampler = sampling.SAMPLERS[name](prepared.pixels, targets, options.sampling, baseline=baseline)
                    maps[name], _ = sampled.run(sampler, model.batcher_for(method.runs),
                                                lambda future: self.wait(future, deadline_at), check_deadline,
                                                deadline_at)
                    stats[name] = sampler.stats()
        for name in chosen:
            _require_finite(maps[name], f"{name} map", request, model)
        post_start = time.perf_counter()
        inference_ms += _ms(gradient_free_start, post_start)
        response = pb.ExplainResponse(model=model.name, request_id=request.request_id, skipped=skipped,
                                      image_height=geometry.height, image_width=geometry.width)
        if any(declared[name].kind is Kind.SAMPLED for name in chosen):
            response.sampling.CopyFrom(sampled.to_proto(options.sampling))
        self._predictions(response, model, logits[0], options.top_k)
        self._heatmaps(response, model, chosen, maps, targets, prepared, options, stats, check_deadline)
        end = time.perf_counter()
        response.timing.CopyFrom(pb.Timing(
            decode_ms=decode_ms, preprocess_ms=preprocess_ms, queue_ms=results[0].queue_s * 1000.0,
            inference_ms=inference_ms, postprocess_ms=_ms(post_start, end), total_ms=_ms(start, end),
            batch_rows=results[0].batch_rows))
        return response

    @staticmethod
    def _predictions(response: pb.ExplainResponse, model: LoadedModel, logits: np.ndarray, top_k: int) -> None:
        probabilities = _softmax(logits)
        for index in np.argsort(-logits, kind="stable")[:top_k]:
            response.predictions.add(index=int(index), label=model.info.labels[index],
                                     score=float(probabilities[index]), logit=float(logits[index]))

    @staticmethod
    def _heatmaps(response: pb.ExplainResponse, model: LoadedModel, chosen: list[str], maps: dict[str, np.ndarray],
                  targets: np.ndarray, prepared: imaging.Prepared, options: Options,
                  stats: dict[str, list[dict[str, float]]], check: Callable[[], None]) -> None:
        """The maps into the response, their PNGs drawn one at a time (``check`` before each: a caller
        that went away stops the drawing)."""
        if options.heatmap_png or options.overlay_png:
            shown, background = heatmaps.for_display(prepared.geometry, prepared.rgb, options.max_render_side)
        for name in chosen:
            for row, target in enumerate(targets):
                raw = maps[name][row]
                heatmap = response.heatmaps.add(method=methods.ENUM_BY_NAME[name], target=int(target),
                                                target_label=model.info.labels[int(target)],
                                                **(stats[name][row] if name in stats else {}))
                if options.raw:
                    heatmap.raw.height, heatmap.raw.width = int(raw.shape[-2]), int(raw.shape[-1])
                    if raw.ndim == 3:
                        heatmap.raw.channels = int(raw.shape[0])
                    set_raw_values(heatmap.raw, raw)
                if options.heatmap_png or options.overlay_png:
                    check()
                    heatmap.heatmap_png, heatmap.overlay_png = heatmaps.render(
                        raw, shown, background, heatmap_png=options.heatmap_png, overlay_png=options.overlay_png)
