"""The compiled kernels of ``native/`` (AVX-512 + VNNI, AVX2 + FMA and scalar variants chosen at run time by CPU
feature detection), loaded with ctypes.

``AVAILABLE`` says whether the library was built (``pip install`` builds it when a C compiler is present;
``python setup.py build_ext --inplace`` in a checkout) and loaded; ``ERROR`` says why not. The library takes
pointers and sizes only and releases the GIL for the whole call (ctypes does), so batches are split over a pool
of Python threads: by queries when there are enough of them, else by rows, with the per-thread top-k merged.

Loops only: ``engine.kernels`` validates and normalises every array (dtype, C order, shapes, row range) before
it calls in here. ``GROVE_ISA=scalar|avx2|avx512|avx512vnni`` caps the instruction set (for tests and benchmarks).
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ISAS = ("scalar", "avx2", "avx512", "avx512vnni")
_ENC = {"float32": 0, "lvq8": 1, "lvq4": 2, "lvq4x8": 3}
_KIND = {"ip": 0, "l2": 1}
_ERRORS = {-1: "invalid argument", -2: "out of memory"}
#: below this many (queries x rows x dim) a call runs on one thread
PARALLEL_MIN_WORK = 4_000_000


class _Data(ctypes.Structure):
    _fields_ = [
        ("encoding", ctypes.c_int32),
        ("dim", ctypes.c_int32),
        ("n", ctypes.c_int64),
        ("codes", ctypes.c_void_p),
        ("stride", ctypes.c_int64),
        ("scale", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("mean", ctypes.c_void_p),
        ("residual", ctypes.c_void_p),
        ("residual_stride", ctypes.c_int64),
    ]


def _find() -> Path | None:
    """The library: ``$GROVE_NATIVE_LIB``, else beside this file (an in-place or installed build), else an
    installed build of this package found on ``sys.path`` (a checkout run after ``pip install .``). Any Python
    suffix will do: the library has no Python ABI."""
    override = os.environ.get("GROVE_NATIVE_LIB")
    if override:
        return Path(override)
    here = Path(__file__).resolve().parent
    places = [here] + [Path(p) / "engine" / "kernels" for p in sys.path if p]
    for place in places:
        found = sorted(glob.glob(str(place / "_grove_native*")))
        found = [f for f in found if f.endswith((".so", ".pyd", ".dylib"))]
        if found:
            return Path(found[0])
    return None


def _load() -> tuple[ctypes.CDLL | None, str | None]:
    path = _find()
    if path is None:
        return None, "the native library was not built (no C compiler at install time?); numba is used instead"
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        return None, f"could not load {path.name}: {exc}"
    if lib.grove_abi_version() != 1:
        return None, f"{path.name} has ABI version {lib.grove_abi_version()}, this code expects 1: rebuild it"
    i64, i32, p = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
    lib.grove_topk.argtypes = [ctypes.POINTER(_Data), p, i64, p, i64, i64, i32, i32, p, p]
    lib.grove_topk.restype = ctypes.c_int
    lib.grove_scores.argtypes = [ctypes.POINTER(_Data), p, i64, p, i64, i64, i32, p]
    lib.grove_scores.restype = ctypes.c_int
    lib.grove_isa_name.restype = ctypes.c_char_p
    lib.grove_set_isa.argtypes = [ctypes.c_int]
    lib.grove_set_tile_min.argtypes = [i32]
    lib.grove_set_tile_min.restype = i32
    return lib, None


_lib, ERROR = _load()
AVAILABLE = _lib is not None
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _require() -> ctypes.CDLL:
    if _lib is None:
        raise ImportError(f"native kernels unavailable: {ERROR}")
    return _lib


def cpu_isa() -> str:
    """The best instruction set the CPU supports."""
    return ISAS[_require().grove_cpu_isa()]


def isa() -> str:
    """The instruction set in use."""
    return ISAS[_require().grove_get_isa()]


def set_isa(name: str) -> str:
    """Use at most ``name`` (one of ``ISAS``; clamped to what the CPU has); returns the level in use."""
    if name not in ISAS:
        raise ValueError(f"instruction set must be one of {', '.join(ISAS)}, got {name!r}")
    return ISAS[_require().grove_set_isa(ISAS.index(name))]


def set_tile_min(queries: int) -> int:
    """Batches of at least ``queries`` take the tile (blocked matrix product) path; returns the old value."""
    return int(_require().grove_set_tile_min(int(queries)))


if _lib is not None and os.environ.get("GROVE_ISA"):
    set_isa(os.environ["GROVE_ISA"])


def _executor(threads: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != threads:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grove-native")
            _pool_size = threads
        return _pool


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def _struct(data) -> tuple[_Data, list]:
    """The C view of ``data`` (float32 ``[N, d]`` array, or ``engine.kernels.LVQData``) and what keeps it alive."""
    if isinstance(data, np.ndarray):
        d = _Data(0, data.shape[1], data.shape[0], _ptr(data), data.strides[0], None, None, None, None, 0)
        return d, [data]
    res = data.residual
    d = _Data(
        _ENC[data.encoding],
        data.dim,
        data.codes.shape[0],
        _ptr(data.codes),
        data.codes.strides[0],
        _ptr(data.scale),
        _ptr(data.bias),
        _ptr(data.mean),
        _ptr(res),
        0 if res is None else res.strides[0],
    )
    return d, [data]


def _check(rc: int) -> None:
    if rc != 0:
        raise ValueError(f"native kernel failed: {_ERRORS.get(rc, rc)}")


def _topk_part(lib, dat, q, rows, start, n, kind, k, out=None):
    """Top-k of one part into ``out`` (C-contiguous ``(scores, rows)`` of ``[m, k]``), or new arrays."""
    m = q.shape[0]
    out_s, out_r = out if out is not None else (np.empty((m, k), np.float32), np.empty((m, k), np.int64))
    _check(
        lib.grove_topk(ctypes.byref(dat), _ptr(q), m, _ptr(rows), start, n, _KIND[kind], k, _ptr(out_s), _ptr(out_r))
    )
    return out_s, out_r


def _splits(total: int, parts: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, total, parts + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def search(
    queries: np.ndarray,
    data,
    rows: np.ndarray | None,
    start: int,
    stop: int,
    k: int,
    kind: str,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of ``data[rows]`` (or of the block ``start:stop``) for each query; see ``engine.kernels.search``."""
    lib = _require()
    dat, _keep = _struct(data)
    m = queries.shape[0]
    n = rows.shape[0] if rows is not None else stop - start
    work = m * n * queries.shape[1]
    if threads <= 1 or work < PARALLEL_MIN_WORK:
        return _topk_part(lib, dat, queries, rows, start, n, kind, k)
    pool = _executor(threads)
    if m >= 2 * threads:  # by queries: each thread writes its own rows of the output (held once, not twice)
        out_s, out_r = np.empty((m, k), np.float32), np.empty((m, k), np.int64)
        futs = [
            pool.submit(_topk_part, lib, dat, queries[a:b], rows, start, n, kind, k, (out_s[a:b], out_r[a:b]))
            for a, b in _splits(m, threads)
        ]
        for f in futs:
            f.result()
        return out_s, out_r
    futs = []
    for a, b in _splits(n, threads):  # by rows, then merge the top-k lists
        if rows is not None:
            futs.append(pool.submit(_topk_part, lib, dat, queries, rows[a:b], 0, b - a, kind, k))
        else:
            futs.append(pool.submit(_topk_part, lib, dat, queries, None, start + a, b - a, kind, k))
    from engine.kernels import reference

    return reference.merge_topk([f.result() for f in futs], k)


def _scores_part(lib, dat, q, rows, start, n, kind, out):
    _check(lib.grove_scores(ctypes.byref(dat), _ptr(q), q.shape[0], _ptr(rows), start, n, _KIND[kind], _ptr(out)))


def scores(
    queries: np.ndarray, data, rows: np.ndarray | None, start: int, stop: int, kind: str, threads: int = 1
) -> np.ndarray:
    """Surrogate scores ``[m, n]`` of every query against ``data[rows]`` (or the block ``start:stop``)."""
    lib = _require()
    dat, _keep = _struct(data)
    m = queries.shape[0]
    n = rows.shape[0] if rows is not None else stop - start
    out = np.empty((m, n), np.float32)
    if threads <= 1 or m < 2 or m * n * queries.shape[1] < PARALLEL_MIN_WORK:
        _scores_part(lib, dat, queries, rows, start, n, kind, out)
        return out
    pool = _executor(threads)
    futs = [
        pool.submit(_scores_part, lib, dat, queries[a:b], rows, start, n, kind, out[a:b])
        for a, b in _splits(m, threads)
    ]
    for f in futs:
        f.result()
    return out
