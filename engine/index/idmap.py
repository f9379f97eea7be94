"""External vector id -> table slot, in about 17 bytes an id instead of a dict's ~100.

Ids sit in a sorted int64 array beside their slots, with an alive mask; new ids wait in a small dict that is
merged in when it fills, and removed ids are masked and compacted away once they are an eighth of the array.
Lookups of a batch are one ``searchsorted`` plus dict look-ups for the misses.
"""

from __future__ import annotations

import numpy as np

TAIL_MAX = 1 << 15


class IdMap:
    def __init__(self) -> None:
        self._keys = np.zeros(0, np.int64)
        self._vals = np.zeros(0, np.int64)
        self._alive = np.zeros(0, bool)
        self._dead = 0
        self._tail: dict[int, int] = {}

    def __len__(self) -> int:
        return self._keys.shape[0] - self._dead + len(self._tail)

    def get_many(self, ids: np.ndarray) -> np.ndarray:
        """Slot of each id, -1 where absent."""
        out = np.full(ids.shape[0], -1, np.int64)
        if self._keys.shape[0]:
            at = np.minimum(np.searchsorted(self._keys, ids), self._keys.shape[0] - 1)
            hit = (self._keys[at] == ids) & self._alive[at]
            out[hit] = self._vals[at[hit]]
        if self._tail:
            miss = np.flatnonzero(out < 0)
            get = self._tail.get
            out[miss] = np.fromiter((get(i, -1) for i in ids[miss].tolist()), np.int64, miss.shape[0])
        return out

    def get(self, i: int) -> int | None:
        slot = int(self.get_many(np.array([i], np.int64))[0])
        return None if slot < 0 else slot

    def put_many(self, ids: np.ndarray, slots: np.ndarray) -> None:
        """Map ids that are not in the map yet."""
        self._tail.update(zip(ids.tolist(), slots.tolist()))
        if len(self._tail) > TAIL_MAX:
            self._merge()

    def remove_many(self, ids: np.ndarray) -> None:
        """Forget ids (all present)."""
        if self._keys.shape[0]:
            at = np.minimum(np.searchsorted(self._keys, ids), self._keys.shape[0] - 1)
            hit = (self._keys[at] == ids) & self._alive[at]
            self._alive[at[hit]] = False
            self._dead += int(hit.sum())
            rest = ids[~hit]
        else:
            rest = ids
        for i in rest.tolist():
            del self._tail[i]
        if self._dead * 8 > self._keys.shape[0]:
            self._merge()

    def _merge(self) -> None:
        n = len(self._tail)
        keys = np.concatenate([self._keys[self._alive], np.fromiter(self._tail.keys(), np.int64, n)])
        vals = np.concatenate([self._vals[self._alive], np.fromiter(self._tail.values(), np.int64, n)])
        order = np.argsort(keys, kind="stable")
        self._keys, self._vals = keys[order], vals[order]
        self._alive = np.ones(keys.shape[0], bool)
        self._dead = 0
        self._tail = {}

    def compact(self) -> None:
        """Fold everything into the sorted arrays (after a bulk load)."""
        self._merge()

    def nbytes(self) -> int:
        # sorted arrays + mask, and the tail dict (CPython: ~100 B an entry)
        return int(self._keys.nbytes + self._vals.nbytes + self._alive.nbytes + 100 * len(self._tail))
