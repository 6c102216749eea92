"""TLS for ``onnxcam serve``: the server's certificate and key, and optionally a CA whose client
certificates are required (mutual TLS). Files are read once at start; a problem is a CliError."""

from __future__ import annotations

from pathlib import Path

import grpc

from onnxcam.cli_errors import CliError


def _read(path: Path, option: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise CliError(f"cannot read {option} {path}: {error.strerror or error}", code=2) from error
    if b"-----BEGIN" not in data:
        raise CliError(f"{option} {path} is not a PEM file (no -----BEGIN line)", code=2)
    return data


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """Credentials for ``add_secure_port``; with ``client_ca`` every client must present a certificate it signed."""
    root = _read(client_ca, "--tls-client-ca") if client_ca else None
    return grpc.ssl_server_credentials([(_read(key, "--tls-key"), _read(cert, "--tls-cert"))],
                                       root_certificates=root, require_client_auth=root is not None)
