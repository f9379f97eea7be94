"""Training hooks: hard-negative mining (STAR), dynamic negatives (ADORE), topic-aware batches (TAS-Balanced),
vector pseudo-relevance feedback, and sentence-transformers-ready outputs; ``engine.training.ann`` is the
batched approximate search bulk jobs run on an index (the tree's leaves as an inverted file).

Index-agnostic: every function takes the search as a callable, so the caller's tenant scoping holds by
construction. Importing this package compiles nothing and imports neither faiss, numba nor torch;
``ScopedVectors`` (exact search over a matrix, which needs the kernels) loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.training.dynamic import DynamicBatch, DynamicNegatives
from engine.training.negatives import MinedNegatives, measure_recall, mine_hard_negatives, mine_in_chunks
from engine.training.outputs import FORMATS, training_rows, write_jsonl
from engine.training.prf import prf_queries, prf_search
from engine.training.tas import BalancedMarginSampler, QueryClusters, TASBatch, TopicAwareSampler, cluster_queries

if TYPE_CHECKING:
    from engine.training.search import ScopedVectors

__all__ = [
    "BalancedMarginSampler",
    "DynamicBatch",
    "DynamicNegatives",
    "FORMATS",
    "MinedNegatives",
    "QueryClusters",
    "ScopedVectors",
    "TASBatch",
    "TopicAwareSampler",
    "cluster_queries",
    "measure_recall",
    "mine_hard_negatives",
    "mine_in_chunks",
    "prf_queries",
    "prf_search",
    "training_rows",
    "write_jsonl",
]


def __getattr__(name: str):
    if name == "ScopedVectors":
        from engine.training.search import ScopedVectors

        return ScopedVectors
    raise AttributeError(f"module 'engine.training' has no attribute {name!r}")
