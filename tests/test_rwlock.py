"""The collections' readers-writer lock (``engine.rwlock``): searches side by side, a write batch alone, and a
waiting writer is not starved by a stream of new readers."""

from __future__ import annotations

import threading

from engine.rwlock import RWLock

WAIT = 5.0


def test_readers_share_the_lock():
    lock = RWLock()
    inside = threading.Barrier(3, timeout=WAIT)

    def reader() -> None:
        with lock.read():
            inside.wait()  # all three hold the read side at once, or this times out

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    with lock.read():
        inside.wait()
    for t in threads:
        t.join(WAIT)
    assert not inside.broken


def test_a_writer_waits_for_readers_and_new_readers_wait_for_it():
    lock = RWLock()
    events: list[str] = []
    writer_waiting = threading.Event()
    lock.acquire_read()

    def writer() -> None:
        writer_waiting.set()
        with lock.write():
            events.append("write")

    def late_reader() -> None:
        with lock.read():
            events.append("late read")

    w = threading.Thread(target=writer)
    w.start()
    assert writer_waiting.wait(WAIT)
    while not lock._waiting_writers:  # the writer is queued behind the reader
        threading.Event().wait(0.001)
    r = threading.Thread(target=late_reader)
    r.start()
    r.join(0.2)
    assert r.is_alive() and events == []  # the late reader waits behind the waiting writer
    lock.release_read()
    w.join(WAIT)
    r.join(WAIT)
    assert events == ["write", "late read"]
    with lock.write():  # and the lock is free again
        pass
