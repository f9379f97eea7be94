"""Exact top-k for large query batches: a BLAS matrix product per block, then a numba heap selection.

This is the shape of faiss ``IndexFlat`` for ``nq >= 20`` (``exhaustive_inner_product_blas``): score a
block of queries against a block of rows with one ``sgemm``, then fold each row of the score block into
a per-query top-k min-heap. Most scores lose one comparison against the heap's root, so the selection
costs little next to the product. Bulk jobs (hard-negative mining, ground truth) use it; a single query
is better served by ``engine.kernels.topk``.

Same contract as ``engine.kernels.topk``: surrogate scores (``ip``: inner product, ``l2``: minus the
squared distance), best first, ties to the smaller row, padded with (-inf, -1).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from engine.kernels import metrics

#: queries per block (rows of the score block) and rows per block (its columns); 1024 x 4096 float32 = 16 MiB
QUERY_BLOCK = 1024
ROW_BLOCK = 4096
_NO_BIAS = np.zeros(0, np.float32)


@njit(nogil=True, fastmath=True, cache=True)
def _sift(hs, hi, size):
    """Restore a min-heap (worst kept at the root; on equal scores the larger row is worse)."""
    i = 0
    while True:
        c = 2 * i + 1
        if c >= size:
            return
        r = c + 1
        if r < size and (hs[r] < hs[c] or (hs[r] == hs[c] and hi[r] > hi[c])):
            c = r
        if hs[c] < hs[i] or (hs[c] == hs[i] and hi[c] > hi[i]):
            hs[i], hs[c] = hs[c], hs[i]
            hi[i], hi[c] = hi[c], hi[i]
            i = c
        else:
            return


@njit(nogil=True, fastmath=True, cache=True, parallel=True)
def _fold(block, bias, use_bias, cols, hs, hi, sizes):
    """Offer ``block[i, j] (+ bias[j])`` with row ``cols[j]`` to query i's heap, for every i and j."""
    k = hs.shape[1]
    for i in prange(block.shape[0]):
        h_s = hs[i]
        h_i = hi[i]
        size = sizes[i]
        for j in range(block.shape[1]):
            s = block[i, j]
            if use_bias:
                s += bias[j]
            if size == k and s < h_s[0]:
                continue
            r = cols[j]
            if size < k:
                t = size
                h_s[t] = s
                h_i[t] = r
                while t > 0:
                    p = (t - 1) // 2
                    if h_s[t] < h_s[p] or (h_s[t] == h_s[p] and h_i[t] > h_i[p]):
                        h_s[t], h_s[p] = h_s[p], h_s[t]
                        h_i[t], h_i[p] = h_i[p], h_i[t]
                        t = p
                    else:
                        break
                size += 1
            elif s > h_s[0] or (s == h_s[0] and r < h_i[0]):
                h_s[0] = s
                h_i[0] = r
                _sift(h_s, h_i, size)
        sizes[i] = size


@njit(nogil=True, cache=True, parallel=True)
def _drain(hs, hi, sizes, out_s, out_r):
    """Write each heap best first into the pre-padded outputs (the heaps are consumed)."""
    for i in prange(hs.shape[0]):
        n = sizes[i]
        while n > 0:
            out_s[i, n - 1] = hs[i, 0]
            out_r[i, n - 1] = hi[i, 0]
            n -= 1
            hs[i, 0] = hs[i, n]
            hi[i, 0] = hi[i, n]
            _sift(hs[i], hi[i], n)


def topk_gemm(
    queries: np.ndarray,
    base: np.ndarray,
    rows: np.ndarray | None,
    k: int,
    metric: str,
    *,
    query_block: int = QUERY_BLOCK,
    row_block: int = ROW_BLOCK,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of ``base[rows]`` (all of ``base`` when ``rows`` is None) for each query.

    Parameters
    ----------
    queries : float32 ``[m, d]``, C-ordered, already prepared for the metric (``metrics.prepare``).
    base : float32 ``[N, d]``, C-ordered.
    rows : int64 ``[n]`` row numbers into ``base``, or None for ``0..N-1`` (no gather is made).
    k : how many to keep per query.
    metric : ``"ip"``, ``"cosine"`` or ``"l2"``.
    query_block, row_block : the score block is ``query_block x row_block`` float32.

    Returns
    -------
    (scores float32 ``[m, k]`` surrogate, rows int64 ``[m, k]``), best first, padded with (-inf, -1).

    Notes
    -----
    For ``l2`` the product ranks by :math:`2\\langle q, x\\rangle - \\|x\\|^2`, which orders rows like
    :math:`-\\|q - x\\|^2`; :math:`-\\|q\\|^2` is added to the k survivors only.
    """
    kernel_metric = metrics.KERNEL_METRIC[metric]
    m = queries.shape[0]
    n = base.shape[0] if rows is None else rows.shape[0]
    out_s = np.full((m, k), -np.inf, np.float32)
    out_r = np.full((m, k), -1, np.int64)
    if m == 0 or n == 0:
        return out_s, out_r
    kk = min(k, n)
    l2 = kernel_metric == "l2"
    hs = np.empty((m, kk), np.float32)
    hi = np.empty((m, kk), np.int64)
    sizes = np.zeros(m, np.int64)
    for c0 in range(0, n, row_block):
        if rows is None:
            cols = np.arange(c0, min(c0 + row_block, n), dtype=np.int64)
            x = base[c0 : c0 + row_block]
        else:
            cols = np.ascontiguousarray(rows[c0 : c0 + row_block], dtype=np.int64)
            x = base[cols]
        bias = -np.einsum("ij,ij->i", x, x).astype(np.float32) if l2 else _NO_BIAS
        xt = x.T
        for q0 in range(0, m, query_block):
            q = queries[q0 : q0 + query_block]
            block = q @ xt
            if l2:
                block *= 2
            part = slice(q0, q0 + query_block)
            _fold(block, bias, l2, cols, hs[part], hi[part], sizes[part])
    _drain(hs, hi, sizes, out_s[:, :kk], out_r[:, :kk])
    if l2:
        qn = np.einsum("ij,ij->i", queries, queries).astype(np.float32)
        out_s[:, :kk] -= qn[:, None]
    return out_s, out_r
