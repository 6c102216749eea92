"""One served model: its sessions, batchers, methods and measured costs.

Loading opens a session per graph, checks the graphs carry the contract's names, warms every session
up, finds out which methods this server can compute for the model (and why not the others), and
measures the per-method costs that the latency budget uses.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from onnxcam import contract
from onnxcam import methods as registry
from onnxcam.methods import Graph, Kind
from onnxcam.proto import explainer_pb2 as pb
from server import gradient_free_api, heatmaps, imaging
from server.batcher import Batcher
from server.budget import Costs
from server.config import ServerConfig
from server.model_info import ModelFolderError, ModelInfo
from server.multipass import Gate
from server.observed_costs import WINDOW, RobustCost
from server.sessions import check_classes, check_io, open_session

log = logging.getLogger("onnxcam.server")

#: Timed runs per graph at load (after warm-up); the median is kept.
TIMING_RUNS = 5
#: A gradient-free method is timed by one real call when its estimate is below this, else estimated
#: from its row count x the measured cost of a row, and validated on its first chunk of rows.
FULL_MEASURE_LIMIT_MS = 2000.0
#: A graph row slower than this alone is timed alone, not in a batch of 16 (a ViT's head runs the whole network).
SLOW_ROW_MS = 50.0
#: head.onnx rows per run at most, and the time one run of them should take: a cancelled or timed-out
#: Ablation-CAM or ReciproCAM stops within about that, whatever one row costs.
HEAD_ROWS = 256
CHUNK_MS = 250.0
RENDER_PROBE_SIDE = 256
#: What the server reads from input_gradients.onnx (saliency, the rule's gradient, Guided Grad-CAM).
INPUT_OUTPUTS = [contract.OUTPUT_LOGITS, contract.OUTPUT_INPUT_GRADIENTS, contract.OUTPUT_SALIENCY,
                 contract.OUTPUT_GUIDED_GRADCAM]


class _FirstChunkDone(Exception):
    pass


def _first_chunk_only() -> Callable[[], None]:
    """A check that lets a gradient-free method run its first chunk of rows, then stops it."""
    calls = []

    def check() -> None:
        calls.append(None)
        if len(calls) > 1:
            raise _FirstChunkDone

    return check


def _median_ms(fn: Callable[[], Any], runs: int = TIMING_RUNS) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


class LoadedModel:
    def __init__(self, info: ModelInfo, config: ServerConfig) -> None:
        self.info = info
        self.name = info.name
        self.config = config
        opened = {}
        for what, path in (("explainer", info.explainer_file), ("head", info.head_file),
                           ("forward", info.forward_file)):
            try:
                opened[what] = open_session(path, config.device, config.intra_op_threads,
                                             config.inter_op_threads, config.spin)
            except Exception as error:
                raise ModelFolderError(f"{path.name} does not load in ONNX Runtime: {error}") from error
        self.explainer, self.head, self.forward = opened["explainer"], opened["head"], opened["forward"]
        self.input_gradients = None
        if info.input_gradients_file is not None:
            try:
                self.input_gradients = open_session(info.input_gradients_file, config.device,
                                                    config.intra_op_threads, config.inter_op_threads, config.spin)
            except Exception as error:
                raise ModelFolderError(f"{info.input_gradients_file.name} does not load in ONNX Runtime: "
                                       f"{error}") from error
        # G too: Smooth Grad-CAM++ averages it over noisy rows (a copy of A's size; the graph computes it anyway)
        self.explainer_outputs = [contract.OUTPUT_LOGITS, contract.OUTPUT_ACTIVATIONS, contract.OUTPUT_GRADIENTS] + [
            registry.get(m).output for m in info.graph_methods]
        try:
            check_io(self.explainer, "explainer.onnx", [contract.INPUT_PIXELS, contract.INPUT_TARGET],
                     self.explainer_outputs)
            check_io(self.head, "head.onnx", list(info.head_inputs), [contract.OUTPUT_LOGITS])
            check_io(self.forward, "forward.onnx", [contract.INPUT_PIXELS], [contract.OUTPUT_LOGITS])
            if self.input_gradients is not None:
                check_io(self.input_gradients, contract.INPUT_GRADIENTS_FILE,
                         [contract.INPUT_PIXELS, contract.INPUT_TARGET, contract.INPUT_RULE], INPUT_OUTPUTS)
            for what, session in (("explainer.onnx", self.explainer), ("head.onnx", self.head),
                                  ("forward.onnx", self.forward),
                                  (contract.INPUT_GRADIENTS_FILE, self.input_gradients)):
                if session is not None:
                    check_classes(session, what, info.num_classes)
        except ValueError as error:
            raise ModelFolderError(str(error)) from error
        self.providers = list(self.explainer.get_providers())
        self.linear = self._load_linear()
        self.gradient_free = gradient_free_api.load()
        self.methods, self.unavailable = self._methods()
        self._head_rows = HEAD_ROWS
        self._measured, self._extra = self._warm_up_and_measure()
        batch = dict(max_batch=config.max_batch, max_delay_s=config.max_delay_ms / 1000.0, max_queue=config.max_queue)
        self.explain_batcher = Batcher(f"{self.name}/explainer", self._run_explainer, **batch)
        self.predict_batcher = Batcher(f"{self.name}/forward", self._run_forward, **batch)
        self.input_batcher = (Batcher(f"{self.name}/input_gradients", self._run_input_gradients, **batch)
                              if self.input_gradients is not None else None)
        self.multipass = Gate(self.name, config.multipass_slots, config.multipass_queue)

    # ---- loading -------------------------------------------------------------------------------
    def _load_linear(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.info.cam_linear_file is None:
            return None
        try:
            with np.load(self.info.cam_linear_file) as data:
                weight, bias = data["weight"].astype(np.float32), data["bias"].astype(np.float32)
        except Exception as error:
            raise ModelFolderError(f"{self.info.cam_linear_file.name} is unreadable: {error}") from error
        k = self.info.activation_shape[0]
        if weight.shape != (self.info.num_classes, k) or bias.shape != (self.info.num_classes,):
            raise ModelFolderError(f"{self.info.cam_linear_file.name} has weight {weight.shape}, bias {bias.shape}; "
                                   f"expected ({self.info.num_classes}, {k}) and ({self.info.num_classes},)")
        return weight, bias

    def _methods(self) -> tuple[list[str], dict[str, tuple[int, str]]]:
        """Methods this server computes for the model (registry order), and (reason, detail) for the others."""
        available: list[str] = []
        unavailable: dict[str, tuple[int, str]] = {}
        for method in registry.METHODS:
            if method.kind is Kind.GRAPH:
                if method.name in self.info.graph_methods:
                    available.append(method.name)
                elif method.needs_linear_head:
                    unavailable[method.name] = (pb.Skipped.NOT_SUPPORTED, f"{method.title} needs a global-average-pool "
                                                "+ linear head after the target layer; this model has another head")
                else:
                    unavailable[method.name] = (pb.Skipped.NOT_SUPPORTED, f"the explainer graph of this model has no "
                                                f"{method.output}: it was exported before {method.title} was added "
                                                "(re-export it, e.g. onnxcam models build)")
            elif method.kind is Kind.INPUT or (method.kind is Kind.SAMPLED and method.runs is Graph.INPUT_GRADIENTS):
                if self.input_gradients is not None:
                    available.append(method.name)
                else:
                    unavailable[method.name] = (pb.Skipped.NOT_SUPPORTED, f"this model folder has no "
                                                f"{contract.INPUT_GRADIENTS_FILE}: it was exported before "
                                                f"{method.title} was added, or with --no-input-gradients "
                                                "(re-export it, e.g. onnxcam models build)")
            elif method.kind is Kind.SAMPLED:
                available.append(method.name)  # explainer.onnx and forward.onnx are always there
            elif why := self.gradient_free.unavailable(method.name):
                unavailable[method.name] = (pb.Skipped.NOT_AVAILABLE, why)
            else:
                available.append(method.name)
        return available, unavailable

    def _warm_up_and_measure(self) -> tuple[Costs, dict[str, RobustCost]]:
        h, w = self.info.input_size
        rng = np.random.default_rng(0)
        pixels = rng.standard_normal((1, 3, h, w)).astype(np.float32)
        target = np.full((1,), -1, dtype=np.int64)
        for _ in range(2):  # the first run allocates and compiles kernels; neither belongs in the costs
            out = self._run_explainer({contract.INPUT_PIXELS: pixels, contract.INPUT_TARGET: target})
            self._run_forward({contract.INPUT_PIXELS: pixels})
        activations = out[contract.OUTPUT_ACTIVATIONS]
        logits = out[contract.OUTPUT_LOGITS]
        if logits.shape[1] != self.info.num_classes:  # a graph whose class count only shows when it runs
            raise ModelFolderError(f"explainer.onnx gives logits for {logits.shape[1]} classes but model.json says "
                                   f"num_classes {self.info.num_classes}; re-export the folder or fix model.json")
        self.head.run(None, self._head_feed(activations, pixels))
        explainer_ms = _median_ms(lambda: self._run_explainer({contract.INPUT_PIXELS: pixels,
                                                               contract.INPUT_TARGET: target}))
        predict_ms = _median_ms(lambda: self._run_forward({contract.INPUT_PIXELS: pixels}))
        gradient_free = [m for m in self.methods if registry.get(m).kind is Kind.GRADIENT_FREE]
        per_row = self._per_row_ms({registry.get(m).runs for m in gradient_free}, pixels, activations)
        targets = np.argmax(logits, axis=1).astype(np.int64)
        extra: dict[str, RobustCost] = {}
        for method in gradient_free:
            try:
                extra[method] = RobustCost(self._measure_gradient_free(method, per_row, pixels, activations, logits,
                                                                       targets))
            except Exception as error:
                log.warning("%s: %s fails on this model (%s); it is off", self.name, method, error)
                self.methods.remove(method)
                self.unavailable[method] = (pb.Skipped.NOT_AVAILABLE, f"{method} failed on this model at load: "
                                            f"{error}")
        input_ms = 0.0
        if self.input_gradients is not None:
            feed = {contract.INPUT_PIXELS: pixels, contract.INPUT_TARGET: target,
                    contract.INPUT_RULE: np.full((1,), contract.RULE_GUIDED, np.int64)}
            self._run_input_gradients(feed)
            input_ms = _median_ms(lambda: self._run_input_gradients(feed))
        return Costs(predict_ms, explainer_ms, {}, self._render_ms_per_mpixel(), input_ms), extra

    @property
    def costs(self) -> Costs:
        """The costs the budget, the deadline check and the work limit use: the load-time medians, with
        each gradient-free method's per-row cost updated from the requests served (server.observed_costs)."""
        return dataclasses.replace(self._measured, extra_ms={name: cost.ms for name, cost in self._extra.items()})

    @costs.setter
    def costs(self, value: Costs) -> None:
        """Replace the costs (an override, tests): each gradient-free cost as if measured WINDOW times,
        so requests served afterwards move it only once they fill half the window."""
        self._measured = dataclasses.replace(value, extra_ms={})
        self._extra = {name: RobustCost([ms] * WINDOW) for name, ms in value.extra_ms.items()}

    def observations(self, method: str) -> int:
        """How many timings a gradient-free method's cost is the median of (load-time and observed)."""
        return len(self._extra[method]) if method in self._extra else 0

    def observe(self, method: str, ms_per_row: float) -> None:
        """A gradient-free method's cost per row on a request that ran to the end."""
        if method in self._extra:
            self._extra[method].observe(ms_per_row)

    def _head_feed(self, activations: np.ndarray, pixels: np.ndarray) -> dict[str, np.ndarray]:
        feed = {contract.INPUT_ACTIVATIONS: activations}
        if contract.INPUT_PIXELS in self.info.head_inputs:
            feed[contract.INPUT_PIXELS] = pixels
        return feed

    def _per_row_ms(self, graphs: set[Graph], pixels: np.ndarray, activations: np.ndarray) -> dict[Graph, float]:
        """ms per row of each graph the gradient-free methods run, measured on a batch of rows (one row
        when a row alone takes over SLOW_ROW_MS: a ViT's head runs the whole network)."""
        rows = min(self.info.activation_shape[0], 16)
        per_row = {Graph.NONE: 0.0}
        for graph in graphs - {Graph.NONE}:
            def feed(n: int, graph: Graph = graph) -> tuple[Any, dict[str, np.ndarray]]:
                if graph is Graph.HEAD:
                    return self.head, self._head_feed(np.repeat(activations, n, 0), np.repeat(pixels, n, 0))
                return self.forward, {contract.INPUT_PIXELS: np.repeat(pixels, n, 0)}

            session, one = feed(1)
            single = _median_ms(lambda s=session, f=one: s.run(None, f), runs=1)
            if single > SLOW_ROW_MS:
                per_row[graph] = single
            else:
                session, many = feed(rows)
                per_row[graph] = _median_ms(lambda s=session, f=many: s.run(None, f), runs=3) / rows
        self._head_rows = max(1, min(HEAD_ROWS, int(CHUNK_MS / max(per_row.get(Graph.HEAD, 0.0), 1e-3))))
        return per_row

    def _measure_gradient_free(self, method: str, per_row: dict[Graph, float], pixels: np.ndarray,
                               activations: np.ndarray, logits: np.ndarray, targets: np.ndarray) -> list[float]:
        """Timings (extra ms per row) of a gradient-free method, checked to work on this model: its row
        count (known before running) x the median ms per row of the graph it runs, or real calls when
        they are quick (up to TIMING_RUNS of them, within FULL_MEASURE_LIMIT_MS in all)."""
        k, fh, fw = self.info.activation_shape
        try:
            count = int(self.gradient_free.module.forward_count(method, k, fh, fw, linear=self.linear is not None))
            estimate = count * per_row[registry.get(method).runs]
        except Exception as error:
            log.warning("%s: forward_count(%s) failed (%s); timing one full call", self.name, method, error)
            estimate = 0.0
        if estimate > FULL_MEASURE_LIMIT_MS:
            # Too long to run whole at load: its first chunk of rows proves it works on this model.
            try:
                self.gradient_free_map(method, activations, logits, targets, pixels, check=_first_chunk_only())
            except _FirstChunkDone:
                pass
            return [estimate]
        timings: list[float] = []
        while len(timings) < TIMING_RUNS and sum(timings) * (1 + 1 / max(len(timings), 1)) < FULL_MEASURE_LIMIT_MS:
            start = time.perf_counter()
            result = self.gradient_free_map(method, activations, logits, targets, pixels)
            timings.append((time.perf_counter() - start) * 1000.0)
            if np.shape(result) != (1, fh, fw):
                raise ValueError(f"it returned shape {np.shape(result)}, not (1, {fh}, {fw})")
        return timings

    def _render_ms_per_mpixel(self) -> float:
        """Upsample + grayscale PNG + overlay of one map on a probe image, per megapixel."""
        side = RENDER_PROBE_SIDE
        raw = np.random.default_rng(1).random(self.info.activation_shape[1:], dtype=np.float32)
        geometry = imaging.Geometry(side, side, 0.0, 0.0, float(side), float(side))
        rgb = np.zeros((side, side, 3), np.uint8)
        ms = _median_ms(lambda: heatmaps.render(raw, geometry, rgb, heatmap_png=True, overlay_png=True), runs=3)
        return ms / (side * side / 1e6)

    # ---- running -------------------------------------------------------------------------------
    def _run_explainer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.explainer.run(self.explainer_outputs, feed)
        return dict(zip(self.explainer_outputs, values, strict=True))

    def _run_input_gradients(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.input_gradients.run(INPUT_OUTPUTS, feed)
        return dict(zip(INPUT_OUTPUTS, values, strict=True))

    def _run_forward(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (logits,) = self.forward.run([contract.OUTPUT_LOGITS], feed)
        return {contract.OUTPUT_LOGITS: logits}

    def gradient_free_map(self, method: str, activations: np.ndarray, logits: np.ndarray, targets: np.ndarray,
                          pixels: np.ndarray, check: Callable[[], None] | None = None) -> np.ndarray:
        """Raw maps [N, h, w] of a gradient-free method; ``check`` runs before each chunk of session
        runs and raises to stop the work (a deadline passed)."""
        inputs = self.gradient_free.module.Inputs(activations=activations, logits=logits, targets=targets,
                                                  pixels=pixels, head=self.head, forward=self.forward,
                                                  linear=self.linear, check=check,
                                                  tokens=self.info.target_layout == "tokens", **self._forward_rows())
        return self.gradient_free.serve[method](inputs)

    def is_multi_pass(self, method: str) -> bool:
        """Whether ``method`` runs many graph rows per image (it then goes through ``multipass``):
        the sampled methods, and the gradient-free ones with a forward count (not EigenCAM, nor
        Ablation-CAM by the closed form of a linear head)."""
        kind = registry.get(method).kind
        if kind is Kind.SAMPLED:
            return True
        if kind is not Kind.GRADIENT_FREE:
            return False
        k, fh, fw = self.info.activation_shape
        try:
            return self.gradient_free.module.forward_count(method, k, fh, fw, linear=self.linear is not None) > 0
        except Exception:  # an unknown count: treat it as many rows
            return True

    def _forward_rows(self) -> dict[str, int]:
        """Score-CAM's forward rows per run: the batch size, so that a cancelled call stops within one
        batch's time (an older gradient-free module without the field keeps its own)."""
        fields = getattr(self.gradient_free.module.Inputs, "__dataclass_fields__", {})
        rows = {"forward_rows": self.config.max_batch, "head_rows": self._head_rows}
        return {name: value for name, value in rows.items() if name in fields}

    def batcher_for(self, graph: Graph) -> Batcher:
        """The batcher of a graph that sampled methods send rows to."""
        batcher = {Graph.EXPLAINER: self.explain_batcher, Graph.FORWARD: self.predict_batcher,
                   Graph.INPUT_GRADIENTS: self.input_batcher}[graph]
        if batcher is None:
            raise ValueError(f"model {self.name} has no {graph.value}")
        return batcher

    @property
    def batchers(self) -> list[Batcher]:
        return [b for b in (self.explain_batcher, self.predict_batcher, self.input_batcher) if b is not None]

    def close(self) -> None:
        for batcher in self.batchers:
            batcher.close()
