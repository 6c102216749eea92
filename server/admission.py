"""Which RPCs the server takes on, and on which threads: health checks always answer.

gRPC's own ``maximum_concurrent_rpcs`` counts health checks with everything else, and its worker
threads serve them in arrival order behind queued Explain calls: under a 200-client load 24 of 27
probes failed, and an orchestrator would have restarted a busy but healthy server. Here instead:

- ``Health/Check`` (and the Open Inference Protocol's ServerLive, ServerReady, ModelReady) runs on a
  small pool of its own (grpcio picks a method's pool from its
  behaviour's ``experimental_thread_pool``), is never counted and never refused;
- every other RPC runs on the worker pool, which counts what it holds (queued or running; a stream
  counts once); beyond ``limit`` a new one is refused with RESOURCE_EXHAUSTED on the small pool, as
  gRPC's own limit did, without waiting behind the work;
- once the server is stopping, new RPCs other than health checks are refused with UNAVAILABLE while
  the listener stays open, so probes see NOT_SERVING instead of a refused connection.

Health ``Watch`` streams are counted apart (``watching``): an idle one must not hold a drain open.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
#: Probes answered on the health threads, never counted nor refused: gRPC health checking, and the
#: Open Inference Protocol's liveness and readiness (KServe's and Triton's probes).
PROBES = frozenset({HEALTH_CHECK, "/inference.GRPCInferenceService/ServerLive",
                    "/inference.GRPCInferenceService/ServerReady", "/inference.GRPCInferenceService/ModelReady"})
#: Threads that answer health checks: a check takes microseconds, so a few serve any probe rate.
HEALTH_THREADS = 2


class CountingPool(ThreadPoolExecutor):
    """The worker pool, counting the RPCs it holds (submitted and not finished)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._count_lock = threading.Lock()
        self.in_flight = 0

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        with self._count_lock:
            self.in_flight += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: Future | None) -> None:
        with self._count_lock:
            self.in_flight -= 1


class _OnPool:
    """A behaviour that grpcio runs on ``pool`` instead of the server's pool."""

    def __init__(self, behavior: Callable, pool: ThreadPoolExecutor) -> None:
        self._behavior = behavior
        self.experimental_thread_pool = pool

    def __call__(self, *args: Any) -> Any:
        return self._behavior(*args)


def _kind(handler: grpc.RpcMethodHandler) -> tuple[str, Callable]:
    """(factory name, behaviour) of a handler, e.g. ("unary_unary", fn)."""
    name = f"{'stream' if handler.request_streaming else 'unary'}_{'stream' if handler.response_streaming else 'unary'}"
    return name, getattr(handler, name)


def _rebuild(handler: grpc.RpcMethodHandler, behavior: Callable) -> grpc.RpcMethodHandler:
    name, _ = _kind(handler)
    return getattr(grpc, f"{name}_rpc_method_handler")(behavior, request_deserializer=handler.request_deserializer,
                                                       response_serializer=handler.response_serializer)


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str,
             pool: ThreadPoolExecutor) -> grpc.RpcMethodHandler:
    def refuse(_request: Any, context: grpc.ServicerContext) -> None:
        context.abort(code, message)

    return _rebuild(handler, _OnPool(refuse, pool))


class Admission(grpc.ServerInterceptor):
    def __init__(self, pool: CountingPool, limit: int) -> None:
        self.pool = pool
        self.limit = limit
        self.health_pool = ThreadPoolExecutor(max_workers=HEALTH_THREADS, thread_name_prefix="health")
        self.stopping = False
        self._watch_lock = threading.Lock()
        self.watching = 0

    @property
    def busy(self) -> int:
        """RPCs the worker pool holds, health Watch streams left out."""
        with self._watch_lock:
            return max(self.pool.in_flight - self.watching, 0)

    def _watched(self, behavior: Callable) -> Callable:
        def watch(request: Any, context: grpc.ServicerContext) -> Any:
            with self._watch_lock:
                self.watching += 1
            try:
                yield from behavior(request, context)
            finally:
                with self._watch_lock:
                    self.watching -= 1

        return watch

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = continuation(details)
        if handler is None:
            return None
        if details.method in PROBES:
            return _rebuild(handler, _OnPool(_kind(handler)[1], self.health_pool))
        if self.stopping:
            return _refusal(handler, grpc.StatusCode.UNAVAILABLE, "the server is shutting down", self.health_pool)
        if self.pool.in_flight >= self.limit:
            return _refusal(handler, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"the server is busy: {self.pool.in_flight} calls in progress, the limit is {self.limit}; "
                            "retry later", self.health_pool)
        if details.method == HEALTH_WATCH:
            return _rebuild(handler, self._watched(_kind(handler)[1]))
        return handler

    def close(self) -> None:
        self.health_pool.shutdown(wait=False, cancel_futures=True)
