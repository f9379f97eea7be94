r"""The compression an index holds: projection + primary encoding + secondary encoding, behind one interface.

``build_codec(config, data, query_sample, metric=...)`` learns what the configuration needs (the LVQ means,
the LeanVec projection) and returns a frozen ``Codec``. An index then only ever calls

* ``codec.encode(vectors) -> Encoded`` (the codes of some rows; ``concat``, ``Encoded.take``, and for an
  index that keeps codes aligned with its slots ``Encoded.resized`` and ``Encoded.write``),
* ``codec.prepare_queries(queries) -> PreparedQueries`` (once per query batch),
* ``codec.scan_topk(prepared, encoded, rows, k)``: the shortlist scan over any list of rows, on the primary codes,
* ``codec.rerank(prepared, encoded, candidates, k)``: rescoring each query's own candidates with the secondary,
* or ``codec.search(...)``, which is the scan of ``candidates`` rows followed by the rerank,

and never branches on the configuration. Scores are surrogates (higher is better; ``engine.kernels.metrics``):
``ip``/``cosine`` inner products (cosine vectors unit-normalised on the way in), ``l2`` minus squared
distances; results are (scores float32 ``[m, k]``, rows int64 ``[m, k]``) padded with (-inf, -1).

What each configuration stores and reads (``leanvec.md`` §1.1, §1.4):

================================  ===========================================  ============================
config                            primary (scanned)                            secondary (reranks)
================================  ===========================================  ============================
``None``                          float32 ``[n, D]``                           none (the scan is exact)
``LVQ(8)`` / ``LVQ(4)``           LVQ-8 / LVQ-4 codes of ``x``                 none (rerank = primary)
``LVQ(4, 8)``                     level 1 (4 bits) of LVQ-4x8 codes of ``x``   both levels of the same codes
``LeanVec(d, kind, p, s)``        encoding ``p`` of ``x @ B`` (``d`` dims)     encoding ``s`` of ``x``
================================  ===========================================  ============================

A LeanVec primary ``"lvq4x8"`` is scanned at its 4-bit level and its residual is not kept (the secondary is
what reranks), so it stores what ``"lvq4"`` does. For ``l2`` through a projection the codec also keeps
:math:`\|x\|^2` (float32, 4 bytes per vector) and scans with
:math:`2\langle A^\top q, B^\top \tilde x\rangle - \|x\|^2 - \|q\|^2`, since :math:`A \ne B` for LeanVec-OOD.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from engine.errors import InvalidArgument
from engine.kernels import lvq as kernels
from engine.kernels import metrics
from engine.quant import leanvec, lvq
from engine.types import LVQ, METRICS, LeanVec

#: rows the projection is learned from at most (evenly spaced), as SVS suggests (``leanvec.md`` §1.2)
TRAIN_ROWS = 100_000

Codes = lvq.LVQCodes | np.ndarray


@dataclass(frozen=True)
class Encoded:
    """The codes of ``n`` rows, as a ``Codec`` stores them.

    ``primary``: what the scan reads (``LVQCodes`` or float32 ``[n, d]``); ``secondary``: what the rerank
    reads (``LVQCodes``, float32 ``[n, D]``, or ``None`` when the primary reranks itself); ``sqnorms``: float32
    ``[n]`` squared norms of the original vectors (``l2`` through a projection only).
    """

    primary: Codes
    secondary: Codes | None = None
    sqnorms: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.primary)

    @property
    def nbytes(self) -> int:
        """Bytes held by all the codes (what RAM holds for search)."""
        total = self.primary.nbytes
        if self.secondary is not None:
            total += self.secondary.nbytes
        if self.sqnorms is not None:
            total += self.sqnorms.nbytes
        return int(total)

    def take(self, rows: np.ndarray) -> Encoded:
        """The codes of ``rows`` (a copy)."""
        rows = np.asarray(rows, np.int64)
        return Encoded(
            _take(self.primary, rows),
            None if self.secondary is None else _take(self.secondary, rows),
            None if self.sqnorms is None else self.sqnorms[rows],
        )

    def write(self, rows: np.ndarray, other: Encoded) -> None:
        """Copy the codes of ``other`` (row ``i``) into rows ``rows[i]`` of these arrays, in place.

        For an index that keeps one ``Encoded`` aligned with its vector slots (``resized`` grows it). The
        container is frozen, its arrays are not: the caller serialises writers against readers.
        """
        rows = np.asarray(rows, np.int64)
        if rows.shape != (len(other),):
            raise InvalidArgument(f"write needs one row per encoded vector: {rows.shape[0]} rows, {len(other)} codes")
        _write(self.primary, rows, other.primary)
        if self.secondary is not None:
            _write(self.secondary, rows, other.secondary)  # type: ignore[arg-type]
        if self.sqnorms is not None:
            self.sqnorms[rows] = other.sqnorms

    def resized(self, n: int) -> Encoded:
        """A copy with room for ``n`` rows: the first ``min(n, len(self))`` rows kept, new rows zero."""
        return Encoded(
            _resized(self.primary, n),
            None if self.secondary is None else _resized(self.secondary, n),
            None if self.sqnorms is None else _grow_array(self.sqnorms, n),
        )


def _take(codes: Codes, rows: np.ndarray) -> Codes:
    return codes.take(rows) if isinstance(codes, lvq.LVQCodes) else codes[rows]


def _write(dst: Codes, rows: np.ndarray, src: Codes) -> None:
    if isinstance(dst, lvq.LVQCodes):
        dst.codes[rows] = src.codes  # type: ignore[union-attr]
        dst.scale[rows] = src.scale  # type: ignore[union-attr]
        dst.bias[rows] = src.bias  # type: ignore[union-attr]
        if dst.residual is not None:
            dst.residual[rows] = src.residual  # type: ignore[union-attr]
    else:
        dst[rows] = src


def _grow_array(a: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, *a.shape[1:]), a.dtype)
    keep = min(n, a.shape[0])
    out[:keep] = a[:keep]
    return out


def _resized(codes: Codes, n: int) -> Codes:
    if isinstance(codes, lvq.LVQCodes):
        res = None if codes.residual is None else _grow_array(codes.residual, n)
        return lvq.LVQCodes(
            _grow_array(codes.codes, n),
            _grow_array(codes.scale, n),
            _grow_array(codes.bias, n),
            codes.bits,
            codes.dim,
            res,
        )
    return _grow_array(codes, n)


def _concat(parts: Sequence[Codes]) -> Codes:
    # every part has the first one's kind (blocks of one level)
    if isinstance(parts[0], lvq.LVQCodes):
        return lvq.concat(cast("Sequence[lvq.LVQCodes]", parts))
    return np.concatenate(cast("Sequence[np.ndarray]", parts))


def concat(parts: Sequence[Encoded]) -> Encoded:
    """Stack blocks of codes from the same codec (rows in order)."""
    if not parts:
        raise InvalidArgument("concat needs at least one block of codes")
    sec = None if parts[0].secondary is None else _concat([p.secondary for p in parts])  # type: ignore[misc]
    sq = None if parts[0].sqnorms is None else np.concatenate([p.sqnorms for p in parts])  # type: ignore[misc]
    return Encoded(_concat([p.primary for p in parts]), sec, sq)


@dataclass(frozen=True)
class PreparedQueries:
    """Queries as the codec scores them: ``full`` float32 ``[m, D]`` (unit rows for cosine) and ``reduced``
    float32 ``[m, d]`` (projected; ``full`` itself without a projection)."""

    full: np.ndarray
    reduced: np.ndarray

    def __len__(self) -> int:
        return int(self.full.shape[0])


@dataclass(frozen=True)
class _Level:
    """One stored representation: its encoding name and, for LVQ, its mean."""

    encoding: str  # "float32", "lvq8", "lvq4", "lvq4x8"
    mean: np.ndarray | None = None

    def encode(self, x: np.ndarray) -> Codes:
        if self.encoding == "float32":
            return np.ascontiguousarray(x, dtype=np.float32)
        bits, residual = (4, 8) if self.encoding == "lvq4x8" else (int(self.encoding[3:]), 0)
        return lvq.encode(x, self.mean, bits=bits, residual_bits=residual)  # type: ignore[arg-type]

    def bytes_per_vector(self, dim: int) -> int:
        if self.encoding == "float32":
            return 4 * dim
        if self.encoding == "lvq4x8":
            return lvq.bytes_per_vector(dim, 4, 8)
        return lvq.bytes_per_vector(dim, int(self.encoding[3:]))


def _topk(level: _Level, queries, codes: Codes, rows, k, metric, sqnorms, *, full: bool, per_query: bool):
    """Scan (``per_query=False``: shared ``rows``) or rerank (``per_query=True``: ``rows[i]`` per query)."""
    if isinstance(codes, np.ndarray):
        fn = kernels.dense_rerank if per_query else kernels.dense_topk
        return fn(queries, codes, rows, k, metric, sqnorms=sqnorms)
    if level.mean is None:
        raise ValueError("LVQ codes need their level's mean: fit the codec first")
    lvq_fn = kernels.lvq_rerank if per_query else kernels.lvq_topk
    return lvq_fn(
        queries,
        level.mean,
        codes.codes,
        codes.scale,
        codes.bias,
        rows,
        k,
        metric,
        bits=codes.bits,
        dim=codes.dim,
        residual=codes.residual if full else None,
        sqnorms=sqnorms,
    )


@dataclass(frozen=True)
class Codec:
    """Projection + primary + secondary for one collection (build it with ``build_codec``)."""

    config: LVQ | LeanVec | None
    metric: str
    dim: int
    primary: _Level
    secondary: _Level | None = None
    projection: leanvec.Projection | None = None
    #: the scan keeps this many candidates per query for the rerank by default (at least ``k``)
    default_candidates: int = 50

    # -- sizes ------------------------------------------------------------------------------------
    @property
    def reduced_dim(self) -> int:
        return self.dim if self.projection is None else self.projection.out_dim

    @property
    def has_rerank(self) -> bool:
        """Whether ``rerank`` reads something more precise than the scan (else ``search`` skips it)."""
        return self.secondary is not None or self.primary.encoding == "lvq4x8"

    @property
    def bytes_per_vector(self) -> int:
        """RAM per vector of ``Encoded`` (codes, residuals, per-vector constants, l2 norms)."""
        total = self.primary.bytes_per_vector(self.reduced_dim)
        if self.secondary is not None:
            total += self.secondary.bytes_per_vector(self.dim)
        if self._needs_sqnorms:
            total += 4
        return total

    @property
    def _needs_sqnorms(self) -> bool:
        return self.projection is not None and metrics.KERNEL_METRIC[self.metric] == "l2"

    # -- the split an index makes: scan codes (by the index) and rows (by the table) ---------------
    @property
    def scan_encoding(self) -> str:
        """The encoding a scan reads: the primary at its first level (``lvq4x8`` -> ``lvq4``)."""
        return "lvq4" if self.primary.encoding == "lvq4x8" else self.primary.encoding

    @property
    def rows_level(self) -> _Level:
        """What a table keeps per row to rerank (and to answer small tenants) with: the secondary, or the
        primary with all its levels when there is no secondary."""
        return self.primary if self.secondary is None else self.secondary

    def encode_scan(self, prepared: np.ndarray) -> Codes:
        """First-level primary codes of ``prepared`` rows (float32 ``[n, D]``, already prepared for the metric)."""
        x = np.ascontiguousarray(prepared, np.float32)
        reduced = x if self.projection is None else self.projection.project_data(x)
        codes = self.primary.encode(reduced)
        return codes.primary_level() if isinstance(codes, lvq.LVQCodes) else codes

    def encode_rows(self, prepared: np.ndarray) -> Codes:
        """The rows' rerank codes (``rows_level``) of ``prepared`` rows (float32 ``[n, D]``)."""
        return self.rows_level.encode(np.ascontiguousarray(prepared, np.float32))

    def state(self) -> dict[str, np.ndarray]:
        """The learned parts as arrays (the configuration itself is stored with the collection)."""
        out: dict[str, np.ndarray] = {}
        for name, level in (("primary", self.primary), ("secondary", self.secondary)):
            if level is not None and level.mean is not None:
                out[f"{name}_mean"] = level.mean
        if self.projection is not None:
            out["data_matrix"] = self.projection.data_matrix
            out["query_matrix"] = self.projection.query_matrix
            out["projection_info"] = np.frombuffer(
                f"{self.projection.kind}|{self.projection.method}|{self.projection.loss!r}".encode(), np.uint8
            ).copy()
        return out

    @classmethod
    def from_state(cls, config: LVQ | LeanVec, metric: str, dim: int, state: dict[str, np.ndarray]) -> Codec:
        """The codec ``state()`` saved, for ``config``; ``ValueError`` when the arrays do not fit it."""
        try:
            if isinstance(config, LVQ):
                return cls(config, metric, dim, _Level(config.encoding, np.asarray(state["primary_mean"], np.float32)))
            kind, method, loss = bytes(np.asarray(state["projection_info"], np.uint8)).decode().split("|")
            proj = leanvec.Projection(
                np.asarray(state["data_matrix"], np.float32),
                np.asarray(state["query_matrix"], np.float32),
                kind,
                method,
                float(loss),
            )
            if proj.in_dim != dim or proj.out_dim != config.dim:
                raise ValueError(f"saved projection is {proj.in_dim} -> {proj.out_dim}, not {dim} -> {config.dim}")
            primary = "lvq4" if config.primary == "lvq4x8" else config.primary
            levels = [
                _Level(enc, None if enc == "float32" else np.asarray(state[f"{name}_mean"], np.float32))
                for name, enc in (("primary", primary), ("secondary", config.secondary))
            ]
            return cls(config, metric, dim, levels[0], levels[1], proj)
        except KeyError as e:
            raise ValueError(f"saved codec lacks {e}") from None

    def describe(self) -> dict[str, object]:
        """What this codec stores, for stats and benchmarks."""
        out: dict[str, object] = {
            "metric": self.metric,
            "dim": self.dim,
            "primary": self.primary.encoding,
            "secondary": None if self.secondary is None else self.secondary.encoding,
            "bytes_per_vector": self.bytes_per_vector,
        }
        if self.projection is not None:
            out.update(
                reduced_dim=self.projection.out_dim,
                projection=self.projection.kind,
                method=self.projection.method,
                loss=self.projection.loss,
            )
        return out

    # -- encoding ---------------------------------------------------------------------------------
    def _vectors(self, x: object, what: str) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise InvalidArgument(f"{what} must be [n, {self.dim}], got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise InvalidArgument(f"{what} contain NaN or infinity; only finite values can be encoded")
        return np.ascontiguousarray(metrics.prepare(self.metric, arr), dtype=np.float32)

    def encode(self, vectors: np.ndarray) -> Encoded:
        """The codes of ``vectors`` float32 ``[n, D]`` (normalised first for cosine)."""
        x = self._vectors(vectors, "vectors")
        reduced = x if self.projection is None else self.projection.project_data(x)
        primary = self.primary.encode(reduced)
        secondary = None if self.secondary is None else self.secondary.encode(x)
        sq = None
        if self._needs_sqnorms:
            sq = np.einsum("ij,ij->i", x, x, dtype=np.float64).astype(np.float32)
        return Encoded(primary, secondary, sq)

    def prepare_queries(self, queries: np.ndarray) -> PreparedQueries:
        """Validate, normalise (cosine) and project the queries once per batch."""
        q = self._vectors(queries, "queries")
        reduced = q if self.projection is None else self.projection.project_queries(q)
        return PreparedQueries(q, reduced)

    # -- search -----------------------------------------------------------------------------------
    def scan_topk(
        self, queries: PreparedQueries, encoded: Encoded, rows: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of ``rows`` (int64, shared by all queries) scored on the primary codes."""
        sq = encoded.sqnorms if self._needs_sqnorms else None
        scores, out_rows = _topk(
            self.primary, queries.reduced, encoded.primary, rows, k, self.metric, sq, full=False, per_query=False
        )
        if sq is not None:
            # 2<Aq, Bx> - |x|^2 - |Aq|^2 approximates -|q - x|^2 + (|q|^2 - |Aq|^2): put |q|^2 back
            fix = (queries.reduced.astype(np.float64) ** 2).sum(1) - (queries.full.astype(np.float64) ** 2).sum(1)
            scores = np.where(out_rows >= 0, scores + fix[:, None].astype(np.float32), scores)
        return scores, out_rows

    def rerank(
        self, queries: PreparedQueries, encoded: Encoded, candidates: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of each query's own ``candidates[i]`` (int64 ``[m, c]``, -1 = padding), scored with the
        secondary codes (both LVQ levels), or with the primary where there is no secondary."""
        if self.secondary is None:
            if self.projection is not None:
                raise InvalidArgument("this codec has no secondary codes to rerank with")
            return _topk(
                self.primary, queries.full, encoded.primary, candidates, k, self.metric, None, full=True, per_query=True
            )
        return _topk(
            self.secondary,
            queries.full,
            encoded.secondary,  # type: ignore[arg-type]
            candidates,
            k,
            self.metric,
            None,
            full=True,
            per_query=True,
        )

    def search(
        self,
        queries: PreparedQueries,
        encoded: Encoded,
        rows: np.ndarray,
        k: int,
        *,
        candidates: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scan ``rows`` for ``max(k, candidates)`` candidates, then rerank them to ``k`` (``has_rerank``);
        ``candidates`` defaults to ``default_candidates`` and is the recall knob."""
        if not self.has_rerank:
            return self.scan_topk(queries, encoded, rows, k)
        c = max(k, self.default_candidates if candidates is None else int(candidates))
        _, cand = self.scan_topk(queries, encoded, rows, c)
        return self.rerank(queries, encoded, cand, k)


def _train_sample(x: np.ndarray) -> np.ndarray:
    if x.shape[0] <= TRAIN_ROWS:
        return x
    return x[np.linspace(0, x.shape[0] - 1, TRAIN_ROWS).astype(np.int64)]


def _level(encoding: str, x: np.ndarray) -> _Level:
    if encoding == "float32":
        return _Level("float32")
    return _Level(encoding, lvq.fit(x))


def build_codec(
    config: LVQ | LeanVec | None,
    data: np.ndarray,
    query_sample: np.ndarray | None = None,
    *,
    metric: str = "ip",
    ood_method: str = "auto",
    default_candidates: int = 50,
) -> Codec:
    """Learn a ``Codec`` for ``config`` from ``data`` float32 ``[n, D]`` (all rows, or a representative sample).

    Parameters
    ----------
    config : ``None`` (float32), ``LVQ(...)`` or ``LeanVec(...)`` from ``engine.types``.
    data : the vectors to learn means and projections from (at most ``TRAIN_ROWS`` evenly spaced rows are
        used for a projection).
    query_sample : float32 ``[m, D]`` queries, required by ``LeanVec(kind="ood")``, ignored otherwise.
    metric : ``"ip"``, ``"cosine"`` or ``"l2"``; cosine vectors and queries are unit-normalised first.
    ood_method : how LeanVec-OOD learns (``engine.quant.leanvec.OOD_METHODS``).
    default_candidates : candidates ``search`` reranks when not told.
    """
    if metric not in METRICS:
        raise InvalidArgument(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if config is not None and not isinstance(config, (LVQ, LeanVec)):
        raise InvalidArgument(f"compression must be None, LVQ(...) or LeanVec(...), got {config!r}")
    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidArgument(f"data must be a non-empty 2-D [n, D] array, got shape {arr.shape}")
    dim = int(arr.shape[1])
    probe = Codec(None, metric, dim, _Level("float32"))
    x = probe._vectors(arr, "data")
    if config is None:
        return Codec(None, metric, dim, _Level("float32"), default_candidates=default_candidates)
    if isinstance(config, LVQ):
        return Codec(config, metric, dim, _level(config.encoding, x), default_candidates=default_candidates)
    if config.dim > dim:
        raise InvalidArgument(f"LeanVec dim {config.dim} is larger than the vector dim {dim}; choose dim <= {dim}")
    sample = _train_sample(x)
    if config.kind == "id":
        proj = leanvec.fit_id(sample, config.dim)
    else:
        if query_sample is None:
            raise InvalidArgument(
                "LeanVec(kind='ood') learns from queries too: pass a query_sample (e.g. a few thousand recent "
                "queries), or use kind='id'"
            )
        q = probe._vectors(query_sample, "query_sample")
        proj = leanvec.fit_ood(sample, q, config.dim, method=ood_method)
    reduced = proj.project_data(x)
    # a primary is scanned at its first level only: an lvq4x8 primary is stored as lvq4
    primary = _level("lvq4" if config.primary == "lvq4x8" else config.primary, reduced)
    secondary = _level(config.secondary, x)
    return Codec(config, metric, dim, primary, secondary, proj, default_candidates=default_candidates)
