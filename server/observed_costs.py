"""Method costs that no single noisy measurement decides.

Costs measured once at load varied up to 10x between two starts on a busy machine (Ablation-CAM 173
vs 1,812 ms), and the latency budget, the deadline check and the work limit all trusted them. Each
gradient-free method's per-row cost is now the median of a window holding its load-time timings and
the costs observed since, per row, on real requests: one outlier (a start on a busy machine, a
request that waited for the CPU) moves nothing, and a lasting change (another load on the machine,
a bigger image) takes over once it fills half the window.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from collections.abc import Iterable

#: Observations kept per method: the median then ignores up to 7 outliers.
WINDOW = 15


class RobustCost:
    """The median of the last WINDOW observations (ms), seeded with the load-time timings."""

    def __init__(self, seeds: Iterable[float], window: int = WINDOW) -> None:
        self._values: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        for value in seeds:
            self.observe(value)
        if not self._values:
            raise ValueError("a cost needs at least one measurement")

    def observe(self, ms: float) -> None:
        """Add one observation; negative or non-finite values (clock trouble) are ignored."""
        if ms >= 0 and ms != float("inf"):
            with self._lock:
                self._values.append(float(ms))

    @property
    def ms(self) -> float:
        with self._lock:
            return statistics.median(self._values)

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)
