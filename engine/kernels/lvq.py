r"""numba kernels that score queries against LVQ codes without decoding them to float32 vectors.

The layout of the codes is that of ``engine.quant.lvq`` (split-half 4-bit nibbles, per-vector ``scale``
:math:`\Delta` and ``bias`` :math:`l`, optional 8-bit residual); the formulas are those of ``leanvec.md`` §1.4.
Per query the public functions below compute once :math:`q\cdot\mu`, :math:`\sum_j q_j` and
:math:`\|q\|^2`; the inner loop is then a float32 x small-integer dot product:

.. math::

    \langle q, \tilde x\rangle = q\cdot\mu + l' \sum_j q_j + \Delta \langle q, c\rangle
        \;[+\, \Delta_2 \langle q, c^{(2)}\rangle]

with :math:`l' = l` for one level and :math:`l' = l - \Delta/2`, :math:`\Delta_2 = \Delta/255` for two.
Scores are surrogates, higher is better (``engine.kernels.metrics``):

* ``ip`` / ``cosine``: :math:`\langle q, \tilde x\rangle` (cosine rows and queries are unit vectors already);
* ``l2``, direct: :math:`-\sum_j (q_j - \mu_j - l' - \Delta c_j [- \Delta_2 c^{(2)}_j])^2`, one fused pass
  over the codes with the query shifted once;
* ``l2`` via norms (when ``sqnorms`` is given): :math:`2\langle q, \tilde x\rangle - s_r - \|q\|^2`, which is
  :math:`-\|q - \tilde x\|^2` when :math:`s_r = \|\tilde x_r\|^2`. A LeanVec codec passes the exact
  :math:`\|x_r\|^2` of the original vectors here, since its projected rows do not carry their norm.

Results are (scores float32 ``[m, k]``, rows int64 ``[m, k]``), best first, ties to the smaller row,
padded with (-inf, -1). The public functions validate and normalise (dtype, C order, shapes, row range);
the private ``@njit`` kernels only loop. Heaps are local to this module on purpose: numba's on-disk cache
does not notice changes in njit functions imported from another file.

Two-level codes are scanned at their first level by passing ``residual=None`` and reranked with both.

Speed: rows are scored in blocks of ``_ROWS_PER_BLOCK`` into a buffer, with the branches on encoding and
metric outside the row loops, and only then offered to the heap (a threshold test first). Scoring and
pushing row by row through one branching score function was about 10x slower: LLVM did not vectorize it.
The 4-bit loops read the two query halves as separate arrays for the same reason (see ``_dot4``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from engine.kernels import PARALLEL_MIN_WORK, metrics

# numba options, forwarded to njit as keywords
_FLAGS: dict[str, Any] = dict(nogil=True, fastmath=True, cache=True)
IP, L2, L2N = 0, 1, 2
ENC8, ENC4, ENC4X8 = 8, 4, 48
_INV255 = np.float32(1.0 / 255.0)
_SIXTEEN = np.float32(16.0)
_SIXTEENTH = np.float32(0.0625)
_NO_RESIDUAL = np.zeros((0, 0), np.uint8)
_NO_NORMS = np.zeros(0, np.float32)
#: rows scored per block before their scores are offered to the top-k heap
_ROWS_PER_BLOCK = 128


# ---------------------------------------------------------------------------------------------
# inner loops
# ---------------------------------------------------------------------------------------------
@njit(**_FLAGS)
def _dot8(q, c, d):
    s = np.float32(0.0)
    for j in range(d):
        s += q[j] * np.float32(c[j])
    return s


@njit(**_FLAGS)
def _dot4(qa, qb, c, h):
    """Sum q_j c_j over split-half nibbles: byte j holds code j (low) and code j + h (high).

    ``qa = q[:h]`` and ``qb = q[h:]`` zero-padded to ``h`` come in as separate arrays, and nibbles are split
    with float arithmetic (exact for 0..255): indexing ``q[j + h]`` in the loop, slicing the query per row,
    integer masks (widened to int64 by numba) or a tuple-returning helper each stopped LLVM from
    vectorizing the loop (measured 5-10x slower).
    """
    s = np.float32(0.0)
    for j in range(h):
        f = np.float32(c[j])
        hi = np.floor(f * _SIXTEENTH)
        s += qa[j] * (f - _SIXTEEN * hi) + qb[j] * hi
    return s


@njit(**_FLAGS)
def _l2_8(q, c, lo, step, d):
    s = np.float32(0.0)
    for j in range(d):
        t = q[j] - lo - step * np.float32(c[j])
        s += t * t
    return s


@njit(**_FLAGS)
def _l2_4(qa, qb, c, lo, step, h, odd):
    """Squared distance over split-half nibbles. With an odd dimension the padding slot (query 0, code 0)
    adds ``lo^2``, which is taken off again."""
    s = np.float32(0.0)
    for j in range(h):
        f = np.float32(c[j])
        ch = np.floor(f * _SIXTEENTH)
        t0 = qa[j] - lo - step * (f - _SIXTEEN * ch)
        t1 = qb[j] - lo - step * ch
        s += t0 * t0 + t1 * t1
    if odd:
        s -= lo * lo
    return s


@njit(**_FLAGS)
def _l2_48(qa, qb, c, res, lo, step, step2, h, d):
    """Squared distance on both levels. Only reranks use it (a few hundred rows), so it favours plain code."""
    s = np.float32(0.0)
    for j in range(h):
        f = np.float32(c[j])
        ch = np.floor(f * _SIXTEENTH)
        t = qa[j] - lo - step * (f - _SIXTEEN * ch) - step2 * np.float32(res[j])
        s += t * t
        if j + h < d:
            t = qb[j] - lo - step * ch - step2 * np.float32(res[j + h])
            s += t * t
    return s


@njit(**_FLAGS)
def _dotf(q, x, d):
    s = np.float32(0.0)
    for j in range(d):
        s += q[j] * x[j]
    return s


@njit(**_FLAGS)
def _l2f(q, x, d):
    s = np.float32(0.0)
    for j in range(d):
        t = q[j] - x[j]
        s += t * t
    return s


@njit(**_FLAGS)
def _lvq_block(q, q2, qc, codes, resid, scale, bias, sqn, rows, t0, t1, d, enc, kind, buf):
    """``buf[t - t0]`` = surrogate score of ``rows[t]``, ``t0 <= t < t1`` (-inf for padding rows < 0).

    ``q`` is the query (shifted by the mean for direct l2), ``q2`` its two halves for the nibble loops.
    The branches on the encoding and the metric sit outside the row loops so each loop vectorizes.
    """
    half = np.float32(0.5)
    h = (d + 1) // 2
    qa = q2[0]
    qb = q2[1]
    if kind == L2:
        if enc == ENC8:
            for t in range(t0, t1):
                r = rows[t]
                if r >= 0:
                    buf[t - t0] = -_l2_8(q, codes[r], bias[r], scale[r], d)
        elif enc == ENC4:
            odd = d & 1 == 1
            for t in range(t0, t1):
                r = rows[t]
                if r >= 0:
                    buf[t - t0] = -_l2_4(qa, qb, codes[r], bias[r], scale[r], h, odd)
        else:
            for t in range(t0, t1):
                r = rows[t]
                if r >= 0:
                    st = scale[r]
                    buf[t - t0] = -_l2_48(qa, qb, codes[r], resid[r], bias[r] - half * st, st, st * _INV255, h, d)
    else:
        if enc == ENC8:
            for t in range(t0, t1):
                r = rows[t]
                if r >= 0:
                    buf[t - t0] = qc[0] + bias[r] * qc[1] + scale[r] * _dot8(q, codes[r], d)
        elif enc == ENC4:
            for t in range(t0, t1):
                r = rows[t]
                if r >= 0:
                    buf[t - t0] = qc[0] + bias[r] * qc[1] + scale[r] * _dot4(qa, qb, codes[r], h)
        else:
            for t in range(t0, t1):
                r = rows[t]
                if r >= 0:
                    st = scale[r]
                    dot = st * _dot4(qa, qb, codes[r], h) + st * _INV255 * _dot8(q, resid[r], d)
                    buf[t - t0] = qc[0] + (bias[r] - half * st) * qc[1] + dot
        if kind == L2N:
            for t in range(t0, t1):
                r = rows[t]
                if r >= 0:
                    buf[t - t0] = np.float32(2.0) * buf[t - t0] - sqn[r] - qc[2]
    for t in range(t0, t1):
        if rows[t] < 0:
            buf[t - t0] = -np.inf


@njit(**_FLAGS)
def _dense_block(q, qc, base, sqn, rows, t0, t1, d, kind, buf):
    """``_lvq_block`` for float32 rows."""
    if kind == L2:
        for t in range(t0, t1):
            r = rows[t]
            if r >= 0:
                buf[t - t0] = -_l2f(q, base[r], d)
    else:
        for t in range(t0, t1):
            r = rows[t]
            if r >= 0:
                buf[t - t0] = _dotf(q, base[r], d)
        if kind == L2N:
            for t in range(t0, t1):
                r = rows[t]
                if r >= 0:
                    buf[t - t0] = np.float32(2.0) * buf[t - t0] - sqn[r] - qc[2]
    for t in range(t0, t1):
        if rows[t] < 0:
            buf[t - t0] = -np.inf


# ---------------------------------------------------------------------------------------------
# top-k heap: a min-heap of the k best, worst at the root; ties go to the smaller row
# ---------------------------------------------------------------------------------------------
@njit(**_FLAGS)
def _worse(s1, r1, s2, r2):
    return s1 < s2 or (s1 == s2 and r1 > r2)


@njit(**_FLAGS)
def _sift_down(hs, hi, size):
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
def _offer(hs, hi, size, k, buf, rows, t0, t1):
    """Push the scored block ``buf`` (rows ``rows[t0:t1]``; padding rows < 0 skipped) into the heap."""
    for t in range(t0, t1):
        r = rows[t]
        if r < 0:
            continue
        s = buf[t - t0]
        if size == k and s < hs[0]:
            continue
        size = _push(hs, hi, size, k, s, r)
    return size


@njit(**_FLAGS)
def _drain(hs, hi, size, out_s, out_r):
    n = size
    while n > 0:
        out_s[n - 1] = hs[0]
        out_r[n - 1] = hi[0]
        n -= 1
        hs[0] = hs[n]
        hi[0] = hi[n]
        _sift_down(hs, hi, n)


# ---------------------------------------------------------------------------------------------
# drivers: one query against a row list; batches serial or one query per thread
# ---------------------------------------------------------------------------------------------
@njit(**_FLAGS)
def _lvq_one(q, q2, qc, codes, resid, scale, bias, sqn, rows, d, enc, kind, k, out_s, out_r):
    hs = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    buf = np.empty(_ROWS_PER_BLOCK, np.float32)
    size = 0
    n = rows.shape[0]
    for t0 in range(0, n, _ROWS_PER_BLOCK):
        t1 = min(t0 + _ROWS_PER_BLOCK, n)
        _lvq_block(q, q2, qc, codes, resid, scale, bias, sqn, rows, t0, t1, d, enc, kind, buf)
        size = _offer(hs, hi, size, k, buf, rows, t0, t1)
    _drain(hs, hi, size, out_s, out_r)


@njit(**_FLAGS)
def _lvq_scan(qs, q2s, qc, codes, resid, scale, bias, sqn, rows, d, enc, kind, k, out_s, out_r):
    for i in range(qs.shape[0]):
        _lvq_one(qs[i], q2s[i], qc[i], codes, resid, scale, bias, sqn, rows, d, enc, kind, k, out_s[i], out_r[i])


@njit(nogil=True, fastmath=True, cache=True, parallel=True)
def _lvq_scan_par(qs, q2s, qc, codes, resid, scale, bias, sqn, rows, d, enc, kind, k, out_s, out_r):
    for i in prange(qs.shape[0]):
        _lvq_one(qs[i], q2s[i], qc[i], codes, resid, scale, bias, sqn, rows, d, enc, kind, k, out_s[i], out_r[i])


@njit(**_FLAGS)
def _lvq_rerank(qs, q2s, qc, codes, resid, scale, bias, sqn, cand, d, enc, kind, k, out_s, out_r):
    for i in range(qs.shape[0]):
        _lvq_one(qs[i], q2s[i], qc[i], codes, resid, scale, bias, sqn, cand[i], d, enc, kind, k, out_s[i], out_r[i])


@njit(nogil=True, fastmath=True, cache=True, parallel=True)
def _lvq_rerank_par(qs, q2s, qc, codes, resid, scale, bias, sqn, cand, d, enc, kind, k, out_s, out_r):
    for i in prange(qs.shape[0]):
        _lvq_one(qs[i], q2s[i], qc[i], codes, resid, scale, bias, sqn, cand[i], d, enc, kind, k, out_s[i], out_r[i])


@njit(**_FLAGS)
def _dense_one(q, qc, base, sqn, rows, d, kind, k, out_s, out_r):
    hs = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    buf = np.empty(_ROWS_PER_BLOCK, np.float32)
    size = 0
    n = rows.shape[0]
    for t0 in range(0, n, _ROWS_PER_BLOCK):
        t1 = min(t0 + _ROWS_PER_BLOCK, n)
        _dense_block(q, qc, base, sqn, rows, t0, t1, d, kind, buf)
        size = _offer(hs, hi, size, k, buf, rows, t0, t1)
    _drain(hs, hi, size, out_s, out_r)


@njit(**_FLAGS)
def _dense_scan(qs, qc, base, sqn, rows, d, kind, k, out_s, out_r):
    for i in range(qs.shape[0]):
        _dense_one(qs[i], qc[i], base, sqn, rows, d, kind, k, out_s[i], out_r[i])


@njit(nogil=True, fastmath=True, cache=True, parallel=True)
def _dense_scan_par(qs, qc, base, sqn, rows, d, kind, k, out_s, out_r):
    for i in prange(qs.shape[0]):
        _dense_one(qs[i], qc[i], base, sqn, rows, d, kind, k, out_s[i], out_r[i])


@njit(**_FLAGS)
def _dense_rerank(qs, qc, base, sqn, cand, d, kind, k, out_s, out_r):
    for i in range(qs.shape[0]):
        _dense_one(qs[i], qc[i], base, sqn, cand[i], d, kind, k, out_s[i], out_r[i])


@njit(nogil=True, fastmath=True, cache=True, parallel=True)
def _dense_rerank_par(qs, qc, base, sqn, cand, d, kind, k, out_s, out_r):
    for i in prange(qs.shape[0]):
        _dense_one(qs[i], qc[i], base, sqn, cand[i], d, kind, k, out_s[i], out_r[i])


# ---------------------------------------------------------------------------------------------
# public entry points: validate, prepare the per-query constants, run, package
# ---------------------------------------------------------------------------------------------
def _kind(metric: str, sqnorms: np.ndarray | None) -> int:
    if metric not in metrics.KERNEL_METRIC:
        raise ValueError(f"metric must be one of {', '.join(metrics.KERNEL_METRIC)}, got {metric!r}")
    if metrics.KERNEL_METRIC[metric] == "ip":
        return IP
    return L2 if sqnorms is None else L2N


def _queries(queries: np.ndarray, dim: int) -> np.ndarray:
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q.reshape(1, -1)
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"queries must be [m, {dim}], got shape {q.shape}")
    return np.ascontiguousarray(q)


def _prepare(q: np.ndarray, mean: np.ndarray, kind: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the query the loops read, its halves ``[m, 2, ceil(d/2)]`` zero-padded, constants [q.mu, sum q, |q|^2])."""
    q64 = q.astype(np.float64)
    m, d = q.shape
    qc = np.zeros((m, 3), np.float32)
    if kind == L2:
        qs = np.ascontiguousarray(q64 - mean.astype(np.float64), dtype=np.float32)
    else:
        qs = q
        qc[:, 0] = q64 @ mean.astype(np.float64)
        qc[:, 1] = q64.sum(axis=1)
        qc[:, 2] = (q64 * q64).sum(axis=1)
    h = (d + 1) // 2
    q2 = np.zeros((m, 2, h), np.float32)
    q2[:, 0, :] = qs[:, :h]
    q2[:, 1, : d - h] = qs[:, h:]
    return qs, q2, qc


