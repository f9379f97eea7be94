"""Logging set-up for ``grove serve``: a level, and lines as text or as one JSON object each.

Grove logs through the standard library under the ``grove`` logger tree (``grove.server``, ``grove.access``,
``grove.db``, ...); ``setup`` installs one handler on ``grove`` and leaves the root logger to the host
application. Structured fields travel as ``extra={"fields": {...}}``: the text format appends them as
``key=value``, the JSON format puts them beside ``ts``, ``level``, ``logger`` and ``msg``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
ROOT = "grove"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return getattr(record, "fields", None) or {}


class TextFormatter(logging.Formatter):
    """``2026-12-08T02:15:45.123Z INFO grove.access call rpc=Search code=OK ms=0.41``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        extra = " ".join(f"{k}={_text(v)}" for k, v in _fields(record).items())
        line = f"{ts} {record.levelname} {record.name} {record.getMessage()}" + (f" {extra}" if extra else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text(value: Any) -> str:
    s = str(value)
    return json.dumps(s) if (" " in s or not s) else s


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (Unix seconds), ``level``, ``logger``, ``msg``, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> logging.Logger:
    """Send the ``grove`` loggers to ``stream`` (default stderr) at ``level`` in ``fmt`` (``text``/``json``);
    replaces a handler an earlier call installed. Returns the ``grove`` logger."""
    log = logging.getLogger(ROOT)
    for h in [h for h in log.handlers if getattr(h, "grove", False)]:
        log.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.grove = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    log.addHandler(handler)
    log.setLevel(LEVELS[level])
    log.propagate = False
    return log
