"""The in-memory rows of one collection: vectors, their external ids, owners and grants (the ACL).

Rows ("slots") are positions in one growable float32 matrix; a freed slot is reused. The access list
of a row is its owner plus a set of granted tenants; it is the authority every index is checked against.
Not thread-safe by itself: ``engine.db.Collection`` holds the lock.
"""

from __future__ import annotations

import numpy as np

_EMPTY: frozenset[int] = frozenset()


class VectorTable:
    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self.data = np.zeros((capacity, dim), np.float32)
        self.ids = np.full(capacity, -1, np.int64)
        self.owner = np.full(capacity, -1, np.int32)
        self.grants: dict[int, set[int]] = {}
        self.slot_of: dict[int, int] = {}
        self._free: list[int] = []
        self._high = 0

    def __len__(self) -> int:
        return len(self.slot_of)

    def slots(self, ids: np.ndarray) -> np.ndarray:
        """Slots of ``ids``, -1 where an id is absent."""
        get = self.slot_of.get
        return np.fromiter((get(i, -1) for i in ids.tolist()), np.int64, ids.shape[0])

    def sees(self, slot: int, tenant: int) -> bool:
        return self.owner[slot] == tenant or tenant in self.grants.get(slot, _EMPTY)

    def tenants_of(self, slot: int) -> list[int]:
        """Owner first, then the granted tenants."""
        return [int(self.owner[slot]), *sorted(self.grants.get(slot, _EMPTY))]

    def allocate(self, n: int) -> np.ndarray:
        """``n`` free slots, growing the matrix when needed."""
        take = min(n, len(self._free))
        reused = [self._free.pop() for _ in range(take)]
        fresh = n - take
        if self._high + fresh > self.data.shape[0]:
            self._grow(self._high + fresh)
        out = np.array(reused + list(range(self._high, self._high + fresh)), np.int64)
        self._high += fresh
        return out

    def _grow(self, need: int) -> None:
        cap = max(need, int(self.data.shape[0] * 1.5) + 1024)
        data = np.zeros((cap, self.dim), np.float32)
        data[: self._high] = self.data[: self._high]
        ids = np.full(cap, -1, np.int64)
        ids[: self._high] = self.ids[: self._high]
        owner = np.full(cap, -1, np.int32)
        owner[: self._high] = self.owner[: self._high]
        self.data, self.ids, self.owner = data, ids, owner

    def put(self, slots: np.ndarray, ids: np.ndarray, vectors: np.ndarray, owner: int) -> None:
        self.data[slots] = vectors
        self.ids[slots] = ids
        self.owner[slots] = owner
        self.slot_of.update(zip(ids.tolist(), slots.tolist()))

    def free(self, slots: np.ndarray) -> None:
        for s in slots.tolist():
            del self.slot_of[int(self.ids[s])]
            self.grants.pop(s, None)
            self._free.append(s)
        self.ids[slots] = -1
        self.owner[slots] = -1
        self.data[slots] = 0

    def grant(self, slot: int, tenant: int) -> bool:
        """Add ``tenant`` to the row's grants; False when it already sees the row."""
        if self.sees(slot, tenant):
            return False
        self.grants.setdefault(slot, set()).add(tenant)
        return True

    def revoke(self, slot: int, tenant: int) -> bool:
        """Remove a grant; False when there was none."""
        granted = self.grants.get(slot)
        if not granted or tenant not in granted:
            return False
        granted.discard(tenant)
        if not granted:
            del self.grants[slot]
        return True

    def nbytes(self) -> dict[str, int]:
        n_grants = sum(len(g) for g in self.grants.values())
        return {
            "vectors_bytes": int(self.data.nbytes),
            "row_meta_bytes": int(self.ids.nbytes + self.owner.nbytes),
            # dict entries: ~100 B per id, ~60 B per grant set entry (CPython sizes, measured roughly)
            "id_map_bytes": 100 * len(self.slot_of),
            "acl_bytes": 60 * n_grants + 200 * len(self.grants),
        }
