"""How the ``onnxcam`` command logs: timestamps and levels on every line, text or one JSON object a line.

Our own loggers (``onnxcam*``) log from INFO; every other library only from WARNING, so gRPC's and ONNX
Runtime's warnings and errors are seen while the optimizers' chatter at INFO is not. A record may carry
``extra={"fields": {...}}``: JSON lines get them as keys, text lines already say them in the message.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

FORMATS = ("text", "json")
OWN_PREFIX = "onnxcam"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def keep(record: logging.LogRecord) -> bool:
    """Our loggers at every level the root lets through; third parties' warnings and errors."""
    return record.name.startswith(OWN_PREFIX) or record.levelno >= logging.WARNING


class TextFormatter(logging.Formatter):
    """``2026-12-01T23:45:01.123Z INFO onnxcam.server: message`` in UTC, so lines of several hosts sort."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's API)
        return _utc(record.created)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's ``fields``, and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {"time": _utc(record.created), "level": record.levelname, "logger": record.name,
                                   "message": record.getMessage()}
        line.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def _utc(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def configure(level: int = logging.INFO, log_format: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Replace the root logger's handlers with one on ``stream`` (stderr) in ``log_format``; returns it."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(keep)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Python warnings (DeprecationWarning...) become py.warnings records. Off first: captureWarnings(True) does
    # nothing when an earlier call is still on record, even after someone restored warnings.showwarning.
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    return handler
