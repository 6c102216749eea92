"""The evaluation loop: every item (image, class) x every method's map and the two baseline maps,
through the measures of ``onnxcam.metrics``, summed up per method.

Per item: the image is decoded and preprocessed as the server does (``server.imaging``), its class
is the annotation's or the top-1 prediction, one Explain call returns every method's raw map, and the
scorer gives Y (the target's probability on the image), the probabilities on the deletion baseline
and the blurred image (the curves' fixed ends), then per map O (on E = input x map) and the
deletion and insertion curves in batches. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import pickle
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
import numpy as np

from onnxcam import annotations, metrics
from onnxcam.annotations import Item, Problem
from onnxcam.client import ExplainerClient
from onnxcam.evaluate_maps import BASELINES, baseline_maps, prepare
from onnxcam.evaluate_sources import ModelView, explain
from server import imaging
from server.config import DEFAULT_MAX_IMAGE_PIXELS
from server.errors import RequestError

#: The per-method summary keys of metrics.json, in the order of the summary table.
SUMMARY_KEYS = ("average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc", "pointing_game",
                "energy_pointing_game", "localization_iou", "localization_accuracy")
#: Lower is better for these; higher for the rest.
LOWER_IS_BETTER = ("average_drop", "deletion_auc")


class Scorer(Protocol):
    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        """[N, 3, H, W] preprocessed inputs -> softmax probabilities [N, C]."""


@dataclass(frozen=True)
class Settings:
    steps: int = metrics.DEFAULT_STEPS
    #: Rows per scorer call on the deletion/insertion curves.
    batch: int = 32
    tolerance: float = metrics.POINTING_TOLERANCE_PX
    threshold: float = metrics.LOCALIZATION_THRESHOLD
    #: Seeds the random baseline map and the order of equally salient pixels.
    seed: int = 0
    #: Best and worst items kept per method for the report.
    extremes: int = 3


@dataclass
class Row:
    """One (item, map): what goes into metrics.json's per_image."""

    image: str
    label: int
    method: str
    kind: str  # "method" or "baseline"
    score: float
    explanation_score: float
    drop: float
    increase: bool
    deletion_auc: float
    insertion_auc: float
    predicted: int
    label_source: str  # "annotation" or "top1"
    boxes: int
    pointing_hit: bool | None = None
    energy: float | None = None
    iou: float | None = None

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Example:
    """A best or worst item of one method, with what the report needs to draw it."""

    rank_value: float
    row: Row
    path: Path
    raw: np.ndarray
    boxes: list[metrics.Box]


