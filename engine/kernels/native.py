"""The compiled kernels of ``native/`` (AVX-512 + VNNI, AVX2 + FMA and scalar variants chosen at run time by CPU
feature detection), loaded with ctypes.

``AVAILABLE`` says whether the library was built (``pip install`` builds it when a C compiler is present;
``python setup.py build_ext --inplace`` in a checkout) and loaded; ``ERROR`` says why not. The library takes
pointers and sizes only and releases the GIL for the whole call (ctypes does), so batches are split over a pool
of Python threads: by queries when there are enough of them, else by rows, with the per-thread top-k merged.
The Curator tree search (``tree_search``, ``native/src/tree_search.c``) takes its arrays as a few C structures,
kept per array set (``_index_view``) so that a narrow search does not pay for reading two dozen addresses.

Loops only: ``engine.kernels`` validates and normalises every array (dtype, C order, shapes, row range) before
it calls in here. ``GROVE_ISA=scalar|avx2|avx512|avx512vnni`` caps the instruction set (for tests and benchmarks).
"""

from __future__ import annotations

import ctypes
import glob
import sys
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from engine import config

ISAS = ("scalar", "avx2", "avx512", "avx512vnni")
_ENC = {"float32": 0, "lvq8": 1, "lvq4": 2, "lvq4x8": 3}
_KIND = {"ip": 0, "l2": 1}
_ERRORS = {-1: "invalid argument", -2: "out of memory"}
#: below this many (queries x rows x dim) a call runs on one thread
PARALLEL_MIN_WORK = 4_000_000
#: ``GROVE_ABI_VERSION`` of ``native/include/grove_kernels.h`` that this module's structures match
ABI_VERSION = 2
#: a tree search batch is split over threads in parts of at least this many (estimated) entries scanned ...
TREE_PARALLEL_MIN_ENTRIES = 4096
#: ... estimating a query's entries as this many per ``ef`` (measured 4-7 on the shared data), at most the tenant's
TREE_ENTRIES_PER_EF = 6


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


# the structures of the tree search (``grove_tree_search`` in native/include/grove_kernels.h), field for field
_I32, _I64, _P = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p


class _TreeRows(ctypes.Structure):
    _fields_ = [("kind", _I32), ("dim", _I32), ("data", _P), ("data_stride", _I64), ("codes", _P),
                ("codes_stride", _I64), ("residual", _P), ("residual_stride", _I64), ("scale", _P), ("bias", _P),
                ("sqnorm", _P), ("mean", _P)]  # fmt: skip


class _ScanCodes(ctypes.Structure):
    _fields_ = [("bits", _I32), ("is_float", _I32), ("width", _I32), ("p", _I32), ("codes", _P), ("stride", _I64),
                ("mul", _P), ("add", _P), ("sub", _P), ("proj", _P), ("proj_rows", _I32), ("pscale", _P),
                ("poff", _P), ("scale", _P), ("slot_row", _P)]  # fmt: skip


class _Tree(ctypes.Structure):
    _fields_ = [("n_nodes", _I32), ("pn", _I32), ("child_start", _P), ("child_count", _P), ("leaf_lo", _P),
                ("pcent", _P), ("pbias", _P), ("n_leaves", _I32), ("leaf_cent", _P), ("leaf_scale", _P),
                ("leaf_node", _P)]  # fmt: skip


class _TenantList(ctypes.Structure):
    _fields_ = [("main", _P), ("n", _I64), ("tail", _P), ("nt", _I64), ("bounds", _P), ("n_bounds", _I64)]


class _SearchParams(ctypes.Structure):
    _fields_ = [("k", _I64), ("ef", _I64), ("cands", _I64), ("rerank", _I64), ("max_sl", _I64),
                ("exact_max", _I64), ("flat_max", _I64), ("metric", _I32)]  # fmt: skip


