"""numba CPU kernels for float32 rows: score a block of rows into a buffer, then offer it to a top-k heap.

Loops only; ``engine.kernels`` validates and shapes the input, and the driver functions at the bottom pick the
kernel. Rows are either a list (``rows``, int64) or the contiguous block ``start .. start + n`` (``use_rows``
false; ``rows`` is then an empty array, so both cases share one compiled signature). The surrogate is the
inner product (``IP``) or minus the squared distance (``L2``). Every kernel releases the GIL and is cached.

* one query or a few: ``_scan`` (serial), ``_scan_queries`` (one query per thread), ``_scan_rows`` (one query,
  row chunks per thread, merged afterwards);
* many queries (``GEMM_MIN_QUERIES``): a BLAS matrix product per block with a fused heap selection
  (``engine.kernels.gemm``);
* LVQ codes: ``engine.kernels.lvq`` (the LVQ layout's own numba kernels).

Scoring a block into a buffer first keeps the dot-product loop free of the heap's branches, so LLVM vectorizes
it; a row whose score is below the heap's root costs one comparison.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

# numba options, forwarded to njit as keywords
_FLAGS: dict[str, Any] = dict(nogil=True, fastmath=True, cache=True)
_PAR: dict[str, Any] = dict(nogil=True, fastmath=True, cache=True, parallel=True)
IP, L2 = 0, 1
#: rows scored per block before they are offered to the heap
BLOCK = 256
#: batches of at least this many queries use the BLAS product (``engine.kernels.gemm``)
GEMM_MIN_QUERIES = 16
_NO_ROWS = np.zeros(0, np.int64)


@njit(**_FLAGS)
def _dot(q, x):
    s = np.float32(0.0)
    for j in range(q.shape[0]):
        s += q[j] * x[j]
    return s


@njit(**_FLAGS)
def _sqdist(q, x):
    s = np.float32(0.0)
    for j in range(q.shape[0]):
        t = q[j] - x[j]
        s += t * t
    return s


@njit(**_FLAGS)
def _score_block(q, base, rows, use_rows, start, t0, t1, kind, buf):
    """``buf[t - t0]`` = surrogate score of row ``rows[t]`` (or ``start + t``) for ``t0 <= t < t1``."""
    if kind == IP:
        if use_rows:
            for t in range(t0, t1):
                buf[t - t0] = _dot(q, base[rows[t]])
        else:
            for t in range(t0, t1):
                buf[t - t0] = _dot(q, base[start + t])
    else:
        if use_rows:
            for t in range(t0, t1):
                buf[t - t0] = -_sqdist(q, base[rows[t]])
        else:
            for t in range(t0, t1):
                buf[t - t0] = -_sqdist(q, base[start + t])


@njit(**_FLAGS)
def _worse(s1, r1, s2, r2):
    return s1 < s2 or (s1 == s2 and r1 > r2)


@njit(**_FLAGS)
def _sift_down(hs, hi, size):
    """Restore the min-heap (worst kept score at the root; ties: the larger row is worse)."""
    i = 0
    while True:
        c = 2 * i + 1
        if c >= size:
            return
        if c + 1 < size and _worse(hs[c + 1], hi[c + 1], hs[c], hi[c]):
            c += 1
        if not _worse(hs[c], hi[c], hs[i], hi[i]):
            return
        hs[i], hs[c] = hs[c], hs[i]
        hi[i], hi[c] = hi[c], hi[i]
        i = c


@njit(**_FLAGS)
def _push(hs, hi, size, k, s, r):
    """Offer (s, r) to a top-k heap holding ``size`` items; return the new size."""
    if size < k:
        i = size
        hs[i] = s
        hi[i] = r
        while i > 0:
            p = (i - 1) // 2
            if not _worse(hs[i], hi[i], hs[p], hi[p]):
                break
            hs[i], hs[p] = hs[p], hs[i]
            hi[i], hi[p] = hi[p], hi[i]
            i = p
        return size + 1
    if _worse(hs[0], hi[0], s, r):
        hs[0] = s
        hi[0] = r
        _sift_down(hs, hi, size)
    return size


@njit(**_FLAGS)
def _drain(hs, hi, size, out_s, out_r):
    """Write the heap best first into ``out_s``/``out_r`` (pre-padded with -inf/-1)."""
    n = size
    while n > 0:
        out_s[n - 1] = hs[0]
        out_r[n - 1] = hi[0]
        n -= 1
        hs[0] = hs[n]
        hi[0] = hi[n]
        _sift_down(hs, hi, n)


@njit(**_FLAGS)
def _scan_one(q, base, rows, use_rows, start, n, kind, k, out_s, out_r):
    hs = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    buf = np.empty(BLOCK, np.float32)
    size = 0
    for t0 in range(0, n, BLOCK):
        t1 = min(t0 + BLOCK, n)
        _score_block(q, base, rows, use_rows, start, t0, t1, kind, buf)
        for t in range(t0, t1):
            s = buf[t - t0]
            if size == k and s < hs[0]:
                continue
            size = _push(hs, hi, size, k, s, rows[t] if use_rows else start + t)
    _drain(hs, hi, size, out_s, out_r)


@njit(**_FLAGS)
def _scan(queries, base, rows, use_rows, start, n, kind, k, out_s, out_r):
    for i in range(queries.shape[0]):
        _scan_one(queries[i], base, rows, use_rows, start, n, kind, k, out_s[i], out_r[i])


@njit(**_PAR)
def _scan_queries(queries, base, rows, use_rows, start, n, kind, k, out_s, out_r):
    for i in prange(queries.shape[0]):
        _scan_one(queries[i], base, rows, use_rows, start, n, kind, k, out_s[i], out_r[i])


@njit(**_PAR)
def _scan_rows(queries, base, rows, use_rows, start, n, kind, k, parts_s, parts_r):
    """Chunk ``c`` of the rows into ``parts_s[c]``/``parts_r[c]`` ([chunks, m, k]), one chunk per thread."""
    chunks = parts_s.shape[0]
    for c in prange(chunks):
        a = n * c // chunks
        b = n * (c + 1) // chunks
        for i in range(queries.shape[0]):
            if use_rows:
                _scan_one(queries[i], base, rows[a:b], True, 0, b - a, kind, k, parts_s[c, i], parts_r[c, i])
            else:
                _scan_one(queries[i], base, rows, False, start + a, b - a, kind, k, parts_s[c, i], parts_r[c, i])


@njit(**_PAR)
def _scores(queries, base, rows, use_rows, start, n, kind, out):
    for i in prange(queries.shape[0]):
        for t0 in range(0, n, BLOCK):
            t1 = min(t0 + BLOCK, n)
            _score_block(queries[i], base, rows, use_rows, start, t0, t1, kind, out[i, t0:t1])


@njit(**_PAR)
def _decode_lvq(codes, scale, bias, mean, bits, residual, rows, use_rows, start, n, out):
    """float32 ``out[t]`` = the LVQ-decoded vector of row ``rows[t]`` (or ``start + t``); layout of
    ``engine.quant.lvq`` (split-half nibbles for 4 bits; ``residual`` empty for one level)."""
    d = out.shape[1]
    h = (d + 1) // 2
    two = residual.shape[0] > 0
    for t in prange(n):
        r = rows[t] if use_rows else start + t
        st = scale[r]
        lo = bias[r] - np.float32(0.5) * st if two else bias[r]
        for j in range(d):
            if bits == 8:
                c = np.float32(codes[r, j])
            elif j < h:
                c = np.float32(codes[r, j] & 15)
            else:
                c = np.float32(codes[r, j - h] >> 4)
            v = mean[j] + lo + st * c
            if two:
                v += st / np.float32(255.0) * np.float32(residual[r, j])
            out[t, j] = v


# ---------------------------------------------------------------------------------------------- drivers
def _merge(parts_s: np.ndarray, parts_r: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from engine.kernels import reference

    return reference.merge_topk(list(zip(parts_s, parts_r)), k)


def _float_search(queries, base, rows, start, n, k, kind, threads):
    m = queries.shape[0]
    use_rows = rows is not None
    r = rows if use_rows else _NO_ROWS
    code = IP if kind == "ip" else L2
    if m >= GEMM_MIN_QUERIES:
        from engine.kernels import gemm

        if use_rows:
            return gemm.topk_gemm(queries, base, rows, k, kind)
        s, out_r = gemm.topk_gemm(queries, base[start : start + n], None, k, kind)
        return s, np.where(out_r >= 0, out_r + start, -1)
    out_s = np.full((m, k), -np.inf, np.float32)
    out_r = np.full((m, k), -1, np.int64)
    work = m * n * queries.shape[1]
    if threads > 1 and m >= threads and work >= 1_000_000:
        _scan_queries(queries, base, r, use_rows, start, n, code, k, out_s, out_r)
    elif threads > 1 and work >= 4_000_000:
        ps = np.full((threads, m, k), -np.inf, np.float32)
        pr = np.full((threads, m, k), -1, np.int64)
        _scan_rows(queries, base, r, use_rows, start, n, code, k, ps, pr)
        return _merge(ps, pr, k)
    else:
        _scan(queries, base, r, use_rows, start, n, code, k, out_s, out_r)
    return out_s, out_r


def _lvq_search(queries, data, rows, start, n, k, kind, threads):
    from engine.kernels import lvq

    sel = rows if rows is not None else np.arange(start, start + n, dtype=np.int64)
    args = dict(bits=data.bits, dim=data.dim, residual=data.residual)
    if queries.shape[0] == 1 and threads > 1 and n * data.dim >= 4_000_000:
        from concurrent.futures import ThreadPoolExecutor

        chunks = np.array_split(sel, threads)
        with ThreadPoolExecutor(threads) as pool:  # lvq's kernels release the GIL
            futs = [
                pool.submit(lvq.lvq_topk, queries, data.mean, data.codes, data.scale, data.bias, c, k, kind, **args)
                for c in chunks
            ]
            from engine.kernels import reference

            return reference.merge_topk([f.result() for f in futs], k)
    return lvq.lvq_topk(
        queries,
        data.mean,
        data.codes,
        data.scale,
        data.bias,
        sel,
        k,
        kind,
        parallel=None if threads > 1 else False,
        **args,
    )


def search(queries, data, rows, start, stop, k, kind, threads=1):
    """Top-k of ``data[rows]`` (or the block ``start:stop``) per query; arrays already validated."""
    n = rows.shape[0] if rows is not None else stop - start
    if isinstance(data, np.ndarray):
        return _float_search(queries, data, rows, start, n, k, kind, threads)
    return _lvq_search(queries, data, rows, start, n, k, kind, threads)


def decode(data, rows, start, stop) -> np.ndarray:
    """float32 ``[n, dim]`` decoded LVQ rows."""
    n = rows.shape[0] if rows is not None else stop - start
    out = np.empty((n, data.dim), np.float32)
    res = data.residual if data.residual is not None else np.zeros((0, 0), np.uint8)
    use_rows = rows is not None
    _decode_lvq(
        data.codes,
        data.scale,
        data.bias,
        data.mean,
        data.bits,
        res,
        rows if use_rows else _NO_ROWS,
        use_rows,
        start,
        n,
        out,
    )
    return out


def scores(queries, data, rows, start, stop, kind, threads=1):
    """Surrogate scores ``[m, n]``; LVQ rows are decoded to float32 first."""
    n = rows.shape[0] if rows is not None else stop - start
    if not isinstance(data, np.ndarray):
        data = decode(data, rows, start, stop)
        rows, start = None, 0
    use_rows = rows is not None
    out = np.empty((queries.shape[0], n), np.float32)
    _scores(queries, data, rows if use_rows else _NO_ROWS, use_rows, start, n, IP if kind == "ip" else L2, out)
    return out
