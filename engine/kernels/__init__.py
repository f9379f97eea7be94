"""The kernel interface: a batch of queries against rows of float32 vectors or LVQ codes -> scores or top-k.

One interface, several backends, each tested against the numpy reference (``tests/test_kernels.py``):

========  ==========================================================================================
numpy     ``engine.kernels.reference``: float64, obviously right, slow (the oracle; never the default)
numba     ``engine.kernels.cpu`` (float32) and ``engine.kernels.lvq`` (LVQ codes); BLAS for big batches
native    ``engine.kernels.native``: C with AVX-512 / AVX2 / scalar variants picked by CPU feature detection
cuda      ``engine.kernels.gpu``: numba-cuda kernels, for big batches when a CUDA device is present
========  ==========================================================================================

The Curator tree search (``tree_search``) has two: ``native`` (``grove_tree_search`` in ``native/``) and numba
(``engine.kernels.tree_numba.search``), the first wherever the native backend is the one selected.

The CPU backend is chosen once, at first use: ``native`` if the optional extension was built, else ``numba``
(``bench/kernels.py`` shows native ahead wherever both run). ``GROVE_KERNELS=numpy|numba|native|cuda`` or
``select(name)`` overrides it; a forced backend that is missing raises. Without an override, a batch whose
work (queries x rows x dim) reaches ``GPU_MIN_WORK`` runs on CUDA when a real device is present. ``describe()``
says what runs, for benchmarks to print. Kernels take arrays and return arrays: this package imports nothing
else from ``engine`` but ``engine.config`` (a leaf), whose settings it reads when first needed.

Scores are surrogates, higher is better (``engine.kernels.metrics``): the inner product for ``ip`` and
``cosine`` (cosine rows are unit vectors already), minus the squared distance for ``l2``. Top-k results are
best first, ties to the smaller row, padded with (-inf, -1).
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from engine import config
from engine.kernels import metrics, reference

BACKENDS = ("numpy", "numba", "native", "cuda")
ENCODINGS = ("float32", "lvq8", "lvq4", "lvq4x8")
#: below this many (queries x rows) a numba batch runs on one thread (read by ``engine.kernels.lvq``)
PARALLEL_MIN_WORK = 200_000
#: without an override, batches of at least this much work (queries x rows x dim) go to a real CUDA device
GPU_MIN_WORK = 20_000_000_000
#: CPU flags worth reporting (from /proc/cpuinfo where there is one)
_FLAGS_OF_INTEREST = (
    "sse4_2", "avx", "f16c", "fma", "avx2", "avx_vnni", "avx512f", "avx512dq", "avx512bw", "avx512vl",
    "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "asimd", "sve",
)  # fmt: skip

_selected: str | None = None
_forced = False
_threads: int | None = None


@dataclass(frozen=True)
class LVQData:
    """LVQ codes in the layout of ``engine.quant.lvq`` (see its module docstring) with the mean they were
    encoded with: what the kernels scan.

    Parameters
    ----------
    mean : float32 ``[dim]``.
    codes : uint8 ``[n, dim]`` (8 bits) or ``[n, ceil(dim/2)]`` (4 bits, split-half nibbles).
    scale, bias : float32 ``[n]``.
    bits : 8 or 4. dim : the vector dimension.
    residual : uint8 ``[n, dim]`` second level (LVQ-4x8, scored with both levels), or ``None``.
    """

    mean: np.ndarray
    codes: np.ndarray
    scale: np.ndarray
    bias: np.ndarray
    bits: int
    dim: int
    residual: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"LVQ bits must be 4 or 8, got {self.bits!r}")
        if self.residual is not None and self.bits != 4:
            raise ValueError("a residual level needs bits=4 (LVQ-4x8)")
        width = self.dim if self.bits == 8 else (self.dim + 1) // 2
        c = np.ascontiguousarray(self.codes, dtype=np.uint8)
        if c.ndim != 2 or c.shape[1] != width or self.dim < 1:
            raise ValueError(f"{self.bits}-bit codes of dim {self.dim} must be uint8 [n, {width}], got {c.shape}")
        n = c.shape[0]
        arrays: dict[str, np.ndarray] = {"codes": c}
        for name in ("scale", "bias"):
            a = np.ascontiguousarray(getattr(self, name), dtype=np.float32)
            if a.shape != (n,):
                raise ValueError(f"LVQ {name} must be float32 [{n}], got shape {a.shape}")
            arrays[name] = a
        mu = np.ascontiguousarray(self.mean, dtype=np.float32)
        if mu.shape != (self.dim,):
            raise ValueError(f"LVQ mean must be float32 [{self.dim}], got shape {mu.shape}")
        arrays["mean"] = mu
        if self.residual is not None:
            res = np.ascontiguousarray(self.residual, dtype=np.uint8)
            if res.shape != (n, self.dim):
                raise ValueError(f"LVQ residual must be uint8 [{n}, {self.dim}], got shape {res.shape}")
            arrays["residual"] = res
        for name, a in arrays.items():
            object.__setattr__(self, name, a)

    @classmethod
    def from_codes(cls, codes: Any, mean: np.ndarray, *, levels: int | None = None) -> LVQData:
        """From an ``engine.quant.lvq.LVQCodes`` (or anything with its fields); ``levels=1`` drops a residual."""
        res = None if levels == 1 else getattr(codes, "residual", None)
        return cls(mean, codes.codes, codes.scale, codes.bias, int(codes.bits), int(codes.dim), res)

    @property
    def encoding(self) -> str:
        """``"lvq8"``, ``"lvq4"`` or ``"lvq4x8"``."""
        return "lvq4x8" if self.residual is not None else f"lvq{self.bits}"

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.codes.shape[0]), self.dim)

    @property
    def nbytes(self) -> int:
        extra = 0 if self.residual is None else self.residual.nbytes
        return int(self.codes.nbytes + self.scale.nbytes + self.bias.nbytes + extra)

    def __len__(self) -> int:
        return int(self.codes.shape[0])


# ---------------------------------------------------------------------------------------------- backends
def _native_module():
    from engine.kernels import native

    native.apply_isa_setting()
    return native


def _gpu_module():
    from engine.kernels import gpu

    return gpu


def available() -> dict[str, str | None]:
    """Every backend -> ``None`` if it can run here, else the reason it cannot."""
    out: dict[str, str | None] = {"numpy": None, "numba": None}
    native = _native_module()
    out["native"] = None if native.AVAILABLE else native.ERROR
    gpu = _gpu_module()
    out["cuda"] = None if gpu.available() else gpu.unavailable_reason()
    return out


def select(name: str | None = None) -> str:
    """Pick the backend: ``name``, else ``$GROVE_KERNELS``, else ``native`` if built, else ``numba``.

    A backend asked for by name (or by the environment) that cannot run raises ``ValueError`` with the reason.
    """
    global _selected, _forced
    wanted = name or config.engine_setting("kernels")
    if wanted is None:
        _selected = "native" if _native_module().AVAILABLE else "numba"
        _forced = False
        return _selected
    if wanted not in BACKENDS:
        raise ValueError(f"GROVE_KERNELS={wanted!r} is not a backend; choose one of {', '.join(BACKENDS)}")
    if wanted == "native" and not _native_module().AVAILABLE:
        raise ValueError(f"the native backend was asked for but {_native_module().ERROR}")
    if wanted == "cuda" and not _gpu_module().available():
        raise ValueError(f"the cuda backend was asked for but {_gpu_module().unavailable_reason()}")
    _selected, _forced = wanted, True
    return wanted


def reconfigure() -> None:
    """Forget the backend, thread count and instruction set read from the settings, so that the next use reads
    ``engine.config.current()`` again (called by ``engine.config.use`` and ``reset``)."""
    global _selected, _forced, _threads
    _selected, _forced, _threads = None, False, None
    native = sys.modules.get("engine.kernels.native")
    if native is not None:
        native.forget_isa_setting()


def backend() -> str:
    """The backend in use (selected on first use)."""
    return _selected or select()


def set_threads(n: int) -> int:
    """Threads for one call of the CPU backends (numba's pool and the native pool); returns the value."""
    global _threads
    n = int(n)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    import numba

    # numba.config sets its NUMBA_* names at import, from the environment; its stub does not list them
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    _threads = n
    return n


def threads() -> int:
    """Threads per call: ``set_threads``, else ``$GROVE_THREADS``, else numba's thread count."""
    if _threads is not None:
        return _threads
    setting = config.engine_setting("threads")
    if setting:
        return int(setting)
    import numba

    return int(numba.get_num_threads())


def cpu_flags() -> list[str]:
    """The SIMD-related CPU flags of this machine (Linux: /proc/cpuinfo), for ``describe``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in _FLAGS_OF_INTEREST if f in have]
    except OSError:
        pass
    return [platform.machine()]


def describe() -> dict[str, Any]:
    """What runs, for benchmarks to print: backend, instruction set, CPU flags, threads, availability."""
    import numba

    b = backend()
    native = _native_module()
    info: dict[str, Any] = {"backend": b, "forced": _forced, "threads": threads(), "numba": numba.__version__}
    if native.AVAILABLE:
        info.update(isa=native.isa(), cpu_isa=native.cpu_isa())
    else:
        info.update(isa="numba (LLVM, host CPU)", native_error=native.ERROR)
    info["cpu"] = platform.processor() or platform.machine()
    info["cpu_flags"] = cpu_flags()
    gpu = _gpu_module()
    info["cuda"] = gpu.describe() if gpu.available() else gpu.unavailable_reason()
    return info


# ---------------------------------------------------------------------------------------------- validation
def _as_data(data: Any) -> np.ndarray | LVQData:
    if isinstance(data, LVQData):
        return data
    arr = np.asarray(data)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"data must be float32 [n, d] with d >= 1 or an LVQData, got shape {arr.shape}")
    if arr.dtype != np.float32:
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"data must be float32 vectors, got {arr.dtype}; call .astype(np.float32)")
        arr = arr.astype(np.float32)
    return np.ascontiguousarray(arr)


def _as_queries(queries: Any, dim: int) -> np.ndarray:
    q = np.asarray(queries)
    if q.ndim == 1:
        q = q.reshape(1, -1)
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"queries must be [m, {dim}] to match the data, got shape {np.shape(queries)}")
    if not np.issubdtype(q.dtype, np.floating):
        raise TypeError(f"queries must be float32, got {q.dtype}; call .astype(np.float32)")
    q = np.ascontiguousarray(q, dtype=np.float32)
    if not q.flags.writeable:  # e.g. zero-copy from a protobuf: one numba signature for all callers
        q = q.copy()
    if not np.isfinite(q).all():
        raise ValueError("queries contain NaN or infinity; only finite values can be searched")
    return q


def _as_selection(rows: Any, block: tuple[int, int] | None, n: int) -> tuple[np.ndarray | None, int, int]:
    if rows is not None and block is not None:
        raise ValueError("pass rows (a list of row numbers) or block (start, stop), not both")
    if rows is not None:
        r = np.ascontiguousarray(rows, dtype=np.int64)
        if r.ndim != 1:
            raise ValueError(f"rows must be a 1-D list of row numbers, got shape {r.shape}")
        if r.size and (int(r.min()) < 0 or int(r.max()) >= n):
            raise ValueError(f"rows must lie in [0, {n}); got {int(r.min())}..{int(r.max())}")
        return r, 0, 0
    start, stop = (0, n) if block is None else (int(block[0]), int(block[1]))
    if not 0 <= start <= stop <= n:
        raise ValueError(f"block must satisfy 0 <= start <= stop <= {n}, got ({start}, {stop})")
    return None, start, stop


def _kind(metric: str) -> str:
    if metric not in metrics.KERNEL_METRIC:
        raise ValueError(f"metric must be one of {', '.join(metrics.KERNEL_METRIC)}, got {metric!r}")
    return metrics.KERNEL_METRIC[metric]


def _module(name: str):
    if name == "numpy":
        return reference
    if name == "numba":
        from engine.kernels import cpu

        return cpu
    if name == "native":
        return _native_module()
    return _gpu_module()


def _route(name: str | None, work: int) -> str:
    if name is not None:
        if name not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
        if name == "native" and not _native_module().AVAILABLE:
            raise ValueError(f"the native backend was asked for but {_native_module().ERROR}")
        return name
    b = backend()
    if not _forced and work >= GPU_MIN_WORK and _gpu_module().has_device():
        return "cuda"
    return b


def gpu_runs(work: int) -> bool:
    """Whether a batch of ``work`` (queries x rows x dim), routed automatically, runs on CUDA: the ``cuda``
    backend forced, or a real device and at least ``GPU_MIN_WORK``. For callers with a cheaper CPU-only plan
    (a tree's beam descent instead of an exact scan of every leaf), which ask before they choose."""
    return _route(None, work) == "cuda"


# ---------------------------------------------------------------------------------------------- the interface
def search(
    queries: Any,
    data: Any,
    k: int,
    metric: str = "ip",
    *,
    rows: Any = None,
    block: tuple[int, int] | None = None,
    backend: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows of ``data`` for each query, by the surrogate of ``metric``, fused with the scan.

    Parameters
    ----------
    queries : float ``[m, d]`` or ``[d]`` (any order; prepared for the metric: unit rows for cosine).
    data : float32 ``[N, d]`` vectors, or ``LVQData`` codes.
    k : how many to keep (at least 1).
    metric : ``"ip"``, ``"cosine"`` or ``"l2"``.
    rows : int ``[n]`` row numbers into ``data`` to score (a tenant's list), or
    block : ``(start, stop)``, a contiguous block of rows; neither: all rows.
    backend : run on this backend instead of the selected one (tests and benchmarks).

    Returns
    -------
    (scores float32 ``[m, k]``, rows int64 ``[m, k]``), best first, ties to the smaller row, padded (-inf, -1).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    kind = _kind(metric)
    x = _as_data(data)
    q = _as_queries(queries, x.shape[1])
    sel, start, stop = _as_selection(rows, block, x.shape[0])
    n = sel.shape[0] if sel is not None else stop - start
    m = q.shape[0]
    if m == 0 or n == 0:
        return np.full((m, int(k)), -np.inf, np.float32), np.full((m, int(k)), -1, np.int64)
    name = _route(backend, m * n * x.shape[1])
    return _module(name).search(q, x, sel, start, stop, int(k), kind, threads=threads())


def scores(
    queries: Any,
    data: Any,
    metric: str = "ip",
    *,
    rows: Any = None,
    block: tuple[int, int] | None = None,
    backend: str | None = None,
) -> np.ndarray:
    """Surrogate scores float32 ``[m, n]`` of every query against the selected rows (arguments as ``search``)."""
    kind = _kind(metric)
    x = _as_data(data)
    q = _as_queries(queries, x.shape[1])
    sel, start, stop = _as_selection(rows, block, x.shape[0])
    n = sel.shape[0] if sel is not None else stop - start
    if q.shape[0] == 0 or n == 0:
        return np.zeros((q.shape[0], n), np.float32)
    name = _route(backend, q.shape[0] * n * x.shape[1])
    return _module(name).scores(q, x, sel, start, stop, kind, threads=threads())


def topk(queries: np.ndarray, base: np.ndarray, rows: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of ``base[rows]`` for each query: ``search(queries, base, k, metric, rows=rows)``.

    Parameters
    ----------
    queries : float32 ``[m, d]`` (already prepared for the metric). base : float32 ``[N, d]``.
    rows : int64 ``[n]`` row numbers into ``base``. k : how many to keep. metric : ``"ip"``, ``"cosine"``, ``"l2"``.

    Returns
    -------
    (scores float32 ``[m, k]`` surrogate, rows int64 ``[m, k]``), best first, padded with (-inf, -1).
    """
    return search(queries, base, k, metric, rows=rows)


def warm() -> None:
    """Load (or compile) the kernels of the selected backend now, so the first search does not pay for it."""
    b = backend()
    if b in ("numba", "native"):
        base = np.zeros((4, 3), np.float32)
        for metric in ("ip", "l2"):
            topk(base[:1], base, np.arange(4, dtype=np.int64), 2, metric)
            topk(base[:2], base, np.arange(4, dtype=np.int64), 2, metric)


# ---------------------------------------------------------------------------------------------- tree search
class TreeArrays(NamedTuple):
    """The shared Curator tree as its search reads it (``engine.index.curator``).

    topo : int32 ``[3, nodes]``: each node's first child, child count and first leaf rank (C order).
    pcent : float32 ``[nodes, pn]`` node centroids in the node-priority space. pbias : float32 ``[nodes]``.
    leaves : ``(int8 [L, pn] leaf centroids, float32 [L] their scales, int32 [L] their node ids)``, leaf-rank order.
    """

    topo: np.ndarray
    pcent: np.ndarray
    pbias: np.ndarray
    leaves: tuple


class TenantEntries(NamedTuple):
    """One tenant's list: ``main`` int64 sorted entries, ``tail`` int64 (the first ``nt`` in use), ``bounds``
    int32 where each leaf rank starts in ``main`` (empty: none). See ``engine.kernels.tree``."""

    main: np.ndarray
    tail: np.ndarray
    nt: int
    bounds: np.ndarray


class TreeSearchParams(NamedTuple):
    """The knobs of one tree search (``engine.kernels.tree_numba._search_one``): ``k`` results, early stop after ``ef``
    unchanged entries, ``cands`` candidates, ``rerank`` rescored, nodes of at most ``max_sl`` entries scanned,
    exact up to ``exact_max`` entries, every code up to ``flat_max``; ``kind`` is ``tree.IP`` or ``tree.L2``."""

    k: int
    ef: int
    cands: int
    rerank: int
    max_sl: int
    exact_max: int
    flat_max: int
    kind: int


def tree_backend() -> str:
    """Where ``tree_search`` runs: ``native`` when the native backend is selected (or ``cuda`` is and the native
    library is built: there is no GPU tree search), else ``numba`` (also for the ``numpy`` backend)."""
    b = backend()
    if b == "native" or (b == "cuda" and _native_module().AVAILABLE):
        return "native"
    return "numba"


def tree_search(
    queries: np.ndarray,
    *,
    rows: tuple,
    rows_kind: int,
    slot_row: np.ndarray,
    codes: tuple,
    code_query: tuple,
    tree: TreeArrays,
    tenant: TenantEntries,
    params: TreeSearchParams,
    out_s: np.ndarray,
    out_r: np.ndarray,
) -> int | None:
    """Top-k of each query over one tenant's part of a Curator tree (curator.md §2.6-2.7), into ``out_s``/``out_r``.

    Parameters
    ----------
    queries : float32 ``[m, d]``, C order, prepared for the metric.
    rows : the table's rows, ``engine.index.rows`` ``kernel_args``; ``rows_kind``: what they hold (``tree.ROWS_*``).
    slot_row : int32, the table row of each code slot.
    codes : ``(codes, mul, add, sub)``, the scan codes by slot; ``code_query``: ``(int8 projection [p, d], its row
        scales, offset [p], per-coordinate code scale [p], code bits)``, their query side
        (``engine.index.scancodes``).
    tree, tenant, params : see ``TreeArrays``, ``TenantEntries``, ``TreeSearchParams``.
    out_s, out_r : float32 / int64 ``[m, k]``, C order: scores and table rows, best first, ties to the smaller
        row, padded (-inf, -1).

    Returns
    -------
    The entries scanned over all queries, or ``None`` from numba's parallel batch kernel (which does not count).

    Runs on ``tree_backend()``: the native kernel splits a large enough batch over ``threads()`` threads, numba
    any batch over its own.
    The arrays are the index's own and are used as they are (the index keeps them in these dtypes).
    """
    if queries.dtype != np.float32 or queries.ndim != 2 or not queries.flags.c_contiguous:
        raise ValueError(f"queries must be C-ordered float32 [m, d], got {queries.dtype} {queries.shape}")
    m = queries.shape[0]
    if out_s.shape != (m, params.k) or out_r.shape != (m, params.k):
        raise ValueError(f"out_s and out_r must be [{m}, {params.k}], got {out_s.shape} and {out_r.shape}")
    if tree_backend() == "native":
        return _native_module().tree_search(queries, rows, rows_kind, slot_row, codes, code_query, tree, tenant,
                                            params, out_s, out_r, threads() if m > 1 else 1)  # fmt: skip
    from engine.kernels import tree_numba as numba_tree

    kern = numba_tree.search if m == 1 else numba_tree.search_parallel
    return kern(queries, rows, slot_row, codes, code_query, tenant.main, tenant.tail, tenant.nt, tenant.bounds,
                tree.pcent, tree.pbias, tree.topo, tree.leaves, *params[:7], params.kind, rows_kind, out_s,
                out_r)  # fmt: skip
