"""``Client`` and ``Collection``: the one SDK API, forwarding to an embedded or a remote backend.

The same code runs against the engine in-process (``Client(path=...)``) and against a server
(``Client(url=..., api_key=...)``): same methods, same results, same exception classes.
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import InvalidArgument
from engine.types import CollectionInfo, Compression, SearchResult
from grove_client.backend import Backend


class Collection:
    """A handle on one collection; cheap to make, holds no state but its name and settings."""

    __slots__ = ("_backend", "info", "name")

    def __init__(self, backend: Backend, info: CollectionInfo) -> None:
        self._backend = backend
        self.info = info
        self.name = info.name

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def metric(self) -> str:
        return self.info.metric

    def __repr__(self) -> str:
        return f"Collection({self.name!r}, dim={self.dim}, metric={self.metric!r})"

    def upsert(self, ids, vectors, *, tenant: str) -> int:
        """Insert or overwrite ``vectors`` (float32 ``[n, dim]``) under ``ids`` (int64 ``[n]``), owned by ``tenant``.

        All-or-nothing; the same id again overwrites (idempotent). Returns the number written.
        """
        return self._backend.upsert(self.name, ids, vectors, tenant)

    def grant(self, ids, *, tenant: str) -> int:
        """Make existing vectors visible to ``tenant``; returns how many were newly granted."""
        return self._backend.grant(self.name, ids, tenant)

    def revoke(self, ids, *, tenant: str) -> int:
        """Take grants back from ``tenant``; returns how many were removed."""
        return self._backend.revoke(self.name, ids, tenant)

    def delete(self, ids, *, tenant: str) -> int:
        """Delete vectors ``tenant`` owns (and every grant of them); all-or-nothing."""
        return self._backend.delete(self.name, ids, tenant)

    def search(self, queries, *, k: int = 10, tenant: str, ef: int | None = None) -> SearchResult:
        """Top-k of the vectors ``tenant`` can see for each row of ``queries`` (float32 ``[m, dim]``).

        ``ids`` int64 ``[m, k]`` and ``scores`` float32 ``[m, k]``, best first, padded with id -1 where the
        tenant sees fewer than k. Scores: higher is better for ``ip``/``cosine``; for ``l2`` the Euclidean
        distance, lower is better. ``ef`` is the index's recall knob (None: its default).
        """
        return self._backend.search(self.name, queries, k, tenant, ef)

    def count(self, *, tenant: str) -> int:
        """How many vectors ``tenant`` can see."""
        return self._backend.count(self.name, tenant)

    def stats(self) -> dict:
        """Vector and tenant counts and the bytes each in-memory component holds."""
        return self._backend.stats(self.name)


class Client:
    """A Grove database: embedded (``path=``) or remote (``url=``), with the same methods either way.

    Parameters
    ----------
    path : a store directory for the embedded engine (created if missing); ``":memory:"`` for a temporary
        one removed at ``close``. The embedded client acts as the admin.
    url : ``host:port`` of a ``grove serve`` (``grpcs://host:port`` for TLS).
    api_key : the admin or a tenant API key (remote only; default ``$GROVE_API_KEY``).
    timeout : seconds per remote call (None: no deadline); ignored embedded.
    tls : remote only: True for TLS with the system's roots, or a PEM CA file path.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | None = None,
        tls: bool | str | Path = False,
    ) -> None:
        if (path is None) == (url is None):
            raise InvalidArgument("give exactly one of path= (embedded) or url= (remote)")
        self._backend: Backend
        if path is not None:
            if api_key is not None or tls:
                raise InvalidArgument("api_key= and tls= apply to url= only; the embedded client acts as the admin")
            from grove_client.embedded import EmbeddedBackend

            self._backend = EmbeddedBackend(path)
        else:
            from grove_client.remote import RemoteBackend

            self._backend = RemoteBackend(str(url), api_key, timeout=timeout, tls=tls)
        self.mode = "embedded" if path is not None else "remote"

    def __repr__(self) -> str:
        return f"Client(mode={self.mode!r})"

    def create_collection(
        self, name: str, *, dim: int, metric: str = "ip", compression: Compression = None
    ) -> Collection:
        """Create a collection of ``dim``-dimensional vectors compared by ``metric`` (``l2``, ``ip``, ``cosine``)."""
        return Collection(self._backend, self._backend.create_collection(name, dim, metric, compression))

    def get_collection(self, name: str) -> Collection:
        return Collection(self._backend, self._backend.get_collection(name))

    def list_collections(self) -> list[CollectionInfo]:
        return self._backend.list_collections()

    def drop_collection(self, name: str) -> None:
        self._backend.drop_collection(name)

    def create_tenant_key(self, tenant: str) -> str:
        """A new API key acting only as ``tenant`` (admin only); shown once, stored hashed."""
        return self._backend.create_tenant_key(tenant)

    def close(self) -> None:
        """Release the store (embedded: flushes it) or the channel; later calls raise ``Unavailable``."""
        self._backend.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
