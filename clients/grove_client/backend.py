"""The fixed method list both SDK modes implement; ``Client`` and ``Collection`` only forward to it.

A method added here must be added to ``EmbeddedBackend`` and ``RemoteBackend`` (the ABC refuses to
instantiate a backend that lacks one), so the two modes cannot drift apart.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from engine.types import CollectionInfo, Compression, SearchResult


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
    def grant(self, collection: str, ids, tenant: str) -> int: ...

    @abstractmethod
    def revoke(self, collection: str, ids, tenant: str) -> int: ...

    @abstractmethod
    def delete(self, collection: str, ids, tenant: str) -> int: ...

    @abstractmethod
    def search(self, collection: str, queries, k: int, tenant: str, ef: int | None) -> SearchResult: ...

    @abstractmethod
    def count(self, collection: str, tenant: str) -> int: ...

    @abstractmethod
    def stats(self, collection: str) -> dict: ...

    @abstractmethod
    def close(self) -> None: ...


class Closed:
    """Stands in for a closed backend's engine or stub: every use raises ``Unavailable``."""

    def __getattr__(self, name: str):
        from engine.errors import Unavailable

        raise Unavailable("this client is closed; open a new Client")
