"""numba kernels of the leaf-probe search (``engine.training.ann``): loops only, the caller validates.

A tenant's rows are grouped by leaf of the shared clustering tree: ``rows[ptr[l]:ptr[l + 1]]`` are the rows of
its ``l``-th non-empty leaf. A batch search picks, for each query, the leaves to probe (``probes``), inverts
that into the queries of each leaf (``invert``), then

1. ``scan`` walks the leaves once (in parallel): each leaf's rows are scored against all of its queries in
   5 x 4 register blocks (20 independent dot products per pass over the dimension, close to a BLAS
   micro-kernel, with no gather of rows or queries) and the scores are written to each query's own segment of
   one flat array, so threads never share an output;
2. ``select`` walks the queries (in parallel): a bar taken from a strided sample of the query's scores (the
   score that about ``_SAMPLE_MARGIN * k`` of them reach) is compared with all of them, 32 at a time into a bit
   mask, and only those reaching it are kept; they are ranked by partitioning and sorting one uint64 key each.
   A query whose bar proves too high (fewer than k reach it) is gathered again without it, so the result is
   always the exact top-k of the scored rows.

Offering scores to per-query heaps during the leaf walk measured 40% slower: a query's heap is cold by the time
its next leaf comes, so each accepted candidate costs cache misses; a heap per query in ``select`` (in cache)
measured 40% slower than the keys.

Scores are the kernel surrogates (``engine.kernels.metrics``): the inner product, or for ``l2``
``2 q.x - |x|^2`` during the scan and minus ``|q|^2`` on the survivors, i.e. minus the squared distance.
Results are best first and tie to the smaller row, like every other kernel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange
from numba.cpython.unsafe.numbers import trailing_zeros

# numba options, forwarded to njit as keywords
_FLAGS: dict[str, Any] = dict(nogil=True, fastmath=True, cache=True)
_PAR: dict[str, Any] = dict(nogil=True, fastmath=True, cache=True, parallel=True)
#: rows and queries per register block of the scan (5 x 4 measured 8% faster than 4 x 4, 6 x 4 spills); query
#: segments are padded to a multiple of ``_B``
_B = 4
_BQ = 5
#: one score in this many feeds a query's sample threshold
_SAMPLE_STRIDE = 16
#: the sample threshold aims at this many times k scores above it (at least k: else the query is redone)
_SAMPLE_MARGIN = 3
_LOWEST = np.float32(np.finfo(np.float32).min)
_SIGN = np.uint32(0x80000000)
_LOW31 = np.uint32(0x7FFFFFFF)
#: scores compared at once by ``select`` into one bit mask (at most 64)
_CHUNK = 32


@njit(**_PAR)
def spread(data, rows, ptr, cent, sample, out):
    """``out[l]``: root mean square of ``|x - cent[l]|`` over the first ``sample`` rows of leaf ``l``."""
    for leaf in prange(ptr.shape[0] - 1):
        a = ptr[leaf]
        b = min(ptr[leaf + 1], a + sample)
        acc = 0.0
        for t in range(a, b):
            x = data[rows[t]]
            c = cent[leaf]
            s = np.float32(0.0)
            for j in range(x.shape[0]):
                d = x[j] - c[j]
                s += d * d
            acc += s
        out[leaf] = np.sqrt(acc / max(b - a, 1))


@njit(**_PAR)
def boost(pri, qnorm, spread, weight, l2):
    """Add the spread bonus to the leaf priorities in place (see ``engine.training.ann``)."""
    for i in prange(pri.shape[0]):
        for leaf in range(pri.shape[1]):
            r = weight * spread[leaf]
            if l2:
                dist = np.sqrt(max(-pri[i, leaf], 0.0))
                pri[i, leaf] += 2.0 * r * dist - r * r
            else:
                pri[i, leaf] += r * qnorm[i]


@njit(**_FLAGS)
def invert(probes, ptr, qptr, qidx, dst, qstart):
    """The queries probing each leaf, ``qidx[qptr[l]:qptr[l + 1]]`` (ascending), and where each (leaf, query)
    pair writes its scores: ``dst``, within query i's segments ``qstart[i]:qstart[i + 1]`` (in probe order,
    each padded to a multiple of ``_B``)."""
    n_leaves = ptr.shape[0] - 1
    qptr[:] = 0
    for i in range(probes.shape[0]):
        for t in range(probes.shape[1]):
            qptr[probes[i, t] + 1] += 1
    for leaf in range(n_leaves):
        qptr[leaf + 1] += qptr[leaf]
    fill = qptr[:-1].copy()
    run = 0
    for i in range(probes.shape[0]):
        qstart[i] = run
        for t in range(probes.shape[1]):
            leaf = probes[i, t]
            pos = fill[leaf]
            qidx[pos] = i
            dst[pos] = run
            fill[leaf] = pos + 1
            run += (ptr[leaf + 1] - ptr[leaf] + _B - 1) // _B * _B
    qstart[probes.shape[0]] = run


@njit(**_PAR)
def scan(queries, data, rows, ptr, qptr, qidx, dst, l2, out):
    """``out[dst[p] + j]``: the surrogate score of query ``qidx[p]`` and the j-th row of its leaf, for every
    probed pair ``p`` (``l2``: ``2 q.x - |x|^2``); a segment's padding gets -inf."""
    d = queries.shape[1]
    for leaf in prange(ptr.shape[0] - 1):
        a = qptr[leaf]
        b = qptr[leaf + 1]
        if a == b:
            continue
        r0 = ptr[leaf]
        n = ptr[leaf + 1] - r0
        xn = np.zeros(n + _B, np.float32)
        if l2:
            for t in range(n):
                s = np.float32(0.0)
                for j in range(d):
                    s += data[rows[r0 + t], j] * data[rows[r0 + t], j]
                xn[t] = s
        for qa in range(a, b, _BQ):
            # a short block repeats its last query (same segment, same values) and its last row (written to
            # the segment's padding, as -inf)
            i0 = qidx[qa]
            i1 = qidx[min(qa + 1, b - 1)]
            i2 = qidx[min(qa + 2, b - 1)]
            i3 = qidx[min(qa + 3, b - 1)]
            i4 = qidx[min(qa + 4, b - 1)]
            o0 = dst[qa]
            o1 = dst[min(qa + 1, b - 1)]
            o2 = dst[min(qa + 2, b - 1)]
            o3 = dst[min(qa + 3, b - 1)]
            o4 = dst[min(qa + 4, b - 1)]
            for t in range(0, n, _B):
                w0 = rows[r0 + t]
                w1 = rows[r0 + min(t + 1, n - 1)]
                w2 = rows[r0 + min(t + 2, n - 1)]
                w3 = rows[r0 + min(t + 3, n - 1)]
                s00 = s01 = s02 = s03 = np.float32(0.0)
                s10 = s11 = s12 = s13 = np.float32(0.0)
                s20 = s21 = s22 = s23 = np.float32(0.0)
                s30 = s31 = s32 = s33 = np.float32(0.0)
                s40 = s41 = s42 = s43 = np.float32(0.0)
                for j in range(d):  # rows and queries indexed in place: a row view would cost reference counts
                    v0 = data[w0, j]
                    v1 = data[w1, j]
                    v2 = data[w2, j]
                    v3 = data[w3, j]
                    u = queries[i0, j]
                    s00 += u * v0
                    s01 += u * v1
                    s02 += u * v2
                    s03 += u * v3
                    u = queries[i1, j]
                    s10 += u * v0
                    s11 += u * v1
                    s12 += u * v2
                    s13 += u * v3
                    u = queries[i2, j]
                    s20 += u * v0
                    s21 += u * v1
                    s22 += u * v2
                    s23 += u * v3
                    u = queries[i3, j]
                    s30 += u * v0
                    s31 += u * v1
                    s32 += u * v2
                    s33 += u * v3
                    u = queries[i4, j]
                    s40 += u * v0
                    s41 += u * v1
                    s42 += u * v2
                    s43 += u * v3
                if l2:
                    e0 = xn[t]
                    e1 = xn[t + 1]
                    e2 = xn[t + 2]
                    e3 = xn[t + 3]
                    s00, s01, s02, s03 = 2 * s00 - e0, 2 * s01 - e1, 2 * s02 - e2, 2 * s03 - e3
                    s10, s11, s12, s13 = 2 * s10 - e0, 2 * s11 - e1, 2 * s12 - e2, 2 * s13 - e3
                    s20, s21, s22, s23 = 2 * s20 - e0, 2 * s21 - e1, 2 * s22 - e2, 2 * s23 - e3
                    s30, s31, s32, s33 = 2 * s30 - e0, 2 * s31 - e1, 2 * s32 - e2, 2 * s33 - e3
                    s40, s41, s42, s43 = 2 * s40 - e0, 2 * s41 - e1, 2 * s42 - e2, 2 * s43 - e3
                if t + _B > n:  # the padded lanes of a leaf's last block: -inf, never selected
                    pad = -np.inf
                    if t + 1 >= n:
                        s01 = s11 = s21 = s31 = s41 = pad
                    if t + 2 >= n:
                        s02 = s12 = s22 = s32 = s42 = pad
                    s03 = s13 = s23 = s33 = s43 = pad
                out[o0 + t] = s00
                out[o0 + t + 1] = s01
                out[o0 + t + 2] = s02
                out[o0 + t + 3] = s03
                out[o1 + t] = s10
                out[o1 + t + 1] = s11
                out[o1 + t + 2] = s12
                out[o1 + t + 3] = s13
                out[o2 + t] = s20
                out[o2 + t + 1] = s21
                out[o2 + t + 2] = s22
                out[o2 + t + 3] = s23
                out[o3 + t] = s30
                out[o3 + t + 1] = s31
                out[o3 + t + 2] = s32
                out[o3 + t + 3] = s33
                out[o4 + t] = s40
                out[o4 + t + 1] = s41
                out[o4 + t + 2] = s42
                out[o4 + t + 3] = s43


