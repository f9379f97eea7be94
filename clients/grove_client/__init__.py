"""Grove's Python SDK: one API for the embedded engine and for a remote server.

>>> from grove_client import Client
>>> client = Client(path="./grove-data")                       # embedded, in-process
>>> client = Client(url="127.0.0.1:50051", api_key=KEY)        # remote, same methods  # doctest: +SKIP

Importing this package is cheap: numpy only. grpc loads with the first remote client, numba and RocksDB
with the first embedded one; the training result types (``MinedNegatives``, ``DynamicBatch``) and
``grove_client.training`` (TAS-Balanced sampling, sentence-transformers outputs) load on first use.
"""

from typing import TYPE_CHECKING

from engine.errors import *  # noqa: F403
from engine.errors import __all__ as _errors_all
from engine.jobs import JobStatus
from engine.types import LVQ, PRF, CollectionInfo, LeanVec, SearchResult
from grove_client.client import Client, Collection, DynamicNegativesSession

if TYPE_CHECKING:
    from engine.training import DynamicBatch, MinedNegatives

_LAZY = {"MinedNegatives": "engine.training.negatives", "DynamicBatch": "engine.training.dynamic"}

__all__ = [
    "Client",
    "Collection",
    "CollectionInfo",
    "SearchResult",
    "JobStatus",
    "LVQ",
    "LeanVec",
    "PRF",
    "MinedNegatives",
    "DynamicBatch",
    "DynamicNegativesSession",
    *_errors_all,
]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    if name == "training":
        from importlib import import_module

        return import_module("grove_client.training")
    raise AttributeError(f"module 'grove_client' has no attribute {name!r}")
