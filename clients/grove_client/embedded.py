"""The embedded backend: the real engine (``engine.db.Database``) in this process, acting as the admin (``ADMIN``).

Imported only when ``Client(path=...)`` is used, so a remote-only client never loads numba or RocksDB.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import cast

from engine.db import Database
from engine.jobs import JobStatus
from engine.principal import ADMIN
from engine.training import DynamicBatch, DynamicNegatives, MinedNegatives
from engine.types import PRF, CollectionInfo, Compression, SearchResult
from grove_client.backend import Backend, Closed, NegativesSession

MEMORY = ":memory:"


class EmbeddedBackend(Backend):
    """Wraps one ``Database``; ``path=":memory:"`` uses a temporary directory removed at ``close``."""

    def __init__(self, path: str | Path) -> None:
        self._tmp = None
        if str(path) == MEMORY:
            self._tmp = tempfile.TemporaryDirectory(prefix="grove-memory-")
            path = self._tmp.name
        self._db: Database | Closed = Database(path)

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
        return self._db.get_collection(collection).upsert(ids, vectors, tenant=tenant, principal=ADMIN)

    def grant(self, collection: str, ids, tenant: str, owner: str | None) -> int:
        return self._db.get_collection(collection).grant(ids, tenant=tenant, owner=owner, principal=ADMIN)

    def revoke(self, collection: str, ids, tenant: str) -> int:
        return self._db.get_collection(collection).revoke(ids, tenant=tenant, principal=ADMIN)

    def delete(self, collection: str, ids, tenant: str) -> int:
        return self._db.get_collection(collection).delete(ids, tenant=tenant, principal=ADMIN)

    def search(self, collection: str, queries, k: int, tenant: str, ef: int | None, prf: PRF | None) -> SearchResult:
        return self._db.get_collection(collection).search(queries, k=k, tenant=tenant, ef=ef, prf=prf, principal=ADMIN)

    def count(self, collection: str, tenant: str) -> int:
        return self._db.get_collection(collection).count(tenant=tenant, principal=ADMIN)

    def stats(self, collection: str) -> dict:
        return self._db.get_collection(collection).stats()

    def start_job(self, collection: str, kind: str, query_sample=None) -> JobStatus:
        col = self._db.get_collection(collection)
        if kind == "build_index":
            return cast(JobStatus, col.build_index(background=True))  # background: the job's status
        return cast(JobStatus, col.train_compression(query_sample, background=True))

    def job(self, collection: str, job_id: int) -> JobStatus:
        return self._db.get_collection(collection).jobs.status(job_id)

    def configure(self, collection: str, settings: dict) -> dict:
        return self._db.get_collection(collection).configure(**settings)

    def mine_hard_negatives_stream(
        self, collection: str, queries, positives, tenant: str, options: dict
    ) -> Iterator[tuple[int, int, MinedNegatives]]:
        col = self._db.get_collection(collection)
        yield from col.mine_hard_negatives_stream(queries, positives, tenant=tenant, principal=ADMIN, **options)

    def dynamic_negatives(self, collection: str, positives, tenant: str, k: int) -> NegativesSession:
        return _EmbeddedSession(
            self._db.get_collection(collection).dynamic_negatives(positives, tenant=tenant, k=k, principal=ADMIN)
        )

    def close(self) -> None:
        db, self._db = self._db, Closed()
        if not isinstance(db, Closed):
            db.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class _EmbeddedSession(NegativesSession):
    """The engine's own ``DynamicNegatives``, in this process."""

    def __init__(self, session: DynamicNegatives) -> None:
        self._session: DynamicNegatives | Closed = session
        self.k = session.k

    def negatives(self, query_ids, embeddings) -> DynamicBatch:
        return self._session.negatives(query_ids, embeddings)

    @property
    def stats(self) -> dict:
        return dict(self._session.stats)

    @property
    def mrr(self) -> float:
        return self._session.mrr

    def close(self) -> None:
        self._session = Closed()
