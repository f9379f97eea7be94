"""Topic-aware batches with balanced margin sampling (TAS-Balanced; Hofstätter et al., SIGIR 2021).

TAS clusters the training queries once, before training, and draws every batch from one cluster, so the
in-batch negatives share a topic (paper section 3.1). Balanced margin sampling picks each query's
(positive, negative) pair so that the teacher's score margins are spread evenly: margins are cut into
bins and a pair is drawn from a bin chosen uniformly (section 3.2). The paper's cluster count and bin
count are not verified here (``shared/papers/hard-negatives.md`` flags them); ``n_clusters`` is therefore
required and ``n_bins`` defaults to 10 as our choice, not the paper's.

One difference from the paper, on purpose: an epoch here is a random order of per-cluster batches that
covers every query once (clusters are drawn at random, in proportion to what they have left), where the
paper samples a cluster per batch with replacement. Coverage per epoch makes runs comparable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from engine.errors import InvalidArgument
from engine.training import _select


@dataclass(frozen=True)
class QueryClusters:
    """k-means of a query set: ``assignment`` int32 ``[m]`` (cluster of each query), ``centroids`` float32
    ``[c, d]``."""

    assignment: np.ndarray
    centroids: np.ndarray

    @property
    def sizes(self) -> np.ndarray:
        """int64 ``[c]``: queries per cluster (some may be 0)."""
        return np.bincount(self.assignment, minlength=self.centroids.shape[0])

    def members(self, cluster: int) -> np.ndarray:
        """Query indices of ``cluster``, ascending."""
        return np.flatnonzero(self.assignment == cluster)


def cluster_queries(
    queries: np.ndarray, n_clusters: int, *, seed: int = 0, niter: int = 20, spherical: bool = False
) -> QueryClusters:
    """Cluster ``queries`` (float32 ``[m, d]``) with faiss k-means, seeded; each query keeps its cluster.

    ``spherical=True`` normalises the centroids (for cosine embeddings). Results are reproducible for a
    seed on one machine and thread count (faiss sums centroid updates per thread).
    """
    import faiss

    x = _select.queries_matrix(queries)
    k = _select.int_option(n_clusters, "n_clusters", low=1)
    if k > x.shape[0]:
        raise InvalidArgument(f"n_clusters ({k}) exceeds the number of queries ({x.shape[0]}); use fewer clusters")
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=_select.int_option(niter, "niter", low=1),
        seed=_select.int_option(seed, "seed"),
        spherical=bool(spherical),
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=max(256, -(-x.shape[0] // k)),
    )
    km.train(x)
    _, assign = km.index.search(x, 1)
    return QueryClusters(assign.reshape(-1).astype(np.int32), np.asarray(km.centroids, np.float32).copy())


class BalancedMarginSampler:
    """Balanced margin sampling of one (positive, negative) pair per query from teacher scores.

    Parameters
    ----------
    query, positive, negative : int64 ``[P]``: pair t is (``positive[t]``, ``negative[t]``) for query
        index ``query[t]`` (an index into the training queries, ``0 <= query < n_queries``).
    margin : float ``[P]``: the teacher's ``score(positive) - score(negative)`` of each pair.
    n_queries : number of training queries.
    n_bins : margins are cut into ``n_bins`` equal-width bins over their whole range.

    ``sample(queries, rng)`` draws, for each query, a bin uniformly among the bins where that query has
    pairs, then a pair uniformly within the bin. Queries without pairs get (-1, -1, nan).
    """

    def __init__(self, query, positive, negative, margin, *, n_queries: int, n_bins: int = 10) -> None:
        self.n_queries = _select.int_option(n_queries, "n_queries", low=1)
        self.n_bins = _select.int_option(n_bins, "n_bins", low=1)
        qa = _select.as_ids(np.asarray(query).reshape(-1), "query")
        pa = _select.as_ids(np.asarray(positive).reshape(-1), "positive")
        na = _select.as_ids(np.asarray(negative).reshape(-1), "negative")
        ma = np.asarray(margin, dtype=np.float64).reshape(-1)
        if not qa.shape == pa.shape == na.shape == ma.shape:
            raise InvalidArgument(
                f"query, positive, negative and margin must have one entry per pair; got {qa.shape[0]}, "
                f"{pa.shape[0]}, {na.shape[0]} and {ma.shape[0]}"
            )
        if qa.size and (qa.min() < 0 or qa.max() >= self.n_queries):
            raise InvalidArgument(f"query indices must lie in [0, {self.n_queries})")
        if not np.isfinite(ma).all():
            raise InvalidArgument("teacher margins must be finite")
        lo, hi = (float(ma.min()), float(ma.max())) if ma.size else (0.0, 0.0)
        self.edges = np.linspace(lo, hi, self.n_bins + 1)
        bins = np.clip(np.searchsorted(self.edges, ma, side="right") - 1, 0, self.n_bins - 1)
        key = qa * self.n_bins + bins
        order = np.argsort(key, kind="stable")
        self._positive, self._negative, self._margin = pa[order], na[order], ma[order].astype(np.float32)
        self._start = np.searchsorted(key[order], np.arange(self.n_queries * self.n_bins + 1))
        self.counts = np.diff(self._start).reshape(self.n_queries, self.n_bins)

    @classmethod
    def from_scores(cls, positive_ids, negative_ids, teacher_positive, teacher_negative, *, n_bins: int = 10):
        """Every (positive, negative) pair of each query from ``[m, p]`` and ``[m, n]`` id grids (-1 = none)
        and the teacher's scores on the same grids, e.g. ``MinedNegatives.ids`` rescored by a cross-encoder."""
        pos = np.asarray(positive_ids, np.int64)
        neg = np.asarray(negative_ids, np.int64)
        tp = np.asarray(teacher_positive, np.float64)
        tn = np.asarray(teacher_negative, np.float64)
        if (
            pos.ndim != 2
            or neg.ndim != 2
            or pos.shape[0] != neg.shape[0]
            or (tp.shape, tn.shape) != (pos.shape, neg.shape)
        ):
            raise InvalidArgument(
                "positive_ids [m, p] and negative_ids [m, n] need teacher scores of the same shapes; got "
                f"{pos.shape}, {neg.shape}, {tp.shape}, {tn.shape}"
            )
        m, p = pos.shape
        n = neg.shape[1]
        ok = (pos[:, :, None] >= 0) & (neg[:, None, :] >= 0)
        qi = np.broadcast_to(np.arange(m)[:, None, None], (m, p, n))[ok]
        pi = np.broadcast_to(pos[:, :, None], (m, p, n))[ok]
        ni = np.broadcast_to(neg[:, None, :], (m, p, n))[ok]
        margin = (tp[:, :, None] - tn[:, None, :])[ok]
        return cls(qi, pi, ni, margin, n_queries=m, n_bins=n_bins)

    def sample(self, queries: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positive ids, negative ids, margins) ``[b]`` for the query indices ``queries``."""
        qs = np.asarray(queries, np.int64)
        if self._positive.size == 0:
            return np.full(qs.size, -1, np.int64), np.full(qs.size, -1, np.int64), np.full(qs.size, np.nan, np.float32)
        counts = self.counts[qs]
        keys = rng.random(counts.shape)
        keys[counts == 0] = -1.0
        b = keys.argmax(axis=1)
        n = counts[np.arange(qs.size), b]
        start = self._start[qs * self.n_bins + b]
        pick = start + np.minimum((rng.random(qs.size) * n).astype(np.int64), np.maximum(n - 1, 0))
        has = n > 0
        pick = np.where(has, pick, 0)
        return (
            np.where(has, self._positive[pick], -1),
            np.where(has, self._negative[pick], -1),
            np.where(has, self._margin[pick], np.nan).astype(np.float32),
        )


@dataclass(frozen=True)
class TASBatch:
    """One batch: query indices from one ``cluster``; with a margin sampler also one pair per query
    (``positives``, ``negatives``: -1 where the query has no pair; ``margins``: the teacher margin)."""

    cluster: int
    queries: np.ndarray
    positives: np.ndarray | None = None
    negatives: np.ndarray | None = None
    margins: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.queries.shape[0])


class TopicAwareSampler:
    """Batches of query indices, each from one cluster, covering every query once per epoch.

    Parameters
    ----------
    assignment : int ``[m]`` cluster of each query (``QueryClusters.assignment``, or a tree's leaves).
    batch_size : queries per batch; a cluster's last batch is smaller unless ``drop_last``.
    seed : epoch e is shuffled with ``(seed, e)``, so any epoch can be replayed.
    drop_last : drop each cluster's incomplete last batch (then an epoch misses those queries).
    pairs : a ``BalancedMarginSampler`` over the same queries, to attach one pair per query.

    Iterating runs epoch 0, then 1, ...; ``epoch(e)`` gives epoch e directly.
    """

    def __init__(
        self,
        assignment: object,
        batch_size: int,
        *,
        seed: int = 0,
        drop_last: bool = False,
        pairs: BalancedMarginSampler | None = None,
    ) -> None:
        a = _select.as_ids(np.asarray(assignment).reshape(-1), "assignment")
        if a.size == 0 or a.min() < 0:
            raise InvalidArgument("assignment must give a cluster number >= 0 for each of at least one query")
        self.assignment = a
        self.batch_size = _select.int_option(batch_size, "batch_size", low=1)
        self.seed = _select.int_option(seed, "seed")
        self.drop_last = bool(drop_last)
        if pairs is not None and pairs.n_queries != a.size:
            raise InvalidArgument(f"pairs cover {pairs.n_queries} queries but assignment has {a.size}")
        self.pairs = pairs
        self._next_epoch = 0
        sizes = np.bincount(a)
        full, rest = sizes // self.batch_size, sizes % self.batch_size
        self._len = int(full.sum() + (0 if self.drop_last else (rest > 0).sum()))

    def __len__(self) -> int:
        return self._len

    def epoch(self, e: int) -> Iterator[TASBatch]:
        """The batches of epoch ``e``, in order."""
        rng = np.random.default_rng([self.seed, _select.int_option(e, "epoch")])
        order = np.lexsort((rng.random(self.assignment.size), self.assignment))
        clusters = self.assignment[order]
        bounds = np.flatnonzero(np.diff(clusters)) + 1
        chunks = []
        for part in np.split(order, bounds):
            for s in range(0, part.size, self.batch_size):
                chunk = part[s : s + self.batch_size]
                if chunk.size == self.batch_size or not self.drop_last:
                    chunks.append(chunk)
        for j in rng.permutation(len(chunks)):
            qs = chunks[j]
            c = int(self.assignment[qs[0]])
            if self.pairs is None:
                yield TASBatch(c, qs)
            else:
                p, n, mg = self.pairs.sample(qs, rng)
                yield TASBatch(c, qs, p, n, mg)

    def __iter__(self) -> Iterator[TASBatch]:
        e = self._next_epoch
        self._next_epoch += 1
        return self.epoch(e)
