"""Bounds on long-lived calls, so that streams can never take the threads unary calls need.

The synchronous gRPC server gives every call, a stream included, one worker thread for its whole life. Streams
therefore get their own slots beside the unary workers (``create_server`` sizes the pool as both together), and
``StreamGate`` admits a stream only while

* the principal (one tenant, or the admin) holds fewer than ``per_principal`` open streams, and
* fewer than ``total`` streams are open in all;

otherwise the call ends at once with RESOURCE_EXHAUSTED. A client-streaming call (``UpsertStream``, the ADORE
session) that neither receives nor sends a message for ``idle_seconds`` (a client that opened it and went quiet)
is cancelled by a reaper thread, which frees its slot and its thread. A server-streaming call (mining) is busy
computing between its messages, so it is not reaped: its work is bounded by its request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from engine.errors import ResourceExhausted
from engine.principal import ADMIN, Principal

DEFAULT_STREAMS_PER_PRINCIPAL = 4
DEFAULT_STREAMS_TOTAL = 16
DEFAULT_STREAM_IDLE_SECONDS = 60.0
_log = logging.getLogger("grove.streams")


class OpenStream:
    """One admitted stream: its owner, its call context (to cancel it) and when it last moved."""

    __slots__ = ("who", "method", "cancel", "reapable", "last")

    def __init__(self, who: Principal, method: str, cancel: Callable[[], None], reapable: bool) -> None:
        self.who = who
        self.method = method
        self.cancel = cancel
        self.reapable = reapable
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()

    def relay(self, messages: Iterator) -> Iterator:
        """``messages`` passed through, each one counting as activity."""
        for message in messages:
            self.touch()
            yield message
            self.touch()


class StreamGate:
    """Admission and idle reaping of streaming calls (see the module docstring)."""

    def __init__(
        self,
        *,
        per_principal: int = DEFAULT_STREAMS_PER_PRINCIPAL,
        total: int = DEFAULT_STREAMS_TOTAL,
        idle_seconds: float = DEFAULT_STREAM_IDLE_SECONDS,
    ) -> None:
        if per_principal < 1 or total < 1 or idle_seconds <= 0:
            raise ValueError("stream limits must be positive")
        self.per_principal = per_principal
        self.total = total
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._open: set[OpenStream] = set()
        self._by_principal: dict[object, int] = {}
        self._reaper: threading.Thread | None = None

    def open_count(self, who: Principal | None = None) -> int:
        with self._lock:
            return len(self._open) if who is None else self._by_principal.get(who, 0)

    def open_by_method(self) -> dict[str, int]:
        """Open streams by RPC name (for metrics)."""
        with self._lock:
            out: dict[str, int] = {}
            for stream in self._open:
                out[stream.method] = out.get(stream.method, 0) + 1
            return out

    @contextmanager
    def admit(
        self, who: Principal, method: str, cancel: Callable[[], None], *, reapable: bool = True
    ) -> Iterator[OpenStream]:
        """Hold a stream slot for the block, or raise ``ResourceExhausted`` at once when none is free; a
        ``reapable`` stream is cancelled once idle."""
        stream = OpenStream(who, method, cancel, reapable)
        with self._lock:
            held = self._by_principal.get(who, 0)
            if held >= self.per_principal:
                whose = "the admin key" if who is ADMIN else f"tenant {who!r}"
                raise ResourceExhausted(
                    f"{whose} already holds {held} open streams, the server's limit per principal; close one "
                    "(or raise --max-streams-per-key)"
                )
            if len(self._open) >= self.total:
                raise ResourceExhausted(
                    f"the server holds its limit of {self.total} open streams; retry later (or raise --max-streams)"
                )
            self._open.add(stream)
            self._by_principal[who] = held + 1
            self._start_reaper_locked()
        try:
            yield stream
        finally:
            with self._lock:
                self._open.discard(stream)
                left = self._by_principal[who] - 1
                if left:
                    self._by_principal[who] = left
                else:
                    del self._by_principal[who]

    def _start_reaper_locked(self) -> None:
        if self._reaper is None or not self._reaper.is_alive():
            self._reaper = threading.Thread(target=self._reap, name="grove-stream-reaper", daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        tick = min(1.0, self.idle_seconds / 4)
        while True:
            time.sleep(tick)
            now = time.monotonic()
            with self._lock:
                if not self._open:
                    self._reaper = None
                    return
                idle = [s for s in self._open if s.reapable and now - s.last > self.idle_seconds]
            for stream in idle:
                _log.warning(
                    "cancelling an idle %s stream of %s: no message for %.0f s",
                    stream.method,
                    "the admin" if stream.who is ADMIN else f"tenant {stream.who!r}",
                    now - stream.last,
                )
                stream.touch()  # cancelled once; it leaves the set when its handler returns
                stream.cancel()
