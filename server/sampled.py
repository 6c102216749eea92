"""The sampled methods in the server: request parameters, and their rows through the model's batchers.

The rows and their reduction are onnxcam.sampling's (shared with edge devices); here they are
submitted in chunks of at most ``max_batch`` rows to the batcher of their graph, so they share
session calls with other requests, never exceed the queue's limit, and stop at the next chunk when
the deadline passes or the caller goes away.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from onnxcam import sampling
from onnxcam.proto import explainer_pb2 as pb
from server.batcher import Batcher, BatchResult
from server.errors import invalid

#: Chunks of one sampled method in flight at once: the next is queued while the current one runs.
IN_FLIGHT = 2

_BASELINES = {pb.Sampling.BLACK: sampling.BASELINE_BLACK, pb.Sampling.ZERO: sampling.BASELINE_ZERO}


def settings(message: pb.Sampling, height: int, width: int) -> sampling.Settings:
    """The request's parameters, defaults filled in and limits checked (INVALID_ARGUMENT)."""
    if message.baseline not in _BASELINES:
        raise invalid(f"sampling.baseline {message.baseline} is not a valid baseline")
    requested = sampling.Settings(
        samples=message.samples, noise_level=message.noise_level,
        seed=message.seed if message.HasField("seed") else sampling.DEFAULT_SEED, steps=message.steps,
        baseline=_BASELINES[message.baseline], patch=message.patch, stride=message.stride, fill=message.fill)
    try:
        return requested.resolved(height, width)
    except ValueError as error:
        raise invalid(f"sampling: {error}") from None


def to_proto(used: sampling.Settings) -> pb.Sampling:
    """What the response echoes: every value the maps were computed with."""
    baseline = next(value for value, name in _BASELINES.items() if name == used.baseline)
    return pb.Sampling(samples=used.samples, noise_level=used.noise_level, seed=used.seed, steps=used.steps,
                       baseline=baseline, patch=used.patch, stride=used.stride, fill=used.fill)


def run(sampler: sampling.Sampler, batcher: Batcher, wait: Callable[[Future], BatchResult],
        check: Callable[[], None], deadline_at: float | None) -> tuple[np.ndarray, float]:
    """(maps, seconds in session runs): every row of ``sampler`` through ``batcher``, ``IN_FLIGHT``
    chunks at a time. ``check`` runs before each chunk is queued and raises to stop."""
    pending: deque[tuple[int | None, slice, Future]] = deque()
    run_s = 0.0

    def collect() -> None:
        nonlocal run_s
        target_index, part, future = pending.popleft()
        result = wait(future)
        run_s += result.run_s
        sampler.add(target_index, part, {name: result.outputs[name] for name in sampler.outputs})

    try:
        chunk = max(1, min(batcher.max_batch, batcher.max_queue // IN_FLIGHT))  # what the queue admits at once
        for target_index, part in sampling.parts(sampler, chunk):
            check()
            feed = sampling.feed(sampler, sampler.rows(part), target_index)
            pending.append((target_index, part, batcher.submit(feed, deadline_at)))
            if len(pending) >= IN_FLIGHT:
                collect()
        while pending:
            collect()
    finally:
        for _, _, future in pending:  # stopped early: queued chunks leave the queue
            future.cancel()
    return sampler.maps(), run_s
