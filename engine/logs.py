"""Logging set-up for ``grove serve``: a level, and lines as text or as one JSON object each.

Grove logs through the standard library under the ``grove`` logger tree (``grove.server``, ``grove.access``,
``grove.db``, ...); ``setup`` installs one handler on ``grove`` and leaves the root logger to the host
application. The handler never blocks the server: records go through a bounded queue to a writer thread, and
when the sink does not keep up (a pipe nobody reads, a slow disk) new records are dropped and counted
(``dropped()``) instead of stalling the threads that answer calls. Structured fields travel as
``extra={"fields": {...}}``: the text format appends them as ``key=value``, the JSON format puts them beside
``ts``, ``level``, ``logger`` and ``msg``.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import time
from logging.handlers import QueueHandler, QueueListener
from typing import Any, TextIO, cast

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
ROOT = "grove"
#: records waiting for the writer thread at most; more are dropped
QUEUE_RECORDS = 10_000
#: seconds ``stop`` waits for a stuck sink
STOP_WAIT = 5.0
_listener: QueueListener | None = None
_dropped = 0


class _DroppingQueueHandler(QueueHandler):
    """A ``QueueHandler`` that drops (and counts) a record when the queue is full, rather than block or fail."""

    def enqueue(self, record: logging.LogRecord) -> None:
        global _dropped
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            _dropped += 1

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record  # formatted by the writer thread's handler (QueueHandler would format it here)


class _Listener(QueueListener):
    """Stops after what is queued is written, waiting at most ``STOP_WAIT`` seconds for room in a full queue."""

    def enqueue_sentinel(self) -> None:
        try:
            records = cast("queue.Queue[Any]", self.queue)  # setup() passes a queue.Queue
            # QueueListener._sentinel (None) is CPython's end marker; typeshed does not declare it
            records.put(self._sentinel, timeout=STOP_WAIT)  # type: ignore[attr-defined]
        except queue.Full:
            pass  # the sink is stuck: give up on the rest (the writer thread is a daemon)

    def stop(self) -> None:
        self.enqueue_sentinel()
        if self._thread is not None:
            self._thread.join(STOP_WAIT)
        self._thread = None


def dropped() -> int:
    """Log records dropped so far because the sink did not keep up."""
    return _dropped


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
    """Send the ``grove`` loggers to ``stream`` (default stderr) at ``level`` in ``fmt`` (``text``/``json``),
    through the non-blocking queue; replaces what an earlier call installed. Returns the ``grove`` logger."""
    global _listener
    stop()
    log = logging.getLogger(ROOT)
    writer = logging.StreamHandler(stream or sys.stderr)
    writer.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    records: queue.Queue = queue.Queue(QUEUE_RECORDS)
    handler = _DroppingQueueHandler(records)
    handler.grove = True  # type: ignore[attr-defined]
    _listener = _Listener(records, writer)
    _listener.start()
    log.addHandler(handler)
    log.setLevel(LEVELS[level])
    log.propagate = False
    return log


def stop() -> None:
    """Write out what is queued, stop the writer thread and undo ``setup`` (the ``grove`` loggers propagate to
    the root logger again, as before it)."""
    global _listener
    if _listener is not None:
        listener, _listener = _listener, None
        listener.stop()
    log = logging.getLogger(ROOT)
    for h in [h for h in log.handlers if getattr(h, "grove", False)]:
        log.removeHandler(h)
    log.setLevel(logging.NOTSET)
    log.propagate = True