class Extremes:
    """The ``keep`` items with the highest and the lowest insertion - deletion AUC, per method."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.best: dict[str, list[tuple[float, int, Example]]] = {}
        self.worst: dict[str, list[tuple[float, int, Example]]] = {}
        self._count = 0

    def offer(self, method: str, value: float, make: Callable[[], Example]) -> None:
        if self.keep <= 0:
            return
        self._count += 1
        for heaps, key in ((self.best, value), (self.worst, -value)):
            heap = heaps.setdefault(method, [])
            if len(heap) < self.keep:
                heapq.heappush(heap, (key, self._count, make()))
            elif key > heap[0][0]:
                heapq.heapreplace(heap, (key, self._count, make()))

    def ranked(self, method: str) -> tuple[list[Example], list[Example]]:
        best = [e for _, _, e in sorted(self.best.get(method, []), key=lambda t: (-t[0], t[1]))]
        worst = [e for _, _, e in sorted(self.worst.get(method, []), key=lambda t: (-t[0], t[1]))]
        return best, worst


@dataclass
class Outcome:
    model: str
    methods: list[str]
    settings: Settings
    rows: list[Row] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    #: Methods the server did not compute for some item: method -> reason.
    skipped_methods: dict[str, str] = field(default_factory=dict)
    curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    curve_counts: dict[str, int] = field(default_factory=dict)
    extremes: Extremes = field(default_factory=lambda: Extremes(0))
    images: set[str] = field(default_factory=set)
    items: int = 0
    explain_s: float = 0.0
    measure_s: float = 0.0
    maps_measured: int = 0
    total_s: float = 0.0

    def add_curves(self, method: str, deletion: np.ndarray, insertion: np.ndarray) -> None:
        sums = self.curves.setdefault(method, {"deletion": np.zeros_like(deletion),
                                               "insertion": np.zeros_like(insertion)})
        sums["deletion"] += deletion
        sums["insertion"] += insertion
        self.curve_counts[method] = self.curve_counts.get(method, 0) + 1

    def mean_curves(self, method: str) -> dict[str, np.ndarray]:
        n = self.curve_counts.get(method, 0)
        return {k: v / n for k, v in self.curves.get(method, {}).items()} if n else {}


#: Progress callback: (units done, units total, what is being done).
Progress = Callable[[int, int, str], None]


@dataclass
class ItemResult:
    """Everything one item contributes: what the checkpoint keeps and the outcome adds up."""

    image: str
    path: Path
    boxes: list[metrics.Box] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    #: Each map's 2-D raw map at its own resolution (for the report's pictures).
    raw: dict[str, np.ndarray] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    skipped_methods: dict[str, str] = field(default_factory=dict)
    explain_s: float = 0.0
    measure_s: float = 0.0
    evaluated: bool = False

    def add_to(self, outcome: Outcome) -> None:
        outcome.problems.extend(self.problems)
        for name, reason in self.skipped_methods.items():
            outcome.skipped_methods.setdefault(name, reason)
        if not self.evaluated:
            return
        outcome.items += 1
        outcome.images.add(self.image)
        outcome.explain_s += self.explain_s
        outcome.measure_s += self.measure_s
        outcome.maps_measured += len(self.rows)
        outcome.rows.extend(self.rows)
        for row in self.rows:
            outcome.add_curves(row.method, *self.curves[row.method])
            value = row.insertion_auc - row.deletion_auc
            outcome.extremes.offer(row.method, value, lambda row=row, value=value: Example(
                value, row, self.path, self.raw[row.method], list(self.boxes)))


class Checkpoint:
    """Each finished item in ``folder`` (one pickle per item, with a fingerprint of the run), so that an
    interrupted evaluation resumes where it stopped (``--resume``). Local files this process wrote."""

    def __init__(self, folder: Path, fingerprint: str, resume: bool) -> None:
        self.folder = Path(folder)
        stamp = self.folder / "fingerprint.txt"
        if resume and stamp.is_file() and stamp.read_text() != fingerprint:
            raise ValueError(f"{self.folder} holds an interrupted run with other settings, items or methods; "
                             "run without --resume to start afresh")
        if not resume and self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint)

    def _file(self, index: int) -> Path:
        return self.folder / f"item-{index:06d}.pickle"

    def load(self, index: int) -> ItemResult | None:
        try:
            with self._file(index).open("rb") as handle:
                return pickle.load(handle)
        except (OSError, EOFError, pickle.UnpicklingError):
            return None

    def save(self, index: int, result: ItemResult) -> None:
        partial = self._file(index).with_suffix(".partial")
        with partial.open("wb") as handle:
            pickle.dump(result, handle)
        partial.replace(self._file(index))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def fingerprint(view: ModelView, methods: list[str], settings: Settings, items: list[Item], source: str) -> str:
    """What must match for checkpointed items to be reused."""
    described = [(i.image, i.label, [b.box for b in i.boxes]) for i in items]
    text = json.dumps([view.name, view.input_size, methods, settings.__dict__, described, source], default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _read(item: Item, images_dir: Path) -> tuple[bytes, Path]:
    """The item's encoded bytes and its path (relative paths are under ``images_dir``)."""
    path = Path(item.image) if Path(item.image).is_absolute() else images_dir / item.image
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read image {path}: {error.strerror or error}") from error
    return data, path


def evaluate(items: list[Item], images_dir: Path, client: ExplainerClient, view: ModelView, scorer: Scorer,
             methods: list[str], settings: Settings, *, progress: Progress | None = None,
             warn: Callable[[Problem], None] | None = None, checkpoint: Checkpoint | None = None) -> Outcome:
    """Run every measure over ``items``. A bad item (unreadable image, a box outside it, an image the
    server refuses) is recorded as a Problem (and passed to ``warn``) and the run goes on; a server
    that fails outright (unavailable, internal error) raises grpc.RpcError. With a ``checkpoint``,
    items it already holds are taken from it and every new one is saved there."""
    outcome = Outcome(view.name, list(methods), settings, extremes=Extremes(settings.extremes))
    names = list(methods) + list(BASELINES)
    total = len(items) * len(names)
    started = time.perf_counter()
    for index, item in enumerate(items):
        done = index * len(names)
        result = checkpoint.load(index) if checkpoint is not None else None
        if result is None:
            if progress is not None:
                progress(done, total, f"{item.image}: explaining")
            result = _item(index, item, images_dir, client, view, scorer, methods, settings,
                           _stepper(progress, done, total, item.image), warn)
            if checkpoint is not None:
                checkpoint.save(index, result)
        elif progress is not None:
            progress(done + len(names), total, f"{item.image}: from the checkpoint")
        result.add_to(outcome)
    if progress is not None:
        progress(total, total, "done")
    outcome.total_s = time.perf_counter() - started
    return outcome


