"""Grove's Python SDK: one API for the embedded engine and for a remote server.

>>> from grove_client import Client
>>> client = Client(path="./grove-data")                       # embedded, in-process
>>> client = Client(url="127.0.0.1:50051", api_key=KEY)        # remote, same methods  # doctest: +SKIP

Importing this package is cheap: numpy only. grpc loads with the first remote client, numba and RocksDB
with the first embedded one.
"""

from engine.errors import *  # noqa: F403
from engine.errors import __all__ as _errors_all
from engine.types import LVQ, CollectionInfo, LeanVec, SearchResult
from grove_client.client import Client, Collection

__all__ = ["Client", "Collection", "CollectionInfo", "SearchResult", "LVQ", "LeanVec", *_errors_all]
