"""Request errors that carry their gRPC status code, so every layer can fail a request the same way."""

from __future__ import annotations

import grpc

#: Trailing metadata that tells a gRPC client's retry policy not to retry (gRPC's retry design, A6: a
#: negative pushback): the same request would be refused again, however long the client waited.
NO_RETRY = (("grpc-retry-pushback-ms", "-1"),)


class RequestError(Exception):
    """A request the server refuses; ``code`` is the status the client sees, ``message`` says why.
    ``retryable`` False: the refusal is about the request itself, so a retry can only be refused again."""

    def __init__(self, code: grpc.StatusCode, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


def abort(context: grpc.ServicerContext, error: RequestError) -> None:
    """End the call with ``error``'s status; a refusal no retry can change says so to the client's retry policy."""
    if not error.retryable:
        context.set_trailing_metadata(NO_RETRY)
    context.abort(error.code, error.message)


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.NOT_FOUND, message)


def exhausted(message: str) -> RequestError:
    """A busy server (a full queue): worth retrying after a pause."""
    return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def too_much(message: str) -> RequestError:
    """A request above a per-request limit (response size, work): RESOURCE_EXHAUSTED, never worth retrying."""
    return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, retryable=False)


def deadline(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, message)


def unavailable(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.UNAVAILABLE, message)


def failed_precondition(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.FAILED_PRECONDITION, message)


def cancelled(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.CANCELLED, message)


#: Longest piece of a caller's input quoted in an error message: a status message travels in an
#: HTTP/2 header, and a 100 KB model name echoed back overflowed gRPC's header limit (the client then
#: saw RESOURCE_EXHAUSTED instead of the real error).
QUOTE_LIMIT = 120


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)``, cut to ``limit`` characters with the full length said, for error messages."""
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, (str, bytes)):
        return f"{text[:limit]}... ({len(value)} characters)"
    if hasattr(value, "__len__"):
        return f"{text[:limit]}... ({len(value)} entries)"
    return f"{text[:limit]}..."