def _stepper(progress: Progress | None, done: int, total: int, image: str) -> Callable[[str, int], None]:
    """Progress within one item: (map name, maps done in this item)."""

    def step(name: str, done_here: int) -> None:
        if progress is not None:
            progress(done + done_here, total, f"{image}: {name}")

    return step


def _item(index: int, item: Item, images_dir: Path, client: ExplainerClient, view: ModelView, scorer: Scorer,
          methods: list[str], settings: Settings, step: Callable[[str, int], None],
          warn: Callable[[Problem], None] | None) -> ItemResult:
    """One item, its problems recorded in the result (and passed to ``warn`` as they happen)."""
    result = ItemResult(item.image, images_dir / item.image)

    def problem(p: Problem) -> None:
        result.problems.append(p)
        if warn is not None:
            warn(p)

    try:
        data, result.path = _read(item, images_dir)
        prepared = imaging.prepare_image(imaging.decode(data, DEFAULT_MAX_IMAGE_PIXELS), view.preprocess)
    except ValueError as error:
        problem(Problem(item.where, f"{item.image}: {error}; the image is skipped", "image"))
        return result
    except RequestError as error:
        problem(Problem(item.where, f"{item.image}: {error.message}; the image is skipped", "image"))
        return result
    result.boxes, box_problems = annotations.checked_boxes(item, prepared.geometry.width, prepared.geometry.height)
    for p in box_problems:
        problem(p)
    try:
        _measure(result, index, item, data, prepared, client, view, scorer, methods, settings, step, problem)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        problem(Problem(item.where, f"{item.image}: the server refused it ({error.details()}); the image is "
                        "skipped", "image"))
        result.rows.clear()
        result.evaluated = False
    return result


def _measure(result: ItemResult, index: int, item: Item, data: bytes, prepared: imaging.Prepared,
             client: ExplainerClient, view: ModelView, scorer: Scorer, methods: list[str], settings: Settings,
             step: Callable[[str, int], None], problem: Callable[[Problem], None]) -> None:
    pixels, boxes = prepared.pixels, result.boxes
    substrate = metrics.blurred(pixels)
    start = time.perf_counter()
    clean, deleted, blurred = scorer.probabilities(np.stack([pixels, np.zeros_like(pixels), substrate]))
    predicted = int(np.argmax(clean))
    target = predicted if item.label is None else item.label
    score = float(clean[target])
    result.measure_s += time.perf_counter() - start
    start = time.perf_counter()
    maps, skipped, _ = explain(client, view.name, data, target, methods)
    result.explain_s += time.perf_counter() - start
    for name in methods:
        if name not in maps:
            reason = skipped.get(name, "not returned by the server")
            result.skipped_methods.setdefault(name, reason)
            problem(Problem(item.where, f"{item.image}: the server skipped {name} ({reason})", "map"))
    maps.update(baseline_maps(view.feature_size, view.input_size, settings.seed, index))
    tie_break = np.random.default_rng([settings.seed, index, 1]).permutation(pixels.shape[1] * pixels.shape[2])
    result.evaluated = True

    def target_score(rows: np.ndarray) -> np.ndarray:
        return scorer.probabilities(rows)[:, target]

    for done, name in enumerate([m for m in methods if m in maps] + list(BASELINES)):
        step(name, done)
        start = time.perf_counter()
        prepared_map = prepare(maps[name], view.input_size, prepared.geometry)
        explanation_score = float(target_score(metrics.explanation_input(pixels, prepared_map.at_input)[None])[0])
        deletion = metrics.deletion_curve(target_score, pixels, prepared_map.at_input, settings.steps,
                                          tie_break=tie_break, chunk=settings.batch,
                                          ends=(score, float(deleted[target])))
        insertion = metrics.insertion_curve(target_score, pixels, prepared_map.at_input, settings.steps,
                                            tie_break=tie_break, substrate=substrate, chunk=settings.batch,
                                            ends=(float(blurred[target]), score))
        row = Row(image=item.image, label=target, method=name, kind="baseline" if name in BASELINES else "method",
                  score=score, explanation_score=explanation_score,
                  drop=metrics.drop(score, explanation_score), increase=explanation_score > score,
                  deletion_auc=metrics.auc(deletion), insertion_auc=metrics.auc(insertion), predicted=predicted,
                  label_source="top1" if item.label is None else "annotation", boxes=len(boxes))
        if boxes:
            at_image = prepared_map.at_image
            row.pointing_hit = metrics.pointing_hit(at_image, boxes, settings.tolerance)
            row.energy = metrics.energy_share(at_image, boxes)
            row.iou = metrics.localization_iou(at_image, boxes, settings.threshold)
        result.measure_s += time.perf_counter() - start
        result.rows.append(row)
        result.curves[name] = (deletion, insertion)
        result.raw[name] = prepared_map.raw


