"""The tenant registry: tenant names <-> small numbers, shared by every collection of a database.

A tenant exists once a write that names it commits. Its number is handed out so that no acknowledged write can
be orphaned and no number can ever name two tenants:

1. **Reserve.** Under the registry lock the high-water mark (the ``tenant`` counter) is raised on disk, synced,
   before the number is used anywhere: numbers below the mark are never handed out again, even after a crash.
2. **Record.** The name's record (``T`` + name -> number) joins the caller's data batch, so the record and the
   first rows that use the number reach the disk in one atomic write, or neither does.
3. **Publish.** Only after that batch has committed does ``find`` see the name. Until then any other first write
   of the same name (from another collection) waits for the outcome: it then finds the published number, or,
   when the first batch failed, makes its own claim. A failed batch leaves no record and no row, only a number
   that is never used.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from engine.storage import keys
from engine.storage.store import Batch, Store

_COUNTER = "tenant"


class TenantClaim:
    """One writer's hold on a tenant's number while its batch is built and committed (see ``TenantRegistry.claim``).

    ``number`` is the tenant's number; ``new`` whether this batch creates the tenant. A new claim adds the
    tenant's record to the batch (``record``) and publishes the name once the batch is on disk (``committed``).
    """

    def __init__(self, registry: TenantRegistry, name: str, number: int, new: bool) -> None:
        self._registry = registry
        self.name = name
        self.number = number
        self.new = new
        self._done = not new

    def record(self, batch: Batch) -> None:
        """Add the new tenant's record to ``batch`` (nothing for an existing tenant)."""
        if self.new:
            batch.put(keys.tenant(self.name), keys.u32(self.number))

    def committed(self) -> None:
        """The batch holding the record is durable: publish the name (idempotent)."""
        if not self._done:
            self._done = True
            self._registry._publish(self.name, self.number)

    def _abandon(self) -> None:
        if not self._done:
            self._done = True
            self._registry._abandon(self.name)


class TenantRegistry:
    """Tenant names <-> numbers, loaded from the store; thread-safe."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._number: dict[str, int] = {}
        self._name: dict[int, str] = {}
        self._pending: dict[str, threading.Event] = {}
        for key, value in store.scan(keys.TENANT):
            self._register(key[len(keys.TENANT) :].decode(), keys.read_u32(value))
        mark = store.get(keys.counter(_COUNTER))
        self._next = max(max(self._name, default=-1) + 1, 0 if mark is None else keys.read_u64(mark))

    def _register(self, name: str, number: int) -> None:
        self._number[name] = number
        self._name[number] = name

    def find(self, name: str) -> int | None:
        """The number of a tenant whose first write has committed, else None."""
        return self._number.get(name)

    def name_of(self, number: int) -> str | None:
        return self._name.get(number)

    def names(self) -> dict[str, int]:
        """Every committed tenant and its number (a copy)."""
        with self._lock:
            return dict(self._number)

    @contextmanager
    def claim(self, name: str) -> Iterator[TenantClaim]:
        """Hold ``name``'s number for one write: the caller adds ``claim.record(batch)`` to its batch, commits it,
        then calls ``claim.committed()``. Leaving the block without that (an error) leaves no trace of a new tenant.
        """
        claim = self._claim(name)
        try:
            yield claim
        finally:
            claim._abandon()

    def _claim(self, name: str) -> TenantClaim:
        while True:
            with self._lock:
                number = self._number.get(name)
                if number is not None:
                    return TenantClaim(self, name, number, new=False)
                waiting = self._pending.get(name)
                if waiting is None:
                    self._pending[name] = threading.Event()
                    try:
                        number = self._reserve_locked()
                    except BaseException:
                        self._pending.pop(name).set()
                        raise
                    return TenantClaim(self, name, number, new=True)
            waiting.wait()  # another first write of this name is committing: take its outcome

    def _reserve_locked(self) -> int:
        number = self._next
        batch = Batch()
        batch.put(keys.counter(_COUNTER), keys.u64(number + 1))
        self._store.write(batch)  # synced: after a crash, numbering resumes above every number handed out
        self._next = number + 1
        return number

    def _publish(self, name: str, number: int) -> None:
        with self._lock:
            self._register(name, number)
            self._pending.pop(name).set()

    def _abandon(self, name: str) -> None:
        with self._lock:
            self._pending.pop(name).set()
