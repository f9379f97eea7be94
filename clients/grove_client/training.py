"""Training helpers for users of Grove's mining calls: TAS-Balanced batches and sentence-transformers outputs.

Re-exports, loaded on first use, of ``engine.training``'s client-side pieces (pure numpy; faiss only for
``cluster_queries``):

* ``cluster_queries(queries, n_clusters=...)`` -> ``QueryClusters``: k-means of a training query set;
* ``TopicAwareSampler``: batches drawn from one query cluster at a time (TAS, Hofstätter et al. 2021, 3.1);
* ``BalancedMarginSampler``: (positive, negative) pairs with teacher margins spread evenly (TAS-Balanced, 3.2);
* ``training_rows`` / ``write_jsonl``: mined negatives as sentence-transformers rows (``FORMATS``: triplet,
  n-tuple, labeled-pair, labeled-list), and JSON lines;

plus ``write_training_rows``, which writes a mining result, or a mining stream chunk by chunk, as JSONL.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.training import MinedNegatives

_EXPORTS = {
    "cluster_queries": "engine.training.tas",
    "QueryClusters": "engine.training.tas",
    "TopicAwareSampler": "engine.training.tas",
    "TASBatch": "engine.training.tas",
    "BalancedMarginSampler": "engine.training.tas",
    "training_rows": "engine.training.outputs",
    "write_jsonl": "engine.training.outputs",
    "FORMATS": "engine.training.outputs",
}

__all__ = [*_EXPORTS, "write_training_rows"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'grove_client.training' has no attribute {name!r}")
    return getattr(import_module(module), name)


def write_training_rows(
    target: str | os.PathLike | io.TextIOBase,
    mined: MinedNegatives | Iterable[tuple[int, int, MinedNegatives]],
    query_texts,
    positives,
    texts,
    *,
    output_format: str = "triplet",
    anchor: str = "anchor",
    positive: str = "positive",
) -> int:
    """Write mined negatives as sentence-transformers-ready JSON lines; returns the number of rows written.

    Parameters
    ----------
    target : a path (overwritten) or an open text file.
    mined : a ``MinedNegatives``, or the chunks of ``col.mine_hard_negatives_stream(...)``: each chunk is
        written as it arrives, so a large job never sits in memory whole.
    query_texts : the text of every query, in query order (the whole job's, also for a stream).
    positives : what was mined with (one id per query, or id lists), the whole job's.
    texts : passage texts by id: a mapping, a sequence indexed by id, or a function of the id.
    output_format : ``"triplet"``, ``"n-tuple"``, ``"labeled-pair"`` or ``"labeled-list"``
        (sentence-transformers' ``output_format``; see ``engine.training.outputs``).
    anchor, positive : the names of the query and positive columns.
    """
    from engine.training import MinedNegatives, training_rows, write_jsonl

    options = {"output_format": output_format, "anchor": anchor, "positive": positive}
    if isinstance(mined, MinedNegatives):
        return write_jsonl(target, training_rows(mined, query_texts, positives, texts, **options))
    if isinstance(target, (str, os.PathLike)):
        with open(target, "w", encoding="utf-8") as fh:
            return write_training_rows(fh, mined, query_texts, positives, texts, **options)
    n = 0
    for first, _total, part in mined:
        end = first + len(part)
        rows = training_rows(part, query_texts[first:end], positives[first:end], texts, **options)
        n += write_jsonl(target, rows)
    return n
