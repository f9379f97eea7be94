"""The Curator index's tenant-scoped best-first search in numba: the fallback of the native C search.

``search`` / ``search_parallel`` (and ``_search_one``, what they call) have a C twin with the same semantics,
``native/src/tree_search.c``, which ``engine.kernels.tree_search`` runs whenever the native backend is selected
(these kernels stay the fallback, and ``select("numba")`` brings them back): a change to the search here belongs
there too, and ``tests/test_native_tree.py`` holds the two to the same answers. Entries, node priorities and row
kinds are those of ``engine.kernels.tree`` (its module docstring).

Performance notes: the per-candidate loops are written inline (row views hoisted, heap pushes inlined with
``inline="always"``): a call per candidate that passes arrays costs reference counting and made scans 5-10x
slower in measurements.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from engine.kernels.tree import (
    _FLAGS,
    _PAR,
    DEAD,
    IP,
    L2,
    ROW_BITS,
    ROW_MASK,
    ROWS_F32,
    ROWS_LVQ4,
    ROWS_LVQ4X8,
    ROWS_LVQ8,
    _dotv,
    _is_bytes,
    _lower_bound,
    _prefetch,
)

__all__ = [
    "search",
    "search_parallel",
    "IP",
    "L2",
    "ROWS_F32",
    "ROWS_LVQ4",
    "ROWS_LVQ4X8",
    "ROWS_LVQ8",
    "DEAD",
    "ROW_MASK",
]

#: scan-code entries prefetched ahead of the one being scored (measured: 45 -> 16 ns per cold entry)
PREFETCH_AHEAD = 16
#: scan-code width (bytes) scored by the integer path of ``_scan_codes``: a literal trip count lets LLVM unroll
#: the int16 x byte products into ``vpmaddwd`` without remainder loops (a runtime width measured no faster)
FAST_WIDTH = 128
#: most priority buckets of a leaf-order scan (``_scan_leaf_order``); it uses one per 4 of the tenant's leaves
MAX_BUCKETS = 1024
#: a tenant with leaf bounds is scanned in leaf order when ``ef`` is at least this many per leaf of the tree: below,
#: ranking every leaf (~5 ns each) costs more than the better order saves (measured, one 84k tenant, 2.2k leaves,
#: OOD queries: the same time for the same recall near ef 512, leaf order ahead above, the walk below)
LEAF_ORDER_EF_PER_LEAF = 0.25


@njit(inline="always", **_FLAGS)
def _hpush(hs, hr, size, cap, s, r):
    """Offer (s, r) to a top-``cap`` min-heap (worst at the root; ties: the larger row is worse).

    The caller has checked that (s, r) beats the root when the heap is full. Returns the new size.
    """
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
    _sift_root(hs, hr, size, s, r)
    return size


@njit(inline="always", **_FLAGS)
def _sift_root(hs, hr, size, s, r):
    """Put (s, r) at the root of a top heap of ``size`` items (replacing the root) and sift it down."""
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


@njit(inline="always", **_FLAGS)
def _beats(hs, hr, size, cap, s, r):
    return size < cap or s > hs[0] or (s == hs[0] and r < hr[0])


@njit(**_FLAGS)
def _pop_worst(hs, hr, size):
    """Remove the root (the worst item) of a top heap; return the new size."""
    size -= 1
    if size > 0:
        _sift_root(hs, hr, size, hs[size], hr[size])
    return size


@njit(**_FLAGS)
def _drain(hs, hr, size, out_s, out_r):
    """Write a top heap's items best first into ``out_s``/``out_r`` (pre-padded)."""
    while size > 0:
        out_s[size - 1] = hs[0]
        out_r[size - 1] = hr[0]
        size = _pop_worst(hs, hr, size)


# ---------------------------------------------------------------------------------------------- search
@njit(**_FLAGS)
def _fpush(fs, fn, flo, fhi, size, s, node, lo, hi):
    """Push onto the frontier min-heap keyed by node priority ``s`` (arrays sized to the node count)."""
    i = size
    while i > 0:
        p = (i - 1) >> 1
        if fs[p] <= s:
            break
        fs[i] = fs[p]
        fn[i] = fn[p]
        flo[i] = flo[p]
        fhi[i] = fhi[p]
        i = p
    fs[i] = s
    fn[i] = node
    flo[i] = lo
    fhi[i] = hi
    return size + 1


