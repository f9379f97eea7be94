"""The search and scoring functions the training helpers take, built over a matrix and the rows one may see.

``ScopedVectors(data, rows, ids)`` is the exact, tenant-scoped view the miners need: ``search`` only ever
ranks ``data[rows]``, ``score`` refuses ids outside them, and ``pool`` lists them for random negatives. A
collection builds one per call from its table and the tenant's row list; benchmarks and tests build one
from a plain matrix.
"""

from __future__ import annotations

import numpy as np

from engine import kernels
from engine.errors import InvalidArgument, NotFound
from engine.kernels import gemm
from engine.training import _select

#: ``"best"``: the kernel layer's batch search (native if built, else numba); ``"gemm"``: the BLAS-blocked
#: product (``engine.kernels.gemm``); ``"scan"``: the per-query scan (``engine.kernels.topk``)
METHODS = ("best", "gemm", "scan")


def similarity(metric: str, surrogate: np.ndarray) -> np.ndarray:
    """Kernel surrogate scores -> similarities (higher is more similar): the score itself for ``ip`` and
    ``cosine``, minus the Euclidean distance for ``l2``; padding stays -inf."""
    if metric != "l2":
        return surrogate
    with np.errstate(invalid="ignore"):
        dist = np.sqrt(np.maximum(-surrogate, 0))
    return np.where(np.isfinite(surrogate), -dist, -np.inf).astype(np.float32)


class ScopedVectors:
    """Exact search and scoring restricted to ``data[rows]``, reporting external ids.

    Parameters
    ----------
    data : float32 ``[N, d]`` C-ordered, prepared for the metric (unit rows for cosine).
    rows : int64 row numbers the caller may see; None for all rows of ``data``.
    ids : int64 ``[N]`` external id of each row of ``data``; None when ids are row numbers.
    metric : ``"ip"``, ``"cosine"`` or ``"l2"``; scores are similarities (``l2``: minus the distance).
    method : one of ``METHODS``: ``"best"`` (default), ``"gemm"`` or ``"scan"``.
    """

    def __init__(
        self,
        data: np.ndarray,
        rows: np.ndarray | None = None,
        ids: np.ndarray | None = None,
        *,
        metric: str = "ip",
        method: str = "best",
    ) -> None:
        if metric not in ("ip", "cosine", "l2"):
            raise InvalidArgument(f"metric must be one of ip, cosine, l2; got {metric!r}")
        if method not in METHODS:
            raise InvalidArgument(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        if not isinstance(data, np.ndarray) or data.dtype != np.float32 or data.ndim != 2:
            raise InvalidArgument("data must be a 2-D float32 array; call .astype(np.float32)")
        self.data = np.ascontiguousarray(data)
        self.metric = metric
        self.method = method
        n = data.shape[0]
        self.rows = None if rows is None else np.ascontiguousarray(rows, dtype=np.int64)
        if self.rows is not None and self.rows.size and (self.rows.min() < 0 or self.rows.max() >= n):
            raise InvalidArgument(f"rows must lie in [0, {n})")
        self.row_ids = None if ids is None else np.ascontiguousarray(ids, dtype=np.int64)
        if self.row_ids is not None and self.row_ids.shape != (n,):
            raise InvalidArgument(f"ids must give one id per row of data ({n}), got shape {self.row_ids.shape}")
        visible = np.arange(n, dtype=np.int64) if self.rows is None else self.rows
        self.pool = visible if self.row_ids is None else self.row_ids[visible]
        order = np.argsort(self.pool, kind="stable")
        self._sorted_ids = self.pool[order]
        self._sorted_rows = visible[order]

    def __len__(self) -> int:
        return int(self.pool.shape[0])

    def search(self, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``depth`` best visible ids and their similarities, best first, padded with (-1, -inf)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self.method == "best":
            s, r = kernels.search(q, self.data, depth, self.metric, rows=self.rows)
        elif self.method == "gemm":
            s, r = gemm.topk_gemm(q, self.data, self.rows, depth, self.metric)
        else:
            rows = np.arange(self.data.shape[0], dtype=np.int64) if self.rows is None else self.rows
            s, r = kernels.topk(q, self.data, rows, depth, self.metric)
        ids = r if self.row_ids is None else np.where(r >= 0, self.row_ids[np.maximum(r, 0)], -1)
        return ids, similarity(self.metric, s)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id, -1 where the id is not visible."""
        if self._sorted_ids.size == 0:
            return np.full(np.shape(ids), -1, np.int64)
        flat = np.asarray(ids, dtype=np.int64).reshape(-1)
        at = np.minimum(np.searchsorted(self._sorted_ids, flat), self._sorted_ids.size - 1)
        hit = self._sorted_ids[at] == flat
        return np.where(hit, self._sorted_rows[at], -1).reshape(np.shape(ids))

    def _visible_rows(self, ids: np.ndarray, missing_ok: bool = False) -> tuple[np.ndarray, np.ndarray]:
        real = ids != _select.PAD
        rows = self.rows_of(np.where(real, ids, _select.PAD))
        missing = real & (rows < 0)
        if missing.any() and not missing_ok:
            raise NotFound(
                f"{int(missing.sum())} ids are not among the vectors this caller can see "
                f"(first: {ids[missing][:5].tolist()})"
            )
        return rows, real

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (any shape), zeros for -1; ``NotFound`` for ids not visible."""
        ids = np.asarray(ids, dtype=np.int64)
        rows, real = self._visible_rows(ids)
        return np.where(real[..., None], self.data[np.maximum(rows, 0)], np.float32(0))

    def score(self, queries: np.ndarray, ids: np.ndarray, *, missing: str = "raise") -> np.ndarray:
        """Similarity of query i with each of ``ids[i]`` (-1 entries give -inf).

        Ids not visible raise ``NotFound`` (``missing="raise"``) or score NaN (``missing="nan"``: the same
        answer for an id that exists elsewhere and one that does not, so nothing leaks).
        """
        if missing not in ("raise", "nan"):
            raise InvalidArgument(f"missing must be 'raise' or 'nan', got {missing!r}")
        q = np.ascontiguousarray(queries, dtype=np.float32)
        ids = np.asarray(ids, dtype=np.int64)
        rows, real = self._visible_rows(ids, missing_ok=missing == "nan")
        x = self.data[np.maximum(rows, 0)]
        if self.metric == "l2":
            out = -np.sqrt(np.maximum(((q[:, None, :] - x) ** 2).sum(axis=2), 0))
        else:
            out = np.einsum("md,mpd->mp", q, x)
        out = np.where(real, out, -np.inf)
        return np.where(real & (rows < 0), np.nan, out).astype(np.float32)

    def score_visible(self, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """``score`` with NaN for ids not visible: the ``score_fn`` to mine with when positives may be foreign."""
        return self.score(queries, ids, missing="nan")