@njit(**_FLAGS)
def _sample_bar(scores, lo, hi, want):
    """The ``want``-th largest of ``scores[lo:hi:_SAMPLE_STRIDE]`` (-inf when the sample is smaller)."""
    top = np.full(want, -np.inf, np.float32)  # ascending: top[0] is the smallest kept
    for p in range(lo, hi, _SAMPLE_STRIDE):
        s = scores[p]
        if s > top[0]:
            t = 0
            while t + 1 < want and top[t + 1] < s:
                top[t] = top[t + 1]
                t += 1
            top[t] = s
    return top[0]


@njit(**_FLAGS)
def _gather(scores, probes, ptr, rows, lo, hi, i, bar, got_s, got_r):
    """Query i's scores in ``scores[lo:hi]`` that reach ``bar``, and their rows, into ``got_s``/``got_r``;
    returns how many.

    ``_CHUNK`` scores at a time are compared with the bar into a bit mask (vector compares) whose set bits
    alone are visited; an accepted position finds its row through the query's segment list.
    """
    n = 0
    th = max(bar, _LOWEST)  # never -inf: padding (-inf) is never a candidate
    seg = 0  # the segment holding the position looked at, its start and end
    seg_lo = lo
    seg_hi = lo + (ptr[probes[i, 0] + 1] - ptr[probes[i, 0]] + _B - 1) // _B * _B
    for p0 in range(lo, hi, _CHUNK):
        mask = np.uint64(0)
        for p in range(p0, min(p0 + _CHUNK, hi)):
            mask |= np.uint64(scores[p] >= th) << np.uint64(p - p0)
        while mask:
            p = p0 + trailing_zeros(mask)
            mask &= mask - np.uint64(1)
            while p >= seg_hi:
                seg += 1
                seg_lo = seg_hi
                leaf = probes[i, seg]
                seg_hi += (ptr[leaf + 1] - ptr[leaf] + _B - 1) // _B * _B
            got_s[n] = scores[p]
            got_r[n] = rows[ptr[probes[i, seg]] + p - seg_lo]
            n += 1
    return n


