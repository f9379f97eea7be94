"""The numpy oracle of the LVQ kernels: decode the codes to float64, then score exactly.

Slow and obviously right; ``engine.kernels.lvq`` must match it. It reads the raw arrays of the layout
documented in ``engine.quant.lvq`` (kernels import nothing else from ``engine``) and decodes them with its
own, deliberately plain code: one nibble at a time, one formula per level.
"""

from __future__ import annotations

import numpy as np

from engine.kernels import reference


def decode(
    codes: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray,
    mean: np.ndarray,
    *,
    bits: int,
    dim: int,
    residual: np.ndarray | None = None,
) -> np.ndarray:
    """float64 ``[n, dim]``: ``mean + bias + scale * c`` (+ ``scale/255 * c2 - scale/2`` with a residual)."""
    n = codes.shape[0]
    c = np.zeros((n, dim), np.float64)
    if bits == 8:
        c[:] = codes[:, :dim]
    else:
        half = (dim + 1) // 2
        for j in range(dim):
            if j < half:
                c[:, j] = codes[:, j] % 16
            else:
                c[:, j] = codes[:, j - half] // 16
    step = scale.astype(np.float64)[:, None]
    x = np.asarray(mean, np.float64)[None, :] + bias.astype(np.float64)[:, None] + step * c
    if residual is not None:
        step2 = (scale / np.float32(255)).astype(np.float64)[:, None]
        x = x + step2 * residual.astype(np.float64) - step / 2
    return x


def surrogate(queries: np.ndarray, x: np.ndarray, metric: str, sqnorms: np.ndarray | None = None) -> np.ndarray:
    """``[m, n]`` surrogate scores against decoded rows ``x``.

    ``ip``/``cosine``: ``q . x``; ``l2``: ``-|q - x|^2``; ``l2`` with ``sqnorms``: ``2 q . x - sqnorms - |q|^2``
    (equal to ``-|q - x|^2`` when ``sqnorms = |x|^2``).
    """
    q = np.asarray(queries, np.float64)
    if metric in ("ip", "cosine"):
        return q @ x.T
    if sqnorms is None:
        return -((q[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    return 2 * q @ x.T - np.asarray(sqnorms, np.float64)[None, :] - (q * q).sum(axis=1)[:, None]


def _topk_of(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    out_s = np.full(k, -np.inf, np.float32)
    out_r = np.full(k, -1, np.int64)
    order = np.lexsort((rows, -scores))[:k]
    out_s[: len(order)] = scores[order]
    out_r[: len(order)] = rows[order]
    return out_s, out_r


def topk(
    queries: np.ndarray,
    decoded: np.ndarray,
    rows: np.ndarray,
    k: int,
    metric: str,
    sqnorms: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of ``decoded[rows]`` per query, best first, ties to the smaller row, padded with (-inf, -1)."""
    rows = np.asarray(rows, np.int64)
    if sqnorms is None and metric != "l2":
        return reference.topk(queries, decoded, rows, k, "ip")
    sq = None if sqnorms is None else np.asarray(sqnorms)[rows]
    s = surrogate(queries, decoded[rows], metric, sq)
    out = [_topk_of(s[i], rows, k) for i in range(s.shape[0])]
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


def rerank(
    queries: np.ndarray,
    decoded: np.ndarray,
    candidates: np.ndarray,
    k: int,
    metric: str,
    sqnorms: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per query ``i``, the top-k of ``decoded[candidates[i]]`` (entries ``< 0`` skipped)."""
    out_s = np.full((queries.shape[0], k), -np.inf, np.float32)
    out_r = np.full((queries.shape[0], k), -1, np.int64)
    for i in range(queries.shape[0]):
        rows = np.asarray(candidates[i], np.int64)
        rows = rows[rows >= 0]
        if rows.size:
            s, r = topk(queries[i : i + 1], decoded, rows, k, metric, sqnorms)
            out_s[i], out_r[i] = s[0], r[0]
    return out_s, out_r