@njit(**_FLAGS)
def _fpop(fs, fn, flo, fhi, size):
    """Remove the frontier's root (the caller read it first); return the new size."""
    size -= 1
    if size == 0:
        return 0
    s = fs[size]
    node = fn[size]
    lo = flo[size]
    hi = fhi[size]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        if c + 1 < size and fs[c + 1] < fs[c]:
            c += 1
        if fs[c] >= s:
            break
        fs[i] = fs[c]
        fn[i] = fn[c]
        flo[i] = flo[c]
        fhi[i] = fhi[c]
        i = c
    fs[i] = s
    fn[i] = node
    flo[i] = lo
    fhi[i] = hi
    return size


@njit(inline="always", **_FLAGS)
def _dense_score(q, data, r, l2):
    """The exact surrogate score of float32 table row ``r`` for query ``q`` (``l2``: a literal at each call)."""
    s = np.float32(0.0)
    if l2:
        for t in range(q.shape[0]):
            z = q[t] - data[r, t]
            s -= z * z
    else:
        for t in range(q.shape[0]):
            s += q[t] * data[r, t]
    return s


@njit(inline="always", **_FLAGS)
def _coded_score(q, qa1, qb1, qmu, qsum, qsq, rcodes, rres, rscale, rbias, rsqn, eight, two, l2, r):
    """Score of table row ``r`` for query ``q`` from its LVQ codes: ``rcodes`` of 8 bits (``eight``) or split-half
    nibbles read through ``qa1``/``qb1``, plus the 8-bit second level ``rres`` when ``two``; ``eight``, ``two`` and
    ``l2`` are literals at each call (``_scan_full``).

    With ``qmu = q . mu`` and ``qsum = sum(q)`` it is the inner product with the decoded vector
    ``mu + l' + D c [+ D/255 c2]`` (``l' = l - D/2`` with a second level), and for ``l2``
    ``2 <q, x~> - |x|^2 - |q|^2`` with the stored ``|x|^2`` (``rsqn``).
    """
    s = np.float32(0.0)
    if eight:
        for t in range(rcodes.shape[1]):
            s += q[t] * np.float32(rcodes[r, t])
    else:
        for t in range(rcodes.shape[1]):
            f = np.float32(rcodes[r, t])
            s += qa1[t] * f + qb1[t] * np.floor(f * np.float32(0.0625))
    delta = rscale[r]
    if two:
        s2 = np.float32(0.0)
        for t in range(rres.shape[1]):
            s2 += q[t] * np.float32(rres[r, t])
        v = qmu + (rbias[r] - np.float32(0.5) * delta) * qsum + delta * s + delta * np.float32(1.0 / 255.0) * s2
    else:
        v = qmu + rbias[r] * qsum + delta * s
    if l2:
        return np.float32(2.0) * v - rsqn[r] - qsq
    return v


@njit(**_FLAGS)
def _row_query(q, rcodes, rmean, rbits, qa1, qb1):
    """Per-query constants of ``_coded_score`` for LVQ rows: fills ``qa1``/``qb1`` (4-bit rows: ``qa1 = q_lo``,
    ``qb1 = q_hi - 16 q_lo``, so that ``sum qa1 f + qb1 floor(f / 16)`` is the split-half dot product) and
    returns ``(q . mu, sum(q), |q|^2)``."""
    d = q.shape[0]
    qmu = np.float32(0.0)
    qsum = np.float32(0.0)
    qsq = np.float32(0.0)
    for t in range(rmean.shape[0]):
        qmu += q[t] * rmean[t]
    for t in range(d):
        qsum += q[t]
        qsq += q[t] * q[t]
    if rcodes.shape[0] > 0 and rbits == 4:
        h = rcodes.shape[1]
        for t in range(h):
            lo = q[t]
            hi = q[h + t] if h + t < d else np.float32(0.0)
            qa1[t] = lo
            qb1[t] = hi - np.float32(16.0) * lo
    return qmu, qsum, qsq


