"""CUDA kernels (numba-cuda): batched top-k search over large row lists, and the k-means assignment step.

Optional and never required. ``numba.cuda`` is imported behind a guard; without it, or without a device, the
public functions raise ``GpuUnavailable`` with the reason (``available()`` / ``unavailable_reason()`` say so
up front). With ``NUMBA_ENABLE_CUDASIM=1`` the same kernels run in numba's CUDA simulator on the CPU, which is
how ``tests/test_gpu_kernels.py`` checks their logic without a GPU (slowly: keep inputs tiny there).

Search, per chunk of queries (``engine.kernels.search`` semantics: surrogate scores, best first, ties to the
smaller row, padded with (-inf, -1)):

1. **scores**: ``S = Q X^T`` for the chunk against the selected rows (a row list is gathered inside the kernel),
   by a shared-memory tiled kernel (64 x 64 outputs per block, 4 x 4 per thread); for ``l2`` the kernel ranks by
   ``2 q.x - |x|^2`` and ``-|q|^2`` is added to the k survivors only. When CuPy is importable on a real device,
   the product goes to cuBLAS instead (``describe()["gemm"]`` says which).
2. **per-block top-k, then merge**: each thread keeps a sorted top-k of ``SPAN`` scores it reads with a
   coalesced stride and writes it out; the same kernel then reduces those candidate lists, round after round,
   and a last round with one thread per query merges what is left into its ``k``. ``k`` is at most ``KMAX``.

LVQ codes are decoded to float32 on the device first (``_decode``), then searched like float32 rows.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

try:  # guarded: numba-cuda (or numba's bundled cuda target) is optional
    from numba import cuda
    from numba import float32 as _f32
    from numba import int64 as _i64

    _IMPORT_ERROR: str | None = None
except Exception as exc:  # noqa: BLE001 - any import failure means "no GPU kernels"
    cuda = None
    _IMPORT_ERROR = f"numba.cuda could not be imported ({exc}); install the 'gpu' extra (numba-cuda)"

#: largest k the GPU selection keeps per thread
KMAX = 128
#: scores each selection thread reads per round, and threads per selection block
SPAN = 256
TPB = 128
#: the score tile: TS x TS outputs per block of (TS/R) x (TS/R) threads, each R x R; TK = depth per step
TS, R, TK = 64, 4, 16
_NT = TS // R  # threads per block side
#: bytes of scores a query chunk may hold on the device
CHUNK_BYTES = 2 << 30

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
_probe: tuple[bool, str | None] | None = None


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


def describe() -> dict[str, Any]:
    """The device, for benchmarks: name, compute capability, memory, simulator, which GEMM runs."""
    _require()
    if SIMULATOR:
        return {"device": "CUDA simulator (NUMBA_ENABLE_CUDASIM=1)", "simulator": True, "gemm": "numba"}
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

    @cuda.jit
    def _select_kernel(S, cols, use_cols, rowmap, use_map, start, width, span, k, out_s, out_r):
        """One output slot per thread: the sorted top-k of ``span`` entries of query blockIdx.x's row of S, read
        with a stride of the block size (coalesced). An entry's row is cols[i, j] (use_cols: candidate lists),
        else rowmap[j] or start + j. Entries with row < 0 (padding) are skipped; unused places get (-inf, -1)."""
        i = cuda.blockIdx.x
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
            s = S[i, j]
            if use_cols:
                r = cols[i, j]
            elif use_map:
                r = rowmap[j]
            else:
                r = start + j
            if r < 0:
                continue
            if size == k and not _better(s, r, ls[k - 1], lr[k - 1]):
                continue
            p = size if size < k else k - 1
            while p > 0 and _better(s, r, ls[p - 1], lr[p - 1]):
                ls[p] = ls[p - 1]
                lr[p] = lr[p - 1]
                p -= 1
            ls[p] = s
            lr[p] = r
            if size < k:
                size += 1
        if slot * k < out_s.shape[1]:
            for u in range(k):
                if u < size:
                    out_s[i, slot * k + u] = ls[u]
                    out_r[i, slot * k + u] = lr[u]
                else:
                    out_s[i, slot * k + u] = -math.inf
                    out_r[i, slot * k + u] = -1

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
class DeviceData:
    """Rows kept on the device between calls (float32; LVQ codes are decoded there once).

    Build it with ``to_device(data)`` and pass it to ``search``/``scores``/``kmeans_assign`` in place of the
    host array, so a large tenant is copied once rather than per call.
    """

    def __init__(self, x_dev, n: int, dim: int) -> None:
        self.x = x_dev
        self.shape = (n, dim)
        self._norms = None

    def norms(self):
        """|x|^2 per row, on the device (computed on first use)."""
        if self._norms is None:
            self._norms = cuda.device_array(self.shape[0], np.float32)
            _norms_kernel[(self.shape[0] + 127) // 128, 128](self.x, self._norms)
        return self._norms

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


# ---------------------------------------------------------------------------------------------- drivers
_DUMMY_ROWS = np.full(1, -1, np.int64)
_DUMMY_COLS = np.full((1, 1), -1, np.int64)


def _gemm(q_dev, dd: DeviceData, rows_dev, use_map, start, n, l2, out):
    cp = _cupy()
    if cp is not None:
        x = cp.asarray(dd.x)
        xs = x[cp.asarray(rows_dev)] if use_map else x[start : start + n]
        s = cp.asarray(out)
        cp.matmul(cp.asarray(q_dev), xs.T, out=s)
        if l2:
            xn = cp.asarray(dd.norms())
            xn = xn[cp.asarray(rows_dev)] if use_map else xn[start : start + n]
            grid = ((out.shape[0] + 15) // 16, (n + 15) // 16)
            _l2_bias_kernel[grid, (16, 16)](out, cuda.as_cuda_array(cp.ascontiguousarray(xn)))
        return
    xn = dd.norms() if l2 else cuda.to_device(np.zeros(1, np.float32))
    grid = ((n + TS - 1) // TS, (q_dev.shape[0] + TS - 1) // TS)
    _scores_kernel[grid, (_NT, _NT)](q_dev, dd.x, rows_dev, use_map, start, n, l2, xn, out)


def _select(S, rows_dev, use_map, start, n, k):
    """Rounds of ``_select_kernel`` until one list of k per query is left; returns device (scores, rows)."""
    m = S.shape[0]
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
            _select_kernel[(m, 1), 1](S, cols, use_cols, rows_dev, use_map, start, width, width, k, out_s, out_r)
            return out_s, out_r
        blocks = (width + TPB * span - 1) // (TPB * span)
        out_s = cuda.device_array((m, blocks * TPB * k), np.float32)
        out_r = cuda.device_array((m, blocks * TPB * k), np.int64)
        _select_kernel[(m, blocks), TPB](S, cols, use_cols, rows_dev, use_map, start, width, span, k, out_s, out_r)
        S, cols, use_cols, use_map, width = out_s, out_r, True, False, blocks * TPB * k


def search(
    queries: np.ndarray, data: Any, rows: np.ndarray | None, start: int, stop: int, k: int, kind: str, threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of ``data[rows]`` (or rows ``start:stop``) per query on the GPU; see ``engine.kernels.search``.

    ``data`` may be a ``DeviceData`` (stays on the device) or host rows (copied for this call).
    """
    _require()
    if k > KMAX:
        raise ValueError(f"the GPU kernels keep at most k={KMAX}; got k={k}: use a CPU backend for larger k")
    dd = to_device(data)
    use_map = rows is not None
    n = rows.shape[0] if use_map else stop - start
    rows_dev = cuda.to_device(rows if use_map else _DUMMY_ROWS)
    l2 = kind == "l2"
    m = queries.shape[0]
    out_s = np.empty((m, k), np.float32)
    out_r = np.empty((m, k), np.int64)
    chunk = max(1, min(m, CHUNK_BYTES // max(1, 4 * n)))
    S = cuda.device_array((chunk, n), np.float32)
    for a in range(0, m, chunk):
        q = np.ascontiguousarray(queries[a : a + chunk])
        q_dev = cuda.to_device(q)
        s_view = S[: q.shape[0]]
        _gemm(q_dev, dd, rows_dev, use_map, start, n, l2, s_view)
        s_dev, r_dev = _select(s_view, rows_dev, use_map, start, n, k)
        if l2:
            shift = cuda.to_device(-np.einsum("ij,ij->i", q, q).astype(np.float32))
            grid = ((q.shape[0] + 15) // 16, (k + 15) // 16)
            _shift_kernel[grid, (16, 16)](s_dev, r_dev, shift)
        out_s[a : a + q.shape[0]] = s_dev.copy_to_host()
        out_r[a : a + q.shape[0]] = r_dev.copy_to_host()
    return out_s, out_r


def scores(
    queries: np.ndarray, data: Any, rows: np.ndarray | None, start: int, stop: int, kind: str, threads: int = 1
) -> np.ndarray:
    """Surrogate scores ``[m, n]`` on the GPU (``l2``: minus the squared distance, via norms)."""
    _require()
    dd = to_device(data)
    use_map = rows is not None
    n = rows.shape[0] if use_map else stop - start
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
