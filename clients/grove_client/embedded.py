"""The embedded backend: the real engine (``engine.db.Database``) in this process, acting as the admin.

Imported only when ``Client(path=...)`` is used, so a remote-only client never loads numba or RocksDB.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from engine.db import Database
from engine.types import CollectionInfo, Compression, SearchResult
from grove_client.backend import Backend, Closed

MEMORY = ":memory:"


class EmbeddedBackend(Backend):
    """Wraps one ``Database``; ``path=":memory:"`` uses a temporary directory removed at ``close``."""

    def __init__(self, path: str | Path) -> None:
        self._tmp = None
        if str(path) == MEMORY:
            self._tmp = tempfile.TemporaryDirectory(prefix="grove-memory-")
            path = self._tmp.name
        self._db = Database(path)

    def create_collection(self, name: str, dim: int, metric: str, compression: Compression) -> CollectionInfo:
        return self._db.create_collection(name, dim=dim, metric=metric, compression=compression).info

    def get_collection(self, name: str) -> CollectionInfo:
        return self._db.get_collection(name).info

    def list_collections(self) -> list[CollectionInfo]:
        return self._db.list_collections()

    def drop_collection(self, name: str) -> None:
        self._db.drop_collection(name)

    def create_tenant_key(self, tenant: str) -> str:
        return self._db.create_tenant_key(tenant)

    def upsert(self, collection: str, ids, vectors, tenant: str) -> int:
        return self._db.get_collection(collection).upsert(ids, vectors, tenant=tenant)

    def grant(self, collection: str, ids, tenant: str) -> int:
        return self._db.get_collection(collection).grant(ids, tenant=tenant)

    def revoke(self, collection: str, ids, tenant: str) -> int:
        return self._db.get_collection(collection).revoke(ids, tenant=tenant)

    def delete(self, collection: str, ids, tenant: str) -> int:
        return self._db.get_collection(collection).delete(ids, tenant=tenant)

    def search(self, collection: str, queries, k: int, tenant: str, ef: int | None) -> SearchResult:
        return self._db.get_collection(collection).search(queries, k=k, tenant=tenant, ef=ef)

    def count(self, collection: str, tenant: str) -> int:
        return self._db.get_collection(collection).count(tenant=tenant)

    def stats(self, collection: str) -> dict:
        return self._db.get_collection(collection).stats()

    def close(self) -> None:
        db, self._db = self._db, Closed()
        if not isinstance(db, Closed):
            db.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