@njit(**_FLAGS)
def _scan_full(q, qa1, qb1, qmu, qsum, qsq, rs, slot_row, tail, nt, main, n, kind, rows_kind, hs, hr, size, cap):
    """Offer the live entries of ``tail[:nt]`` and ``main[:n]``, scored from the rows, keyed by table row, to the
    top-``cap`` heap: exact scores of float32 rows (``_dense_score``), else from the rows' codes
    (``_coded_score``). A search calls it once, either for a small tenant's whole list or for the rescoring of
    its candidates (their code slots read as entries).

    ``_scan_rows`` is inlined once per kind of row (``rows_kind``, ``ROWS_*``) and metric, with both as literals
    there: with any of them decided inside the loop, LLVM vectorised no score (measured, warm, 384-d rows:
    float32 106 ns per row, 47 ns with float32-or-codes hoisted, 23 ns with the metric too; LVQ-8 97-127 ns with
    only those two hoisted, 31 ns with all). The price is compile time: a search kernel's first compile (cached
    on disk afterwards) takes ~29 s instead of ~9; a single call site keeps it from doubling. (numba prunes
    a branch on a literal argument only when comparing with None, so passing ``rows_kind`` as a literal would
    not compile one kind alone.)"""
    a = (q, qa1, qb1, qmu, qsum, qsq, rs, slot_row, tail, nt, main, n, hs, hr, size, cap)
    l2 = kind != IP
    if rows_kind == ROWS_F32:
        if l2:
            return _scan_rows(a, True, False, False, True)
        return _scan_rows(a, True, False, False, False)
    if rows_kind == ROWS_LVQ8:
        if l2:
            return _scan_rows(a, False, True, False, True)
        return _scan_rows(a, False, True, False, False)
    if rows_kind == ROWS_LVQ4X8:
        if l2:
            return _scan_rows(a, False, False, True, True)
        return _scan_rows(a, False, False, True, False)
    if l2:
        return _scan_rows(a, False, False, False, True)
    return _scan_rows(a, False, False, False, False)


@njit(inline="always", **_FLAGS)
def _scan_rows(a, dense, eight, two, l2):
    """``_scan_full`` over its arguments ``a`` for one kind of row (float32 ``dense``, else LVQ codes of ``eight``
    bits or ``two`` levels) and metric (``l2``), all literals."""
    q, qa1, qb1, qmu, qsum, qsq, rs, slot_row, tail, nt, main, n, hs, hr, size, cap = a
    data, rcodes, rres, rscale, rbias, rsqn, rmean, rbits = rs
    for part in range(2):
        lst = tail if part == 0 else main
        hi = nt if part == 0 else n
        for j in range(hi):
            if j + 2 < hi:
                slot = lst[j + 2] & ROW_MASK
                if slot != DEAD:
                    if dense:
                        _prefetch_row(data, slot_row[slot], data.shape[1])
                    else:
                        _prefetch_code(rcodes, slot_row[slot], rcodes.shape[1])
            slot = lst[j] & ROW_MASK
            if slot == DEAD:
                continue
            r = slot_row[slot]
            if dense:
                s = _dense_score(q, data, r, l2)
            else:
                s = _coded_score(q, qa1, qb1, qmu, qsum, qsq, rcodes, rres, rscale, rbias, rsqn, eight, two, l2, r)
            if _beats(hs, hr, size, cap, s, r):
                size = _hpush(hs, hr, size, cap, s, r)
    return size


@njit(inline="always", **_FLAGS)
def _prefetch_row(arr, r, width):
    """Prefetch the cache lines of ``arr[r, :width]`` (assumes 4-byte items, 16 per line); skips tombstones."""
    if r != DEAD:
        for off in range(0, width, 16):
            _prefetch(arr, r, off)


@njit(inline="always", **_FLAGS)
def _prefetch_code(codes, r, h):
    if r != DEAD:
        for off in range(0, h, 64):
            _prefetch(codes, r, off)


