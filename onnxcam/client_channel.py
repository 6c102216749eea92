"""The client's channel: message limits, gRPC's own retry policy, TLS (optionally with a client
certificate) and a bearer token.

Retries (on by default) come from gRPC's service config, not from a loop of ours: a call that gets
UNAVAILABLE (no server listening yet, a restart, a connection reset) or RESOURCE_EXHAUSTED (a full
queue, the server's RPC limit) is sent again up to ``RETRY_ATTEMPTS`` times in all, after randomised
exponential backoff (0.2 s, 0.4 s, ... up to 3 s), within the call's deadline. gRPC retries only calls
whose response has not started, so a stream that already answered is never repeated.
``retry=False`` turns it off (each failure reaches the caller at once).

The token travels as ``authorization: Bearer <token>`` metadata on every call. Over plaintext it can be
read by anyone on the path: use TLS (``tls=True`` or ``tls_ca``) beyond loopback.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import grpc

MIB = 1024 * 1024
#: The client's side of the server's limits: it sends requests up to 16 MiB and reads responses up to 64 MiB.
MAX_SEND_BYTES = 16 * MIB
MAX_RECEIVE_BYTES = 64 * MIB
#: Tries of one call in all (the first and up to four retries).
RETRY_ATTEMPTS = 5
RETRYABLE_CODES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
#: The environment variable the command line reads a token from when no --token-file is given.
TOKEN_ENV = "ONNXCAM_TOKEN"


def retry_service_config() -> str:
    """gRPC's service config: every method of every service retried on RETRYABLE_CODES."""
    return json.dumps({"methodConfig": [{
        "name": [{}],  # an empty name: the default for every service and method
        "retryPolicy": {"maxAttempts": RETRY_ATTEMPTS, "initialBackoff": "0.2s", "maxBackoff": "3s",
                        "backoffMultiplier": 2, "retryableStatusCodes": list(RETRYABLE_CODES)},
    }]})


def channel_options(retry: bool = True) -> list[tuple[str, object]]:
    options: list[tuple[str, object]] = [("grpc.max_send_message_length", MAX_SEND_BYTES),
                                         ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)]
    if retry:
        # A call is retried only while its request is still buffered: the buffer holds the largest request.
        options += [("grpc.enable_retries", 1), ("grpc.service_config", retry_service_config()),
                    ("grpc.per_rpc_retry_buffer_size", MAX_SEND_BYTES), ("grpc.retry_buffer_size", 4 * MAX_SEND_BYTES)]
    else:
        options.append(("grpc.enable_retries", 0))
    return options


def _pem(value: bytes | str | os.PathLike | None) -> bytes | None:
    """PEM bytes as given, or read from a path."""
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


class _CallDetails(collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials",
                                                           "wait_for_ready", "compression")),
                   grpc.ClientCallDetails):
    pass


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                  grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call (works over TLS and plaintext alike)."""

    def __init__(self, token: str) -> None:
        token = token.strip()
        if not token or any(c.isspace() for c in token):
            raise ValueError("a token is one word: no spaces, not empty")
        self._entry = ("authorization", f"Bearer {token}")

    def __repr__(self) -> str:
        return "BearerToken(<hidden>)"

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        metadata = [*(details.metadata or ()), self._entry]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


def make_channel(target: str, *, tls: bool = False, tls_ca: bytes | str | os.PathLike | None = None,
                 tls_client_cert: bytes | str | os.PathLike | None = None,
                 tls_client_key: bytes | str | os.PathLike | None = None, token: str | None = None,
                 retry: bool = True) -> grpc.Channel:
    """A channel to ``target``. TLS when ``tls`` or any ``tls_*`` is given (``tls_ca``: the CA that
    signed the server's certificate, default the system's roots); a client certificate and key for a
    server that requires them (mutual TLS). PEM bytes or file paths."""
    if bool(tls_client_cert) != bool(tls_client_key):
        raise ValueError("a client certificate needs its key, and a key its certificate")
    options = channel_options(retry)
    if tls or tls_ca or tls_client_cert:
        credentials = grpc.ssl_channel_credentials(root_certificates=_pem(tls_ca), private_key=_pem(tls_client_key),
                                                   certificate_chain=_pem(tls_client_cert))
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    return grpc.intercept_channel(channel, BearerToken(token)) if token else channel
