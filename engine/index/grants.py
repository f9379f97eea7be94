"""The grants of a collection, (row, tenant) pairs, in about 9 bytes a pair.

A vector visible to ten tenants beside its owner has ten grants; with millions of vectors a Python set
per row would outweigh the vectors. Pairs are packed into one int64 (``row << 24 | tenant``) and kept in a
sorted array with an alive mask; new pairs wait in a small tail (a dict row -> tenants) that is merged in
when it fills, and removed pairs are masked and compacted away once they are an eighth of the array. So a
grant or revoke costs O(log n) plus amortised copying, and the rows of a tenant or the tenants of a row
are a binary search away.
"""

from __future__ import annotations

import numpy as np

_SHIFT = 24
MAX_TENANTS = 1 << _SHIFT
_TENANT_MASK = np.int64(MAX_TENANTS - 1)
TAIL_MAX = 1 << 15


class GrantSet:
    def __init__(self) -> None:
        self._main = np.zeros(0, np.int64)
        self._alive = np.zeros(0, bool)
        self._dead = 0
        self._tail: dict[int, list[int]] = {}
        self._tail_n = 0

    def __len__(self) -> int:
        return self._main.shape[0] - self._dead + self._tail_n

    # ------------------------------------------------------------------ queries
    def _find(self, codes: np.ndarray) -> np.ndarray:
        """Index of each code in the main array, -1 where absent or removed."""
        if self._main.shape[0] == 0:
            return np.full(codes.shape[0], -1, np.int64)
        at = np.minimum(np.searchsorted(self._main, codes), self._main.shape[0] - 1)
        hit = (self._main[at] == codes) & self._alive[at]
        return np.where(hit, at, -1)

    def has(self, rows: np.ndarray, tenant: int) -> np.ndarray:
        """Whether ``tenant`` was granted each of ``rows``."""
        rows = np.asarray(rows, np.int64)
        found = self._find((rows << _SHIFT) | tenant) >= 0
        if self._tail_n:
            tail = self._tail
            found |= np.fromiter((tenant in tail.get(r, ()) for r in rows.tolist()), bool, rows.shape[0])
        return found

    def tenants_of(self, row: int) -> list[int]:
        """The tenants ``row`` was granted to."""
        lo, hi = np.searchsorted(self._main, [row << _SHIFT, (row + 1) << _SHIFT])
        out = (self._main[lo:hi][self._alive[lo:hi]] & _TENANT_MASK).tolist()
        return out + self._tail.get(row, [])

    def tenants(self) -> set[int]:
        live = self._main[self._alive] & _TENANT_MASK
        out = set(np.unique(live).tolist())
        for ts in self._tail.values():
            out.update(ts)
        return out

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (row, tenant) pair, as two arrays."""
        self._merge()
        live = self._main[self._alive]
        return live >> _SHIFT, live & _TENANT_MASK

    # ------------------------------------------------------------------ updates
    def add(self, rows: np.ndarray, tenant: int) -> None:
        """Grant ``rows`` (not yet granted) to ``tenant``."""
        if not 0 <= tenant < MAX_TENANTS:
            raise ValueError(f"tenant number {tenant} does not fit in {_SHIFT} bits")
        for r in np.asarray(rows, np.int64).tolist():
            self._tail.setdefault(r, []).append(tenant)
        self._tail_n += len(rows)
        if self._tail_n > TAIL_MAX:
            self._merge()

    def remove(self, rows: np.ndarray, tenant: int) -> None:
        """Take back grants of ``rows`` from ``tenant`` (pairs not granted are ignored)."""
        rows = np.asarray(rows, np.int64)
        at = self._find((rows << _SHIFT) | tenant)
        hit = at[at >= 0]
        self._alive[hit] = False
        self._dead += hit.shape[0]
        for r in rows[at < 0].tolist():
            ts = self._tail.get(r)
            if ts and tenant in ts:
                ts.remove(tenant)
                self._tail_n -= 1
                if not ts:
                    del self._tail[r]
        if self._dead * 8 > self._main.shape[0]:
            self._merge()

    def remove_rows(self, rows: np.ndarray) -> None:
        """Take back every grant of ``rows`` (they are being deleted)."""
        for r in np.asarray(rows, np.int64).tolist():
            lo, hi = np.searchsorted(self._main, [r << _SHIFT, (r + 1) << _SHIFT])
            self._dead += int(self._alive[lo:hi].sum())
            self._alive[lo:hi] = False
            self._tail_n -= len(self._tail.pop(r, ()))
        if self._dead * 8 > self._main.shape[0]:
            self._merge()

    def _merge(self) -> None:
        """Fold the tail in and drop removed pairs: one sorted, all-alive array."""
        parts = [self._main[self._alive]]
        if self._tail_n:
            rows = np.fromiter((r for r, ts in self._tail.items() for _ in ts), np.int64, self._tail_n)
            ts = np.fromiter((t for ts in self._tail.values() for t in ts), np.int64, self._tail_n)
            parts.append((rows << _SHIFT) | ts)
        self._main = np.sort(np.concatenate(parts))
        self._alive = np.ones(self._main.shape[0], bool)
        self._dead = 0
        self._tail, self._tail_n = {}, 0

    def nbytes(self) -> int:
        # sorted pairs + mask, and the tail dict (CPython: ~100 B a row entry, ~36 B a list slot)
        return int(self._main.nbytes + self._alive.nbytes + 100 * len(self._tail) + 36 * self._tail_n)
