"""Deadlines as time.monotonic() instants, and waits that never overflow.

gRPC clients send no deadline unless told to (the default in every language). The server then sees
an effectively infinite time remaining, and a wait of that length overflows the platform's
time_t. Everything here treats a missing, infinite or absurdly long deadline as no deadline, and
bounds every wait by what ``threading`` accepts, so no deadline a client can send turns into an
error. A server-side limit (``ServerConfig.max_request_s``) applies on top, when set.
"""

from __future__ import annotations

import math
import threading
import time

#: A time remaining beyond this (about a thousand years) is no deadline at all: gRPC's "infinite
#: future" arrives as a huge finite number of seconds.
NO_DEADLINE_S = 1000 * 365.25 * 24 * 3600.0


def deadline_at(remaining_s: float | None, max_request_s: float = 0.0) -> float | None:
    """The monotonic instant a request must be done by, or None for none.

    ``remaining_s`` is the caller's time left (None, inf or huge: none); ``max_request_s`` is the
    server's own limit per request (0: none). The earlier of the two wins.
    """
    limits = []
    if remaining_s is not None and math.isfinite(remaining_s) and remaining_s < NO_DEADLINE_S:
        limits.append(max(remaining_s, 0.0))
    if max_request_s > 0:
        limits.append(max_request_s)
    return time.monotonic() + min(limits) if limits else None


def passed(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def wait_s(deadline: float | None) -> float | None:
    """Seconds to wait until ``deadline`` for ``Future.result``, ``Condition.wait`` and friends:
    None for no deadline, otherwise between 0 and ``threading.TIMEOUT_MAX``."""
    if deadline is None:
        return None
    return min(max(deadline - time.monotonic(), 0.0), threading.TIMEOUT_MAX)
