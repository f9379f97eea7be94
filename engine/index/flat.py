"""Exact tenant-scoped search: per tenant, the list of rows it may see, scanned by a kernel.

This is the correctness oracle for every faster index and the path for small tenants. Rows per tenant
are kept unsorted in a growable int64 array; removal filters with ``np.isin`` (batches amortise it).
"""

from __future__ import annotations

import numpy as np

_NO_ROWS = np.zeros(0, np.int64)


class _Rows:
    __slots__ = ("arr", "n")

    def __init__(self) -> None:
        self.arr = np.zeros(8, np.int64)
        self.n = 0

    def add(self, rows: np.ndarray) -> None:
        need = self.n + rows.shape[0]
        if need > self.arr.shape[0]:
            grown = np.zeros(max(need, 2 * self.arr.shape[0]), np.int64)
            grown[: self.n] = self.arr[: self.n]
            self.arr = grown
        self.arr[self.n : need] = rows
        self.n = need

    def remove(self, rows: np.ndarray) -> None:
        live = self.arr[: self.n]
        keep = live[~np.isin(live, rows)]
        self.arr[: keep.shape[0]] = keep
        self.n = keep.shape[0]

    def view(self) -> np.ndarray:
        return self.arr[: self.n]


class FlatIndex:
    """Per-tenant row lists over a shared ``VectorTable``; search is an exact scan of the tenant's rows."""

    def __init__(self, table, metric: str) -> None:
        self.table = table
        self.metric = metric
        self._rows: dict[int, _Rows] = {}

    def add(self, tenant: int, rows: np.ndarray) -> None:
        """Make ``rows`` (not yet visible to ``tenant``) visible to it."""
        lst = self._rows.get(tenant)
        if lst is None:
            lst = self._rows[tenant] = _Rows()
        lst.add(rows)

    def remove(self, tenant: int, rows: np.ndarray) -> None:
        lst = self._rows.get(tenant)
        if lst is None:
            return
        lst.remove(rows)
        if lst.n == 0:
            del self._rows[tenant]

    def rows(self, tenant: int) -> np.ndarray:
        lst = self._rows.get(tenant)
        return _NO_ROWS if lst is None else lst.view()

    def count(self, tenant: int) -> int:
        lst = self._rows.get(tenant)
        return 0 if lst is None else lst.n

    def search(self, queries: np.ndarray, k: int, tenant: int, **_: object) -> tuple[np.ndarray, np.ndarray]:
        """Top-k surrogate scores and rows of the tenant's visible vectors: exact over float32 rows, from the
        codes for a compressed table."""
        return self.table.store.topk(queries, self.rows(tenant), k, self.metric)

    def nbytes(self) -> dict[str, int]:
        return {"tenant_lists_bytes": sum(r.arr.nbytes + 56 for r in self._rows.values())}
