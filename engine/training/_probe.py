"""numba kernels of the leaf-probe search (``engine.training.ann``): loops only, the caller validates.

A tenant's rows are grouped by leaf of the shared clustering tree: ``rows[ptr[l]:ptr[l + 1]]`` are the rows of
its ``l``-th non-empty leaf. A batch search probes, for each query, the leaves of highest priority, inverts
that into the list of queries of each leaf (``qptr``/``qidx``) and then walks the leaves once: each leaf's
rows are scored against all of its queries in 4 x 4 register blocks (16 independent dot products per pass over
the dimension, about as fast as a BLAS micro-kernel and with no gather of rows or queries) and offered to
per-query top-k heaps. Queries are split into one contiguous group per thread, so every heap has one writer.

Scores are the kernel surrogates (``engine.kernels.metrics``): the inner product, or for ``l2``
``2 q.x - |x|^2`` during the scan and minus ``|q|^2`` on the survivors, i.e. minus the squared distance.
Heaps keep the worst item at the root; on equal scores the larger row is worse, so results tie to the
smaller row like every other kernel.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_FLAGS = dict(nogil=True, fastmath=True, cache=True)
_PAR = dict(nogil=True, fastmath=True, cache=True, parallel=True)
#: queries and rows per register block of the scan
_B = 4


@njit(inline="always", **_FLAGS)
def _offer(hs, hr, size, s, r):
    """Offer (s, r) to the top-``len(hs)`` min-heap of ``size`` items; returns the new size."""
    cap = hs.shape[0]
    if size == cap and (s < hs[0] or (s == hs[0] and r > hr[0])):
        return size
    if size < cap:
        i = size
        while i > 0:
            p = (i - 1) >> 1
            if hs[p] < s or (hs[p] == s and hr[p] > r):
                break
            hs[i] = hs[p]
            hr[i] = hr[p]
            i = p
        hs[i] = s
        hr[i] = r
        return size + 1
    if s == hs[0] and r == hr[0]:
        return size
    i = 0
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        if c + 1 < size and (hs[c + 1] < hs[c] or (hs[c + 1] == hs[c] and hr[c + 1] > hr[c])):
            c += 1
        if hs[c] < s or (hs[c] == s and hr[c] > r):
            hs[i] = hs[c]
            hr[i] = hr[c]
            i = c
        else:
            break
    hs[i] = s
    hr[i] = r
    return size


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


@njit(**_PAR)
def top_leaves(pri, nprobe, out):
    """``out[i]``: the ``nprobe`` leaves of highest priority for query i, in leaf order (ties to lower leaves)."""
    n = pri.shape[1]
    for i in prange(pri.shape[0]):
        row = pri[i]
        kth = np.partition(-row, nprobe - 1)[nprobe - 1]
        t = 0
        for leaf in range(n):  # strictly above the cut first, then the ties at the cut, lowest leaves first
            if -row[leaf] < kth:
                out[i, t] = leaf
                t += 1
        for leaf in range(n):
            if t == nprobe:
                break
            if -row[leaf] == kth:
                out[i, t] = leaf
                t += 1
        out[i, :] = np.sort(out[i, :])


@njit(**_FLAGS)
def invert(probes, n_leaves, qptr, qidx):
    """CSR of the queries probing each leaf: ``qidx[qptr[l]:qptr[l + 1]]``, ascending query numbers."""
    qptr[:] = 0
    for i in range(probes.shape[0]):
        for t in range(probes.shape[1]):
            qptr[probes[i, t] + 1] += 1
    for leaf in range(n_leaves):
        qptr[leaf + 1] += qptr[leaf]
    fill = qptr[:-1].copy()
    for i in range(probes.shape[0]):
        for t in range(probes.shape[1]):
            leaf = probes[i, t]
            qidx[fill[leaf]] = i
            fill[leaf] += 1


@njit(**_FLAGS)
def _lower(a, lo, hi, x):
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(**_PAR)
def scan(queries, data, rows, ptr, qptr, qidx, groups, l2, hs, hr, sizes):
    """Score every probed (leaf, query) pair and keep each query's top ``hs.shape[1]`` in its heap.

    ``groups`` bounds the query ranges, one per thread (``groups[g]:groups[g + 1]``).
    """
    d = queries.shape[1]
    k = hs.shape[1]
    thr = np.full(queries.shape[0], -np.inf, np.float32)  # a score below query i's bar cannot enter its heap
    width = 1
    for leaf in range(ptr.shape[0] - 1):
        width = max(width, ptr[leaf + 1] - ptr[leaf])
    for g in prange(groups.shape[0] - 1):
        lo_q = groups[g]
        hi_q = groups[g + 1]
        xn = np.zeros(width + _B, np.float32)
        blk = np.empty((_B, _B), np.float32)
        for leaf in range(ptr.shape[0] - 1):
            a = _lower(qidx, qptr[leaf], qptr[leaf + 1], lo_q)
            b = _lower(qidx, a, qptr[leaf + 1], hi_q)
            if a == b:
                continue
            r0 = ptr[leaf]
            n = ptr[leaf + 1] - r0
            if l2:
                for t in range(n):
                    x = data[rows[r0 + t]]
                    s = np.float32(0.0)
                    for j in range(d):
                        s += x[j] * x[j]
                    xn[t] = s
            for qa in range(a, b, _B):
                # a short block repeats its last query; only the real ones are offered
                i0 = qidx[qa]
                i1 = qidx[min(qa + 1, b - 1)]
                i2 = qidx[min(qa + 2, b - 1)]
                i3 = qidx[min(qa + 3, b - 1)]
                nq = min(_B, b - qa)
                q0 = queries[i0]
                q1 = queries[i1]
                q2 = queries[i2]
                q3 = queries[i3]
                for t in range(0, n, _B):
                    nr = min(_B, n - t)
                    w0 = rows[r0 + t]
                    w1 = rows[r0 + min(t + 1, n - 1)]
                    w2 = rows[r0 + min(t + 2, n - 1)]
                    w3 = rows[r0 + min(t + 3, n - 1)]
                    x0 = data[w0]
                    x1 = data[w1]
                    x2 = data[w2]
                    x3 = data[w3]
                    s00 = s01 = s02 = s03 = np.float32(0.0)
                    s10 = s11 = s12 = s13 = np.float32(0.0)
                    s20 = s21 = s22 = s23 = np.float32(0.0)
                    s30 = s31 = s32 = s33 = np.float32(0.0)
                    for j in range(d):
                        v0 = x0[j]
                        v1 = x1[j]
                        v2 = x2[j]
                        v3 = x3[j]
                        u = q0[j]
                        s00 += u * v0
                        s01 += u * v1
                        s02 += u * v2
                        s03 += u * v3
                        u = q1[j]
                        s10 += u * v0
                        s11 += u * v1
                        s12 += u * v2
                        s13 += u * v3
                        u = q2[j]
                        s20 += u * v0
                        s21 += u * v1
                        s22 += u * v2
                        s23 += u * v3
                        u = q3[j]
                        s30 += u * v0
                        s31 += u * v1
                        s32 += u * v2
                        s33 += u * v3
                    blk[0, 0], blk[0, 1], blk[0, 2], blk[0, 3] = s00, s01, s02, s03
                    blk[1, 0], blk[1, 1], blk[1, 2], blk[1, 3] = s10, s11, s12, s13
                    blk[2, 0], blk[2, 1], blk[2, 2], blk[2, 3] = s20, s21, s22, s23
                    blk[3, 0], blk[3, 1], blk[3, 2], blk[3, 3] = s30, s31, s32, s33
                    w = (w0, w1, w2, w3)
                    ii = (i0, i1, i2, i3)
                    for p in range(nq):
                        i = ii[p]
                        for c in range(nr):
                            s = blk[p, c]
                            if l2:
                                s = 2.0 * s - xn[t + c]
                            if s >= thr[i]:
                                sizes[i] = _offer(hs[i], hr[i], sizes[i], s, w[c])
                                if sizes[i] == k:
                                    thr[i] = hs[i, 0]


@njit(**_PAR)
def drain(hs, hr, sizes, shift, out_s, out_r):
    """Each heap best first into the pre-padded outputs, plus ``shift[i]`` on query i's scores (consumes them)."""
    for i in prange(hs.shape[0]):
        h_s = hs[i]
        h_r = hr[i]
        n = sizes[i]
        while n > 0:
            out_s[i, n - 1] = h_s[0] + shift[i]
            out_r[i, n - 1] = h_r[0]
            n -= 1
            s = h_s[n]
            r = h_r[n]
            k = 0
            while True:
                c = 2 * k + 1
                if c >= n:
                    break
                if c + 1 < n and (h_s[c + 1] < h_s[c] or (h_s[c + 1] == h_s[c] and h_r[c + 1] > h_r[c])):
                    c += 1
                if h_s[c] < s or (h_s[c] == s and h_r[c] > r):
                    h_s[k] = h_s[c]
                    h_r[k] = h_r[c]
                    k = c
                else:
                    break
            h_s[k] = s
            h_r[k] = r