def _find() -> Path | None:
    """The library: ``$GROVE_NATIVE_LIB``, else beside this file (an in-place or installed build), else an
    installed build of this package found on ``sys.path`` (a checkout run after ``pip install .``). Any Python
    suffix will do: the library has no Python ABI."""
    override = config.engine_setting("native_lib")
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
    if lib.grove_abi_version() != ABI_VERSION:
        found = lib.grove_abi_version()
        return None, f"{path.name} has ABI version {found}, this code expects {ABI_VERSION}: rebuild it"
    i64, i32, p = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
    lib.grove_topk.argtypes = [ctypes.POINTER(_Data), p, i64, p, i64, i64, i32, i32, p, p]
    lib.grove_topk.restype = ctypes.c_int
    lib.grove_scores.argtypes = [ctypes.POINTER(_Data), p, i64, p, i64, i64, i32, p]
    lib.grove_scores.restype = ctypes.c_int
    lib.grove_isa_name.restype = ctypes.c_char_p
    lib.grove_set_isa.argtypes = [ctypes.c_int]
    lib.grove_set_tile_min.argtypes = [i32]
    lib.grove_set_tile_min.restype = i32
    lib.grove_tree_search.argtypes = [ctypes.POINTER(_TreeRows), ctypes.POINTER(_ScanCodes), ctypes.POINTER(_Tree),
                                      ctypes.POINTER(_TenantList), ctypes.POINTER(_SearchParams), p, i64, p,
                                      p]  # fmt: skip
    lib.grove_tree_search.restype = i64
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


_isa_applied = False


def apply_isa_setting() -> None:
    """Cap the instruction set as the ``engine.isa`` setting says, once (until ``forget_isa_setting``)."""
    global _isa_applied
    if _lib is None or _isa_applied:
        return
    _isa_applied = True
    set_isa(config.engine_setting("isa") or cpu_isa())


def forget_isa_setting() -> None:
    """Have the next use of the kernels read the ``engine.isa`` setting again (the settings changed)."""
    global _isa_applied
    _isa_applied = False


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


# ---------------------------------------------------------------------------------------------- tree search
#: C views of an index's arrays and of tenant lists, by the arrays' ids: reading their ~25 addresses costs ~20 us
#: a call (numpy's ``.ctypes``), more than a narrow search. An entry is dropped as soon as one of its arrays is (a
#: weak reference's callback, which runs before the array's id can be reused), so a hit by ids alone names the
#: very arrays passed, and the cache never keeps an array alive; the structures hold addresses only, valid while
#: the caller holds the arrays (during a call). Each cache is emptied when full (e.g. more tenants than it holds).
_index_views: dict[tuple, tuple] = {}
_tenant_views: dict[tuple, tuple] = {}
_params: dict[tuple, _SearchParams] = {}
_VIEWS_MAX = 4096


def _addr(a: np.ndarray | None) -> int | None:
    """The address of a C-ordered array's data, or NULL for ``None`` or an empty array (an absent part).
    ``from_buffer`` is 3x faster than ``.ctypes`` but wants a writable buffer."""
    if a is None or a.size == 0:
        return None
    try:
        # an ndarray is a buffer; numpy's stubs declare __buffer__ for Python >= 3.12 only
        return ctypes.addressof(ctypes.c_char.from_buffer(a))  # type: ignore[arg-type]
    except TypeError:
        return a.ctypes.data


def _view(cache: dict, arrays: tuple, extra: tuple, build):
    """``build()``, or what it built before for the same ``arrays`` (by identity) and ``extra`` values."""
    key = (*map(id, arrays), *extra)
    hit = cache.get(key)
    if hit is not None:
        return hit[0]
    if len(cache) >= _VIEWS_MAX:
        cache.clear()
    view = build()

    def drop(_ref, key=key) -> None:
        cache.pop(key, None)

    cache[key] = (view, [weakref.ref(a, drop) for a in arrays])  # the references must live for their callbacks
    return view


def _rows_struct(rows: tuple, rows_kind: int) -> _TreeRows:
    data, codes, residual, scale, bias, sqnorm, mean, _bits = rows
    return _TreeRows(int(rows_kind), data.shape[1], _addr(data), data.strides[0], _addr(codes), codes.strides[0],
                     _addr(residual), residual.strides[0], _addr(scale), _addr(bias), _addr(sqnorm),
                     _addr(mean))  # fmt: skip


