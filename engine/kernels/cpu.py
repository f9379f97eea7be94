"""numba CPU kernels: gather-scan a list of rows, keep the top-k in a heap, release the GIL.

Loops only; callers (``engine.kernels``) validate and shape the input. Row lists are int64 and
``rows[0] < 0`` never happens: callers pass real rows. The surrogate is ``ip`` or ``-squared l2``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_FLAGS = dict(nogil=True, fastmath=True, cache=True)
IP, L2 = 0, 1


@njit(**_FLAGS)
def _score(q, x, kind):
    s = np.float32(0.0)
    if kind == IP:
        for j in range(q.shape[0]):
            s += q[j] * x[j]
        return s
    for j in range(q.shape[0]):
        d = q[j] - x[j]
        s += d * d
    return -s


@njit(**_FLAGS)
def _sift_down(hs, hi, size):
    """Restore the min-heap (worst kept score at the root) after the root was replaced."""
    i = 0
    while True:
        left = 2 * i + 1
        if left >= size:
            return
        c = left
        right = left + 1
        if right < size and (hs[right] < hs[left] or (hs[right] == hs[left] and hi[right] > hi[left])):
            c = right
        if hs[c] < hs[i] or (hs[c] == hs[i] and hi[c] > hi[i]):
            hs[i], hs[c] = hs[c], hs[i]
            hi[i], hi[c] = hi[c], hi[i]
            i = c
        else:
            return


@njit(**_FLAGS)
def _push(hs, hi, size, k, s, r):
    """Offer (s, r) to a top-k min-heap holding ``size`` items; return the new size."""
    if size < k:
        i = size
        hs[i] = s
        hi[i] = r
        while i > 0:
            p = (i - 1) // 2
            if hs[i] < hs[p] or (hs[i] == hs[p] and hi[i] > hi[p]):
                hs[i], hs[p] = hs[p], hs[i]
                hi[i], hi[p] = hi[p], hi[i]
                i = p
            else:
                break
        return size + 1
    if s > hs[0] or (s == hs[0] and r < hi[0]):
        hs[0] = s
        hi[0] = r
        _sift_down(hs, hi, size)
    return size


@njit(**_FLAGS)
def _drain(hs, hi, size, out_s, out_r):
    """Write the heap's items best first into out_s/out_r (which start padded)."""
    n = size
    while n > 0:
        out_s[n - 1] = hs[0]
        out_r[n - 1] = hi[0]
        n -= 1
        hs[0] = hs[n]
        hi[0] = hi[n]
        _sift_down(hs, hi, n)


@njit(**_FLAGS)
def _topk_one(q, base, rows, k, kind, out_s, out_r):
    hs = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    size = 0
    for t in range(rows.shape[0]):
        r = rows[t]
        size = _push(hs, hi, size, k, _score(q, base[r], kind), r)
    _drain(hs, hi, size, out_s, out_r)


@njit(**_FLAGS)
def topk_rows(queries, base, rows, k, kind, out_s, out_r):
    """Serial: for each query, the top-k of ``base[rows]`` into ``out_s``/``out_r`` (pre-padded)."""
    for i in range(queries.shape[0]):
        _topk_one(queries[i], base, rows, k, kind, out_s[i], out_r[i])


@njit(nogil=True, fastmath=True, cache=True, parallel=True)
def topk_rows_parallel(queries, base, rows, k, kind, out_s, out_r):
    """The same, one query per thread."""
    for i in prange(queries.shape[0]):
        _topk_one(queries[i], base, rows, k, kind, out_s[i], out_r[i])


@njit(**_FLAGS)
def scores_rows(queries, base, rows, kind, out):
    """``out[i, t]`` = surrogate score of query i against ``base[rows[t]]``."""
    for i in range(queries.shape[0]):
        for t in range(rows.shape[0]):
            out[i, t] = _score(queries[i], base[rows[t]], kind)