@njit(**_FLAGS)
def _flip(b):
    """Score bits <-> a uint32 that sorts ascending as the score descends (its own inverse)."""
    return b if b & _SIGN else ~b & _LOW31


@njit(**_PAR)
def select(scores, probes, ptr, rows, qstart, shift, out_s, out_r):
    """Query i's best ``out_s.shape[1]`` scores (plus ``shift[i]``) and rows, best first, into the pre-padded
    outputs; ties go to the smaller row. Rows must be below 2**32 (they are table slots).

    The candidates are ranked by one uint64 key each, the score's bits flipped into descending order above the
    row, so that a partition and a sort of plain integers give the order (no comparison of pairs).
    """
    k = out_s.shape[1]
    want = max(1, (_SAMPLE_MARGIN * k) // _SAMPLE_STRIDE)
    for i in prange(probes.shape[0]):
        lo = qstart[i]
        hi = qstart[i + 1]
        got_s = np.empty(hi - lo, np.float32)
        got_r = np.empty(hi - lo, np.int64)
        bar = _sample_bar(scores, lo, hi, want)
        n = _gather(scores, probes, ptr, rows, lo, hi, i, bar, got_s, got_r)
        if n < k and bar > _LOWEST:  # fewer than k scores reach the bar: it was too high
            n = _gather(scores, probes, ptr, rows, lo, hi, i, _LOWEST, got_s, got_r)
        bits = got_s[:n].view(np.uint32)
        keys = np.empty(n, np.uint64)
        for t in range(n):
            keys[t] = (np.uint64(_flip(bits[t])) << np.uint64(32)) | np.uint64(got_r[t])
        if n > k:
            keys = np.partition(keys, k - 1)[:k]
        keys = np.sort(keys)
        best = np.empty(keys.shape[0], np.uint32)
        for t in range(keys.shape[0]):
            best[t] = _flip(np.uint32(keys[t] >> np.uint64(32)))
            out_r[i, t] = np.int64(keys[t] & np.uint64(0xFFFFFFFF))
        best_s = best.view(np.float32)
        for t in range(keys.shape[0]):
            out_s[i, t] = best_s[t] + shift[i]
