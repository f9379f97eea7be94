"""The scan codes a Curator index ranks candidates by, one class per kind of collection.

A Curator search ranks the entries of each shortlist by a short code per vector (kept by *code slot*, in leaf
order, so a shortlist's codes lie together) and rescores only the best few from the table's rows. The kernel
(``engine.kernels.tree``) reads every kind of code through the same four per-slot arrays
``(codes, mul, add, sub)`` and the query-side tuple ``kernel_args``; the score of a slot is

.. math:: s = \\text{mul} \\cdot \\langle w, c\\rangle + \\text{add} \\cdot \\textstyle\\sum_j w_j
          \\; [-\\, \\text{sub}]_{\\ell_2}

with ``w`` the query in code space (``mul``/``add`` empty: ``s = <w, c>``). Two kinds:

* ``PCACodes`` (float32 collections, Grove's own): 4-bit codes of the top principal coordinates, with the
  float32 vectors in the table reranking (see ``engine.index.curator``'s docstring).
* ``PrimaryCodes`` (compressed collections, ``leanvec.md`` §1.1): the collection codec's *primary* encoding,
  LVQ-8/LVQ-4 (or float32) of the LeanVec-reduced vector ``B^T x``, scanned with the projected query
  ``A^T q``, so ``<A^T q, B^T x~>`` approximates ``<q, x>`` (LeanVec-OOD learns ``A != B`` for shifted queries).
  LVQ's per-vector scale and bias are ``mul`` and ``add``; ``sub`` holds ``|x|^2`` for ``l2``. The table's rows
  (the secondary encoding) rerank.

Both give the tree's node priorities a space to live in: ``centroids(C)`` projects the tree centroids to where
the query's code-space vector ``qn`` is compared with them.
"""

from __future__ import annotations

import numpy as np

from engine.kernels import metrics
from engine.kernels import tree as _k
from engine.quant.codec import Codec

_EMPTY_F = np.zeros(0, np.float32)
#: principal coordinates of PCA codes used for node priorities (the codes may keep more)
NODE_DIM = 128


def _grown(a: np.ndarray, cap: int) -> np.ndarray:
    out = np.zeros((cap, *a.shape[1:]), a.dtype)
    out[: a.shape[0]] = a
    return out