def summarize(rows: list[Row]) -> dict[str, float | int | None]:
    """One method's numbers: percentages 0-100 (AD, IC, pointing games, localisation accuracy), AUCs
    and IoU 0-1; box measures None without boxes."""
    scores = [r.score for r in rows]
    explained = [r.explanation_score for r in rows]
    boxed = [r for r in rows if r.boxes]
    out: dict[str, float | int | None] = {
        "average_drop": metrics.average_drop(scores, explained) if rows else None,
        "increase_in_confidence": metrics.increase_in_confidence(scores, explained) if rows else None,
        "deletion_auc": float(np.mean([r.deletion_auc for r in rows])) if rows else None,
        "insertion_auc": float(np.mean([r.insertion_auc for r in rows])) if rows else None,
        "pointing_game": None, "energy_pointing_game": None, "localization_iou": None,
        "localization_accuracy": None, "items": len(rows), "items_with_boxes": len(boxed)}
    if boxed:
        out.update(pointing_game=100.0 * float(np.mean([r.pointing_hit for r in boxed])),
                   energy_pointing_game=100.0 * float(np.mean([r.energy for r in boxed])),
                   localization_iou=float(np.mean([r.iou for r in boxed])),
                   localization_accuracy=100.0 * float(np.mean([r.iou >= metrics.LOCALIZATION_IOU_HIT
                                                                for r in boxed])))
    return out


def summaries(outcome: Outcome) -> tuple[dict[str, dict], dict[str, dict]]:
    """(methods, baselines) summaries, in the order asked for."""
    by_method: dict[str, list[Row]] = {}
    for row in outcome.rows:
        by_method.setdefault(row.method, []).append(row)
    methods = {m: summarize(by_method[m]) for m in outcome.methods if m in by_method}
    baselines = {b: summarize(by_method[b]) for b in BASELINES if b in by_method}
    return methods, baselines


def report_json(outcome: Outcome, source: str) -> dict[str, Any]:
    """metrics.json: the issue's shape (model, images, methods, per_image) and more keys."""
    methods, baselines = summaries(outcome)
    counts = {kind: sum(p.skipped == kind for p in outcome.problems) for kind in ("image", "row", "box", "map")}
    s = outcome.settings
    points = next((len(c["deletion"]) for c in outcome.curves.values()), None)
    return {
        "model": outcome.model,
        "images": len(outcome.images),
        "methods": methods,
        "baselines": baselines,
        "per_image": [r.as_json() for r in outcome.rows],
        "items": outcome.items,
        "curves": {m: {k: v.tolist() for k, v in outcome.mean_curves(m).items()} for m in outcome.curves},
        "skipped": {"images": counts["image"], "annotation_rows": counts["row"], "boxes": counts["box"],
                    "maps": counts["map"], "methods": outcome.skipped_methods,
                    "problems": [str(p) for p in outcome.problems]},
        "settings": {"steps": s.steps, "curve_points": points, "pointing_tolerance_px": s.tolerance,
                     "localization_threshold": s.threshold, "localization_iou_hit": metrics.LOCALIZATION_IOU_HIT,
                     "seed": s.seed, "batch": s.batch, "source": source},
        "timing": {"total_s": outcome.total_s, "explain_s": outcome.explain_s, "measure_s": outcome.measure_s,
                   "maps_measured": outcome.maps_measured,
                   "measure_s_per_map": outcome.measure_s / outcome.maps_measured if outcome.maps_measured else None},
    }
