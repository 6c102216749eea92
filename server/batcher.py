"""Dynamic batching: concurrent requests for one graph share a session call.

A request is a few rows (one per target) of named arrays. The worker waits until ``max_batch`` rows
are queued or the oldest request has waited ``max_delay_s``, concatenates the rows, runs once and
hands each request its own slice. Rows never mix: the graphs are row-independent (inference mode),
and each request only sees its slice. Rows whose deadline passed or whose caller gave up are
dropped before the run.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from server.errors import RequestError, deadline, exhausted, unavailable

log = logging.getLogger("onnxcam.server")

RunFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class BatchResult:
    outputs: dict[str, np.ndarray]
    queue_s: float
    run_s: float
    batch_rows: int


@dataclass(eq=False)  # identity: the queue removes exactly this item
class _Item:
    inputs: dict[str, np.ndarray]
    rows: int
    deadline: float | None
    future: Future
    enqueued: float


class Batcher:
    """One worker thread per graph; ``submit`` is thread-safe and never blocks on the run."""

    def __init__(self, name: str, run: RunFn, *, max_batch: int, max_delay_s: float, max_queue: int) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self.name = name
        self._run = run
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._draining = False
        self._closed = False
        #: Counters, for logs and tests: batches run, rows run, rows dropped (deadline or cancelled).
        self.batches = 0
        self.rows_run = 0
        self.rows_dropped = 0
        #: Called with the rows of every session call that ran (the metrics' batch sizes).
        self.batch_observers: list[Callable[[int], None]] = []
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def queued_rows(self) -> int:
        with self._cond:
            return self._queued_rows

    def submit(self, inputs: dict[str, np.ndarray], deadline_at: float | None = None) -> Future:
        """Queue ``inputs`` (arrays sharing their first dimension); the future gets a BatchResult."""
        rows = len(next(iter(inputs.values())))
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise unavailable("the server is shutting down")
            if self._queued_rows + rows > self.max_queue:
                raise exhausted(f"model {self.name} is busy: {self._queued_rows} rows queued, the limit is "
                                f"{self.max_queue}; retry later")
            item = _Item(inputs, rows, deadline_at, future, time.monotonic())
            self._queue.append(item)
            self._queued_rows += rows
            self._cond.notify_all()
        # A weak reference: a strong one would make a cycle (item -> future -> callback -> item) that
        # keeps every request's pixels and outputs alive until Python's cyclic collector runs.
        future.add_done_callback(functools.partial(self._forget_if_cancelled, weakref.ref(item)))
        return future

    def _forget_if_cancelled(self, item_ref: weakref.ref, future: Future) -> None:
        item = item_ref()
        if item is not None and future.cancelled():
            self._forget(item)

    def _forget(self, item: _Item) -> None:
        """A caller gave up (deadline, cancelled RPC): its rows leave the queue at once."""
        with self._cond:
            try:
                self._queue.remove(item)
            except ValueError:
                return  # already taken into a batch
            self._queued_rows -= item.rows
            self.rows_dropped += item.rows

    def drain(self) -> None:
        """Stop waiting for batches to fill: run what is queued at once (shutdown)."""
        with self._cond:
            self._draining = True
            self._cond.notify_all()

    def close(self) -> None:
        """Run what is queued, then stop the worker; later submits fail with UNAVAILABLE."""
        with self._cond:
            self._draining = self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _take(self) -> list[_Item] | None:
        with self._cond:
            while True:
                if not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                if self._queued_rows >= self.max_batch or self._draining:
                    break
                # The oldest waiting request decides; it may change while waiting (a caller gave up).
                remaining = self._queue[0].enqueued + self.max_delay_s - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, threading.TIMEOUT_MAX))
            batch, rows = [], 0
            while self._queue and (not batch or rows + self._queue[0].rows <= self.max_batch):
                item = self._queue.popleft()
                self._queued_rows -= item.rows
                batch.append(item)
                rows += item.rows
            return batch

    def _live(self, batch: list[_Item]) -> list[_Item]:
        now = time.monotonic()
        live = []
        for item in batch:
            if not item.future.set_running_or_notify_cancel():
                self.rows_dropped += item.rows
            elif item.deadline is not None and now >= item.deadline:  # None: no deadline
                self.rows_dropped += item.rows
                item.future.set_exception(deadline("the deadline passed while the request was queued"))
            else:
                live.append(item)
        return live

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            self._run_batch(batch)
            # Drop the batch before waiting for the next: a request's arrays are freed when its caller is done.
            del batch

    def _run_batch(self, batch: list[_Item]) -> None:
        live = self._live(batch)
        if not live:
            return
        started = time.monotonic()
        try:
            names = live[0].inputs.keys()
            stacked = {n: np.concatenate([item.inputs[n] for item in live]) if len(live) > 1
                       else live[0].inputs[n] for n in names}
            outputs = self._run(stacked)
        except Exception as error:  # every waiting request must hear about it
            log.exception("batch of %d rows on %s failed", sum(i.rows for i in live), self.name)
            failure = error if isinstance(error, RequestError) else RuntimeError(f"inference failed: {error}")
            for item in live:
                item.future.set_exception(failure)
            return
        run_s = time.monotonic() - started
        total = sum(item.rows for item in live)
        self.batches += 1
        self.rows_run += total
        for observe in self.batch_observers:
            observe(total)
        offset = 0
        for item in live:
            part = {n: v[offset:offset + item.rows] for n, v in outputs.items()}
            offset += item.rows
            item.future.set_result(BatchResult(part, started - item.enqueued, run_s, total))
