"""A server interceptor counting every gRPC call by full method name and status code, refusals by
other interceptors (UNAUTHENTICATED) included when it runs first."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc

from server.metrics import ServerMetrics


def _code(context: grpc.ServicerContext, failed: bool) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if failed and not context.is_active():
        return "CANCELLED"  # the caller went away mid-stream
    return "UNKNOWN" if failed else "OK"


class RpcMetricsInterceptor(grpc.ServerInterceptor):
    def __init__(self, metrics: ServerMetrics, known_services: tuple[str, ...]) -> None:
        self.metrics = metrics
        self._known = tuple(f"/{name}/" for name in known_services)

    def _count(self, method: str, context: grpc.ServicerContext, failed: bool) -> None:
        label = method if method.startswith(self._known) else "unknown"  # a caller's made-up names stay out
        self.metrics.rpcs.labels(label, _code(context, failed)).inc()

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        if handler.response_streaming:
            kind = "stream_stream" if handler.request_streaming else "unary_stream"
            behavior = getattr(handler, kind)

            def streamed(request: object, context: grpc.ServicerContext) -> Iterator[object]:
                failed = True
                try:
                    yield from behavior(request, context)
                    failed = False
                finally:
                    self._count(method, context, failed)

            return handler._replace(**{kind: streamed})
        kind = "stream_unary" if handler.request_streaming else "unary_unary"
        behavior = getattr(handler, kind)

        def answered(request: object, context: grpc.ServicerContext) -> object:
            failed = True
            try:
                response = behavior(request, context)
                failed = False
                return response
            finally:
                self._count(method, context, failed)

        return handler._replace(**{kind: answered})