def _check_rows(rows: np.ndarray, n: int, what: str, allow_padding: bool) -> np.ndarray:
    r = np.ascontiguousarray(rows, dtype=np.int64)
    if r.size:
        lo, hi = int(r.min()), int(r.max())
        if hi >= n or (lo < 0 and not (allow_padding and lo == -1)):
            raise ValueError(f"{what} must lie in [0, {n}){' or be -1' if allow_padding else ''}; got {lo}..{hi}")
    return r


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _sqnorms(sqnorms: np.ndarray | None, n: int) -> np.ndarray:
    if sqnorms is None:
        return _NO_NORMS
    s = np.ascontiguousarray(sqnorms, dtype=np.float32)
    if s.shape != (n,):
        raise ValueError(f"sqnorms must be float32 [{n}], got shape {s.shape}")
    return s


def _lvq_arrays(mean, codes, scale, bias, bits, dim, residual):
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if residual is not None and bits != 4:
        raise ValueError("a residual level is only defined for 4-bit codes (LVQ-4x8)")
    c = np.ascontiguousarray(codes, dtype=np.uint8)
    n = c.shape[0]
    width = dim if bits == 8 else (dim + 1) // 2
    if c.ndim != 2 or c.shape[1] != width:
        raise ValueError(f"{bits}-bit codes of dim {dim} must be uint8 [n, {width}], got shape {c.shape}")
    sc = np.ascontiguousarray(scale, dtype=np.float32)
    bi = np.ascontiguousarray(bias, dtype=np.float32)
    if sc.shape != (n,) or bi.shape != (n,):
        raise ValueError(f"scale and bias must be float32 [{n}]")
    mu = np.ascontiguousarray(mean, dtype=np.float32)
    if mu.shape != (dim,):
        raise ValueError(f"mean must be float32 [{dim}], got shape {mu.shape}")
    if residual is None:
        return mu, c, sc, bi, _NO_RESIDUAL, (ENC8 if bits == 8 else ENC4)
    res = np.ascontiguousarray(residual, dtype=np.uint8)
    if res.shape != (n, dim):
        raise ValueError(f"residual codes must be uint8 [{n}, {dim}], got shape {res.shape}")
    return mu, c, sc, bi, res, ENC4X8


