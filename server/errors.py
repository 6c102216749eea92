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
