"""What a call will cost, from the server's own measurements (GetModelMetadata.method_cost_ms), so
that ``onnxcam explain`` can say up front that a slow method will take a while instead of sitting
silent until the answer (or the deadline) comes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from onnxcam import methods as registry
from onnxcam import sampling

#: Calls estimated above this many seconds get a line on stderr before they start.
ANNOUNCE_AFTER_S = 3.0


def estimate_ms(method_cost_ms: Mapping[str, float], methods: Sequence[str], targets: int,
                settings: sampling.Settings, input_size: tuple[int, int]) -> float:
    """The server's own estimate (server.budget.set_cost) rebuilt from the metadata, without rendering."""
    from server.budget import Costs, set_cost

    known = {m for m in methods if m in registry.names()}
    extra = {name: value for name, value in method_cost_ms.items()
             if name in registry.names(registry.Kind.GRADIENT_FREE)}
    costs = Costs(predict_ms=method_cost_ms.get("predict", 0.0), explainer_ms=method_cost_ms.get("explainer", 0.0),
                  extra_ms=extra, input_ms=method_cost_ms.get("input_gradients", 0.0))
    rows = max(targets, 1)
    height, width = input_size
    sampled_rows = {name: sampling.rows_needed(name, settings, rows, height, width) for name in known
                    if registry.get(name).kind is registry.Kind.SAMPLED}
    return set_cost(costs, [m for m in methods if m in known], rows, 0.0, sampled_rows)


def announcement(model: str, methods: Sequence[str], images: int, need_ms: float, timeout_s: float,
                 threshold_s: float = ANNOUNCE_AFTER_S) -> str | None:
    """One line for a call that will take a while; None for a quick one."""
    total_s = need_ms * images / 1000.0
    if total_s <= threshold_s:
        return None
    per_image = f", {need_ms / 1000.0:.1f} s per image" if images > 1 else ""
    late = (f"; the deadline is {timeout_s:g} s per image (--timeout), so the server will refuse it at once: use "
            "--timeout, --budget-ms or another method" if need_ms / 1000.0 > timeout_s else "")
    return (f"{', '.join(methods)} on {model}: about {total_s:.1f} s by the server's measurement at load"
            f"{per_image}{late}")
