"""Dynamic hard negatives (ADORE): retrieve with the current query encoder against a frozen document index.

ADORE (Zhan et al., SIGIR 2021, section 6) trains only the query encoder: at every step the fresh query
embeddings are searched against the fixed document index and the top ranks serve as negatives (with a
LambdaLoss-style weight that needs each positive's rank, ``--metric_cut 200`` in their code).
``DynamicNegatives`` is that step without torch: embeddings in, the top-``k`` non-positive ids and scores
out, plus where the positives ranked. The document side never changes; ``search_fn`` is the caller's
tenant-scoped search, so every negative is one the caller may see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import InvalidArgument
from engine.training import _select
from engine.training.negatives import SearchFn


@dataclass(frozen=True)
class DynamicBatch:
    """The negatives of one batch of queries.

    Attributes
    ----------
    query_ids : int64 ``[b]``, as given.
    ids : int64 ``[b, k]`` the best non-positive ids, best first, -1 where the search had fewer.
    scores : float32 ``[b, k]``, -inf where the id is -1.
    positive_ids : int64 ``[b, p]`` each query's positives, padded with -1.
    positive_ranks : int32 ``[b, p]`` 0-based rank of each positive in the unmasked results (positives
        counted), -1 when it was not within the searched depth ``k + p``.
    positive_scores : float32 ``[b, p]`` the positives' scores where ranked, -inf otherwise.
    """

    query_ids: np.ndarray
    ids: np.ndarray
    scores: np.ndarray
    positive_ids: np.ndarray
    positive_ranks: np.ndarray
    positive_scores: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])


class DynamicNegatives:
    """Top-``k`` negatives with positives masked, for query embeddings from the encoder being trained.

    Parameters
    ----------
    search_fn : ``(queries, depth) -> (ids, scores)`` over the frozen, tenant-scoped document index.
    positives : ``{query_id: id or ids}``, or a sequence whose index is the query id.
    k : negatives returned per query (ADORE's metric cut, e.g. 200).

    Calling ``negatives(query_ids, embeddings)`` returns a ``DynamicBatch``; ``stats`` keeps running
    counts (batches, queries, queries whose best positive was retrieved, the sum of its reciprocal ranks)
    so a training loop can watch the retrieval quality of its own encoder.
    """

    def __init__(self, search_fn: SearchFn, positives: object, *, k: int = 200) -> None:
        self.search_fn = search_fn
        self.k = _select.int_option(k, "k", low=1)
        self._row_of, self._positives = _select.positives_lookup(positives)
        self.stats = {"batches": 0, "queries": 0, "hits": 0, "reciprocal_rank_sum": 0.0}

    @property
    def mrr(self) -> float:
        """Mean reciprocal rank of the best positive over every query seen (0 when not retrieved)."""
        return self.stats["reciprocal_rank_sum"] / max(self.stats["queries"], 1)

    def negatives(self, query_ids: object, embeddings: object) -> DynamicBatch:
        """Search ``embeddings`` (float32 ``[b, d]``, row i for query ``query_ids[i]``) and mask the positives."""
        q = _select.queries_matrix(embeddings, "embeddings")
        qids = _select.as_ids(np.atleast_1d(np.asarray(query_ids)), "query_ids").reshape(-1)
        if qids.shape[0] != q.shape[0]:
            raise InvalidArgument(f"got {qids.shape[0]} query ids for {q.shape[0]} embeddings; give one per row")
        try:
            at = np.fromiter((self._row_of[i] for i in qids.tolist()), np.int64, qids.shape[0])
        except KeyError as exc:
            raise InvalidArgument(f"query id {exc.args[0]} has no positives; register it when constructing") from None
        pos = self._positives[at]
        pos = pos[:, : max(int((pos != _select.PAD).sum(axis=1).max()), 1)]
        b = q.shape[0]
        cand, cand_s = _select.search_result(self.search_fn(q, self.k + pos.shape[1]), b, "search_fn")
        positive = _select.is_member(cand, pos)
        other = (cand != _select.PAD) & ~positive
        cols, ok = _select.first_n(other, self.k)
        cols = np.minimum(cols, cand.shape[1] - 1)
        ids = np.where(ok, np.take_along_axis(cand, cols, axis=1), _select.PAD)
        scores = np.where(ok, np.take_along_axis(cand_s, cols, axis=1), -np.inf).astype(np.float32)
        # where each positive ranked: match positives against the unmasked results
        match = (pos[:, :, None] == cand[:, None, :]) & (pos[:, :, None] != _select.PAD)
        found = match.any(axis=2)
        ranks = np.where(found, match.argmax(axis=2), -1).astype(np.int32)
        pos_scores = np.where(found, np.take_along_axis(cand_s, np.maximum(ranks, 0), axis=1), -np.inf)
        best = np.where(found, ranks, np.iinfo(np.int32).max).min(axis=1)
        hit = best < np.iinfo(np.int32).max
        self.stats["batches"] += 1
        self.stats["queries"] += b
        self.stats["hits"] += int(hit.sum())
        self.stats["reciprocal_rank_sum"] += float((1.0 / (best[hit].astype(np.float64) + 1)).sum())
        return DynamicBatch(qids, ids, scores, pos, ranks, pos_scores.astype(np.float32))

    __call__ = negatives