def int8_rows(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``mat`` float ``[p, D]`` as int8 with one scale per row: a quarter of the bytes of float32, read by integer
    dot products (the query projection, the leaf centroids of a leaf-order scan); the relative error, ~0.4%, is
    far below the codes' own."""
    scale = (np.abs(mat).max(axis=1) / 127.0).astype(np.float32) if mat.size else np.zeros(mat.shape[0], np.float32)
    q8 = np.rint(mat / np.maximum(scale, 1e-30)[:, None]).astype(np.int8)
    return np.ascontiguousarray(q8), scale


class ScanCodes:
    """What both kinds share: the per-slot arrays and their growth, permutation and size."""

    bits: int
    kernel_args: tuple
    #: which of ``(codes, mul, add, sub)`` hold one entry per slot (the others stay empty)
    per_slot: tuple[bool, bool, bool, bool]
    width: int
    code_dtype: type = np.uint8

    def empty(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        codes: np.ndarray = np.zeros((0, self.width), self.code_dtype)
        return (codes, _EMPTY_F, _EMPTY_F, _EMPTY_F)

    def grown(self, arrays: tuple, cap: int) -> tuple:
        """``arrays`` with room for ``cap`` slots (new slots zero)."""
        return tuple(_grown(a, cap) if keep else a for a, keep in zip(arrays, self.per_slot))

    def permuted(self, arrays: tuple, old: np.ndarray) -> tuple:
        """New arrays of the same size whose first ``len(old)`` slots hold the codes of slots ``old``."""
        out = []
        for a, keep in zip(arrays, self.per_slot):
            if keep:
                b = np.zeros_like(a)
                b[: old.shape[0]] = a[old]
                a = b
            out.append(a)
        return tuple(out)

    @staticmethod
    def nbytes_of(arrays: tuple) -> int:
        return int(sum(a.nbytes for a in arrays))

    def encode(self, data: np.ndarray, rows: np.ndarray, slots: np.ndarray, arrays: tuple, sqnorms=None) -> None:
        """Write the scan codes of ``data[rows]`` into ``arrays`` at ``slots``."""
        raise NotImplementedError

    def centroids(self, cent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tree's centroids as the scan kernels read them (and their norms)."""
        raise NotImplementedError

    def nbytes(self) -> int:
        """Bytes of the parameters shared by every slot."""
        raise NotImplementedError


class PCACodes(ScanCodes):
    """4-bit scan codes of each vector's top ``dim`` principal coordinates (float32 collections).

    For ``y = P (x - mu)`` (``P``: the top ``dim`` principal directions of the training sample; ``dim`` even),
    the code is ``u = clip(round(y / scale + 7.5), 0, 15)`` with ``scale`` covering 99% of each coordinate. A
    candidate is ranked by ``(P q) . (scale * u)`` (``ip``) or ``2 (P q - P mu) . (scale * u) -
    |scale * (u - 7.5)|^2`` (``l2``), which equal the exact surrogate up to a per-query constant and the error
    of dropping the other directions and of quantising. ``sub`` is that squared norm.
    """

    bits = 4
    per_slot = (True, False, False, True)

    def __init__(self, proj: np.ndarray, poff: np.ndarray, scale: np.ndarray) -> None:
        self.proj = np.ascontiguousarray(proj, np.float32)
        self.poff = np.ascontiguousarray(poff, np.float32)
        self.scale = np.ascontiguousarray(scale, np.float32)
        self.inv_scale = (1.0 / np.maximum(self.scale, 1e-30)).astype(np.float32)
        self.dim = int(self.proj.shape[0])
        self.width = self.dim // 2
        proj8, pscale = int8_rows(self.proj)
        self.kernel_args = (proj8, pscale, self.poff, self.scale, 4)

    @classmethod
    def none(cls, d: int) -> PCACodes:
        return cls(np.zeros((0, d), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32))

    @classmethod
    def fit(cls, sample: np.ndarray, dim: int, *, max_rows: int = 50_000) -> PCACodes:
        """PCA on (at most ``max_rows`` of) ``sample``; ``dim`` is cut to the dimension and made even."""
        d = sample.shape[1]
        x = sample[:: max(1, sample.shape[0] // max_rows)].astype(np.float64)
        mu = x.mean(axis=0)
        xc = x - mu
        _, vecs = np.linalg.eigh(xc.T @ xc)
        proj = vecs[:, ::-1].T[: min(dim, d)]  # rows: principal directions, largest variance first
        if proj.shape[0] % 2:
            proj = np.concatenate([proj, np.zeros((1, d))])  # a null direction keeps the nibble pairs whole
        scale = np.percentile(np.abs(xc @ proj.T), 99.0, axis=0) / 7.5
        return cls(proj, proj @ mu, np.maximum(scale, 1e-12))

    def encode(self, data: np.ndarray, rows: np.ndarray, slots: np.ndarray, arrays: tuple, sqnorms=None) -> None:
        """Write the codes of ``data[rows]`` into slots ``slots`` of ``arrays``."""
        codes, _, _, sub = arrays
        _k.encode(data, rows, slots, self.proj, self.poff, self.inv_scale, codes, sub)

    def centroids(self, cent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tree centroids in the node-priority space: ``(P c - P mu)`` over the top ``NODE_DIM`` coordinates,
        and their squared norms."""
        nd = min(self.dim, NODE_DIM)
        pc = np.ascontiguousarray(cent @ self.proj[:nd].T - self.poff[:nd], np.float32)
        return pc, np.einsum("ij,ij->i", pc, pc).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return {"proj": self.proj, "poff": self.poff, "scale": self.scale}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> PCACodes:
        return cls(*(state[k] for k in ("proj", "poff", "scale")))

    def nbytes(self) -> int:
        return int(self.proj.nbytes + sum(a.nbytes for a in self.kernel_args[:4]) + self.inv_scale.nbytes)


class PrimaryCodes(ScanCodes):
    """A compressed collection's primary encoding as scan codes (see the module docstring).

    The primary is scanned at its first level (an ``lvq4x8`` primary as LVQ-4); ``float32`` primaries are
    scanned as float32 codes. Without a projection (``LVQ(...)`` configs) the query is used as it is.
    """

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        enc = codec.scan_encoding
        self.float_codes = enc == "float32"
        self.bits = 8 if enc in ("float32", "lvq8") else 4
        self.code_dtype = np.float32 if self.float_codes else np.uint8
        p = codec.reduced_dim
        self.dim = p
        self.width = p if self.bits == 8 else (p + 1) // 2
        l2 = metrics.KERNEL_METRIC[codec.metric] == "l2"
        self.per_slot = (True, not self.float_codes, not self.float_codes, l2)
        proj = codec.projection
        if proj is None:
            proj8, pscale = np.zeros((0, p), np.int8), np.ones(p, np.float32)
        else:
            proj8, pscale = int8_rows(np.asarray(proj.query_matrix, np.float32).T)
        zeros, ones = np.zeros(p, np.float32), np.ones(p, np.float32)
        self.kernel_args = (proj8, pscale, zeros, ones, self.bits)

    def encode(self, data: np.ndarray, rows: np.ndarray, slots: np.ndarray, arrays: tuple, sqnorms=None) -> None:
        """Write the primary codes of ``data[rows]`` (float32, prepared) into ``slots``; ``sqnorms`` (``l2``)
        are the rows' exact squared norms."""
        codes, mul, add, sub = arrays
        prim = self.codec.encode_scan(data[rows])
        if isinstance(prim, np.ndarray):  # float_codes: the primary level keeps float32 rows
            codes[slots] = prim
        else:
            codes[slots] = prim.codes
            mul[slots] = prim.scale
            add[slots] = prim.bias
        if self.per_slot[3]:
            sub[slots] = sqnorms

    def centroids(self, cent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tree centroids as the data side sees them (``B^T c``), with their full squared norms ``|c|^2``, so that
        ``|c|^2 - 2 <A^T q, B^T c>`` approximates ``|q - c|^2 - |q|^2``."""
        proj = self.codec.projection
        pc = cent if proj is None else proj.project_data(cent)
        return np.ascontiguousarray(pc, np.float32), np.einsum("ij,ij->i", cent, cent).astype(np.float32)

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.kernel_args[:4]))
