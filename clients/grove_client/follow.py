"""Following a collection's job (an index build, a compression training) to its end, with a progress bar.

Both SDK modes run a foreground ``build_index()`` as a background job that the client follows: remote, no call
then lasts longer than one poll, so no deadline can cut a long build short, and a lost connection does not stop
the build; embedded, the same code path. In a terminal, or with ``progress=True``, a ``tqdm`` bar shows the
job's progress and phase.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from engine.jobs import JobStatus, raise_failure

#: seconds between polls: short at first (small jobs end at once), growing to ``POLL_MAX``
POLL_FIRST, POLL_MAX = 0.01, 0.5


def _bar(started: JobStatus, progress: bool | None):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=100, desc=started.kind, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}] {postfix}")


def follow(started: JobStatus, poll: Callable[[int], JobStatus], *, progress: bool | None = None) -> dict:
    """Poll job ``started.id`` until it ends; returns its result, or raises its error (as the same class).

    ``poll(job_id)`` reads the job's status; ``progress`` shows a bar (None: when stderr is a terminal).
    """
    bar = _bar(started, progress)
    status, wait = started, POLL_FIRST
    try:
        while status.running:
            time.sleep(wait)
            wait = min(2 * wait, POLL_MAX)
            status = poll(started.id)
            if bar is not None:
                bar.update(round(100 * status.progress) - bar.n)
                bar.set_postfix_str(status.phase, refresh=True)
        if bar is not None and status.state == "done":
            bar.update(100 - bar.n)
    finally:
        if bar is not None:
            bar.close()
    raise_failure(status)
    return dict(status.result or {})
