"""Grove's engine: the embedded database behind the gRPC service and both SDK modes.

Importing ``engine`` is cheap (no numba compilation, no grpc); ``Database`` loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.errors import *  # noqa: F403
from engine.errors import __all__ as _errors_all  # type: ignore[attr-defined]
from engine.types import LVQ, CollectionInfo, LeanVec, SearchResult

if TYPE_CHECKING:
    from engine.db import Collection, Database

__all__ = ["Database", "Collection", "CollectionInfo", "SearchResult", "LVQ", "LeanVec", *_errors_all]


def __getattr__(name: str):
    if name in ("Database", "Collection"):
        from engine import db

        return getattr(db, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
