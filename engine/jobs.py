"""A collection's long work (index builds, compression training) as jobs that can be followed.

Each collection has one ``JobSlot``: at most one job runs at a time, foreground or background, requested or
automatic (an index build once a collection is large enough, a stale index rebuilt after a restart). A second
request while one runs is refused with ``FailedPrecondition`` naming the running job; an automatic start is
skipped instead. ``status()`` says what runs or ran last: state, progress 0..1 (the work reports it, phase by
phase), start and end times, and the error of a failed job, so a caller that started a job in the background,
or a remote client that follows one past any deadline, learns how it ended.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from engine.errors import ALL_ERRORS, FailedPrecondition, GroveError, Internal, NotFound

IDLE, RUNNING, DONE, FAILED = "idle", "running", "done", "failed"
KINDS = ("build_index", "train_compression")
#: finished jobs a slot remembers by id
RECENT = 8

#: ``progress(fraction, phase)``: what a job's work calls to report how far it is (fraction in 0..1)
Progress = Callable[[float, str], None]


def no_progress(fraction: float, phase: str) -> None:
    """A ``Progress`` that reports nowhere (work run outside a job)."""


@dataclass(frozen=True)
class JobStatus:
    """A job's state as seen at one moment (``idle``: none has run yet).

    ``started``/``finished`` are Unix times (None until then); ``error`` is ``"Type: message"`` and
    ``error_code`` its gRPC status name (``"FAILED_PRECONDITION"``) when the job failed; ``result`` is the
    summary the work returned when it is done; ``automatic`` says the engine started it, not a request.
    ``id`` numbers the collection's jobs from 1 (0: none yet), so a follower can tell its job from a later one.
    """

    id: int = 0
    kind: str = ""
    state: str = IDLE
    progress: float = 0.0
    phase: str = ""
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    error_code: str | None = None
    result: dict[str, float] | None = None
    automatic: bool = False

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    def describe(self) -> str:
        """One line for messages: ``build_index (running, 40%, started 12 s ago)``."""
        if self.state == IDLE:
            return "no job"
        ago = f", started {time.time() - self.started:.0f} s ago" if self.started else ""
        how = "automatic " if self.automatic else ""
        return f"{how}{self.kind} ({self.state}, {self.progress:.0%}{ago})"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def raise_failure(status: JobStatus) -> None:
    """Raise a failed job's error as the Grove error class of its code (how a follower learns the outcome)."""
    if status.state != FAILED:
        return
    cls = next((c for c in ALL_ERRORS if c.code == status.error_code), Internal)
    name, _, message = (status.error or "").partition(": ")
    raise cls(f"the {status.kind} job failed: {message if name == cls.__name__ else status.error}")


@dataclass
class _Tally:
    """Finished jobs of one kind: how many ended each way, and their total seconds (for metrics)."""

    outcomes: dict[str, int] = field(default_factory=lambda: {DONE: 0, FAILED: 0})
    seconds: float = 0.0


class JobSlot:
    """The one job slot of a collection (see the module docstring). Thread-safe."""

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._lock = threading.Lock()
        self._status = JobStatus()
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._done.set()
        self.tallies: dict[str, _Tally] = {kind: _Tally() for kind in KINDS}
        self._recent: dict[int, JobStatus] = {}  # the last RECENT jobs by id, for followers

    def status(self, job_id: int = 0) -> JobStatus:
        """The status of job ``job_id`` (one of the last ``RECENT``), or of the current (or last) job for 0.
        Raises ``NotFound`` for an id it does not know."""
        with self._lock:
            if not job_id or job_id == self._status.id:
                return self._status
            found = self._recent.get(job_id)
        if found is None:
            raise NotFound(f"collection {self._owner!r} has no job {job_id} (it keeps the last {RECENT})")
        return found

    def _claim(self, kind: str, automatic: bool) -> bool:
        with self._lock:
            if self._status.running:
                if automatic:
                    return False
                raise FailedPrecondition(
                    f"collection {self._owner!r} is running {self._status.describe()}; wait for it (stats()"
                    f"['build'] follows it) before asking for {kind}"
                )
            job_id = self._status.id + 1
            self._status = JobStatus(job_id, kind, RUNNING, started=time.time(), automatic=automatic)
            self._done.clear()
            return True

    def _report(self, fraction: float, phase: str) -> None:
        with self._lock:
            if self._status.running:
                self._status = replace(self._status, progress=min(max(float(fraction), 0.0), 1.0), phase=phase)

    def _finish(self, result: dict[str, float] | None, exc: BaseException | None) -> None:
        with self._lock:
            now = time.time()
            s = self._status
            if exc is None:
                self._status = replace(s, state=DONE, progress=1.0, phase="", finished=now, result=result)
            else:
                code = exc.code if isinstance(exc, GroveError) else "INTERNAL"
                error = f"{type(exc).__name__}: {exc}"
                self._status = replace(s, state=FAILED, finished=now, error=error, error_code=code)
            self._recent[s.id] = self._status
            self._recent.pop(s.id - RECENT, None)
            tally = self.tallies[s.kind]
            tally.outcomes[self._status.state] += 1
            tally.seconds += now - (s.started or now)
            self._done.set()

    def run(self, kind: str, work: Callable[[Progress], dict[str, float]]) -> dict[str, float]:
        """Run ``work`` as a job in this thread; returns its result, raises its error (the job records both).
        Raises ``FailedPrecondition`` while another job runs."""
        self._claim(kind, automatic=False)
        try:
            result = work(self._report)
        except BaseException as exc:
            self._finish(None, exc)
            raise
        self._finish(result, None)
        return result

    def start(
        self, kind: str, work: Callable[[Progress], dict[str, float]], *, on_error: Callable[[BaseException], None]
    ) -> JobStatus:
        """Run ``work`` as a requested job in a thread of its own and return its status at once; raises
        ``FailedPrecondition`` while another job runs. ``on_error`` sees a failure (to log it): the thread has
        no caller to raise it to."""
        self._claim(kind, automatic=False)
        return self._launch(kind, work, on_error)

    def start_automatic(
        self, kind: str, work: Callable[[Progress], dict[str, float]], *, on_error: Callable[[BaseException], None]
    ) -> JobStatus | None:
        """``start`` for work the engine decided on: skipped (None) while another job runs."""
        if not self._claim(kind, automatic=True):
            return None
        return self._launch(kind, work, on_error)

    def _launch(
        self, kind: str, work: Callable[[Progress], dict[str, float]], on_error: Callable[[BaseException], None]
    ) -> JobStatus:
        def body() -> None:
            try:
                result = work(self._report)
            except BaseException as exc:  # noqa: BLE001 - recorded in the status; a thread's error would vanish
                self._finish(None, exc)
                on_error(exc)
            else:
                self._finish(result, None)

        thread = threading.Thread(target=body, name=f"grove-{kind}-{self._owner}", daemon=True)
        with self._lock:
            self._thread = thread
        thread.start()
        return self.status()

    def wait(self, timeout: float | None = None) -> JobStatus:
        """Wait (at most ``timeout`` seconds) for the running job to end; returns the status then."""
        self._done.wait(timeout)
        return self.status()

    def join(self) -> None:
        """Wait for a background job's thread to exit (at close)."""
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
