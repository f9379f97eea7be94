r"""LVQ, locally-adaptive vector quantization: global mean-centering, then per-vector scalar quantization.

Pure functions over numpy arrays (``leanvec.md`` §1.4; Aguerrebere et al., arXiv 2304.04759).

Encoding (one level, ``B`` = 8 or 4 bits)
-----------------------------------------
With the dataset mean :math:`\mu` (``fit``), each vector :math:`x \in \mathbb{R}^d` is centred,
:math:`z = x - \mu`, and quantized on its own range:

.. math::

    l = \min_j z_j, \qquad \Delta = \frac{\max_j z_j - l}{2^B - 1}, \qquad
    c_j = \operatorname{round}\!\left(\frac{z_j - l}{\Delta}\right) \in \{0, \dots, 2^B - 1\}

and decodes as :math:`\tilde x = \mu + l + \Delta c`, so :math:`|x_j - \tilde x_j| \le \Delta / 2`.
A vector whose centred coordinates are all equal has :math:`\Delta = 0`, all codes 0, and decodes exactly.

Two levels (LVQ-4x8, ``leanvec.md`` §1.4 "Two-level")
-----------------------------------------------------
The first level is LVQ-4. Its residual :math:`r = z - (l + \Delta c) \in [-\Delta/2, \Delta/2]` is quantized
with 8 bits on that interval, with no extra constants:

.. math::

    \Delta_2 = \frac{\Delta}{2^8 - 1}, \qquad
    c^{(2)}_j = \operatorname{round}\!\left(\frac{r_j + \Delta/2}{\Delta_2}\right) \in \{0, \dots, 255\},
    \qquad \tilde x = \mu + \left(l - \frac{\Delta}{2}\right) + \Delta c + \Delta_2 c^{(2)}

so :math:`|x_j - \tilde x_j| \le \Delta_2 / 2 = \Delta / 510`. A scan may read the first level alone
(:math:`\tilde x = \mu + l + \Delta c`) and a rerank both.

Layout of ``LVQCodes`` (row ``i`` is vector ``i``)
--------------------------------------------------
* ``codes`` uint8, C order. 8 bits: ``[n, d]``, byte ``j`` is :math:`c_j`. 4 bits: ``[n, h]`` with
  :math:`h = \lceil d/2 \rceil`; byte ``j`` holds :math:`c_j` in its low nibble and :math:`c_{j+h}` in its high
  nibble (0 when :math:`j + h = d`). This "split half" order lets a kernel multiply the low nibbles by
  ``q[:h]`` and the high nibbles by ``q[h:]``, two contiguous slices, without de-interleaving the query.
* ``scale`` float32 ``[n]``: :math:`\Delta` of the first level. ``bias`` float32 ``[n]``: :math:`l`.
* ``residual`` uint8 ``[n, d]`` or ``None``: :math:`c^{(2)}` (two-level only).
* The mean :math:`\mu` is not stored per code block: it belongs to the codec that encoded them.

Bytes per vector: ``d + 8`` (LVQ-8), ``ceil(d/2) + 8`` (LVQ-4), ``ceil(d/2) + d + 8`` (LVQ-4x8).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.errors import InvalidArgument

#: rows encoded per float64 block (bounds the temporary memory of ``encode``)
_BLOCK = 16_384


@dataclass(frozen=True)
class LVQCodes:
    """LVQ codes of ``n`` vectors of dimension ``dim``; see the module docstring for the exact layout.

    Parameters
    ----------
    codes : uint8 ``[n, dim]`` (``bits=8``) or ``[n, ceil(dim/2)]`` (``bits=4``), split-half nibbles.
    scale : float32 ``[n]``, the per-vector step :math:`\\Delta`.
    bias : float32 ``[n]``, the per-vector lower bound :math:`l` of the centred vector.
    bits : 4 or 8, the bits of the first level.
    dim : the vector dimension ``d``.
    residual : uint8 ``[n, dim]``, the 8-bit second level, or ``None``.
    """

    codes: np.ndarray
    scale: np.ndarray
    bias: np.ndarray
    bits: int
    dim: int
    residual: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.codes.shape[0]
        width = self.dim if self.bits == 8 else (self.dim + 1) // 2
        if self.bits not in (4, 8):
            raise InvalidArgument(f"LVQ bits must be 4 or 8, got {self.bits}")
        if self.codes.dtype != np.uint8 or self.codes.shape != (n, width):
            raise InvalidArgument(f"LVQ codes must be uint8 [{n}, {width}], got {self.codes.dtype} {self.codes.shape}")
        if self.scale.shape != (n,) or self.bias.shape != (n,):
            raise InvalidArgument(f"LVQ scale and bias must be float32 [{n}]")
        if self.residual is not None:
            if self.bits != 4:
                raise InvalidArgument("an LVQ residual level needs bits=4 (LVQ-4x8)")
            if self.residual.dtype != np.uint8 or self.residual.shape != (n, self.dim):
                raise InvalidArgument(f"LVQ residual codes must be uint8 [{n}, {self.dim}]")

    @property
    def residual_bits(self) -> int:
        return 0 if self.residual is None else 8

    @property
    def encoding(self) -> str:
        """``"lvq8"``, ``"lvq4"`` or ``"lvq4x8"``."""
        return "lvq4x8" if self.residual is not None else f"lvq{self.bits}"

    @property
    def nbytes(self) -> int:
        """Bytes held: codes, residual codes, scale and bias."""
        extra = 0 if self.residual is None else self.residual.nbytes
        return int(self.codes.nbytes + self.scale.nbytes + self.bias.nbytes + extra)

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def primary_level(self) -> LVQCodes:
        """The first level alone (drops the residual; shares the arrays)."""
        if self.residual is None:
            return self
        return LVQCodes(self.codes, self.scale, self.bias, self.bits, self.dim)

    def take(self, rows: np.ndarray) -> LVQCodes:
        """The codes of ``rows`` (a copy)."""
        rows = np.asarray(rows, np.int64)
        res = None if self.residual is None else self.residual[rows]
        return LVQCodes(self.codes[rows], self.scale[rows], self.bias[rows], self.bits, self.dim, res)


def bytes_per_vector(dim: int, bits: int, residual_bits: int = 0) -> int:
    """Bytes of one encoded vector (codes + residual + 4-byte scale + 4-byte bias)."""
    width = dim if bits == 8 else (dim + 1) // 2
    return width + (dim if residual_bits else 0) + 8


def _as_matrix(data: object, what: str) -> np.ndarray:
    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise InvalidArgument(f"{what} must be a 2-D [n, d] array with d >= 1, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidArgument(f"{what} contain NaN or infinity; LVQ encodes finite values only")
    return np.ascontiguousarray(arr)


def fit(data: np.ndarray) -> np.ndarray:
    r"""The global mean :math:`\mu` (float32 ``[d]``) that LVQ centres on (``leanvec.md`` §1.4).

    An empty ``data`` (no rows) gives the zero vector, i.e. no centring.
    """
    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim != 2:
        raise InvalidArgument(f"data must be a 2-D [n, d] array, got shape {arr.shape}")
    if arr.shape[0] == 0:
        return np.zeros(arr.shape[1], np.float32)
    arr = _as_matrix(arr, "data")
    return arr.mean(axis=0, dtype=np.float64).astype(np.float32)


def pack4(codes: np.ndarray) -> np.ndarray:
    """Pack 4-bit codes ``[n, d]`` (values 0..15) into ``[n, ceil(d/2)]`` bytes, split-half order."""
    n, d = codes.shape
    h = (d + 1) // 2
    out = codes[:, :h].astype(np.uint8)  # copy
    out[:, : d - h] |= codes[:, h:].astype(np.uint8) << 4
    return out


def unpack4(packed: np.ndarray, dim: int) -> np.ndarray:
    """Inverse of ``pack4``: uint8 ``[n, dim]`` codes 0..15."""
    h = (dim + 1) // 2
    out = np.empty((packed.shape[0], dim), np.uint8)
    out[:, :h] = packed & 0x0F
    out[:, h:] = packed[:, : dim - h] >> 4
    return out


def encode(data: np.ndarray, mean: np.ndarray, *, bits: int = 8, residual_bits: int = 0) -> LVQCodes:
    """Encode ``data`` ``[n, d]`` with LVQ-``bits`` (and an 8-bit residual level when ``residual_bits=8``).

    Parameters
    ----------
    data : float ``[n, d]`` (any order; converted to C-ordered float32). Must be finite.
    mean : float32 ``[d]``, from ``fit``.
    bits : 8 or 4.
    residual_bits : 0, or 8 with ``bits=4`` for two-level LVQ-4x8.

    Returns
    -------
    LVQCodes, with the formulas of the module docstring. The rounding uses the float32 values of
    :math:`l` and :math:`\\Delta` that are stored, so the error bounds hold for what decodes.
    """
    if bits not in (4, 8):
        raise InvalidArgument(f"LVQ bits must be 4 or 8, got {bits}")
    if residual_bits not in (0, 8) or (residual_bits and bits != 4):
        raise InvalidArgument("LVQ residual_bits must be 0, or 8 together with bits=4 (LVQ-4x8)")
    x = _as_matrix(data, "vectors")
    mu = np.asarray(mean, np.float32)
    if mu.shape != (x.shape[1],):
        raise InvalidArgument(f"LVQ mean has shape {mu.shape}, the vectors have dim {x.shape[1]}")
    n, d = x.shape
    top = float(2**bits - 1)
    codes = np.empty((n, d), np.uint8)
    scale = np.empty(n, np.float32)
    bias = np.empty(n, np.float32)
    residual = np.empty((n, d), np.uint8) if residual_bits else None
    for s in range(0, n, _BLOCK):
        z = x[s : s + _BLOCK].astype(np.float64) - mu.astype(np.float64)
        lo = z.min(axis=1).astype(np.float32)
        step = ((z.max(axis=1) - lo.astype(np.float64)) / top).astype(np.float32)
        lo64 = lo.astype(np.float64)[:, None]
        step64 = step.astype(np.float64)[:, None]
        safe = np.where(step64 > 0, step64, 1.0)
        c = np.where(step64 > 0, np.clip(np.rint((z - lo64) / safe), 0, top), 0.0)
        codes[s : s + _BLOCK] = c.astype(np.uint8)
        scale[s : s + _BLOCK] = step
        bias[s : s + _BLOCK] = lo
        if residual is not None:
            r = z - (lo64 + step64 * c)
            step2 = (step / np.float32(2**residual_bits - 1)).astype(np.float64)[:, None]
            safe2 = np.where(step2 > 0, step2, 1.0)
            c2 = np.where(step2 > 0, np.clip(np.rint((r + step64 / 2) / safe2), 0, 255), 0.0)
            residual[s : s + _BLOCK] = c2.astype(np.uint8)
    packed = codes if bits == 8 else pack4(codes)
    return LVQCodes(packed, scale, bias, bits, d, residual)


def decode(codes: LVQCodes, mean: np.ndarray, *, levels: int | None = None) -> np.ndarray:
    """Reconstruct float32 ``[n, d]`` vectors (``levels=1`` ignores a residual level; default: all levels)."""
    mu = np.asarray(mean, np.float64)
    if mu.shape != (codes.dim,):
        raise InvalidArgument(f"LVQ mean has shape {mu.shape}, the codes have dim {codes.dim}")
    c = codes.codes if codes.bits == 8 else unpack4(codes.codes, codes.dim)
    step = codes.scale.astype(np.float64)[:, None]
    lo = codes.bias.astype(np.float64)[:, None]
    z = lo + step * c
    if codes.residual is not None and levels != 1:
        step2 = (codes.scale / np.float32(255)).astype(np.float64)[:, None]
        z += step2 * codes.residual - step / 2
    return (z + mu).astype(np.float32)


def concat(parts: Sequence[LVQCodes]) -> LVQCodes:
    """Stack code blocks of the same encoding and dimension (rows in order)."""
    if not parts:
        raise InvalidArgument("concat needs at least one block of codes")
    first = parts[0]
    for p in parts[1:]:
        if (p.bits, p.dim, p.residual is None) != (first.bits, first.dim, first.residual is None):
            raise InvalidArgument(f"cannot concatenate {p.encoding} dim {p.dim} with {first.encoding} dim {first.dim}")
    res = None if first.residual is None else np.concatenate([p.residual for p in parts])
    return LVQCodes(
        np.concatenate([p.codes for p in parts]),
        np.concatenate([p.scale for p in parts]),
        np.concatenate([p.bias for p in parts]),
        first.bits,
        first.dim,
        res,
    )