@njit(**_FLAGS)
def _scan_codes(qc, sc, bits, lst, lo, hi, kind, hs, hr, size, cap):
    """Offer the live entries of ``lst[lo:hi]`` scored from their scan codes to the top-``cap`` heap.

    ``qc = (qa, qb, qw, qi, iscale, sigma)`` is the query side (``_query_codes``) and ``sc = (codes, mul, add,
    sub)`` the codes by slot. The code dot product is ``sum qw_t c_t`` for 8-bit codes; for 4-bit ones, with
    ``f`` the code byte, ``sum_t qa_t f + qb_t floor(f / 16)``, which equals the split-half
    ``sum_j w_j u_j`` for ``qa = w_lo``, ``qb = w_hi - 16 w_lo`` (float arithmetic only: it vectorises 16 lanes
    wide). Byte codes of ``FAST_WIDTH`` bytes (both shipped kinds: 256-d 4-bit PCA, 128-d LVQ-8) take an integer
    path instead: ``iscale * sum_t qi_t c_t`` (4-bit: ``sum_t qi_t (f & 15) + qi_{h+t} (f >> 4)``) with the int16
    weights ``qi ~ w / iscale`` of ``_query_codes``, accumulated in int32 over a width known at compile time
    (measured, ``bench/tree_walk.py``: 5-15% less time per query for 4-bit codes, 10-17% for LVQ-8, the same
    top 10 on all 300 OOD queries). The score is
    ``mul[r] * dot + add[r] * sigma`` when ``mul`` is given (LVQ codes: scale and bias), else the dot itself;
    for ``l2`` ``sub[r]`` (a squared norm) is subtracted. Returns (size, live entries scanned since the last
    one that entered the heap, whether any entered).
    """
    qa, qb, qw, qi, iscale, sigma = qc
    codes, mul, add, sub = sc
    since = 0
    entered = False
    w = codes.shape[1]
    affine = mul.shape[0] > 0
    byte_codes = _is_bytes(codes)
    qlo = qi[: qa.shape[0]]
    qhi = qi[qa.shape[0] :]
    for j in range(lo, min(hi, lo + PREFETCH_AHEAD)):
        _prefetch_code(codes, lst[j] & ROW_MASK, w)
    for j in range(lo, hi):
        if j + PREFETCH_AHEAD < hi:
            _prefetch_code(codes, lst[j + PREFETCH_AHEAD] & ROW_MASK, w)
        r = lst[j] & ROW_MASK
        if r == DEAD:
            continue
        since += 1
        s = np.float32(0.0)
        if byte_codes and w == FAST_WIDTH:
            si = np.int32(0)
            if bits == 4:
                for t in range(FAST_WIDTH):
                    c = np.int32(codes[r, t])
                    si = np.int32(si + np.int32(qlo[t]) * (c & 15) + np.int32(qhi[t]) * (c >> 4))
            else:
                for t in range(FAST_WIDTH):
                    si = np.int32(si + np.int32(qi[t]) * np.int32(codes[r, t]))
            s = np.float32(si) * iscale
        elif bits == 4:
            for t in range(w):
                f = np.float32(codes[r, t])
                s += qa[t] * f + qb[t] * np.floor(f * np.float32(0.0625))
        else:
            for t in range(w):
                s += qw[t] * np.float32(codes[r, t])
        if affine:
            s = s * mul[r] + add[r] * sigma
        if kind != IP:
            s -= sub[r]
        if _beats(hs, hr, size, cap, s, r):
            size = _hpush(hs, hr, size, cap, s, r)
            since = 0
            entered = True
    return size, since, entered


#: ``_scan_codes`` inlined where it runs once per leaf of a loop over leaves: a call passes ten arrays, whose
#: reference counting costs ~0.9 ns per entry scanned (measured, 84k tenant, OOD queries: -8% time per query)
_scan_codes_inline = njit(inline="always", **_FLAGS)(_scan_codes.py_func)


@njit(inline="always", **_FLAGS)
def _sort_bucket(pri, perm, lo, hi):
    """Sort ``perm[lo:hi]`` by ``pri[perm[.]]``, stably: a bucket usually holds a few leaves (insertion sort), but
    outlying priorities can crowd the rest into a few buckets (then a merge sort, not a quadratic one)."""
    if hi - lo > 32:
        seg = perm[lo:hi].copy()
        keys = np.empty(hi - lo, np.float32)
        for i in range(hi - lo):
            keys[i] = pri[seg[i]]
        order = np.argsort(keys, kind="mergesort")
        for i in range(hi - lo):
            perm[lo + i] = seg[order[i]]
        return
    for i in range(lo + 1, hi):
        x = perm[i]
        px = pri[x]
        j = i - 1
        while j >= lo and pri[perm[j]] > px:
            perm[j + 1] = perm[j]
            j -= 1
        perm[j + 1] = x


@njit(inline="always", **_FLAGS)
def _int16_for_int8(v, out):
    """``v`` (float32) as int16 weights ``out ~ v * alpha`` for dot products with int8 rows; returns ``alpha``.
    ``alpha`` maps ``max |v|`` to 32767, or less where ``|sum out_t c_t|`` with ``|c_t| <= 127`` could otherwise
    pass 2^31 - 1 (``len(v) > 516``), so every such sum fits the int32 accumulator."""
    n = v.shape[0]
    vmax = np.float32(0.0)
    for t in range(n):
        vmax = max(vmax, abs(v[t]))
    alpha = np.float32(min(32767.0, 2147483647.0 / (127.0 * max(n, 1))) / max(vmax, np.float32(1e-30)))
    for t in range(n):
        out[t] = np.int16(np.rint(v[t] * alpha))
    return alpha