def _codes_struct(codes: tuple, code_query: tuple, slot_row: np.ndarray) -> _ScanCodes:
    c, mul, add, sub = codes
    proj, pscale, poff, scale, bits = code_query
    is_float = int(c.dtype == np.float32)
    return _ScanCodes(int(bits), is_float, c.shape[1], poff.shape[0], _addr(c), c.strides[0], _addr(mul),
                      _addr(add), _addr(sub), _addr(proj), proj.shape[0], _addr(pscale), _addr(poff), _addr(scale),
                      _addr(slot_row))  # fmt: skip


def _tree_struct(tree: tuple) -> _Tree:
    topo, pcent, pbias, (lcent, lscale, lnode) = tree
    row, base = topo.strides[0], topo.ctypes.data
    return _Tree(topo.shape[1], pcent.shape[1], base, base + row, base + 2 * row, _addr(pcent), _addr(pbias),
                 lcent.shape[0], _addr(lcent), _addr(lscale), _addr(lnode))  # fmt: skip


def _index_view(rows, rows_kind, slot_row, codes, code_query, tree) -> tuple[_TreeRows, _ScanCodes, _Tree]:
    """The C structures of an index's rows, scan codes and tree."""
    arrays = (*rows[:7], *codes, *code_query[:4], slot_row, *tree[:3], *tree[3])

    def build():
        return _rows_struct(rows, rows_kind), _codes_struct(codes, code_query, slot_row), _tree_struct(tree)

    return _view(_index_views, arrays, (rows_kind, code_query[4]), build)


def _tenant_view(tenant: tuple) -> _TenantList:
    main, tail, nt, bounds = tenant

    def build() -> _TenantList:
        return _TenantList(_addr(main), main.shape[0], _addr(tail), nt, _addr(bounds), bounds.shape[0])

    return _view(_tenant_views, (main, tail, bounds), (nt,), build)


def _params_struct(params: tuple) -> _SearchParams:
    found = _params.get(params)
    if found is None:
        if len(_params) >= _VIEWS_MAX:
            _params.clear()
        found = _params[params] = _SearchParams(*params)
    return found


def _tree_part(lib, structs, queries, out_s, out_r) -> int:
    scanned = lib.grove_tree_search(*structs, _addr(queries), queries.shape[0], _addr(out_s), _addr(out_r))
    if scanned < 0:
        _check(scanned)
    return scanned


def tree_search(
    queries: np.ndarray,
    rows: tuple,
    rows_kind: int,
    slot_row: np.ndarray,
    codes: tuple,
    code_query: tuple,
    tree: tuple,
    tenant: tuple,
    params: tuple,
    out_s: np.ndarray,
    out_r: np.ndarray,
    threads: int = 1,
) -> int:
    """The Curator tree search of ``engine.kernels.tree_numba.search`` (see ``engine.kernels.tree_search``) into
    ``out_s``/``out_r``; returns the entries scanned. A batch large enough (``TREE_PARALLEL_MIN_ENTRIES`` per part)
    is split by queries over up to ``threads`` threads, the caller's among them, each part with its own
    workspace."""
    lib = _require()
    m = queries.shape[0]
    if m == 0:
        return 0
    structs = (*_index_view(rows, rows_kind, slot_row, codes, code_query, tree), _tenant_view(tenant),
               _params_struct(params))  # fmt: skip
    # a pool thread takes ~50-100 us to start on a part (measured, 2-core VM): only parts of some size pay for it
    parts = 1
    if threads > 1 and m > 1:
        work = m * min(tenant[0].shape[0] + tenant[2], TREE_ENTRIES_PER_EF * params[1])
        parts = min(threads, m, work // TREE_PARALLEL_MIN_ENTRIES)
    if parts <= 1:
        return _tree_part(lib, structs, queries, out_s, out_r)
    pool = _executor(threads)
    (a0, b0), *rest = _splits(m, parts)
    futs = [pool.submit(_tree_part, lib, structs, queries[a:b], out_s[a:b], out_r[a:b]) for a, b in rest]
    scanned = _tree_part(lib, structs, queries[a0:b0], out_s[a0:b0], out_r[a0:b0])  # the caller's own part
    return scanned + sum(f.result() for f in futs)
