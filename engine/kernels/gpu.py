"""CUDA kernels (numba-cuda): batched top-k search over large row lists, and the k-means assignment step.

Optional and never required. ``numba.cuda`` is imported behind a guard; without it, or without a device, the
public functions raise ``GpuUnavailable`` with the reason (``available()`` / ``unavailable_reason()`` say so
up front). With ``NUMBA_ENABLE_CUDASIM=1`` the same kernels run in numba's CUDA simulator on the CPU, which is
how ``tests/test_gpu_kernels.py`` checks their logic without a GPU (slowly: keep inputs tiny there).

Search, per chunk of queries (``engine.kernels.search`` semantics: surrogate scores, best first, ties to the
smaller row, padded with (-inf, -1)):

1. **product** ``S = Q X^T`` for the chunk against the selected rows (``l2`` ranks by ``2 q.x - |x|^2``). Its
   ``precision``:

   - ``"fp16"`` (the default when CuPy is there): a float16 copy of the base (``DeviceData.half``, scaled by a
     power of two) times the float16 queries on the tensor cores, float32 accumulation (``cublasGemmEx``);
   - ``"tf32"``: the float32 base on the tensor cores in TF32 (``CUBLAS_COMPUTE_32F_FAST_TF32``);
   - ``"fp32"``: float32 on the CUDA cores: cuBLAS through ``cupy.matmul`` with CuPy, else our shared-memory
     tiled kernel (64 x 64 outputs per block, 4 x 4 per thread).

2. **selection** of the top ``k'`` of each row of ``S`` (``select``):

   - ``"filter"`` (default): a threshold ``tau`` that at least ``k'`` scores reach (the ``k'``-th largest of
     ``G >= max(4 k', 256)`` group maxima over a sample of the row: ``k'`` groups each hold a score >= tau),
     then one coalesced pass that appends the scores >= tau to a per-query buffer (an atomic counter), then
     each entry's rank among the buffer's (``O(c^2)`` compares in shared memory, ``c`` ~ 1.2 k' x the
     sampling stride). A query whose buffer overflows (``CAP``) is selected again by rounds;
   - ``"rounds"`` (the previous one): each thread keeps a sorted top-k of ``SPAN`` scores, round after round.

3. **rescoring** (always after ``fp16``/``tf32``; ``rescore=True`` after ``fp32``): the ``k' = max(2k, k + 32)``
   candidates (capped by ``KMAX`` and by the number of rows) are scored again from the float32 rows in float64
   (``RW`` lanes per candidate, summed in shared memory) and the top ``k`` of them kept. The result is
   *certified* exact for a query when all rows were candidates, or when

       t_k > a_k' + eps_q        (l2: t_k > a_k' + eps_q - |q|^2)

   where ``t_k`` is the k-th best exact score, ``a_k'`` the ``k'``-th best first-stage score, and
   ``eps_q >= |first-stage score - exact score|`` for every row: ``c |q| max|x|`` with ``c`` from the operand
   rounding (fp16: ``2^-11`` each, TF32: ``2^-10``, fp32: 0) and the float32 accumulation (``d 2^-22``),
   doubled (``_coef``, ``_bounds``). Then no row outside the candidates can beat the k-th. A candidate whose two
   scores differ by more than ``eps_q`` withdraws the certificate too (a first stage outside its error model,
   seen on the rows it returned). Uncertified queries (ties at the boundary, duplicated rows) are searched again
   by the ``fp32`` path, so the result is the exact top-k either way; ``last_stats`` counts them.

LVQ codes are decoded to float32 on the device first (``_decode``), then searched like float32 rows.

Defaults come from the settings ``engine.gpu_precision`` (``GROVE_GPU_PRECISION``: ``fp16|tf32|fp32``; auto:
``fp16`` with CuPy, else ``fp32``), ``engine.gpu_select`` (``filter|rounds``) and ``engine.gpu_rescore`` (for
``fp32``), unless the module's ``PRECISION``/``SELECT``/``RESCORE`` are set (benchmarks); ``search`` takes
them as keywords too. The previous path is ``precision="fp32", select="rounds", rescore=False``.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from engine import config

try:  # guarded: numba-cuda (or numba's bundled cuda target) is optional
    from numba import cuda
    from numba import float32 as _f32
    from numba import float64 as _f64
    from numba import int64 as _i64

    _IMPORT_ERROR: str | None = None
except Exception as exc:  # noqa: BLE001 - any import failure means "no GPU kernels"
    cuda = None  # type: ignore[assignment]  # an optional module: _require() refuses every use without it
    _IMPORT_ERROR = f"numba.cuda could not be imported ({exc}); install the 'gpu' extra (numba-cuda)"

#: largest k the GPU selection keeps per query
KMAX = 128
#: rounds selection: scores each thread reads per round, and threads per block
SPAN = 256
TPB = 128
#: filter selection: most threads of the threshold kernel (group maxima), the largest sampling stride, threads
#: per block and scores per thread of the filter pass, the per-query candidate buffer, threads of the rank kernel
GROUPS = 512
SAMPLE_MAX = 16
FILTER_TPB = 256
FILTER_ITEMS = 32
CAP = 2048
RANK_TPB = 128
#: rescoring: lanes summing one candidate (a power of two), candidates per block; threads of the finishing kernel
RW, RC = 32, 8
FINISH_TPB = 128
#: compile-time sizes of the shared arrays the tunables above must stay within
_G_MAX, _CAP_MAX, _RW_MAX, _RC_MAX = 512, 2048, 32, 8
#: the score tile: TS x TS outputs per block of (TS/R) x (TS/R) threads, each R x R; TK = depth per step
TS, R, TK = 64, 4, 16
_NT = TS // R  # threads per block side
#: device bytes a query chunk may hold (scores and the selection's buffers)
CHUNK_BYTES = 2 << 30
#: a rescored search needs k' >= k + this, else the fp32 product runs alone
_MIN_SLACK = 8

PRECISIONS = ("fp16", "tf32", "fp32")
SELECTS = ("filter", "rounds")
#: overrides of ``search``'s defaults (None: the settings' ``engine.gpu_*``)
PRECISION: str | None = None
SELECT: str | None = None
RESCORE: bool | None = None

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
_probe: tuple[bool, str | None] | None = None

#: what the last ``search`` did (informational; not synchronised between threads)
last_stats: dict[str, Any] = {}


class GpuUnavailable(ImportError):
    """Raised by the GPU functions when no CUDA device (or no numba.cuda) is there; the message says why."""


def _check() -> tuple[bool, str | None]:
    global _probe
    if _probe is None:
        if cuda is None:
            _probe = (False, _IMPORT_ERROR)
        else:
            try:
                ok = bool(cuda.is_available())
                _probe = (ok, None if ok else "no CUDA device or driver found (numba.cuda.is_available() is False)")
            except Exception as exc:  # noqa: BLE001 - a broken driver is "unavailable", with its message
                _probe = (False, f"CUDA probe failed: {exc}")
    return _probe


def available() -> bool:
    """Whether the GPU kernels can run here (a device, or the simulator)."""
    return _check()[0]


def has_device() -> bool:
    """Whether a real CUDA device is there (not the simulator): the condition for routing work here."""
    return available() and not SIMULATOR


def unavailable_reason() -> str | None:
    return _check()[1]


def _require() -> None:
    ok, why = _check()
    if not ok:
        raise GpuUnavailable(f"GPU kernels unavailable: {why}")


def _cupy():
    if SIMULATOR:
        return None
    try:
        import cupy

        return cupy
    except Exception:  # noqa: BLE001 - CuPy is an optional accelerator for the product only
        return None


def default_precision() -> str:
    """The first-stage precision ``search`` uses when not told: ``PRECISION``, else fp16 with CuPy, else fp32."""
    precision = PRECISION or config.engine_setting("gpu_precision")
    if precision is not None:
        return precision
    return "fp16" if _cupy() is not None else "fp32"


def default_select() -> str:
    return SELECT or config.engine_setting("gpu_select")


def default_rescore() -> bool:
    return bool(config.engine_setting("gpu_rescore") if RESCORE is None else RESCORE)


def describe() -> dict[str, Any]:
    """The device, for benchmarks: name, compute capability, memory, simulator, which product and selection run."""
    _require()
    modes = {"precision": default_precision(), "select": default_select(), "rescore": default_rescore()}
    if SIMULATOR:
        return {"device": "CUDA simulator (NUMBA_ENABLE_CUDASIM=1)", "simulator": True, "gemm": "numba", **modes}
    dev = cuda.get_current_device()
    ctx = cuda.current_context()
    free, total = ctx.get_memory_info()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    return {
        "device": name,
        "compute_capability": ".".join(map(str, dev.compute_capability)),
        "memory_gib": round(total / 2**30, 1),
        "simulator": False,
        "gemm": "cublas (cupy)" if _cupy() is not None else "numba",
        **modes,
    }


# ---------------------------------------------------------------------------------------------- kernels
if cuda is not None:

    @cuda.jit
    def _scores_kernel(Q, X, rowmap, use_map, start, n, l2, xnorm, out):
        """out[i, j] = <Q[i], X[row j]> (l2: 2<q,x> - xnorm[row j]) for the n selected rows; row j is rowmap[j] or
        start + j. Block: (_NT, _NT) threads, TS x TS outputs; thread (tx, ty) owns rows ty + _NT*u, cols
        tx + _NT*v (strided, so shared-memory reads do not conflict)."""
        sq = cuda.shared.array((TK, TS), _f32)
        sx = cuda.shared.array((TK, TS), _f32)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * _NT + tx
        i0 = cuda.blockIdx.y * TS
        j0 = cuda.blockIdx.x * TS
        m = Q.shape[0]
        d = Q.shape[1]
        acc = cuda.local.array((R, R), _f32)
        for u in range(R):
            for v in range(R):
                acc[u, v] = 0.0
        a = cuda.local.array(R, _f32)
        b = cuda.local.array(R, _f32)
        for k0 in range(0, d, TK):
            for e in range((TS * TK) // (_NT * _NT)):
                idx = tid + e * _NT * _NT
                row = idx // TK
                kk = idx % TK
                gk = k0 + kk
                gi = i0 + row
                sq[kk, row] = Q[gi, gk] if (gi < m and gk < d) else 0.0
                gj = j0 + row
                if gj < n and gk < d:
                    r = rowmap[gj] if use_map else start + gj
                    sx[kk, row] = X[r, gk]
                else:
                    sx[kk, row] = 0.0
            cuda.syncthreads()
            for kk in range(TK):
                for u in range(R):
                    a[u] = sq[kk, ty + _NT * u]
                for v in range(R):
                    b[v] = sx[kk, tx + _NT * v]
                for u in range(R):
                    for v in range(R):
                        acc[u, v] += a[u] * b[v]
            cuda.syncthreads()
        for u in range(R):
            gi = i0 + ty + _NT * u
            if gi < m:
                for v in range(R):
                    gj = j0 + tx + _NT * v
                    if gj < n:
                        if l2:
                            r = rowmap[gj] if use_map else start + gj
                            out[gi, gj] = 2.0 * acc[u, v] - xnorm[r]
                        else:
                            out[gi, gj] = acc[u, v]

    @cuda.jit(device=True)
    def _better(s1, r1, s2, r2):
        return s1 > s2 or (s1 == s2 and r1 < r2)

    @cuda.jit(device=True)
    def _insert(ls, lr, size, k, s, r):
        """Insert (s, r) into the sorted top-k ``ls``/``lr`` holding ``size`` entries; returns the new size."""
        if size == k and not _better(s, r, ls[k - 1], lr[k - 1]):
            return size
        p = size if size < k else k - 1
        while p > 0 and _better(s, r, ls[p - 1], lr[p - 1]):
            ls[p] = ls[p - 1]
            lr[p] = lr[p - 1]
            p -= 1
        ls[p] = s
        lr[p] = r
        return size + 1 if size < k else size

    @cuda.jit
    def _select_kernel(S, cols, use_cols, rowmap, use_map, start, qmap, use_q, width, span, k, out_s, out_r):
        """One output slot per thread: the sorted top-k of ``span`` entries of a query's row of S, read with a
        stride of the block size (coalesced). The query is blockIdx.x, whose row of S is qmap[blockIdx.x] when
        use_q (a subset of the queries). An entry's row is cols[i, j] (use_cols: candidate lists), else rowmap[j]
        or start + j. Entries with row < 0 (padding) are skipped; unused places get (-inf, -1)."""
        i = cuda.blockIdx.x
        iq = qmap[i] if use_q else i
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        slot = cuda.blockIdx.y * nt + t
        base = cuda.blockIdx.y * nt * span + t
        ls = cuda.local.array(KMAX, _f32)
        lr = cuda.local.array(KMAX, _i64)
        size = 0
        for e in range(span):
            j = base + e * nt
            if j >= width:
                break
            s = S[iq, j]
            if use_cols:
                r = cols[iq, j]
            elif use_map:
                r = rowmap[j]
            else:
                r = start + j
            if r < 0:
                continue
            size = _insert(ls, lr, size, k, s, r)
        if slot * k < out_s.shape[1]:
            for u in range(k):
                if u < size:
                    out_s[i, slot * k + u] = ls[u]
                    out_r[i, slot * k + u] = lr[u]
                else:
                    out_s[i, slot * k + u] = -math.inf
                    out_r[i, slot * k + u] = -1

    @cuda.jit
    def _tau_kernel(S, width, kk, every, tau):
        """tau[i] = the kk-th largest of the G = blockDim.x group maxima of a sample of query i's row: group g reads
        columns g + G * every * v (a block of G contiguous columns in every ``every``; coalesced). kk distinct
        groups each hold a score >= tau[i], so at least kk scores of the row reach it (-inf when fewer than kk
        groups saw a score). Needs G >= kk."""
        sh = cuda.shared.array(_G_MAX, _f32)
        i = cuda.blockIdx.x
        g = cuda.threadIdx.x
        ng = cuda.blockDim.x
        best = -math.inf
        j = g
        step = ng * every
        while j < width:
            s = S[i, j]
            if s > best:
                best = s
            j += step
        sh[g] = best
        cuda.syncthreads()
        rank = 0
        for h in range(ng):
            o = sh[h]
            if o > best or (o == best and h < g):
                rank += 1
                if rank >= kk:
                    break
        if rank == kk - 1:
            tau[i] = best

    @cuda.jit
    def _filter_kernel(S, rowmap, use_map, start, width, tau, cap, buf_s, buf_r, cnt):
        """Append every (score, row) of query blockIdx.x's row of S with score >= tau[i] to its buffer (the first
        ``cap``); cnt[i] counts them all, so cnt[i] > cap says the buffer overflowed. Grid-stride, coalesced."""
        i = cuda.blockIdx.x
        j = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        stride = cuda.gridDim.y * cuda.blockDim.x
        th = tau[i]
        while j < width:
            s = S[i, j]
            if s >= th:
                p = cuda.atomic.add(cnt, i, 1)
                if p < cap:
                    buf_s[i, p] = s
                    buf_r[i, p] = rowmap[j] if use_map else start + j
            j += stride

    @cuda.jit
    def _rank_kernel(buf_s, buf_r, cnt, cap, kk, out_s, out_r):
        """out[i, rank] = buffer entry of that rank for rank < kk (best first, ties to the smaller row, then to the
        earlier entry: a total order, so every rank is taken once); the rest (-inf, -1). One block per query; an
        overflowed buffer (cnt > cap) leaves padding (the caller selects that query again)."""
        sh_s = cuda.shared.array(_CAP_MAX, _f32)
        sh_r = cuda.shared.array(_CAP_MAX, _i64)
        i = cuda.blockIdx.x
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        c = cnt[i]
        if c > cap:
            c = 0
        for u in range(t, kk, nt):
            out_s[i, u] = -math.inf
            out_r[i, u] = -1
        for e in range(t, c, nt):
            sh_s[e] = buf_s[i, e]
            sh_r[e] = buf_r[i, e]
        cuda.syncthreads()
        for e in range(t, c, nt):
            s = sh_s[e]
            r = sh_r[e]
            rank = 0
            for f in range(c):
                o = sh_s[f]
                if o > s or (o == s and (sh_r[f] < r or (sh_r[f] == r and f < e))):
                    rank += 1
                    if rank >= kk:
                        break
            if rank < kk:
                out_s[i, rank] = s
                out_r[i, rank] = r

    @cuda.jit
    def _scatter_kernel(src_s, src_r, qidx, dst_s, dst_r):
        """dst[qidx[a]] = src[a] (the results of a subset of the queries put back in place)."""
        a, u = cuda.grid(2)
        if a < qidx.shape[0] and u < src_s.shape[1]:
            dst_s[qidx[a], u] = src_s[a, u]
            dst_r[qidx[a], u] = src_r[a, u]

    @cuda.jit
    def _rescore_kernel(Q, X, cand, l2, out):
        """out[i, c] = the float64 score of Q[i] against row cand[i, c] of the float32 rows X (ip: q.x, l2:
        -|q - x|^2), -inf for padding. Block (lanes, candidates): threadIdx.y picks the candidate, threadIdx.x
        strides over the dimension (coalesced row reads), a shared-memory tree sums the lanes' partial sums."""
        sh = cuda.shared.array((_RC_MAX, _RW_MAX), _f64)
        i = cuda.blockIdx.x
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        nw = cuda.blockDim.x
        c = cuda.blockIdx.y * cuda.blockDim.y + ty
        kp = cand.shape[1]
        d = Q.shape[1]
        r = -1
        if c < kp:
            r = cand[i, c]
        acc = 0.0
        if r >= 0:
            for j in range(tx, d, nw):
                qv = float(Q[i, j])
                xv = float(X[r, j])
                if l2:
                    diff = xv - qv
                    acc += diff * diff
                else:
                    acc += qv * xv
        sh[ty, tx] = acc
        cuda.syncthreads()
        step = nw // 2
        while step > 0:
            if tx < step:
                sh[ty, tx] += sh[ty, tx + step]
            cuda.syncthreads()
            step //= 2
        if tx == 0 and c < kp:
            if r < 0:
                out[i, c] = -math.inf
            elif l2:
                out[i, c] = -sh[ty, 0]
            else:
                out[i, c] = sh[ty, 0]

    @cuda.jit
    def _finish_kernel(ex, cand_s, cand_r, k, n, eps, shift, out_s, out_r, ok):
        """Per query (one thread): the top-k of the rescored candidates (float64 exact scores ``ex``, ties to the
        smaller row) as float32, and ok[i] = 1 when that top-k is certified exact: every candidate's first-stage
        score is within eps[i] of its exact one (+ shift[i] = |q|^2 for l2), and, when rows outside the k'
        candidates exist, the k-th exact score beats the k'-th first-stage score + eps[i] - shift[i]."""
        i = cuda.grid(1)
        if i >= ex.shape[0]:
            return
        kp = ex.shape[1]
        ls = cuda.local.array(KMAX, _f64)
        lr = cuda.local.array(KMAX, _i64)
        size = 0
        good = 1
        e_i = eps[i]
        sh = shift[i]
        for c in range(kp):
            r = cand_r[i, c]
            if r < 0:
                continue
            s = ex[i, c]
            if abs(float(cand_s[i, c]) - (s + sh)) > e_i:
                good = 0
            size = _insert(ls, lr, size, k, s, r)
        if n > kp and cand_r[i, kp - 1] >= 0:
            if size < k or not (ls[k - 1] > float(cand_s[i, kp - 1]) + e_i - sh):
                good = 0
        for u in range(k):
            if u < size:
                out_s[i, u] = ls[u]
                out_r[i, u] = lr[u]
            else:
                out_s[i, u] = -math.inf
                out_r[i, u] = -1
        ok[i] = good

    @cuda.jit
    def _shift_kernel(out_s, out_r, shift):
        """Add shift[i] to query i's real survivors (the -|q|^2 of l2)."""
        i, u = cuda.grid(2)
        if i < out_s.shape[0] and u < out_s.shape[1] and out_r[i, u] >= 0:
            out_s[i, u] += shift[i]

    @cuda.jit
    def _l2_bias_kernel(S, xnorm):
        """S[i, j] = 2 S[i, j] - xnorm[j] (after a cuBLAS product)."""
        i, j = cuda.grid(2)
        if i < S.shape[0] and j < S.shape[1]:
            S[i, j] = 2.0 * S[i, j] - xnorm[j]

    @cuda.jit
    def _norms_kernel(X, out):
        """out[r] = |X[r]|^2."""
        r = cuda.grid(1)
        if r < X.shape[0]:
            s = 0.0
            for j in range(X.shape[1]):
                s += X[r, j] * X[r, j]
            out[r] = s

    @cuda.jit
    def _decode_kernel(codes, scale, bias, mean, bits, residual, two, out):
        """float32 out[r] = LVQ-decoded row r (layout of engine.quant.lvq)."""
        r, j = cuda.grid(2)
        d = out.shape[1]
        if r < out.shape[0] and j < d:
            h = (d + 1) // 2
            st = scale[r]
            lo = bias[r] - 0.5 * st if two else bias[r]
            if bits == 8:
                c = codes[r, j]
            elif j < h:
                c = codes[r, j] & 15
            else:
                c = codes[r, j - h] >> 4
            v = mean[j] + lo + st * c
            if two:
                v += st / 255.0 * residual[r, j]
            out[r, j] = v


