"""Loading the kernels before the first query needs them, and saying so when that means compiling them.

The native C kernels are compiled by ``pip install``; the numba kernels (the index build, compressed scans,
the fallback search) compile on their first call and are cached on disk (``cache=True``), so only the first
run after an install pays. ``warm`` runs a tiny index build and search of each metric, which loads every
kernel of the default collection's path from the cache, or compiles it, with a log line before (with an
estimate when no cache is found) and after. ``grove serve`` runs it at start beside the store's load;
``grove warm`` runs it alone (e.g. in a Dockerfile, so that containers start warm).
"""

from __future__ import annotations

import glob
import logging
import os
import time
from pathlib import Path

import numpy as np

_log = logging.getLogger("grove.warm")
#: a first compile of what ``warm`` exercises (measured on a 2-core machine; a loaded one takes longer)
COMPILE_ESTIMATE_S = 15


def numba_cache_found() -> bool:
    """Whether numba's on-disk cache holds the index kernels (``engine/kernels/__pycache__`` or
    ``$NUMBA_CACHE_DIR``): an estimate for the log line only."""
    import engine.kernels.tree as tree_kernels

    roots = [Path(tree_kernels.__file__).parent / "__pycache__"]
    if os.environ.get("NUMBA_CACHE_DIR"):
        roots.append(Path(os.environ["NUMBA_CACHE_DIR"]))
    return any(glob.glob(str(root / "**" / "tree.*.nbi"), recursive=True) for root in roots)


def exercise(n: int = 3000, dim: int = 64, seed: int = 0) -> None:
    """Build a small Curator index per metric and search it (one query and a batch) on synthetic data."""
    from engine.index.curator import CuratorIndex
    from engine.index.table import VectorTable

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    for metric in ("ip", "l2"):
        table = VectorTable(dim, capacity=n)
        slots = table.allocate(n)
        table.put(slots, np.arange(n), x, 0)
        table.fit()
        idx = CuratorIndex.build(table, metric, {0: slots, 1: slots[: n // 10]})
        for t in (0, 1):
            idx.search(x[:1], 10, t)
            idx.search(x[:4], 10, t)


_said = False


def say_if_compiling() -> None:
    """Log, once per process, that the index kernels are about to compile (when no cache is found): a first
    index build after an install otherwise pauses for seconds without a word."""
    global _said
    if _said:
        return
    _said = True
    if not numba_cache_found():
        _log.info("compiling the index kernels (the first build after an install: a few seconds, once)")


def warm() -> float:
    """Load or compile the kernels now; logs what it does and returns the seconds it took."""
    global _said
    cached = numba_cache_found()
    _said = True
    if cached:
        _log.info("loading the kernels")
    else:
        _log.info(
            "compiling the kernels: the first start after an install takes about %d s (once; later starts load "
            "them from the cache)",
            COMPILE_ESTIMATE_S,
        )
    t0 = time.perf_counter()
    exercise()
    took = time.perf_counter() - t0
    _log.info("kernels ready in %.1f s", took, extra={"fields": {"seconds": round(took, 2), "compiled": not cached}})
    return took
