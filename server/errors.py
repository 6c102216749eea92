"""Request errors that carry their gRPC status code, so every layer can fail a request the same way."""

from __future__ import annotations

import grpc


class RequestError(Exception):
    """A request the server refuses; ``code`` is the status the client sees, ``message`` says why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.NOT_FOUND, message)


def exhausted(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


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
