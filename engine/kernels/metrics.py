"""The one place a metric name maps to code: the surrogate the kernels compute, and its finalisation.

Kernels rank by a surrogate where higher is better (pynndescent's "fast distance alternatives"):
``ip`` and ``cosine`` by the raw inner product (cosine vectors are unit-normalised on the way in),
``l2`` by minus the squared distance. ``finalize`` runs on the k survivors only.
"""

from __future__ import annotations

import numpy as np

from engine.validate import row_norms

#: metric -> the kernel metric it is computed with
KERNEL_METRIC = {"ip": "ip", "cosine": "ip", "l2": "l2"}


def prepare(metric: str, vectors: np.ndarray) -> np.ndarray:
    """What the kernels store and scan for ``vectors`` (unit rows for cosine; the rows as given otherwise)."""
    if metric != "cosine":
        return vectors
    norms = row_norms(vectors)[:, None]
    return (vectors / np.where(norms == 0, 1, norms)).astype(np.float32)


def finalize(metric: str, scores: np.ndarray) -> np.ndarray:
    """Turn surrogate scores into user scores: l2 distance (ascending) or similarity (descending).

    Padding (-inf surrogate) becomes +inf distance for l2 and stays -inf for similarities.
    """
    if metric == "l2":
        with np.errstate(invalid="ignore"):
            return np.sqrt(np.maximum(-scores, 0, where=np.isfinite(scores), out=np.full_like(scores, np.inf)))
    return scores


def padding_score(metric: str) -> float:
    return float("inf") if metric == "l2" else float("-inf")
