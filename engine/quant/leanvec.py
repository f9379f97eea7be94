r"""LeanVec: learned linear projections that shrink vectors from ``D`` to ``d`` dimensions (``leanvec.md`` §1.1-1.3).

Pure functions of numpy arrays; all the work is on ``D x D`` second-moment matrices, so the cost after
forming them does not depend on the number of vectors.

Convention (row vectors, as SVS): a ``Projection`` holds two float32 ``[D, d]`` matrices, the data matrix
:math:`B` and the query matrix :math:`A`; the reduced vectors are ``x @ B`` and ``q @ A`` and the search
approximates

.. math:: \langle q, x\rangle \approx \langle A^\top q, B^\top x\rangle = q^\top A B^\top x .

With :math:`K_X = \mathbb{E}[x x^\top]` and :math:`K_Q = \mathbb{E}[q q^\top]` (uncentred second moments),
the mean squared error of that approximation over all (query, vector) pairs is the LeanVec-OOD loss
(§1.3)

.. math::

    L(A, B) = \operatorname{tr}\big((I - AB^\top) K_X (I - AB^\top)^\top K_Q\big)
            = \big\| K_Q^{1/2} (I - A B^\top) K_X^{1/2} \big\|_F^2 .

``relative_loss`` divides it by :math:`\operatorname{tr}(K_Q K_X) = L(0, 0)`.

* **LeanVec-ID** (§1.2): :math:`A = B = P`, the top-``d`` eigenvectors of :math:`K_X` (PCA without centring).
* **LeanVec-OOD** (§1.3), learned from the data and a query sample, by one of

  - ``"sphering"`` (LeanVec-Sphering, arXiv 2410.22347): the exact minimiser of :math:`L` over all rank-``d``
    products. With :math:`S_Q = K_Q^{1/2}`, :math:`S_X = K_X^{1/2}` and the truncated SVD
    :math:`S_Q S_X \approx U_d \Sigma_d V_d^\top` (Eckart-Young),
    :math:`A = S_Q^{-1} U_d \Sigma_d^{1/2}`, :math:`B = S_X^{-1} V_d \Sigma_d^{1/2}`. Inverse square roots
    floor the eigenvalues at ``eps`` times the largest. Both reduced spaces then carry second moment
    :math:`\Sigma_d`, which keeps per-vector quantization (LVQ) balanced between coordinates.
  - ``"frank-wolfe"`` (paper Algorithm 1): block-coordinate Frank-Wolfe over the spectral-norm balls
    :math:`\|A\|_2, \|B\|_2 \le 1`, from :math:`A = B = P`; gradients
    :math:`\partial_A L = 2 K_Q (A B^\top K_X B - K_X B)`, :math:`\partial_B L = 2 K_X (B A^\top K_Q A - K_Q A)`,
    linear oracle :math:`U V^\top` of :math:`\operatorname{svd}(-\partial L)`, step :math:`(t+1)^{-0.999}`.
  - ``"eigen-search"`` (paper Algorithm 2): :math:`A = B = ` top-``d`` eigenvectors of
    :math:`\beta K_Q/\|K_Q\|_F + (1 - \beta) K_X/\|K_X\|_F` for :math:`\beta` on a grid (``beta = 0`` is
    LeanVec-ID), keeping the lowest loss.
  - ``"auto"`` (the default): fits LeanVec-ID (``"pca"``), ``eigen-search`` and ``sphering`` on 80% of the
    queries, compares them on the loss of the other 20% (so a projection that only fits its own sample
    loses), and refits the winner on all queries: it keeps the ID projection when nothing beats it on queries
    it has not seen (the result then has ``kind="ood"``, ``method="pca"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import InvalidArgument

OOD_METHODS = ("auto", "sphering", "frank-wolfe", "eigen-search")
_BLOCK = 16_384
_BETAS = tuple(np.linspace(0.0, 1.0, 11))


@dataclass(frozen=True)
class Projection:
    """A learned LeanVec projection ``D -> d``: ``x @ data_matrix`` and ``q @ query_matrix``.

    ``kind`` is ``"id"`` or ``"ood"`` (what was asked for); ``method`` what learned it (``"pca"``, ``"sphering"``,
    ``"frank-wolfe"``, ``"eigen-search"``); ``loss`` its relative LeanVec-OOD loss on the training queries
    (on the data itself for ``"id"``).
    """

    data_matrix: np.ndarray
    query_matrix: np.ndarray
    kind: str
    method: str
    loss: float = float("nan")

    @property
    def in_dim(self) -> int:
        return int(self.data_matrix.shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.data_matrix.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.data_matrix.nbytes + self.query_matrix.nbytes)

    def project_data(self, data: np.ndarray) -> np.ndarray:
        """float32 ``[n, d]`` reduced vectors ``data @ B``."""
        return _project(data, self.data_matrix, "vectors")

    def project_queries(self, queries: np.ndarray) -> np.ndarray:
        """float32 ``[m, d]`` reduced queries ``queries @ A``."""
        return _project(queries, self.query_matrix, "queries")


def _project(x: np.ndarray, mat: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != mat.shape[0]:
        raise InvalidArgument(f"{what} must be [n, {mat.shape[0]}] to project, got shape {arr.shape}")
    return np.ascontiguousarray(arr @ mat)


def _matrix(x: object, what: str, dim: int | None = None) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise InvalidArgument(f"{what} must be a non-empty 2-D [n, D] array, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise InvalidArgument(f"{what} have dim {arr.shape[1]}, the data has dim {dim}")
    if not np.isfinite(arr).all():
        raise InvalidArgument(f"{what} contain NaN or infinity; LeanVec learns from finite values only")
    return arr


def second_moment(x: np.ndarray) -> np.ndarray:
    r"""float64 ``[D, D]`` :math:`\frac1n \sum_i x_i x_i^\top`, accumulated over float32 blocks."""
    arr = _matrix(x, "vectors")
    acc = np.zeros((arr.shape[1], arr.shape[1]), np.float64)
    for s in range(0, arr.shape[0], _BLOCK):
        blk = np.ascontiguousarray(arr[s : s + _BLOCK])
        acc += (blk.T @ blk).astype(np.float64)
    return acc / arr.shape[0]


def loss(k_q: np.ndarray, k_x: np.ndarray, query_matrix: np.ndarray, data_matrix: np.ndarray) -> float:
    r"""The LeanVec-OOD loss :math:`\operatorname{tr}((I - AB^\top) K_X (I - AB^\top)^\top K_Q)`."""
    a = np.asarray(query_matrix, np.float64)
    b = np.asarray(data_matrix, np.float64)
    e = np.eye(k_x.shape[0]) - a @ b.T
    return float(np.einsum("ij,ji->", e @ k_x @ e.T, k_q))


def relative_loss(k_q: np.ndarray, k_x: np.ndarray, query_matrix: np.ndarray, data_matrix: np.ndarray) -> float:
    """``loss`` divided by its value for the zero projection, :math:`\\operatorname{tr}(K_Q K_X)`."""
    total = float(np.einsum("ij,ji->", k_q, k_x))
    return loss(k_q, k_x, query_matrix, data_matrix) / total if total > 0 else 0.0


def _check_dim(dim: int, full: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= int(dim) <= full:
        raise InvalidArgument(f"LeanVec dim must be an integer from 1 to the vector dim {full}, got {dim!r}")
    return int(dim)


def _top_eigvecs(k: np.ndarray, dim: int) -> np.ndarray:
    w, v = np.linalg.eigh(k)
    top = v[:, ::-1][:, :dim]
    # a deterministic sign: the largest entry of each eigenvector is positive
    signs = np.sign(top[np.abs(top).argmax(axis=0), np.arange(dim)])
    return top * np.where(signs == 0, 1.0, signs)


def _sym_pow(k: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(K^{1/2}, K^{-1/2}) of a symmetric PSD matrix, eigenvalues floored at ``eps`` x the largest."""
    w, v = np.linalg.eigh(k)
    w = np.maximum(w, max(float(w.max()), 1e-30) * eps)
    return (v * np.sqrt(w)) @ v.T, (v / np.sqrt(w)) @ v.T


