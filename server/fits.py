"""Refusing at once a request whose measured cost cannot fit the time it has left.

Without this, a Score-CAM request on a big model with a 30 s client deadline queued, ran for 30 s
and then failed with a bare "deadline passed": the server had measured the method at 80 s at load
and could have said so before starting.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from onnxcam import methods as registry
from server import budget
from server.errors import deadline


def _seconds(ms: float) -> str:
    return f"{ms / 1000.0:.1f} s" if ms >= 1000.0 else f"{ms:.0f} ms"


def check(costs: budget.Costs, model: str, chosen: Sequence[str], rows: int, render_ms: float,
          sampled_rows: Mapping[str, int], deadline_at: float | None, budget_ms: float,
          available: Sequence[str] = ()) -> None:
    """Raise DEADLINE_EXCEEDED now when the estimate for ``chosen`` exceeds the time to ``deadline_at``.

    DEADLINE_EXCEEDED rather than FAILED_PRECONDITION: the request is fine and the server is in a
    state to run it; what fails is the deadline, and it is the status the caller would get anyway
    after the wait, so clients that already handle a late answer (or retry with a longer deadline)
    need no new case. ``available`` (the model's methods) names cheaper ones. The estimate is the
    load-time measurement that ``budget_ms`` uses too; a request with no deadline (gRPC's default)
    is never refused.
    """
    if deadline_at is None or not chosen:
        return
    left_ms = (deadline_at - time.monotonic()) * 1000.0
    if left_ms <= 0:
        raise deadline("the deadline passed before inference started")
    need_ms = budget.set_cost(costs, chosen, rows, render_ms, sampled_rows)
    if need_ms <= left_ms:
        return
    each = {name: budget.set_cost(costs, [name], rows, render_ms, sampled_rows) for name in chosen}
    slowest = max(each, key=lambda name: each[name])
    cheap = [m for m in available if registry.get(m).kind is registry.Kind.GRAPH and m not in chosen][:2]
    options = ["budget_ms (onnxcam explain --budget-ms) to skip the methods that do not fit",
               f"a longer deadline (--timeout, at least {need_ms / 1000.0 * 1.5:.0f} s)"]
    if any(registry.get(name).kind is registry.Kind.SAMPLED for name in chosen):
        options.append("fewer samples, steps or occlusion positions (sampling)")
    options.append(f"another method ({', '.join(cheap)}: one graph call)" if cheap else "another method")
    part = f" ({slowest} about {_seconds(each[slowest])})" if len(chosen) > 1 else ""
    budget_note = f" (budget {budget_ms:g} ms)" if budget_ms else ""
    raise deadline(
        f"not started: {', '.join(chosen)} on {model} would take about {_seconds(need_ms)} by the server's "
        f"measurement at load{part}, but the deadline leaves "
        f"{_seconds(left_ms)}{budget_note}; options: {'; '.join(options)}")