@njit(**_FLAGS)
def leaf_priorities(bounds, pbias, leaves, qnode, qi16, pri, rk):
    """The node priority of each leaf that holds entries (``bounds[r + 1] > bounds[r]``), in leaf-rank order:
    ``pri[i] = pbias[node] - 2 q' . c'`` for leaf ``rk[i]``, from the leaf's int8 centroid (``leaves = (int8 [L,
    pn], row scales [L], node [L])`` in leaf-rank order) against ``qnode`` as int16 (``qi16`` is scratch of
    ``pn``). Returns ``(m, lowest, highest)``, ``m`` the leaves scored."""
    lcent, lscale, lnode = leaves
    pn = qnode.shape[0]
    two = np.float32(2.0) / _int16_for_int8(qnode, qi16)
    m = 0
    lo_p = hi_p = np.float32(0.0)  # (not +-inf: fastmath lets LLVM assume no infinities)
    for r in range(bounds.shape[0] - 1):
        if bounds[r + 1] > bounds[r]:
            acc = np.int32(0)
            for t in range(pn):
                acc = np.int32(acc + np.int32(qi16[t]) * np.int32(lcent[r, t]))
            p = pbias[lnode[r]] - two * lscale[r] * np.float32(acc)
            pri[m] = p
            rk[m] = r
            lo_p = p if m == 0 else min(lo_p, p)
            hi_p = p if m == 0 else max(hi_p, p)
            m += 1
    return m, lo_p, hi_p


