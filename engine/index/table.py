"""The in-memory rows of one collection: vectors, their external ids, owners and grants (the ACL).

A vector is named by its owner and its id: each owner tenant has an id namespace of its own, so one tenant's
ids say nothing about another's (``slots(ids, owner)``). Rows ("slots") are positions in growable arrays; a
freed slot is reused. The vectors live in a row store
(``engine.index.rows``): float32, or only a codec's codes for a compressed collection (``compressed``). The
access list of a row is its owner plus a set of granted tenants; it is the authority every index is checked
against. Not thread-safe by itself: ``engine.db.Collection`` holds the lock.
"""

from __future__ import annotations

import copy

import numpy as np

from engine.index.grants import GrantSet
from engine.index.idmap import IdMap
from engine.index.rows import CodedRows, DenseRows
from engine.quant.codec import Codec


class VectorTable:
    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self.store: DenseRows | CodedRows = DenseRows(dim, capacity)
        self.ids = np.full(capacity, -1, np.int64)
        self.owner = np.full(capacity, -1, np.int32)
        self.grants = GrantSet()
        self._slot_of: dict[int, IdMap] = {}  # owner -> (id -> slot)
        # tenant -> {owner: how many of that owner's vectors are granted to it}: where a tenant's granted ids live
        self._granters: dict[int, dict[int, int]] = {}
        self._count = 0
        self._free: list[int] = []
        self._high = 0

    def __len__(self) -> int:
        return self._count

    @property
    def data(self) -> np.ndarray:
        """The float32 rows (``DenseRows`` only: a compressed table holds codes, read ``vectors(rows)``)."""
        if not isinstance(self.store, DenseRows):
            raise AttributeError("a compressed table keeps codes, not float32 rows; use vectors(rows)")
        return self.store.data

    @property
    def capacity(self) -> int:
        return self.store.capacity

    @property
    def codec(self) -> Codec | None:
        """The codec whose codes the rows hold (None: float32 rows)."""
        return self.store.codec if isinstance(self.store, CodedRows) else None

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """float32 vectors of ``rows`` (a copy; decoded from the codes for a compressed table)."""
        return self.store.vectors(np.asarray(rows, np.int64))

    def compressed(self, codec: Codec, source) -> VectorTable:
        """A twin of this table (the same ids, owners and grants) whose rows are ``codec``'s codes, encoded in
        blocks from ``source(rows) -> float32 [n, D]`` (the originals, prepared for the metric): built on the side
        while this table serves, then swapped in by the caller."""
        store = CodedRows(codec, self.store.capacity)
        live = np.flatnonzero(self.owner[: self._high] >= 0)
        for s in range(0, live.shape[0], 65_536):
            part = live[s : s + 65_536]
            store.write(part, source(part))
        twin = copy.copy(self)
        twin.store = store
        return twin

    def slots(self, ids: np.ndarray, owner: int) -> np.ndarray:
        """Slots of ``owner``'s vectors ``ids``, -1 where it has no such id."""
        ids_of = self._slot_of.get(owner)
        return np.full(ids.shape[0], -1, np.int64) if ids_of is None else ids_of.get_many(ids)

    def slots_of(self, ids: np.ndarray, owners: np.ndarray) -> np.ndarray:
        """Slots of the vectors ``(owners[i], ids[i])``, -1 where absent."""
        out = np.full(ids.shape[0], -1, np.int64)
        for owner, at in _by_owner(owners):
            out[at] = self.slots(ids[at], owner)
        return out

    def visible_slots(self, ids: np.ndarray, tenant: int) -> np.ndarray:
        """Slots of the vectors with ``ids`` that ``tenant`` sees (its own, then those granted to it), -1 where it
        sees none. Ids are unique among what one tenant sees (the writes keep them so): each names one vector."""
        out = self.slots(ids, tenant)
        for owner in self._granters.get(tenant, ()):  # the owners that granted it anything: a few, typically
            miss = np.flatnonzero(out < 0)
            if not miss.size:
                break
            found = self.slots(ids[miss], owner)
            hit = found >= 0
            hit[hit] = self.grants.has(found[hit], tenant)
            out[miss[hit]] = found[hit]
        return out

    def owners_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For the admin, who names vectors by id alone: the slot of each id's vector, and how many owners have
        that id (a slot only where exactly one does)."""
        slots = np.full(ids.shape[0], -1, np.int64)
        holders = np.zeros(ids.shape[0], np.int64)
        for ids_of in self._slot_of.values():
            found = ids_of.get_many(ids)
            hit = found >= 0
            holders += hit
            slots[hit] = found[hit]
        slots[holders != 1] = -1
        return slots, holders

    def sees(self, slot: int, tenant: int) -> bool:
        return bool(self.sees_many(np.array([slot], np.int64), tenant)[0])

    def sees_many(self, slots: np.ndarray, tenant: int) -> np.ndarray:
        """Whether ``tenant`` sees each of ``slots`` (owner or granted); absent slots (-1) are False."""
        ok = slots >= 0
        safe = np.where(ok, slots, 0)
        return ok & ((self.owner[safe] == tenant) | self.grants.has(safe, tenant))

    def owned_by(self, slots: np.ndarray, tenant: int) -> np.ndarray:
        """Whether ``tenant`` owns each of ``slots``; absent slots (-1) are False."""
        out = np.zeros(slots.shape[0], bool)
        present = slots >= 0
        out[present] = self.owner[slots[present]] == tenant
        return out

    def tenants_of(self, slot: int) -> list[int]:
        """Owner first, then the granted tenants."""
        return [int(self.owner[slot]), *sorted(self.grants.tenants_of(slot))]

    def visible_rows(self) -> dict[int, np.ndarray]:
        """Every tenant's visible rows (owned and granted): the input of an index bulk build."""
        live = np.flatnonzero(self.owner[: self._high] >= 0)
        rows, tenants = self.grants.pairs()
        all_rows = np.concatenate([live, rows])
        all_tenants = np.concatenate([self.owner[live].astype(np.int64), tenants])
        order = np.argsort(all_tenants, kind="stable")
        cuts = np.flatnonzero(np.diff(all_tenants[order])) + 1
        return {int(all_tenants[p[0]]): all_rows[p] for p in np.split(order, cuts) if p.size}

    def allocate(self, n: int) -> np.ndarray:
        """``n`` free slots, growing the matrix when needed."""
        take = min(n, len(self._free))
        reused = [self._free.pop() for _ in range(take)]
        fresh = n - take
        if self._high + fresh > self.store.capacity:
            self._grow(self._high + fresh)
        out = np.array(reused + list(range(self._high, self._high + fresh)), np.int64)
        self._high += fresh
        return out

    def _grow(self, need: int) -> None:
        cap = max(need, int(self.store.capacity * 1.25) + 1024)
        self.store.resized(cap, self._high)
        ids = np.full(cap, -1, np.int64)
        ids[: self._high] = self.ids[: self._high]
        owner = np.full(cap, -1, np.int32)
        owner[: self._high] = self.owner[: self._high]
        self.ids, self.owner = ids, owner

    def fit(self) -> None:
        """Drop the spare capacity beyond the highest slot in use and compact the maps (after a bulk load)."""
        for ids_of in self._slot_of.values():
            ids_of.compact()
        if self.store.capacity > self._high:
            self.store.resized(self._high, self._high)
            self.ids = self.ids[: self._high].copy()
            self.owner = self.owner[: self._high].copy()

    def put(self, slots: np.ndarray, ids: np.ndarray, vectors: np.ndarray, owner: int | np.ndarray) -> None:
        """Store new rows (ids their owner does not have yet): ``vectors`` float32, prepared for the metric (encoded
        here for a compressed table); ``owner`` one tenant for all, or one per row."""
        self.store.write(slots, vectors)
        self.ids[slots] = ids
        self.owner[slots] = owner
        for o, at in _by_owner(self.owner[slots]):
            self._slot_of.setdefault(o, IdMap()).put_many(ids[at], slots[at])
        self._count += int(slots.shape[0])

    def free(self, slots: np.ndarray) -> None:
        granted: dict[int, list[int]] = {}
        for slot in slots.tolist():
            for t in self.grants.tenants_of(slot):
                granted.setdefault(t, []).append(slot)
        for t, rows in granted.items():
            self._count_granted(np.array(rows, np.int64), t, -1)
        self.grants.remove_rows(slots)
        for o, at in _by_owner(self.owner[slots]):
            ids_of = self._slot_of[o]
            ids_of.remove_many(self.ids[slots[at]])
            if not len(ids_of):
                del self._slot_of[o]
        self._count -= int(slots.shape[0])
        self._free.extend(slots.tolist())
        self.ids[slots] = -1
        self.owner[slots] = -1
        self.store.clear(slots)

    def grant(self, slots: np.ndarray, tenant: int) -> np.ndarray:
        """Grant ``slots`` to ``tenant``; returns those it did not see before (the ones granted now)."""
        slots = np.atleast_1d(np.asarray(slots, np.int64))
        new = slots[~self.sees_many(slots, tenant)]
        self.grants.add(new, tenant)
        self._count_granted(new, tenant, +1)
        return new

    def revoke(self, slots: np.ndarray, tenant: int) -> np.ndarray:
        """Take back ``tenant``'s grants of ``slots``; returns those it had."""
        slots = np.atleast_1d(np.asarray(slots, np.int64))
        had = slots[self.grants.has(slots, tenant)]
        self.grants.remove(had, tenant)
        self._count_granted(had, tenant, -1)
        return had

    def _count_granted(self, slots: np.ndarray, tenant: int, sign: int) -> None:
        if not slots.size:
            return
        granters = self._granters.setdefault(tenant, {})
        owners, counts = np.unique(self.owner[slots], return_counts=True)
        for owner, n in zip(owners.tolist(), counts.tolist()):
            left = granters.get(owner, 0) + sign * n
            if left:
                granters[owner] = left
            else:
                del granters[owner]
        if not granters:
            del self._granters[tenant]

    def nbytes(self) -> dict[str, int]:
        return {
            **self.store.nbytes(),
            "row_meta_bytes": int(self.ids.nbytes + self.owner.nbytes),
            "id_map_bytes": sum(ids_of.nbytes() for ids_of in self._slot_of.values()),
            # the grants, and the granting owners per tenant (CPython: ~100 B an (owner, count) entry)
            "acl_bytes": self.grants.nbytes() + 100 * sum(len(g) for g in self._granters.values()),
        }


def _by_owner(owners: np.ndarray):
    """``(owner, positions)`` for each distinct owner in ``owners`` (positions into ``owners``)."""
    owners = np.asarray(owners)
    if owners.shape[0] and (owners == owners[0]).all():
        yield int(owners[0]), np.arange(owners.shape[0])
        return
    order = np.argsort(owners, kind="stable")
    cuts = np.flatnonzero(np.diff(owners[order])) + 1
    for part in np.split(order, cuts):
        if part.size:
            yield int(owners[part[0]]), part
