"""The connection options every client command shares: server address, TLS, client certificate and token.

A token is never an argument of its own (command lines are visible to every user of the machine and
kept in shell histories): it comes from ``--token-file`` or the ``ONNXCAM_TOKEN`` environment variable.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from onnxcam.cli_errors import CliError
from onnxcam.client_channel import TOKEN_ENV


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection security (for onnxcam serve --tls-cert / --auth-token-file)")
    group.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's CAs")
    group.add_argument("--tls-ca", type=Path, help="PEM CA certificate that signed the server's (implies --tls)")
    group.add_argument("--tls-client-cert", type=Path, help="PEM client certificate for mutual TLS (with "
                       "--tls-client-key)")
    group.add_argument("--tls-client-key", type=Path, help="PEM private key of --tls-client-cert")
    group.add_argument("--token-file", type=Path, help=f"file whose first line is the bearer token (default: the "
                       f"{TOKEN_ENV} environment variable, when set)")
    group.add_argument("--no-retry", dest="retry", action="store_false",
                       help="fail at once on UNAVAILABLE or RESOURCE_EXHAUSTED instead of gRPC's retries")


def read_token(args: argparse.Namespace) -> str | None:
    if args.token_file is None:
        return os.environ.get(TOKEN_ENV, "").strip() or None
    try:
        lines = [line.strip() for line in args.token_file.read_text(encoding="utf-8").splitlines()]
    except OSError as error:
        raise CliError(f"cannot read --token-file {args.token_file}: {error.strerror or error}", code=2) from error
    token = next((line for line in lines if line and not line.startswith("#")), "")
    if not token:
        raise CliError(f"--token-file {args.token_file} holds no token", code=2)
    return token


def _pem(path: Path | None, option: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        raise CliError(f"cannot read {option} {path}: {error.strerror or error}", code=2) from error


def client_kwargs(args: argparse.Namespace) -> dict:
    """ExplainerClient's keyword arguments for the options above (files read here, so errors name the option)."""
    if bool(args.tls_client_cert) != bool(args.tls_client_key):
        raise CliError("--tls-client-cert and --tls-client-key go together", code=2)
    return dict(tls=args.tls, tls_ca=_pem(args.tls_ca, "--tls-ca"),
                tls_client_cert=_pem(args.tls_client_cert, "--tls-client-cert"),
                tls_client_key=_pem(args.tls_client_key, "--tls-client-key"), token=read_token(args),
                retry=args.retry)