def _parallel(parallel: bool | None, m: int, work: int) -> bool:
    if parallel is None:
        return m > 1 and m * work >= PARALLEL_MIN_WORK
    return bool(parallel) and m > 1


def lvq_topk(
    queries: np.ndarray,
    mean: np.ndarray,
    codes: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray,
    rows: np.ndarray,
    k: int,
    metric: str,
    *,
    bits: int,
    dim: int,
    residual: np.ndarray | None = None,
    sqnorms: np.ndarray | None = None,
    parallel: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of the LVQ-coded ``rows`` for each query, scored on the codes.

    Parameters
    ----------
    queries : float32 ``[m, dim]`` (or ``[dim]``), already prepared for the metric (unit rows for cosine).
    mean : float32 ``[dim]``, the LVQ mean the codes were encoded with.
    codes, scale, bias : the arrays of ``engine.quant.lvq.LVQCodes``.
    rows : int64 ``[n]`` row numbers into the codes, shared by all queries.
    k : how many to keep.
    metric : ``"ip"``, ``"cosine"`` or ``"l2"``.
    bits : 8 or 4 (of the first level). dim : the vector dimension.
    residual : uint8 ``[N, dim]`` second level (4x8 codes), or ``None`` to read the first level only.
    sqnorms : float32 ``[N]``; for ``l2``, score via norms as ``2 q.x - sqnorms[r] - |q|^2``.
    parallel : one query per thread; ``None`` decides by the amount of work.

    Returns
    -------
    (scores float32 ``[m, k]``, rows int64 ``[m, k]``), best first, padded with (-inf, -1).
    """
    k = _check_k(k)
    kind = _kind(metric, sqnorms)
    mu, c, sc, bi, res, enc = _lvq_arrays(mean, codes, scale, bias, bits, dim, residual)
    q = _queries(queries, dim)
    rws = _check_rows(rows, c.shape[0], "rows", allow_padding=False)
    sqn = _sqnorms(sqnorms, c.shape[0])
    qs, q2, qc = _prepare(q, mu, kind)
    m = q.shape[0]
    out_s = np.full((m, k), -np.inf, np.float32)
    out_r = np.full((m, k), -1, np.int64)
    fn = _lvq_scan_par if _parallel(parallel, m, rws.shape[0] * dim) else _lvq_scan
    fn(qs, q2, qc, c, res, sc, bi, sqn, rws, dim, enc, kind, k, out_s, out_r)
    return out_s, out_r


def lvq_rerank(
    queries: np.ndarray,
    mean: np.ndarray,
    codes: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray,
    candidates: np.ndarray,
    k: int,
    metric: str,
    *,
    bits: int,
    dim: int,
    residual: np.ndarray | None = None,
    sqnorms: np.ndarray | None = None,
    parallel: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Like ``lvq_topk``, but query ``i`` scores its own row list ``candidates[i]`` (int64 ``[m, c]``; -1 is
    padding and is skipped). This is the rerank of a shortlist, usually with ``residual`` given."""
    k = _check_k(k)
    kind = _kind(metric, sqnorms)
    mu, c, sc, bi, res, enc = _lvq_arrays(mean, codes, scale, bias, bits, dim, residual)
    q = _queries(queries, dim)
    cand = _check_rows(candidates, c.shape[0], "candidates", allow_padding=True)
    if cand.ndim != 2 or cand.shape[0] != q.shape[0]:
        raise ValueError(f"candidates must be int64 [{q.shape[0]}, c], got shape {cand.shape}")
    sqn = _sqnorms(sqnorms, c.shape[0])
    qs, q2, qc = _prepare(q, mu, kind)
    m = q.shape[0]
    out_s = np.full((m, k), -np.inf, np.float32)
    out_r = np.full((m, k), -1, np.int64)
    fn = _lvq_rerank_par if _parallel(parallel, m, cand.shape[1] * dim) else _lvq_rerank
    fn(qs, q2, qc, c, res, sc, bi, sqn, cand, dim, enc, kind, k, out_s, out_r)
    return out_s, out_r


def _dense_arrays(queries, base, sqnorms):
    b = np.ascontiguousarray(base, dtype=np.float32)
    if b.ndim != 2:
        raise ValueError(f"base must be float32 [N, d], got shape {b.shape}")
    q = _queries(queries, b.shape[1])
    return q, b, _sqnorms(sqnorms, b.shape[0])


def dense_topk(
    queries: np.ndarray,
    base: np.ndarray,
    rows: np.ndarray,
    k: int,
    metric: str,
    *,
    sqnorms: np.ndarray | None = None,
    parallel: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``lvq_topk`` for float32 rows ``base`` ``[N, d]`` (a float32 primary or secondary), same conventions,
    including ``l2`` via ``sqnorms``."""
    k = _check_k(k)
    kind = _kind(metric, sqnorms)
    q, b, sqn = _dense_arrays(queries, base, sqnorms)
    rws = _check_rows(rows, b.shape[0], "rows", allow_padding=False)
    qs, _, qc = _prepare(q, np.zeros(b.shape[1], np.float32), kind)
    m = q.shape[0]
    out_s = np.full((m, k), -np.inf, np.float32)
    out_r = np.full((m, k), -1, np.int64)
    fn = _dense_scan_par if _parallel(parallel, m, rws.shape[0] * b.shape[1]) else _dense_scan
    fn(qs, qc, b, sqn, rws, b.shape[1], kind, k, out_s, out_r)
    return out_s, out_r


def dense_rerank(
    queries: np.ndarray,
    base: np.ndarray,
    candidates: np.ndarray,
    k: int,
    metric: str,
    *,
    sqnorms: np.ndarray | None = None,
    parallel: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``lvq_rerank`` for float32 rows ``base`` ``[N, d]``."""
    k = _check_k(k)
    kind = _kind(metric, sqnorms)
    q, b, sqn = _dense_arrays(queries, base, sqnorms)
    cand = _check_rows(candidates, b.shape[0], "candidates", allow_padding=True)
    if cand.ndim != 2 or cand.shape[0] != q.shape[0]:
        raise ValueError(f"candidates must be int64 [{q.shape[0]}, c], got shape {cand.shape}")
    qs, _, qc = _prepare(q, np.zeros(b.shape[1], np.float32), kind)
    m = q.shape[0]
    out_s = np.full((m, k), -np.inf, np.float32)
    out_r = np.full((m, k), -1, np.int64)
    fn = _dense_rerank_par if _parallel(parallel, m, cand.shape[1] * b.shape[1]) else _dense_rerank
    fn(qs, qc, b, sqn, cand, b.shape[1], kind, k, out_s, out_r)
    return out_s, out_r
