"""The fixed method list both SDK modes implement; ``Client`` and ``Collection`` only forward to it.

A method added here must be added to ``EmbeddedBackend`` and ``RemoteBackend`` (the ABC refuses to
instantiate a backend that lacks one), so the two modes cannot drift apart.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING

from engine.jobs import JobStatus
from engine.types import PRF, CollectionInfo, Compression, SearchResult

if TYPE_CHECKING:
    from engine.training import DynamicBatch, MinedNegatives


class Backend(ABC):
    """One Grove database, reached in-process or over gRPC. Collections are addressed by name."""

    @abstractmethod
    def create_collection(self, name: str, dim: int, metric: str, compression: Compression) -> CollectionInfo: ...

    @abstractmethod
    def get_collection(self, name: str) -> CollectionInfo: ...

    @abstractmethod
    def list_collections(self) -> list[CollectionInfo]: ...

    @abstractmethod
    def drop_collection(self, name: str) -> None: ...

    @abstractmethod
    def create_tenant_key(self, tenant: str) -> str: ...

    @abstractmethod
    def upsert(self, collection: str, ids, vectors, tenant: str) -> int: ...

    @abstractmethod
    def grant(self, collection: str, ids, tenant: str, owner: str | None) -> int: ...

    @abstractmethod
    def revoke(self, collection: str, ids, tenant: str) -> int: ...

    @abstractmethod
    def delete(self, collection: str, ids, tenant: str) -> int: ...

    @abstractmethod
    def search(
        self, collection: str, queries, k: int, tenant: str, ef: int | None, prf: PRF | None
    ) -> SearchResult: ...

    @abstractmethod
    def count(self, collection: str, tenant: str) -> int: ...

    @abstractmethod
    def stats(self, collection: str) -> dict: ...

    @abstractmethod
    def start_job(self, collection: str, kind: str, query_sample=None) -> JobStatus:
        """Start ``kind`` (``"build_index"`` or ``"train_compression"``) in the background; its status now."""

    @abstractmethod
    def job(self, collection: str, job_id: int) -> JobStatus:
        """Job ``job_id`` of the collection (0: the current or last one)."""

    @abstractmethod
    def configure(self, collection: str, settings: dict) -> dict:
        """``settings``: each of ``Collection.configure``'s keywords, None where left as it is."""

    @abstractmethod
    def mine_hard_negatives_stream(
        self, collection: str, queries, positives, tenant: str, options: dict
    ) -> Iterator[tuple[int, int, MinedNegatives]]:
        """A generator: nothing runs (and nothing is checked) before the first ``next``."""

    @abstractmethod
    def dynamic_negatives(self, collection: str, positives, tenant: str, k: int) -> NegativesSession: ...

    @abstractmethod
    def close(self) -> None: ...


class NegativesSession(ABC):
    """A backend's dynamic-negatives session (ADORE); ``grove_client.DynamicNegativesSession`` wraps it."""

    k: int

    @abstractmethod
    def negatives(self, query_ids, embeddings) -> DynamicBatch: ...

    @property
    @abstractmethod
    def stats(self) -> dict:
        """Running counts: ``batches``, ``queries``, ``hits``, ``reciprocal_rank_sum``."""

    @property
    @abstractmethod
    def mrr(self) -> float: ...

    @abstractmethod
    def close(self) -> None: ...


class Closed:
    """Stands in for a closed backend's engine or stub: every use raises ``Unavailable``."""

    def __getattr__(self, name: str):
        from engine.errors import Unavailable

        raise Unavailable("this client is closed; open a new Client")