# ---------------------------------------------------------------------------------------------- device data
def _pow2_scale(amax: float, target_exp: int = 12) -> float:
    """A power of two s with amax * s < 2^target_exp (1 for 0 or a non-finite amax): float16 then keeps every
    component of the scaled vectors far from overflow (65504) and most of them normal."""
    if not (amax > 0.0 and math.isfinite(amax)):
        return 1.0
    return math.ldexp(1.0, target_exp - math.frexp(amax)[1])


class DeviceData:
    """Rows kept on the device between calls (float32; LVQ codes are decoded there once).

    Build it with ``to_device(data)`` and pass it to ``search``/``scores``/``kmeans_assign`` in place of the
    host array, so a large tenant is copied once rather than per call. The float16 copy the ``fp16`` product
    reads (``half``) and the largest row norm (``xmax``) are made on first use and kept.
    """

    def __init__(self, x_dev, n: int, dim: int) -> None:
        self.x = x_dev
        self.shape = (n, dim)
        self._norms = None
        self._xmax: float | None = None
        self._half = None

    def norms(self):
        """|x|^2 per row, on the device (computed on first use)."""
        if self._norms is None:
            self._norms = cuda.device_array(self.shape[0], np.float32)
            if self.shape[0]:
                _norms_kernel[(self.shape[0] + 127) // 128, 128](self.x, self._norms)
        return self._norms

    def xmax(self) -> float:
        """An upper bound of the largest row norm (float64, on the host; the error bounds of the products)."""
        if self._xmax is None:
            sq = float(self.norms().copy_to_host().max()) if self.shape[0] else 0.0
            # the float32 norms are within d 2^-24 (relative) of the true ones; keep a margin over that
            self._xmax = math.sqrt(max(sq, 0.0) * (1.0 + (self.shape[1] + 2) * 2.0**-23)) + 1e-30
        return self._xmax

    def half(self, cp):
        """(float16 CuPy array of ``x * scale``, scale): the base the ``fp16`` product reads (CuPy only)."""
        if self._half is None:
            x = cp.asarray(self.x)
            amax = max(float(x.max()), -float(x.min())) if self.shape[0] else 0.0
            scale = _pow2_scale(amax)
            self._half = ((x * np.float32(scale)).astype(cp.float16), scale)
        return self._half

    def __len__(self) -> int:
        return self.shape[0]


def to_device(data: Any) -> DeviceData:
    """Copy float32 rows (or ``engine.kernels.LVQData``, decoded on the device) to the GPU."""
    _require()
    if isinstance(data, DeviceData):
        return data
    if isinstance(data, np.ndarray):
        x = np.ascontiguousarray(data, dtype=np.float32)
        return DeviceData(cuda.to_device(x), x.shape[0], x.shape[1])
    n, d = len(data), data.dim
    out = cuda.device_array((n, d), np.float32)
    two = data.residual is not None
    res = data.residual if two else np.zeros((1, 1), np.uint8)
    grid = ((n + 15) // 16, (d + 15) // 16)
    _decode_kernel[grid, (16, 16)](
        cuda.to_device(data.codes),
        cuda.to_device(data.scale),
        cuda.to_device(data.bias),
        cuda.to_device(data.mean),
        data.bits,
        cuda.to_device(res),
        two,
        out,
    )
    return DeviceData(out, n, d)


# ---------------------------------------------------------------------------------------------- products
_DUMMY_ROWS = np.full(1, -1, np.int64)
_DUMMY_COLS = np.full((1, 1), -1, np.int64)
_DUMMY_Q = np.zeros(1, np.int64)

# cuBLAS / CUDA enum values (cublas_api.h, library_types.h), as CuPy's cupy_backends.cuda.libs.cublas uses them
_CUBLAS_OP_N, _CUBLAS_OP_T = 0, 1
_CUDA_R_32F, _CUDA_R_16F = 0, 2
_CUBLAS_COMPUTE_32F, _CUBLAS_COMPUTE_32F_FAST_TF32 = 68, 77
_CUBLAS_GEMM_DEFAULT = -1


def _cublas_gemm(cp, xs, qs, out, alpha: float, dtype: int, compute: int) -> None:
    """out (m x n float32, C order) = alpha * qs (m x d) @ xs (n x d)^T by ``cublasGemmEx``; xs, qs C-order CuPy
    arrays of ``dtype``. Column-major view: out^T (n x m, ldc n) = op(xs) (n x d: the d x n col-major matrix,
    transposed, lda d) @ qs^T (d x m col-major, ldb d). Runs on CuPy's current stream, like its matmul."""
    n, d = xs.shape
    m = qs.shape[0]
    a = np.array(alpha, np.float32)
    b = np.array(0.0, np.float32)
    cp.cuda.cublas.gemmEx(
        cp.cuda.device.get_cublas_handle(),
        _CUBLAS_OP_T,
        _CUBLAS_OP_N,
        n,
        m,
        d,
        a.ctypes.data,
        xs.data.ptr,
        dtype,
        d,
        qs.data.ptr,
        dtype,
        d,
        b.ctypes.data,
        out.data.ptr,
        _CUDA_R_32F,
        n,
        compute,
        _CUBLAS_GEMM_DEFAULT,
    )


def _cupy_tf32_env() -> bool:
    """Whether CuPy would run float32 matmul in TF32 (``CUPY_TF32``, read by CuPy at its first float32 GEMM)."""
    try:
        return int(os.environ.get("CUPY_TF32", "0")) > 0
    except ValueError:
        return False


def _rows_of(cp, arr, rows_dev, use_map, start, n):
    return arr[cp.asarray(rows_dev)] if use_map else arr[start : start + n]


def _l2_bias(cp, dd, rows_dev, use_map, start, n, out) -> None:
    xn = _rows_of(cp, cp.asarray(dd.norms()), rows_dev, use_map, start, n)
    grid = ((out.shape[0] + 15) // 16, (n + 15) // 16)
    _l2_bias_kernel[grid, (16, 16)](out, cuda.as_cuda_array(cp.ascontiguousarray(xn)))


def _product_fp32(q, q_dev, dd: DeviceData, rows_dev, use_map, start, n, l2, out) -> None:
    """The float32 product on the CUDA cores: cuBLAS SGEMM with CuPy (explicitly not TF32), else the tiled kernel."""
    cp = _cupy()
    if cp is not None:
        xs = cp.ascontiguousarray(_rows_of(cp, cp.asarray(dd.x), rows_dev, use_map, start, n))
        s = cp.asarray(out)
        if _cupy_tf32_env():  # CuPy's matmul would use TF32: ask cuBLAS for float32 by name
            _cublas_gemm(cp, xs, cp.asarray(q_dev), s, 1.0, _CUDA_R_32F, _CUBLAS_COMPUTE_32F)
        else:
            cp.matmul(cp.asarray(q_dev), xs.T, out=s)
        if l2:
            _l2_bias(cp, dd, rows_dev, use_map, start, n, out)
        return
    xn = dd.norms() if l2 else cuda.to_device(np.zeros(1, np.float32))
    grid = ((n + TS - 1) // TS, (q_dev.shape[0] + TS - 1) // TS)
    _scores_kernel[grid, (_NT, _NT)](q_dev, dd.x, rows_dev, use_map, start, n, l2, xn, out)


def _tensor_cupy(precision: str):
    cp = _cupy()
    if cp is None:
        raise GpuUnavailable(
            f"precision={precision!r} runs on the tensor cores through CuPy, which is not importable here "
            "(pip install cupy-cuda12x); use precision='fp32'"
        )
    return cp


def _product_tf32(q, q_dev, dd: DeviceData, rows_dev, use_map, start, n, l2, out) -> None:
    """The float32 base on the tensor cores in TF32 (cuBLAS ``CUBLAS_COMPUTE_32F_FAST_TF32``)."""
    cp = _tensor_cupy("tf32")
    xs = cp.ascontiguousarray(_rows_of(cp, cp.asarray(dd.x), rows_dev, use_map, start, n))
    _cublas_gemm(cp, xs, cp.asarray(q_dev), cp.asarray(out), 1.0, _CUDA_R_32F, _CUBLAS_COMPUTE_32F_FAST_TF32)
    if l2:
        _l2_bias(cp, dd, rows_dev, use_map, start, n, out)


def _product_fp16(q, q_dev, dd: DeviceData, rows_dev, use_map, start, n, l2, out) -> None:
    """float16 base x float16 queries (each scaled by a power of two) on the tensor cores, float32 accumulation and
    output; alpha undoes the scales exactly."""
    cp = _tensor_cupy("fp16")
    x16, sx = dd.half(cp)
    xs = cp.ascontiguousarray(_rows_of(cp, x16, rows_dev, use_map, start, n))
    sq = _pow2_scale(float(np.abs(q).max()) if q.size else 0.0)
    q16 = cp.asarray(np.ascontiguousarray((q * np.float32(sq)).astype(np.float16)))
    _cublas_gemm(cp, xs, q16, cp.asarray(out), 1.0 / (sx * sq), _CUDA_R_16F, _CUBLAS_COMPUTE_32F)
    if l2:
        _l2_bias(cp, dd, rows_dev, use_map, start, n, out)


#: the first-stage product of each precision: (q host, q device, DeviceData, rows, use_map, start, n, l2, out)
_PRODUCTS = {"fp32": _product_fp32, "tf32": _product_tf32, "fp16": _product_fp16}


def _gemm(q_dev, dd: DeviceData, rows_dev, use_map, start, n, l2, out) -> None:
    """The float32 product (``scores`` and the exact path)."""
    _product_fp32(None, q_dev, dd, rows_dev, use_map, start, n, l2, out)


def _coef(precision: str, d: int) -> float:
    """c with |first-stage score - exact score| <= c |q| |x|: operand rounding (fp16 2^-11 each, plus its
    subnormals; TF32 2^-10, truncation-safe) and float32 accumulation (d 2^-22: tensor cores may truncate), x 2."""
    acc = d * 2.0**-22
    if precision == "fp16":
        inp = 2 * 2.0**-11 + 2.0**-30 * math.sqrt(d)
    elif precision == "tf32":
        inp = 2 * 2.0**-10
    else:
        inp = 0.0
    return 2.0 * (inp + acc)


def _bounds(q: np.ndarray, xmax: float, precision: str, l2: bool) -> tuple[np.ndarray, np.ndarray]:
    """(eps, shift) per query, float64: eps bounds |first-stage score - exact score| over every row (for l2 the
    first stage is 2 q.x - |x|^2 with a float32 |x|^2, the exact score -|q - x|^2 = that - shift, shift |q|^2)."""
    q64 = q.astype(np.float64)
    qq = np.einsum("ij,ij->i", q64, q64)
    qx = np.sqrt(qq) * xmax
    c = _coef(precision, q.shape[1])
    if l2:
        eps = 2 * c * qx + (q.shape[1] + 8) * 2.0**-22 * xmax * xmax + 2.0**-21 * 2 * qx
        return eps, qq
    return c * qx + 2.0**-21 * qx, np.zeros_like(qq)


# ---------------------------------------------------------------------------------------------- selection
def _select(S, rows_dev, use_map, start, n, k, qmap=None):
    """Rounds of ``_select_kernel`` until one list of k per query is left; returns device (scores, rows).

    ``qmap`` (device int64): select for those rows of S only (in that order)."""
    use_q = qmap is not None
    m = qmap.shape[0] if use_q else S.shape[0]
    if not use_q:
        qmap = cuda.to_device(_DUMMY_Q)
    cols = cuda.to_device(_DUMMY_COLS)
    use_cols = False
    width = n
    # Each round maps width W to ceil(W / (TPB span)) TPB k <= W k / span + TPB k, which is < W once
    # W > 2 TPB k and span >= 2k: the loop ends, and the last round (one thread per query) reads <= final.
    span = max(SPAN, 2 * k)
    final = max(4 * span, 2 * TPB * k)
    while True:
        if width <= final:
            out_s = cuda.device_array((m, k), np.float32)
            out_r = cuda.device_array((m, k), np.int64)
            _select_kernel[(m, 1), 1](
                S, cols, use_cols, rows_dev, use_map, start, qmap, use_q, width, width, k, out_s, out_r
            )
            return out_s, out_r
        blocks = (width + TPB * span - 1) // (TPB * span)
        out_s = cuda.device_array((m, blocks * TPB * k), np.float32)
        out_r = cuda.device_array((m, blocks * TPB * k), np.int64)
        _select_kernel[(m, blocks), TPB](
            S, cols, use_cols, rows_dev, use_map, start, qmap, use_q, width, span, k, out_s, out_r
        )
        S, cols, use_cols, use_map, use_q, width = out_s, out_r, True, False, False, blocks * TPB * k


def _groups(kk: int) -> int:
    """Threads (= groups) of the threshold kernel: >= kk (needed), >= 4 kk (then ~kk x the sampling stride scores
    reach the threshold), >= 256 (threads enough to stream the sample), a multiple of a warp, <= GROUPS."""
    return max(kk, min(GROUPS, _G_MAX, max(256, -(-4 * kk // 32) * 32)))


def _select_filter(S, rows_dev, use_map, start, n, kk, stats=None):
    """Threshold, filter, rank (module docstring, step 2): device (scores, rows) ``[m, kk]``, the exact top-kk of
    each row of S by (score, smaller row); queries whose buffer overflows go through ``_select``."""
    m = S.shape[0]
    cap = min(CAP, _CAP_MAX)
    g = _groups(kk)
    every = max(1, min(SAMPLE_MAX, cap // (5 * kk)))
    tau = cuda.device_array(m, np.float32)
    _tau_kernel[m, g](S, n, kk, every, tau)
    buf_s = cuda.device_array((m, cap), np.float32)
    buf_r = cuda.device_array((m, cap), np.int64)
    cnt = cuda.to_device(np.zeros(m, np.int32))
    fb = max(1, min(65535, -(-n // (FILTER_TPB * FILTER_ITEMS))))
    _filter_kernel[(m, fb), FILTER_TPB](S, rows_dev, use_map, start, n, tau, cap, buf_s, buf_r, cnt)
    out_s = cuda.device_array((m, kk), np.float32)
    out_r = cuda.device_array((m, kk), np.int64)
    _rank_kernel[m, RANK_TPB](buf_s, buf_r, cnt, cap, kk, out_s, out_r)
    over = np.flatnonzero(cnt.copy_to_host() > cap).astype(np.int64)
    if stats is not None:
        stats["overflow"] = stats.get("overflow", 0) + int(over.size)
    if over.size:
        qidx = cuda.to_device(over)
        sub_s, sub_r = _select(S, rows_dev, use_map, start, n, kk, qidx)
        grid = ((over.size + 15) // 16, (kk + 15) // 16)
        _scatter_kernel[grid, (16, 16)](sub_s, sub_r, qidx, out_s, out_r)
    return out_s, out_r


def _selector(select: str):
    if select == "rounds":
        return lambda S, rows_dev, use_map, start, n, k, stats=None: _select(S, rows_dev, use_map, start, n, k)
    return _select_filter


# ---------------------------------------------------------------------------------------------- drivers
def _kprime(k: int) -> int:
    """How many first-stage candidates a rescored search keeps: max(2k, k + 32), at most KMAX."""
    return min(KMAX, max(2 * k, k + 32))


def _query_bytes(n: int, select: str) -> int:
    """Device bytes a query of a chunk holds: its scores, plus the filter's candidate buffer, which dominates when
    there are few rows (k-means). (The rounds' first lists, ~12 n k / SPAN bytes, are left out as before.)"""
    return 4 * n + (12 * min(CAP, _CAP_MAX, n) + 64 * KMAX if select == "filter" else 0)


def _one_stage(q, q_dev, dd, rows_dev, use_map, start, n, k, l2, select, S, stats):
    """The float32 product and its top-k (scores from the product): host (scores, rows)."""
    _gemm(q_dev, dd, rows_dev, use_map, start, n, l2, S)
    s_dev, r_dev = _selector(select)(S, rows_dev, use_map, start, n, k, stats)
    if l2:
        shift = cuda.to_device(-np.einsum("ij,ij->i", q, q).astype(np.float32))
        grid = ((q.shape[0] + 15) // 16, (k + 15) // 16)
        _shift_kernel[grid, (16, 16)](s_dev, r_dev, shift)
    return s_dev.copy_to_host(), r_dev.copy_to_host()


def _two_stage(q, q_dev, dd, rows_dev, use_map, start, n, k, kp, l2, precision, select, S, stats):
    """First-stage product at ``precision``, its top-k', exact rescoring, certificate; the uncertified queries
    again through ``_one_stage``. Host (scores, rows)."""
    m = q.shape[0]
    _PRODUCTS[precision](q, q_dev, dd, rows_dev, use_map, start, n, l2, S)
    cand_s, cand_r = _selector(select)(S, rows_dev, use_map, start, n, kp, stats)
    ex = cuda.device_array((m, kp), np.float64)
    rw, rc = min(RW, _RW_MAX), min(RC, _RC_MAX)
    _rescore_kernel[(m, (kp + rc - 1) // rc), (rw, rc)](q_dev, dd.x, cand_r, l2, ex)
    eps, shift = _bounds(q, dd.xmax(), precision, l2)
    out_s = cuda.device_array((m, k), np.float32)
    out_r = cuda.device_array((m, k), np.int64)
    ok = cuda.device_array(m, np.int32)
    _finish_kernel[(m + FINISH_TPB - 1) // FINISH_TPB, FINISH_TPB](
        ex, cand_s, cand_r, k, n, cuda.to_device(eps), cuda.to_device(shift), out_s, out_r, ok
    )
    s_host, r_host = out_s.copy_to_host(), out_r.copy_to_host()
    bad = np.flatnonzero(ok.copy_to_host() == 0)
    stats["uncertified"] += int(bad.size)
    if bad.size:
        qb = np.ascontiguousarray(q[bad])
        fs, fr = _one_stage(
            qb, cuda.to_device(qb), dd, rows_dev, use_map, start, n, k, l2, select, S[: bad.size], stats
        )
        s_host[bad], r_host[bad] = fs, fr
    return s_host, r_host


def _resolve(precision: str | None, select: str | None, rescore: bool | None) -> tuple[str, str, bool]:
    precision = default_precision() if precision is None else precision
    select = default_select() if select is None else select
    rescore = default_rescore() if rescore is None else bool(rescore)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if select not in SELECTS:
        raise ValueError(f"select must be one of {', '.join(SELECTS)}, got {select!r}")
    return precision, select, rescore or precision != "fp32"


def search(
    queries: np.ndarray,
    data: Any,
    rows: np.ndarray | None,
    start: int,
    stop: int,
    k: int,
    kind: str,
    threads: int = 1,
    *,
    precision: str | None = None,
    select: str | None = None,
    rescore: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of ``data[rows]`` (or rows ``start:stop``) per query on the GPU; see ``engine.kernels.search``.

    ``data`` may be a ``DeviceData`` (stays on the device) or host rows (copied for this call). ``precision``
    (``fp16|tf32|fp32``), ``select`` (``filter|rounds``) and ``rescore`` default to the module's ``PRECISION``,
    ``SELECT``, ``RESCORE`` (module docstring); every combination returns the exact top-k (``fp16``/``tf32``
    always rescore). ``last_stats`` says what ran and how many queries were searched again.
    """
    _require()
    if k > KMAX:
        raise ValueError(f"the GPU kernels keep at most k={KMAX}; got k={k}: use a CPU backend for larger k")
    precision, select, rescore = _resolve(precision, select, rescore)
    use_map = rows is not None
    n = rows.shape[0] if rows is not None else stop - start
    m = queries.shape[0]
    kp = _kprime(k)
    if n <= kp:  # every row is a candidate: the rescored top-k is exact whatever the first stage did
        kp, two = max(k, n), rescore
    else:
        two = rescore and kp >= k + _MIN_SLACK
    if precision != "fp32" and not two:
        precision = "fp32"  # k too close to KMAX to keep spare candidates: the exact product alone
    global last_stats
    stats = {"precision": precision, "select": select, "rescore": two, "queries": int(m)}
    stats.update(uncertified=0, overflow=0)
    dd = to_device(data)
    out_s = np.full((m, k), -np.inf, np.float32)
    out_r = np.full((m, k), -1, np.int64)
    if n <= 0 or m == 0:
        last_stats = stats
        return out_s, out_r
    rows_dev = cuda.to_device(rows if use_map else _DUMMY_ROWS)
    l2 = kind == "l2"
    chunk = max(1, min(m, CHUNK_BYTES // _query_bytes(n, select)))
    S = cuda.device_array((chunk, n), np.float32)
    for a in range(0, m, chunk):
        q = np.ascontiguousarray(queries[a : a + chunk], dtype=np.float32)
        q_dev = cuda.to_device(q)
        s_view = S[: q.shape[0]]
        if two:
            s, r = _two_stage(q, q_dev, dd, rows_dev, use_map, start, n, k, kp, l2, precision, select, s_view, stats)
        else:
            s, r = _one_stage(q, q_dev, dd, rows_dev, use_map, start, n, k, l2, select, s_view, stats)
        out_s[a : a + q.shape[0]] = s
        out_r[a : a + q.shape[0]] = r
    last_stats = stats
    return out_s, out_r


def scores(
    queries: np.ndarray, data: Any, rows: np.ndarray | None, start: int, stop: int, kind: str, threads: int = 1
) -> np.ndarray:
    """Surrogate scores ``[m, n]`` on the GPU (``l2``: minus the squared distance, via norms)."""
    _require()
    dd = to_device(data)
    use_map = rows is not None
    n = rows.shape[0] if rows is not None else stop - start
    rows_dev = cuda.to_device(rows if use_map else _DUMMY_ROWS)
    S = cuda.device_array((queries.shape[0], n), np.float32)
    _gemm(cuda.to_device(queries), dd, rows_dev, use_map, start, n, kind == "l2", S)
    out = S.copy_to_host()
    if kind == "l2":
        out -= np.einsum("ij,ij->i", queries, queries).astype(np.float32)[:, None]
    return out


def kmeans_assign(x: np.ndarray, centroids: Any, metric: str = "l2") -> tuple[np.ndarray, np.ndarray]:
    """The k-means assignment step: each row of ``x`` float32 ``[n, d]`` -> its best centroid.

    Returns (labels int64 ``[n]``, scores float32 ``[n]``): for ``l2`` the squared distance to the nearest
    centroid, for ``ip`` the largest inner product. Ties go to the smaller centroid number.
    """
    _require()
    if metric not in ("l2", "ip"):
        raise ValueError(f"metric must be 'l2' or 'ip', got {metric!r}")
    q = np.ascontiguousarray(x, dtype=np.float32)
    c = centroids if isinstance(centroids, DeviceData) else np.ascontiguousarray(centroids, dtype=np.float32)
    s, r = search(q, c, None, 0, len(c), 1, metric)
    return r[:, 0], (-s[:, 0] if metric == "l2" else s[:, 0])
