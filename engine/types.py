"""Small frozen values that cross every layer: collection settings, compression settings, results.

A leaf module: numpy only. Each value maps one to one onto a protobuf message in ``engine.rpc.convert``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from engine.errors import InvalidArgument

Metric = Literal["l2", "ip", "cosine"]
METRICS: tuple[str, ...] = ("l2", "ip", "cosine")
ENCODINGS: tuple[str, ...] = ("float32", "lvq8", "lvq4", "lvq4x8")


@dataclass(frozen=True)
class LVQ:
    """Locally-adaptive vector quantization of the full-dimension vectors.

    ``LVQ(bits=8)``, ``LVQ(bits=4)`` or the two-level ``LVQ(bits=4, residual_bits=8)``.
    """

    bits: int = 8
    residual_bits: int = 0

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise InvalidArgument(f"LVQ bits must be 4 or 8, got {self.bits}")
        if self.residual_bits not in (0, 8) or (self.residual_bits and self.bits != 4):
            raise InvalidArgument("LVQ residual_bits must be 0, or 8 together with bits=4 (LVQ-4x8)")

    @property
    def encoding(self) -> str:
        return "lvq4x8" if self.residual_bits else f"lvq{self.bits}"


@dataclass(frozen=True)
class LeanVec:
    """A learned projection to ``dim`` dimensions, scanned as ``primary`` and reranked with ``secondary``.

    ``kind="id"`` learns the projection from the data alone; ``kind="ood"`` also from a query sample.
    """

    dim: int = 128
    kind: Literal["id", "ood"] = "id"
    primary: str = "lvq8"
    secondary: str = "lvq8"

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or self.dim < 1:
            raise InvalidArgument(f"LeanVec dim must be a positive int, got {self.dim!r}")
        if self.kind not in ("id", "ood"):
            raise InvalidArgument(f"LeanVec kind must be 'id' or 'ood', got {self.kind!r}")
        for name in (self.primary, self.secondary):
            if name not in ENCODINGS:
                raise InvalidArgument(f"LeanVec encodings must be one of {ENCODINGS}, got {name!r}")


Compression = LVQ | LeanVec | None


@dataclass(frozen=True)
class PRF:
    """Vector pseudo-relevance feedback for one search: move each query toward its top ``depth`` results.

    ``q' = alpha * q + beta * mean(top depth results)``, renormalised to the norm of ``q``; then search again.
    """

    depth: int = 3
    alpha: float = 1.0
    beta: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or not 1 <= self.depth <= 1000:
            raise InvalidArgument(f"PRF depth must be an integer from 1 to 1000, got {self.depth!r}")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not np.isfinite(value):
                raise InvalidArgument(f"PRF {name} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class CollectionInfo:
    """What a collection is: its name, vector dimension, metric and compression."""

    name: str
    dim: int
    metric: str
    compression: Compression = None


@dataclass(frozen=True)
class SearchResult:
    """Top-k per query, best first.

    ``ids`` int64 ``[m, k]`` and ``scores`` float32 ``[m, k]``. Where a tenant sees fewer than k vectors the
    rows are padded with id ``-1`` and score ``-inf`` (``ip``, ``cosine``: higher is better) or ``+inf``
    (``l2``: the Euclidean distance, lower is better). ``counts[i]`` is the number of real hits of row i.
    """

    ids: np.ndarray
    scores: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        return (self.ids >= 0).sum(axis=1).astype(np.int32)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def recall_at(self, truth: np.ndarray, k: int | None = None) -> float:
        """Mean fraction of the ids of ``truth[:, :k]`` (ignoring -1) found in ``ids[:, :k]``."""
        k = k or self.ids.shape[1]
        hits = total = 0
        for found, want in zip(self.ids[:, :k], np.asarray(truth)[:, :k]):
            want = set(int(x) for x in want if x >= 0)
            hits += len(want & set(int(x) for x in found if x >= 0))
            total += len(want)
        return hits / max(total, 1)
