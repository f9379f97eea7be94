"""Vector pseudo-relevance feedback: move each query toward the mean of its top results, then search again.

Rocchio's update on dense vectors (as in vector-PRF for dense retrievers; PromptPRF, listed in
``shared/papers/hard-negatives.md``, extracts text features from the feedback documents instead and is
the motivation, not the method):

.. math::

    q' = \\alpha\\, q + \\beta\\, \\frac{\\sum_{j < \\text{depth}} w_j\\, d_j}{\\sum_{j < \\text{depth}} w_j}

over the ``depth`` best results :math:`d_j` of :math:`q`, with :math:`w_j = 1` (``weighting="uniform"``) or
:math:`w_j = \\max(s_j, 0)` (``"score"``). With ``normalize`` the result keeps the norm of :math:`q`, so
scores stay on the scale of the original query (cosine stays cosine). Pure numpy; the caller's search
function (tenant-scoped) runs both passes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engine.errors import InvalidArgument
from engine.training import _select
from engine.training.negatives import SearchFn

WEIGHTINGS = ("uniform", "score")
#: conservative defaults: on the shared OOD queries (MiniLM) PRF is neutral at beta <= 0.1 and lowers
#: recall@10 of the primary positive for larger beta (bench/mining.py prints the sweep); tune per encoder
DEFAULT_DEPTH = 3
DEFAULT_ALPHA = 1.0
DEFAULT_BETA = 0.1


def prf_queries(
    queries: np.ndarray,
    top_vectors: np.ndarray,
    top_scores: np.ndarray | None = None,
    *,
    depth: int = DEFAULT_DEPTH,
    alpha: float = DEFAULT_ALPHA,
    beta: float = DEFAULT_BETA,
    weighting: str = "uniform",
    normalize: bool = True,
) -> np.ndarray:
    """Rocchio-moved queries (see the module docstring).

    Parameters
    ----------
    queries : float32 ``[m, d]``.
    top_vectors : float32 ``[m, k, d]`` the vectors of each query's results, best first (``k >= 1``).
    top_scores : float ``[m, k]`` their scores; non-finite entries (padding) are left out. None: all real.
    depth : how many of the best results feed back (at most ``k`` are used).
    alpha, beta : weights of the query and of the feedback mean.
    weighting : ``"uniform"`` or ``"score"``.
    normalize : rescale each moved query to its original norm.

    Returns
    -------
    float32 ``[m, d]``; a query without any real result comes back as ``alpha * q`` (rescaled).
    """
    q = _select.queries_matrix(queries)
    v = np.asarray(top_vectors, dtype=np.float32)
    if v.ndim != 3 or v.shape[0] != q.shape[0] or v.shape[2] != q.shape[1] or v.shape[1] == 0:
        raise InvalidArgument(f"top_vectors must be [m, k, d] = [{q.shape[0]}, k >= 1, {q.shape[1]}], got {v.shape}")
    depth = min(_select.int_option(depth, "depth", low=1), v.shape[1])
    alpha = _select.number_option(alpha, "alpha")
    beta = _select.number_option(beta, "beta")
    if weighting not in WEIGHTINGS:
        raise InvalidArgument(f"weighting must be one of {', '.join(WEIGHTINGS)}; got {weighting!r}")
    v = v[:, :depth]
    if top_scores is None:
        s: np.ndarray = np.ones(v.shape[:2], np.float64)
    else:
        s = np.asarray(top_scores, dtype=np.float64)
        if s.shape[0] != q.shape[0] or s.ndim != 2 or s.shape[1] < depth:
            raise InvalidArgument(f"top_scores must be [m, k] matching top_vectors, got {s.shape}")
        s = s[:, :depth]
    real = np.isfinite(s)
    w = np.where(real, 1.0 if weighting == "uniform" else np.maximum(np.where(real, s, 0), 0), 0.0)
    total = w.sum(axis=1, keepdims=True)
    mean = np.einsum("mk,mkd->md", w / np.where(total > 0, total, 1.0), v.astype(np.float64))
    out = alpha * q.astype(np.float64) + beta * mean
    if normalize:
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        out = out * (np.linalg.norm(q, axis=1, keepdims=True) / np.where(norm > 0, norm, 1.0))
    return np.ascontiguousarray(out, dtype=np.float32)


def prf_search(
    search_fn: SearchFn,
    vectors_fn: Callable[[np.ndarray], np.ndarray],
    queries: np.ndarray,
    k: int,
    *,
    depth: int = DEFAULT_DEPTH,
    alpha: float = DEFAULT_ALPHA,
    beta: float = DEFAULT_BETA,
    weighting: str = "uniform",
    normalize: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Search, move each query toward its top ``depth`` results, search again: ``(ids, scores)`` ``[m, k]``.

    ``vectors_fn(ids [m, depth]) -> float32 [m, depth, d]`` returns the stored (prepared) vectors of ids
    the first pass found (anything for -1). Scores are those of the moved queries.
    """
    q = _select.queries_matrix(queries)
    depth = _select.int_option(depth, "depth", low=1)
    k = _select.int_option(k, "k", low=1)
    ids, scores = _select.search_result(search_fn(q, depth), q.shape[0], "search_fn")
    vecs = np.asarray(vectors_fn(ids), dtype=np.float32)
    moved = prf_queries(q, vecs, scores, depth=depth, alpha=alpha, beta=beta, weighting=weighting, normalize=normalize)
    return _select.search_result(search_fn(moved, k), q.shape[0], "search_fn")
