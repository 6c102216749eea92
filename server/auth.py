"""Bearer-token authentication: a server interceptor in front of every service but health checking.

Tokens come from a file (one a line; blank lines and ``#`` comments ignored) and arrive as the
``authorization: Bearer <token>`` metadata of a call. They are compared with ``hmac.compare_digest``
against every known token, so the time taken says nothing about how much of a token matched or
which one. A token is never logged: a refusal logs the method and the peer only.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

log = logging.getLogger("onnxcam.server.auth")

#: Calls under these prefixes never need a token: orchestrators' probes (Kubernetes' native gRPC probe,
#: grpc_health_probe) cannot send one.
OPEN_PREFIXES = (f"/{health_pb2.DESCRIPTOR.services_by_name['Health'].full_name}/",)
SCHEME = "bearer"


def read_tokens(path: Path) -> list[bytes]:
    """The tokens in ``path``; ValueError when it holds none or a line cannot be a token."""
    tokens = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if any(c.isspace() for c in token) or not token.isprintable():
            raise ValueError(f"line {number} of the token file is not one token (no spaces inside a token)")
        tokens.append(token.encode())
    if not tokens:
        raise ValueError("the token file holds no token (one a line; # starts a comment)")
    return tokens


def presented_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> bytes | None:
    """The token of an ``authorization: Bearer <token>`` entry, or None."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == SCHEME and token.strip():
            return token.strip().encode()
    return None


def is_valid(presented: bytes | None, tokens: Sequence[bytes]) -> bool:
    """Constant time per token, every token compared (no early exit on a match)."""
    if presented is None:
        return False
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(presented, token)
    return matched


def _refusal(method: str, handler: grpc.RpcMethodHandler, missing: bool) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that answers UNAUTHENTICATED without reading the request."""
    message = ("this server requires a token: send the metadata 'authorization: Bearer <token>'" if missing
               else "the token is not valid for this server")

    def refuse(_request: object, context: grpc.ServicerContext) -> None:
        log.warning("refused %s from %s: %s", method, context.peer(), "no token" if missing else "wrong token")
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED for every call without a valid token, except health checking."""

    def __init__(self, tokens: Sequence[bytes], open_prefixes: Sequence[str] = OPEN_PREFIXES) -> None:
        if not tokens:
            raise ValueError("token authentication needs at least one token")
        self._tokens = list(tokens)
        self._open_prefixes = tuple(open_prefixes)

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or details.method.startswith(self._open_prefixes):
            return handler  # unknown methods get gRPC's own UNIMPLEMENTED
        presented = presented_token(details.invocation_metadata)
        if is_valid(presented, self._tokens):
            return handler
        return _refusal(details.method, handler, missing=presented is None)