def pca_from_moments(k_x: np.ndarray, dim: int) -> np.ndarray:
    """The LeanVec-ID matrix: float64 ``[D, dim]`` top eigenvectors of :math:`K_X`."""
    return _top_eigvecs(k_x, _check_dim(dim, k_x.shape[0]))


def sphering_from_moments(
    k_q: np.ndarray, k_x: np.ndarray, dim: int, *, eps: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    """LeanVec-Sphering: (A, B) float64 ``[D, dim]`` minimising the loss over rank-``dim`` products."""
    dim = _check_dim(dim, k_x.shape[0])
    s_q, s_q_inv = _sym_pow(k_q, eps)
    s_x, s_x_inv = _sym_pow(k_x, eps)
    u, sv, vt = np.linalg.svd(s_q @ s_x)
    root = np.sqrt(sv[:dim])
    return s_q_inv @ u[:, :dim] * root, s_x_inv @ vt[:dim].T * root


def frank_wolfe_from_moments(
    k_q: np.ndarray,
    k_x: np.ndarray,
    dim: int,
    *,
    max_steps: int = 500,
    tol: float = 1e-4,
    alpha: float = 0.999,
) -> tuple[np.ndarray, np.ndarray]:
    """Paper Algorithm 1 (see the module docstring), started at LeanVec-ID; stops when the relative loss
    change falls under ``tol`` or after ``max_steps``."""
    p = pca_from_moments(k_x, dim)
    a, b = p.copy(), p.copy()
    kqkx = k_q @ k_x
    prev = loss(k_q, k_x, a, b)
    for t in range(1, max_steps + 1):
        gamma = 1.0 / (t + 1) ** alpha
        grad = 2.0 * (k_q @ (a @ (b.T @ k_x @ b)) - kqkx @ b)
        u, _, vt = np.linalg.svd(-grad, full_matrices=False)
        a = (1 - gamma) * a + gamma * (u @ vt)
        grad = 2.0 * (k_x @ (b @ (a.T @ k_q @ a)) - kqkx.T @ a)
        u, _, vt = np.linalg.svd(-grad, full_matrices=False)
        b = (1 - gamma) * b + gamma * (u @ vt)
        cur = loss(k_q, k_x, a, b)
        if prev > 0 and abs(prev - cur) / prev < tol:
            break
        prev = cur
    return a, b


def eigen_search_from_moments(
    k_q: np.ndarray, k_x: np.ndarray, dim: int, *, betas: tuple[float, ...] = _BETAS
) -> tuple[np.ndarray, float]:
    """Paper Algorithm 2: (P float64 ``[D, dim]``, the chosen beta) with the lowest loss over ``betas``."""
    dim = _check_dim(dim, k_x.shape[0])
    nq = np.linalg.norm(k_q) or 1.0
    nx = np.linalg.norm(k_x) or 1.0
    if not betas:
        raise InvalidArgument("eigen-search needs at least one beta")
    fits = []
    for beta in betas:
        p = _top_eigvecs(beta * k_q / nq + (1 - beta) * k_x / nx, dim)
        fits.append((loss(k_q, k_x, p, p), float(beta), p))
    _, beta, p = min(fits, key=lambda f: (f[0], f[1]))
    return p, beta


def _fit_method(method: str, k_q: np.ndarray, k_x: np.ndarray, dim: int, eps: float):
    if method == "pca":
        p = pca_from_moments(k_x, dim)
        return p, p
    if method == "sphering":
        return sphering_from_moments(k_q, k_x, dim, eps=eps)
    if method == "frank-wolfe":
        return frank_wolfe_from_moments(k_q, k_x, dim)
    p, _ = eigen_search_from_moments(k_q, k_x, dim)
    return p, p


def fit_id(data: np.ndarray, dim: int) -> Projection:
    """LeanVec-ID from ``data`` ``[n, D]`` (float32; a sample of ~100k rows is plenty)."""
    k_x = second_moment(data)
    p = pca_from_moments(k_x, dim)
    return Projection(p.astype(np.float32), p.astype(np.float32).copy(), "id", "pca", relative_loss(k_x, k_x, p, p))


def fit_ood(
    data: np.ndarray,
    queries: np.ndarray,
    dim: int,
    *,
    method: str = "auto",
    eps: float = 1e-3,
) -> Projection:
    """LeanVec-OOD from ``data`` ``[n, D]`` and a query sample ``[m, D]`` (held out from evaluation).

    Parameters
    ----------
    data, queries : float32 arrays of the same dimension ``D``.
    dim : the reduced dimension ``d``.
    method : ``"auto"``, ``"sphering"``, ``"frank-wolfe"`` or ``"eigen-search"`` (module docstring);
        ``"auto"`` may settle on ``"pca"``.
    eps : eigenvalue floor of the inverse square roots in ``"sphering"``, relative to the largest.
    """
    if method not in OOD_METHODS:
        raise InvalidArgument(f"LeanVec-OOD method must be one of {', '.join(OOD_METHODS)}, got {method!r}")
    x = _matrix(data, "vectors")
    q = _matrix(queries, "query sample", x.shape[1])
    dim = _check_dim(dim, x.shape[1])
    k_x = second_moment(x)
    k_q = second_moment(q)
    if method == "auto":
        method = _select(q, k_x, dim, eps)
    a, b = _fit_method(method, k_q, k_x, dim, eps)
    return Projection(b.astype(np.float32), a.astype(np.float32), "ood", method, relative_loss(k_q, k_x, a, b))


def _select(q: np.ndarray, k_x: np.ndarray, dim: int, eps: float) -> str:
    """The method with the lowest loss on every fifth query when fitted on the others (``"pca"`` on ties)."""
    if q.shape[0] < 50:
        k_fit = k_val = second_moment(q)
    else:
        held = np.zeros(q.shape[0], bool)
        held[::5] = True
        k_fit, k_val = second_moment(q[~held]), second_moment(q[held])
    scores = {}
    for name in ("pca", "eigen-search", "sphering"):
        a, b = _fit_method(name, k_fit, k_x, dim, eps)
        scores[name] = loss(k_val, k_x, a, b)
    return min(scores, key=scores.__getitem__)
