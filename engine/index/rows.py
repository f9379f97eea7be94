"""How a ``VectorTable`` keeps each row's vector in RAM: float32 (``DenseRows``) or codes (``CodedRows``).

A compressed collection keeps only codes in RAM (the float32 originals stay in the store): the rows' *rerank*
representation of its ``Codec`` (the secondary, e.g. LVQ-8 of the full vector; an ``LVQ(...)`` config's own
codes). Both stores answer the same questions, so the indexes above them do not branch on the kind:

* ``write`` / ``clear`` / ``resized`` / ``vectors(rows)`` (float32, exact or decoded);
* ``topk(queries, rows, k, metric)``: a scan of some rows (the flat index, small tenants);
* ``kernel_args``: the tuple ``engine.kernels.tree`` scores rows from
  (``data, codes, residual, scale, bias, sqnorms, mean, bits``; the unused parts empty).
"""

from __future__ import annotations

import numpy as np

from engine import kernels
from engine.kernels import lvq as lvq_kernels
from engine.kernels import metrics
from engine.kernels import tree as tree_kernels
from engine.quant import lvq
from engine.quant.codec import Codec

_U8 = np.zeros((0, 0), np.uint8)
_F = np.zeros(0, np.float32)


def _resized(a: np.ndarray, cap: int, keep: int) -> np.ndarray:
    out = np.zeros((cap, *a.shape[1:]), a.dtype)
    out[:keep] = a[:keep]
    return out


class DenseRows:
    """float32 rows, prepared for the metric: every score read from them is exact."""

    #: what the search kernels read from these rows (``engine.kernels.tree.ROWS_*``)
    rows_kind = tree_kernels.ROWS_F32

    def __init__(self, dim: int, capacity: int) -> None:
        self.dim = dim
        self.data = np.zeros((capacity, dim), np.float32)

    @property
    def capacity(self) -> int:
        return int(self.data.shape[0])

    def resized(self, cap: int, keep: int) -> None:
        self.data = _resized(self.data, cap, keep)

    def write(self, slots: np.ndarray, prepared: np.ndarray) -> None:
        self.data[slots] = prepared

    def clear(self, slots: np.ndarray) -> None:
        self.data[slots] = 0

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        return self.data[rows]

    def topk(self, queries: np.ndarray, rows: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        return kernels.topk(queries, self.data, rows, k, metric)

    @property
    def kernel_args(self) -> tuple:
        return (self.data, _U8, _U8, _F, _F, _F, _F, 8)

    def nbytes(self) -> dict[str, int]:
        return {"vectors_bytes": int(self.data.nbytes)}


class CodedRows:
    """The rows' rerank codes of a ``Codec`` (``Codec.rows_level``); scores read from them are approximate.

    LVQ rows keep ``codes``, ``scale``, ``bias`` (and ``residual`` for LVQ-4x8) per row and, for ``l2``, the
    exact squared norm of the original vector (``sqn``), scored as ``2 <q, x~> - |x|^2 - |q|^2``. A float32
    secondary is kept as a dense matrix (``data``).
    """

    def __init__(self, codec: Codec, capacity: int) -> None:
        self.codec = codec
        self.dim = codec.dim
        self.level = codec.rows_level
        self.l2 = metrics.KERNEL_METRIC[codec.metric] == "l2"
        enc = self.level.encoding
        self.dense = enc == "float32"
        self.bits = 8 if enc in ("float32", "lvq8") else 4
        self.rows_kind = {  # what the search kernels read from these rows
            "float32": tree_kernels.ROWS_F32,
            "lvq8": tree_kernels.ROWS_LVQ8,
            "lvq4x8": tree_kernels.ROWS_LVQ4X8,
            "lvq4": tree_kernels.ROWS_LVQ4,
        }[enc]
        d = self.dim
        width = d if self.bits == 8 else (d + 1) // 2
        self.data = np.zeros((capacity if self.dense else 0, d), np.float32)
        self.codes = np.zeros((0 if self.dense else capacity, width), np.uint8)
        self.residual = np.zeros((capacity, d), np.uint8) if enc == "lvq4x8" else _U8
        self.scale = _F if self.dense else np.zeros(capacity, np.float32)
        self.bias = _F if self.dense else np.zeros(capacity, np.float32)
        self.sqn = np.zeros(capacity, np.float32) if self.l2 else _F
        self.mean = _F if self.dense else np.asarray(self.level.mean, np.float32)
        self._capacity = capacity

    @property
    def capacity(self) -> int:
        return self._capacity

    def _arrays(self) -> list[str]:
        names = ["data"] if self.dense else ["codes", "scale", "bias"]
        if self.residual.shape[0]:
            names.append("residual")
        if self.l2:
            names.append("sqn")
        return names

    def resized(self, cap: int, keep: int) -> None:
        for name in self._arrays():
            setattr(self, name, _resized(getattr(self, name), cap, keep))
        self._capacity = cap

    def write(self, slots: np.ndarray, prepared: np.ndarray) -> None:
        """Encode ``prepared`` rows (float32, prepared for the metric) into ``slots``."""
        if prepared.shape[0] == 0:
            return
        enc = self.codec.encode_rows(prepared)
        if isinstance(enc, np.ndarray):  # dense: the codec keeps float32 rows
            self.data[slots] = enc
        else:
            self.codes[slots] = enc.codes
            self.scale[slots] = enc.scale
            self.bias[slots] = enc.bias
            if enc.residual is not None:
                self.residual[slots] = enc.residual
        if self.l2:
            self.sqn[slots] = np.einsum("ij,ij->i", prepared, prepared)

    def clear(self, slots: np.ndarray) -> None:
        for name in self._arrays():
            getattr(self, name)[slots] = 0

    def _codes_of(self, rows: np.ndarray) -> lvq.LVQCodes:
        res = self.residual[rows] if self.residual.shape[0] else None
        return lvq.LVQCodes(self.codes[rows], self.scale[rows], self.bias[rows], self.bits, self.dim, res)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """float32 vectors decoded from the codes (LVQ-8: within half a quantisation step per coordinate)."""
        rows = np.asarray(rows, np.int64)
        if self.dense:
            return self.data[rows]
        return lvq.decode(self._codes_of(rows), self.mean)

    def sqnorms(self, rows: np.ndarray) -> np.ndarray:
        """The originals' squared norms (kept for ``l2`` only)."""
        return self.sqn[rows]

    def topk(self, queries: np.ndarray, rows: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        if self.dense:
            return kernels.topk(queries, self.data, rows, k, metric)
        return lvq_kernels.lvq_topk(
            queries,
            self.mean,
            self.codes,
            self.scale,
            self.bias,
            rows,
            k,
            metric,
            bits=self.bits,
            dim=self.dim,
            residual=self.residual if self.residual.shape[0] else None,
            sqnorms=self.sqn if self.l2 else None,
        )

    @property
    def kernel_args(self) -> tuple:
        if self.dense:
            return (self.data, _U8, _U8, _F, _F, _F, _F, 8)
        return (self.data, self.codes, self.residual, self.scale, self.bias, self.sqn, self.mean, self.bits)

    def nbytes(self) -> dict[str, int]:
        return {"vectors_bytes": int(sum(getattr(self, n).nbytes for n in self._arrays()))}
