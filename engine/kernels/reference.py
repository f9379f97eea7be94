"""Slow, obviously-right numpy versions of every kernel: the oracle each backend is tested against.

Scores use the order-preserving surrogate of ``engine.kernels.metrics``: higher is better, with
``ip`` -> inner product and ``l2`` -> minus the squared Euclidean distance.
"""

from __future__ import annotations

import numpy as np


def surrogate_scores(queries: np.ndarray, base: np.ndarray, rows: np.ndarray | None, metric: str) -> np.ndarray:
    """``[m, n]`` surrogate scores of each query against ``base[rows]`` (all rows when ``rows`` is None)."""
    x = base if rows is None else base[rows]
    q = queries.astype(np.float64)
    x = x.astype(np.float64)
    if metric == "l2":
        return -((q[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    return q @ x.T


def topk(
    queries: np.ndarray, base: np.ndarray, rows: np.ndarray | None, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k surrogate scores and the row numbers they came from, best first, padded with (-inf, -1).

    Ties are broken by the smaller row number.
    """
    rows_arr = np.arange(base.shape[0]) if rows is None else np.asarray(rows)
    s = surrogate_scores(queries, base, rows_arr, metric)
    m = queries.shape[0]
    out_s = np.full((m, k), -np.inf, np.float32)
    out_r = np.full((m, k), -1, np.int64)
    for i in range(m):
        order = np.lexsort((rows_arr, -s[i]))[:k]
        out_s[i, : len(order)] = s[i, order]
        out_r[i, : len(order)] = rows_arr[order]
    return out_s, out_r
