"""The kernel interface: a batch of queries against a list of rows of a float32 matrix -> top-k.

Backends are chosen once, at first use, from what the machine has; ``GROVE_KERNELS`` overrides the
choice (``numpy`` for the reference, ``numba``), and ``describe()`` says which one runs. Kernels take
arrays and return arrays: this package imports nothing else from ``engine``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from engine.kernels import metrics, reference

_BACKENDS = ("numba", "numpy")
_selected: str | None = None
#: below this many (queries x rows) a batch runs on one thread
PARALLEL_MIN_WORK = 200_000


def select(name: str | None = None) -> str:
    """Pick the backend (``name``, else ``$GROVE_KERNELS``, else the best available) and return it."""
    global _selected
    wanted = name or os.environ.get("GROVE_KERNELS") or "numba"
    if wanted not in _BACKENDS:
        raise ValueError(f"GROVE_KERNELS={wanted!r} is not a backend; choose one of {', '.join(_BACKENDS)}")
    _selected = wanted
    return wanted


def backend() -> str:
    return _selected or select()


def describe() -> dict[str, Any]:
    """Which backend runs, for benchmarks to print."""
    info: dict[str, Any] = {"backend": backend()}
    if info["backend"] == "numba":
        import numba

        info["numba"] = numba.__version__
        info["threads"] = numba.get_num_threads()
    return info


def topk(queries: np.ndarray, base: np.ndarray, rows: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of ``base[rows]`` for each query by the surrogate of ``metric``.

    Parameters
    ----------
    queries : float32 ``[m, d]``, C-ordered (already prepared for the metric).
    base : float32 ``[N, d]``, C-ordered.
    rows : int64 ``[n]`` row numbers into ``base``.
    k : how many to keep.
    metric : ``"ip"``, ``"cosine"`` or ``"l2"``.

    Returns
    -------
    (scores float32 ``[m, k]`` surrogate, rows int64 ``[m, k]``), best first, padded with (-inf, -1).
    """
    kernel_metric = metrics.KERNEL_METRIC[metric]
    if not queries.flags.writeable:  # e.g. zero-copy from a protobuf: one numba signature for all callers
        queries = queries.copy()
    if backend() == "numpy":
        return reference.topk(queries, base, rows, k, kernel_metric)
    from engine.kernels import cpu

    m = queries.shape[0]
    out_s = np.full((m, k), -np.inf, np.float32)
    out_r = np.full((m, k), -1, np.int64)
    kind = cpu.L2 if kernel_metric == "l2" else cpu.IP
    if m > 1 and m * rows.shape[0] >= PARALLEL_MIN_WORK:
        cpu.topk_rows_parallel(queries, base, rows, k, kind, out_s, out_r)
    else:
        cpu.topk_rows(queries, base, rows, k, kind, out_s, out_r)
    return out_s, out_r


def warm() -> None:
    """Load (or compile) the kernels now, so the first search of a process does not pay for it."""
    if backend() == "numba":
        base = np.zeros((4, 3), np.float32)
        for metric in ("ip", "l2"):
            topk(base[:1], base, np.arange(4, dtype=np.int64), 2, metric)
            topk(base[:2], base, np.arange(4, dtype=np.int64), 2, metric)
