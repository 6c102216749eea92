"""The bounded queue multi-pass work goes through: Ablation-CAM, Score-CAM, ReciproCAM and the sampled
methods (SmoothGrad, Integrated Gradients, occlusion...) run hundreds to thousands of graph rows.

Without it they ran on every gRPC worker thread at once, outside the batchers' queue limit: eight
concurrent Score-CAM calls with a 3 s deadline kept a server busy for two minutes, at 3.3 GB, while
health checks timed out. Now at most ``slots`` such requests of a model run at once, at most
``waiting`` more wait (first come, first served), and the rest are refused with RESOURCE_EXHAUSTED.
A waiting request leaves as soon as its deadline passes or its caller goes away; a running one checks
both before every chunk of rows (the ``check`` its work is given).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from server import deadlines
from server.errors import cancelled, deadline, exhausted

#: How often a waiting request looks at its caller (gRPC gives no wake-up on cancellation here).
POLL_S = 0.05


class Gate:
    """``slots`` multi-pass requests of one model at a time, ``waiting`` more in line."""

    def __init__(self, name: str, slots: int, waiting: int) -> None:
        if slots < 1 or waiting < 0:
            raise ValueError("slots must be at least 1 and waiting at least 0")
        self.name = name
        self.slots = slots
        self.waiting = waiting
        self._cond = threading.Condition()
        self._line: deque[object] = deque()
        self._running = 0

    @property
    def running(self) -> int:
        with self._cond:
            return self._running

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._line)

    def _leave_line(self, ticket: object) -> None:
        self._line.remove(ticket)
        self._cond.notify_all()

    @contextmanager
    def enter(self, deadline_at: float | None, is_active: Callable[[], bool] | None = None) -> Iterator[None]:
        """Hold a slot for the block; wait in line for one, or raise (RESOURCE_EXHAUSTED when the line
        is full, DEADLINE_EXCEEDED or CANCELLED when the caller's time or interest ends first)."""
        ticket = object()
        with self._cond:
            if self._running >= self.slots or self._line:
                if len(self._line) >= self.waiting:
                    raise exhausted(f"model {self.name} is busy with multi-pass methods ({self._running} running, "
                                    f"{len(self._line)} waiting, the limit); retry later or use a one-call method")
                self._line.append(ticket)
                try:
                    while self._running >= self.slots or self._line[0] is not ticket:
                        if deadlines.passed(deadline_at):
                            raise deadline("the deadline passed while waiting for a multi-pass slot")
                        if is_active is not None and not is_active():
                            raise cancelled("the caller went away while waiting for a multi-pass slot")
                        wait = deadlines.wait_s(deadline_at)
                        self._cond.wait(POLL_S if wait is None else min(POLL_S, max(wait, 0.001)))
                finally:
                    self._leave_line(ticket)
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()
