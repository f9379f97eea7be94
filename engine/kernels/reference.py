"""Slow, obviously-right numpy versions of every kernel: the oracle each backend is tested against.

Scores use the order-preserving surrogate of ``engine.kernels.metrics``: higher is better, with
``ip`` -> inner product and ``l2`` -> minus the squared Euclidean distance. Everything is computed in float64
from the float32 inputs; LVQ codes are decoded first (``engine.kernels.reference_lvq.decode``).

Top-k results are best first, ties broken by the smaller row, padded with (-inf, -1).
"""

from __future__ import annotations

import numpy as np


def surrogate_scores(queries: np.ndarray, base: np.ndarray, rows: np.ndarray | None, metric: str) -> np.ndarray:
    """``[m, n]`` surrogate scores of each query against ``base[rows]`` (all rows when ``rows`` is None)."""
    x = (base if rows is None else base[rows]).astype(np.float64)
    q = queries.astype(np.float64)
    if metric == "l2":  # one query at a time: the difference matrix is [n, d], not [m, n, d]
        return np.stack([-((x - qi[None, :]) ** 2).sum(axis=1) for qi in q]) if len(q) else np.zeros((0, len(x)))
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


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge top-k lists ``(scores [m, k_i], rows [m, k_i])`` of the same queries over disjoint rows into one
    top-k: best first, ties to the smaller row, padding (row -1) last."""
    s = np.concatenate([p[0] for p in parts], axis=1)
    r = np.concatenate([p[1] for p in parts], axis=1)
    pad = r < 0
    key_r = np.where(pad, np.iinfo(np.int64).max, r)
    key_s = np.where(pad, np.inf, -s.astype(np.float64))
    order = np.lexsort((key_r, key_s), axis=-1)[:, :k]
    out_s = np.full((s.shape[0], k), -np.inf, np.float32)
    out_r = np.full((s.shape[0], k), -1, np.int64)
    w = order.shape[1]
    out_s[:, :w] = np.take_along_axis(s, order, 1)
    out_r[:, :w] = np.take_along_axis(r, order, 1)
    return out_s, out_r


def decode(data) -> np.ndarray:
    """float64 ``[N, dim]`` rows of ``data``: a float32 array as is, ``engine.kernels.LVQData`` decoded."""
    if isinstance(data, np.ndarray):
        return data.astype(np.float64)
    from engine.kernels import reference_lvq

    return reference_lvq.decode(
        data.codes, data.scale, data.bias, data.mean, bits=data.bits, dim=data.dim, residual=data.residual
    )


def _selected(rows: np.ndarray | None, start: int, stop: int) -> np.ndarray:
    return np.asarray(rows, np.int64) if rows is not None else np.arange(start, stop, dtype=np.int64)


def search(queries, data, rows, start, stop, k, kind, threads=1):
    """The oracle of ``engine.kernels.search``: top-k of ``data[rows]`` (or rows ``start:stop``)."""
    sel = _selected(rows, start, stop)
    x = decode(data) if not isinstance(data, np.ndarray) else data
    return topk(queries, x, sel, k, kind)


def scores(queries, data, rows, start, stop, kind, threads=1):
    """The oracle of ``engine.kernels.scores`` (float64 in, float32 out)."""
    sel = _selected(rows, start, stop)
    x = decode(data) if not isinstance(data, np.ndarray) else data
    return surrogate_scores(queries, x, sel, kind).astype(np.float32)