@njit(**_FLAGS)
def bucket_by_priority(pri, m, lo_p, hi_p, perm, starts):
    """Counting sort of ``pri[:m]`` into ``nb`` uniform buckets over ``[lo_p, hi_p]``, one per 4 items (at most
    ``MAX_BUCKETS``): bucket ``b`` is ``perm[starts[b]:starts[b + 1]]`` (indices into ``pri``, in index order
    until the bucket is sorted), and every item of a bucket is at most every item of the next. Returns ``nb``.
    ``perm`` (int64) holds ``m`` items, ``starts`` ``nb + 1``."""
    nb = max(1, min(m // 4, MAX_BUCKETS))
    span = hi_p - lo_p
    # a span too narrow to divide by (or none) puts every item in bucket 0: the bucket sort then orders them
    inv_width = np.float32(nb) / span if span > np.float32(1e-30) else np.float32(0.0)
    for b in range(nb + 1):
        starts[b] = 0
    for i in range(m):
        b = min(np.int64((pri[i] - lo_p) * inv_width), nb - 1)
        perm[i] = b  # item i's bucket in the low bits, computed once so that both passes agree on it
        starts[b + 1] += 1
    for b in range(nb):
        starts[b + 1] += starts[b]
    # each item goes to its bucket's cursor, into the high bits: the low bits (the buckets) stay readable
    for i in range(m):
        b = perm[i] & ROW_MASK
        perm[starts[b]] |= np.int64(i) << ROW_BITS
        starts[b] += 1
    for i in range(m):
        perm[i] >>= ROW_BITS
    for b in range(nb, 0, -1):  # each cursor ended at its bucket's end, the next one's start: shift them back
        starts[b] = starts[b - 1]
    starts[0] = 0
    return nb


@njit(**_FLAGS)
def _scan_leaf_order(qc, sc, bits, main, bounds, pbias, leaves, qnode, qi16, ef, kind, hs, hr, size, cap, pri, rk,
                     perm, starts):  # fmt: skip
    """Scan a large tenant's leaves (``bounds``: where each leaf rank starts in ``main``) best first by each
    leaf's *own* priority, until the last ``ef`` scanned entries left the candidate heap unchanged; returns
    ``(size, entries scanned)``.

    This replaces the best-first walk for tenants with leaf bounds (at least ``BOUNDS_PER_LEAF`` entries per leaf
    on average) searched wide (``LEAF_ORDER_EF_PER_LEAF``). The walk reaches a leaf only through its ancestors,
    whose priorities stand for whole subtrees, so it scans leaves out of their own order (and pushes every child
    of every node it expands). Here every non-empty leaf is scored once (``leaf_priorities``), counted into
    priority buckets (``bucket_by_priority``), and each bucket is sorted only when the scan reaches it. Measured
    on one 84k tenant of the shared data, OOD queries (``bench/tree_walk.py``): ~30% fewer entries scanned for
    recall@10 0.95, and ~30% less time.
    ``pri``/``rk``/``perm``/``starts`` are scratch of at least ``L + 1`` (``L`` leaves).
    """
    m, lo_p, hi_p = leaf_priorities(bounds, pbias, leaves, qnode, qi16, pri, rk)
    if m == 0:
        return size, 0
    nb = bucket_by_priority(pri, m, lo_p, hi_p, perm, starts)
    w = sc[0].shape[1]
    scanned = 0
    misses = 0
    pos = 0
    ready = 0  # perm[:ready] is in final order
    b = 0
    while True:
        while pos + 1 >= ready and b < nb:  # the next leaf's place is final too, for its prefetch
            _sort_bucket(pri, perm, starts[b], starts[b + 1])
            ready = starts[b + 1]
            b += 1
        if pos >= ready:
            break
        r = rk[perm[pos]]
        if pos + 1 < ready:
            nr = rk[perm[pos + 1]]
            for j in range(bounds[nr], min(bounds[nr + 1], bounds[nr] + PREFETCH_AHEAD)):
                _prefetch_code(sc[0], main[j] & ROW_MASK, w)
        lo = bounds[r]
        hi = bounds[r + 1]
        size, since, entered = _scan_codes_inline(qc, sc, bits, main, lo, hi, kind, hs, hr, size, cap)
        scanned += hi - lo
        misses = since if entered else misses + since
        pos += 1
        if misses >= ef:
            break
    return size, scanned


@njit(**_FLAGS)
def _write(ks, kr, m, out_s, out_r):
    """Drain the top heap best first into ``out_s``/``out_r`` and pad the rest with (-inf, -1)."""
    for j in range(m, out_s.shape[0]):
        out_s[j] = -np.inf
        out_r[j] = -1
    _drain(ks, kr, m, out_s, out_r)


@njit(**_FLAGS)
def _query_codes(q, cd, kind, qn, qa, qb, qw, qi, qq):
    """The query in scan-code space: ``qn = P q * pscale - poff`` (``P`` int8 ``[p, D]``, one scale per row; no
    projection when it has no rows: ``qn = q - poff``), then the code weights ``w = (qn + poff) * scale`` (``ip``)
    or ``2 qn * scale`` (``l2``) laid out for 4-bit (``qa``/``qb``) and 8-bit (``qw``) codes, and as int16 ``qi``
    (``[2 h]``, zero padded) with ``w ~ qi * iscale``: ``1 / iscale`` maps ``max |w|`` to 32767, or less when
    ``|sum qi_t c_t|`` could otherwise pass 2^31 - 1, so the rounding error is ``2^-16 max |w|`` per weight.
    ``qq`` (int16 ``[D]``) is scratch. Returns ``(sum(w), iscale)``."""
    proj, pscale, poff, scale, bits = cd
    p = poff.shape[0]
    if proj.shape[0] > 0:
        # P q in integers: q as int16 (scaled so no int32 sum overflows) against the int8 rows, which LLVM turns
        # into vpmaddwd (measured: 1.9 us instead of 4.1 for a 256 x 384 projection, relative error ~3e-5)
        d = q.shape[0]
        inv = np.float32(1.0) / _int16_for_int8(q, qq)
        for j in range(p):
            acc = np.int32(0)
            for t in range(d):
                acc = np.int32(acc + np.int32(qq[t]) * np.int32(proj[j, t]))
            qn[j] = np.float32(acc) * (pscale[j] * inv) - poff[j]
    else:
        for j in range(p):
            qn[j] = q[j] - poff[j]
    sigma = np.float32(0.0)
    for j in range(p):
        wj = (qn[j] + poff[j]) if kind == IP else np.float32(2.0) * qn[j]
        qw[j] = wj * scale[j]
        sigma += qw[j]
    if bits == 4:
        h = qa.shape[0]
        for j in range(h):
            qa[j] = qw[j]
            qb[j] = (qw[h + j] if h + j < p else np.float32(0.0)) - np.float32(16.0) * qw[j]
    # int16 weights for byte codes (c <= 255, or 15 per nibble): |sum qi_t c_t| stays below 2^31
    wmax = np.float32(0.0)
    for j in range(p):
        wmax = max(wmax, abs(qw[j]))
    cmax = 255.0 if bits == 8 else 15.0
    alpha = min(32767.0, 2147483647.0 / (cmax * max(p, 1))) / max(wmax, np.float32(1e-30))
    for j in range(p):
        qi[j] = np.int16(np.rint(qw[j] * alpha))
    for j in range(p, qi.shape[0]):
        qi[j] = 0
    return sigma, np.float32(1.0 / alpha)


@njit(**_FLAGS)
def _search_one(
    q, rs, slot_row, sc, cd, main, tail, nt, bounds, pcent, pbias, topo, leaves, k, ef, cands, rerank, max_sl,
    exact_max, flat_max, kind, rows_kind, wf, wi, wq, out_s, out_r,
):  # fmt: skip
    """Top-k of one query over one tenant (curator.md §2.6-2.7, with scan codes); returns entries scanned.

    * At most ``exact_max`` entries, or an untrained tree: every row is scored from the rows (``rs``).
    * At most ``flat_max`` entries: every scan code is scanned (no tree walk), then the rescoring below.
    * A tenant with leaf ``bounds`` (a large one) searched with an ``ef`` of at least ``LEAF_ORDER_EF_PER_LEAF``
      per leaf: its leaves scanned in the order of their own priorities (``_scan_leaf_order``, ``leaves`` its int8
      leaf centroids), with the same early stop, then the rescoring.
    * Otherwise best-first over the tenant's subtree: the frontier holds tree nodes whose subtree holds some
      of the tenant's entries, by priority ``pbias[c] - 2 q' . pcent[c]``. A popped node with at most ``max_sl``
      entries (a shortlist), or a GCT leaf, is scanned from the scan codes into a candidate heap of capacity
      ``max(cands, k)``; a larger node is expanded into its non-empty children, split where ``bounds`` (int32, where
      each leaf rank starts in ``main``) says, or by a binary search each when ``bounds`` is empty.
      The search stops, at a shortlist boundary, once the last ``ef`` scanned entries left the candidate heap
      unchanged (v2's early stop, counted in candidates), or when the frontier is empty.
    * The best ``rerank`` candidates are rescored from the rows; the top k are written out.

    Entries hold code slots; ``slot_row`` maps them to table rows (heaps of row scores hold rows).
    ``rs = (data, codes, residual, scale, bias, sqnorm, mean, bits)`` are the rows (``_scan_full``);
    ``sc = (codes, mul, add, sub)`` the scan codes by slot and ``cd = (P int8 [p, D], its row scales [p],
    offset [p], per-coordinate code scale [p], code bits)`` their query side (``_query_codes``); ``wf``/``wi``/
    ``wq`` are float32/int64/int16 workspaces (``_workspace``); ``rows_kind`` says what ``rs`` holds (``ROWS_*``).
    """
    n = main.shape[0]
    rcodes = rs[1]
    h1 = rcodes.shape[1] if rs[7] == 4 else 0
    qa1 = wf[0:h1]
    qb1 = wf[h1 : 2 * h1]
    qmu, qsum, qsq = _row_query(q, rcodes, rs[6], rs[7], qa1, qb1)
    o = 2 * h1
    if n + nt <= exact_max or topo[1, 0] == 0:
        ks = wf[o : o + k]
        kr = wi[:k]
        m = _scan_full(q, qa1, qb1, qmu, qsum, qsq, rs, slot_row, tail, nt, main, n, kind, rows_kind, ks, kr, 0, k)
        _write(ks, kr, m, out_s, out_r)
        return n + nt
    bits = cd[4]
    p = cd[2].shape[0]
    h = (p + 1) // 2
    pn = pcent.shape[1]
    cap = max(cands, k)
    r2 = max(min(rerank, cap), k)
    nn = topo.shape[1]
    qn = wf[o : o + p]
    qw = wf[o + p : o + 2 * p]
    qa = wf[o + 2 * p : o + 2 * p + h]
    qb = wf[o + 2 * p + h : o + 2 * p + 2 * h]
    o += 2 * p + 2 * h
    hs = wf[o : o + cap]
    ks = wf[o + cap : o + cap + k]
    fs = wf[o + cap + k : o + cap + k + nn]
    hr = wi[0:cap]
    kr = wi[cap : cap + k]
    fn = wi[cap + k : cap + k + nn]
    flo = wi[cap + k + nn : cap + k + 2 * nn]
    fhi = wi[cap + k + 2 * nn : cap + k + 3 * nn]
    qi = wq[: 2 * h]
    sigma, iscale = _query_codes(q, cd, kind, qn, qa, qb, qw, qi, wq[p + 1 : p + 1 + q.shape[0]])
    qc = (qa, qb, qw, qi, iscale, sigma)
    size, _, _ = _scan_codes(qc, sc, bits, tail, 0, nt, kind, hs, hr, 0, cap)
    scanned = nt
    misses = 0
    qnode = qn[:pn]
    fsize = 0
    if n <= flat_max:
        # a tenant of at most flat_max entries: its codes are scanned whole (cheaper than walking the tree)
        size, _, _ = _scan_codes(qc, sc, bits, main, 0, n, kind, hs, hr, size, cap)
        scanned += n
    elif bounds.shape[0] > 0 and ef >= LEAF_ORDER_EF_PER_LEAF * (bounds.shape[0] - 1):
        size, s = _scan_leaf_order(qc, sc, bits, main, bounds, pbias, leaves, qnode, wq[p + 1 : p + 1 + pn], ef,
                                   kind, hs, hr, size, cap, fs, fn, flo, fhi)  # fmt: skip
        scanned += s
    else:
        fsize = _fpush(fs, fn, flo, fhi, 0, np.float32(0.0), 0, 0, n)
    while fsize > 0:
        node = fn[0]
        lo = flo[0]
        hi = fhi[0]
        fsize = _fpop(fs, fn, flo, fhi, fsize)
        if hi - lo <= max_sl or topo[1, node] == 0:
            if fsize > 0:
                # the next node popped is the frontier's best (a scan pushes nothing): start loading its codes
                for j in range(flo[0], min(fhi[0], flo[0] + PREFETCH_AHEAD)):
                    _prefetch_code(sc[0], main[j] & ROW_MASK, sc[0].shape[1])
            size, since, entered = _scan_codes(qc, sc, bits, main, lo, hi, kind, hs, hr, size, cap)
            scanned += hi - lo
            misses = since if entered else misses + since
            if misses >= ef:
                break
            continue
        c0 = topo[0, node]
        c_end = c0 + topo[1, node]
        start = lo
        for c in range(c0, c_end):
            if c + 1 < c_end:
                if bounds.shape[0] > 0:
                    stop = min(max(np.int64(bounds[topo[2, c + 1]]), start), hi)  # clamped: never past the node
                else:
                    stop = _lower_bound(main, start, hi, np.int64(topo[2, c + 1]) << ROW_BITS)
            else:
                stop = hi
            if stop > start:
                dot = _dotv(pcent, c, qnode)
                fsize = _fpush(fs, fn, flo, fhi, fsize, pbias[c] - np.float32(2.0) * dot, c, start, stop)
            start = stop
    while size > r2:
        size = _pop_worst(hs, hr, size)
    # the candidates' code slots, read as a list of entries, rescored from the rows into the top-k heap
    m = _scan_full(q, qa1, qb1, qmu, qsum, qsq, rs, slot_row, hr, size, hr, 0, kind, rows_kind, ks, kr, 0, k)
    _write(ks, kr, m, out_s, out_r)
    return scanned


@njit(**_FLAGS)
def _workspace(rs, cd, nn, k, cands, d):
    """Float32, int64 and int16 scratch arrays large enough for one ``_search_one`` call (queries of dim ``d``)."""
    cap = max(cands, k)
    p = cd[2].shape[0]
    h1 = rs[1].shape[1] if rs[7] == 4 else 0
    nf = 2 * h1 + 2 * p + 2 * ((p + 1) // 2) + cap + k + nn
    return np.empty(nf, np.float32), np.empty(cap + k + 3 * nn, np.int64), np.empty(p + 1 + d, np.int16)


@njit(**_FLAGS)
def search(
    queries, rs, slot_row, sc, cd, main, tail, nt, bounds, pcent, pbias, topo, leaves, k, ef, cands, rerank, max_sl,
    exact_max, flat_max, kind, rows_kind, out_s, out_r,
):  # fmt: skip
    """Serial batch: each query row searched in turn into ``out_s``/``out_r``. Returns entries scanned.

    ``rs``, ``sc`` and ``cd`` are as in ``_search_one``; ``rows_kind`` (``ROWS_*``) says what ``rs`` holds.
    """
    wf, wi, wq = _workspace(rs, cd, topo.shape[1], k, cands, queries.shape[1])
    total = 0
    for i in range(queries.shape[0]):
        total += _search_one(
            queries[i], rs, slot_row, sc, cd, main, tail, nt, bounds, pcent, pbias, topo, leaves, k, ef, cands,
            rerank, max_sl, exact_max, flat_max, kind, rows_kind, wf, wi, wq, out_s[i], out_r[i],
        )  # fmt: skip
    return total


@njit(**_PAR)
def search_parallel(
    queries, rs, slot_row, sc, cd, main, tail, nt, bounds, pcent, pbias, topo, leaves, k, ef, cands, rerank, max_sl,
    exact_max, flat_max, kind, rows_kind, out_s, out_r,
):  # fmt: skip
    """The same, one query per thread."""
    for i in prange(queries.shape[0]):
        wf, wi, wq = _workspace(rs, cd, topo.shape[1], k, cands, queries.shape[1])
        _search_one(
            queries[i], rs, slot_row, sc, cd, main, tail, nt, bounds, pcent, pbias, topo, leaves, k, ef, cands,
            rerank, max_sl, exact_max, flat_max, kind, rows_kind, wf, wi, wq, out_s[i], out_r[i],
        )  # fmt: skip
