"""``Client`` and ``Collection``: the one SDK API, forwarding to an embedded or a remote backend.

The same code runs against the engine in-process (``Client(path=...)``) and against a server
(``Client(url=..., api_key=...)``): same methods, same results, same exception classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import FailedPrecondition, InvalidArgument
from engine.jobs import JobStatus
from engine.types import PRF, CollectionInfo, Compression, SearchResult
from grove_client.backend import Backend, NegativesSession
from grove_client.follow import follow

if TYPE_CHECKING:
    from engine.training import DynamicBatch, MinedNegatives


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

    def grant(self, ids, *, tenant: str, owner: str | None = None) -> int:
        """Make existing vectors visible to ``tenant``; returns how many were newly granted.

        Ids are per owner: ``owner`` names whose vectors ``ids`` are. Without it the admin names vectors by id
        alone (an id that several owners use is refused with ``FailedPrecondition``), and a tenant key names the
        vectors it sees.
        """
        return self._backend.grant(self.name, ids, tenant, owner)

    def revoke(self, ids, *, tenant: str) -> int:
        """Take grants back from ``tenant``; returns how many were removed."""
        return self._backend.revoke(self.name, ids, tenant)

    def delete(self, ids, *, tenant: str) -> int:
        """Delete vectors ``tenant`` owns (and every grant of them); all-or-nothing."""
        return self._backend.delete(self.name, ids, tenant)

    def search(
        self, queries, *, k: int = 10, tenant: str, ef: int | None = None, prf: PRF | None = None
    ) -> SearchResult:
        """Top-k of the vectors ``tenant`` can see for each row of ``queries`` (float32 ``[m, dim]``).

        ``ids`` int64 ``[m, k]`` and ``scores`` float32 ``[m, k]``, best first, padded with id -1 where the
        tenant sees fewer than k. Scores: higher is better for ``ip``/``cosine``; for ``l2`` the Euclidean
        distance, lower is better. ``k`` is 1 to 10,000 (``engine.validate.MAX_K``).

        ``ef`` is the index's recall knob, counted in *vectors*: the search stops once ``ef`` candidates
        scanned in a row left its top list unchanged, so a larger ``ef`` reads more of the tenant's vectors
        (slower, higher recall). None (the default) uses 512, or a share of a large tenant's size where that is
        more (``CuratorIndex.search``); tenants of at most a few thousand vectors, and collections not yet
        indexed, are searched exactly whatever ``ef``. At most 2^20. ``prf``, a
        ``PRF(depth=3, alpha=1.0, beta=0.1)``, searches again with each query moved toward its top ``depth``
        results, :math:`q' = \\alpha q + \\beta\\,\\mathrm{mean}(\\text{top})`, renormalised to the norm of
        :math:`q` (vector pseudo-relevance feedback; helps small encoders at the cost of a second search).
        """
        return self._backend.search(self.name, queries, k, tenant, ef, prf)

    def count(self, *, tenant: str) -> int:
        """How many vectors ``tenant`` can see."""
        return self._backend.count(self.name, tenant)

    def stats(self) -> dict:
        """Vector and tenant counts, the bytes each in-memory component holds (admin only), and ``build``: the
        collection's current or last job (``state`` idle/running/done/failed, ``progress`` 0..1, ``phase``,
        ``started``/``finished`` Unix times, ``error``)."""
        return self._backend.stats(self.name)

    # ----------------------------------------------------------------------------------- index and compression
    def build_index(self, *, background: bool = False, progress: bool | None = None) -> dict | JobStatus:
        """Train (or retrain) the collection's index from its stored vectors and swap it in atomically (admin
        only). Searches go on against the old index meanwhile. Collections index themselves once they hold
        enough vectors; this indexes earlier, or retrains one whose data drifted.

        Returns the build's summary once it is done (a progress bar shows in a terminal, or with
        ``progress=True``; remote, the client follows the server's job, so no call deadline cuts a long build
        short). ``background=True`` returns the ``JobStatus`` at once; ``stats()["build"]`` or ``job()``
        follows it. While a build or a compression training runs, another is refused (``FailedPrecondition``).
        """
        return self._run_job("build_index", None, background, progress)

    def train_compression(
        self, query_sample=None, *, background: bool = False, progress: bool | None = None
    ) -> dict | JobStatus:
        """(Re)learn the collection's compression (admin only); returns a summary, or the job with
        ``background=True`` (as ``build_index``).

        ``query_sample`` float32 ``[n, dim]``: queries like the ones the collection will serve (LeanVec-OOD);
        None uses the collection's reservoir of recent queries (``configure(query_reservoir=...)``).
        """
        return self._run_job("train_compression", query_sample, background, progress)

    def job(self, job_id: int = 0) -> JobStatus:
        """The collection's job ``job_id`` (as returned by a background start), or its current or last one."""
        return self._backend.job(self.name, job_id)

    def _run_job(self, kind: str, query_sample, background: bool, progress: bool | None) -> dict | JobStatus:
        started = self._backend.start_job(self.name, kind, query_sample)
        if background:
            return started
        return follow(started, lambda job_id: self._backend.job(self.name, job_id), progress=progress)

    def configure(
        self,
        *,
        query_reservoir: int | None = None,
        auto_index_rows: int | None = None,
        refined_tree: int | None = None,
    ) -> dict:
        """Change collection settings (admin only; persisted); None leaves a setting as it is. Returns the
        settings now in force.

        ``query_reservoir``: keep a uniform sample of this many searched queries (for ``train_compression``);
        0 turns it off. ``auto_index_rows``: the size at which the collection indexes itself. ``refined_tree``:
        1 builds the index's tree refined (faster for tenants that see most of the collection, slower for many
        small ones), 0 top down, from the next index build; ``build_index()`` rebuilds now.
        """
        settings = {
            "query_reservoir": query_reservoir,
            "auto_index_rows": auto_index_rows,
            "refined_tree": refined_tree,
        }
        return self._backend.configure(self.name, settings)

    # ----------------------------------------------------------------------------------- training hooks
    def mine_hard_negatives(
        self,
        queries,
        positives,
        *,
        tenant: str,
        num_negatives: int = 3,
        range_min: int = 0,
        range_max: int | None = 100,
        absolute_margin: float | None = None,
        relative_margin: float | None = None,
        max_score: float | None = None,
        min_score: float | None = None,
        sampling: str = "top",
        random_negatives: int = 0,
        exact: bool = True,
        ef: int | None = None,
        seed: int = 0,
        chunk_size: int = 1024,
    ) -> MinedNegatives:
        """Hard negatives for each query among the vectors ``tenant`` sees (STAR), as one ``MinedNegatives``.

        Parameter names and meanings are sentence-transformers' ``mine_hard_negatives``'. For query
        :math:`q` with lowest positive score :math:`s^-`, a candidate of rank :math:`r` among the non-positive
        results (0-based) and score :math:`s` qualifies when :math:`\\text{range\\_min} \\le r <
        \\text{range\\_max}`, :math:`s \\le s^- - \\text{absolute\\_margin}`, :math:`s \\le s^-(1 -
        \\text{relative\\_margin})` and :math:`\\text{min\\_score} \\le s \\le \\text{max\\_score}` (each
        rule only when set).

        Parameters
        ----------
        queries : float32 ``[m, dim]``.
        positives : one id per query (``[m]``), an int ``[m, p]`` array padded with -1, or a list of id lists.
            Every positive is excluded; the margins use the lowest positive score.
        num_negatives : hard negatives per query.
        range_min, range_max : rank window among the non-positive candidates; ``range_max=None`` takes
            sentence-transformers' default (``range_min + num_negatives + positives``, x10 with a score rule).
        absolute_margin, relative_margin, max_score, min_score : score rules (None: off).
        sampling : ``"top"`` (best qualified first) or ``"random"`` (a seeded uniform sample of them).
        random_negatives : extra uniform negatives per query from what ``tenant`` sees (STAR).
        exact : True searches exactly; False probes the index's tree leaves in batches (``ef``: about how many
            of the tenant's vectors each query scores; default 12% of its leaves) and reports its measured
            ``recall`` (checked against exact search on a sample of each chunk).
        seed : every random choice; the same inputs and seed give the same result.
        chunk_size : queries mined per step (the server streams one message per chunk).

        Returns
        -------
        MinedNegatives
            ``ids`` int64 ``[m, num_negatives + random_negatives]`` (-1 where too few qualified), ``scores``
            float32 (-inf there), ``positive_scores`` float32 ``[m]``, ``stats`` (skipped counts), ``recall``.
        """
        from engine.training import MinedNegatives

        chunks = self.mine_hard_negatives_stream(
            queries,
            positives,
            tenant=tenant,
            num_negatives=num_negatives,
            range_min=range_min,
            range_max=range_max,
            absolute_margin=absolute_margin,
            relative_margin=relative_margin,
            max_score=max_score,
            min_score=min_score,
            sampling=sampling,
            random_negatives=random_negatives,
            exact=exact,
            ef=ef,
            seed=seed,
            chunk_size=chunk_size,
        )
        return MinedNegatives.concat([part for _, _, part in chunks])

    def mine_hard_negatives_stream(
        self,
        queries,
        positives,
        *,
        tenant: str,
        num_negatives: int = 3,
        range_min: int = 0,
        range_max: int | None = 100,
        absolute_margin: float | None = None,
        relative_margin: float | None = None,
        max_score: float | None = None,
        min_score: float | None = None,
        sampling: str = "top",
        random_negatives: int = 0,
        exact: bool = True,
        ef: int | None = None,
        seed: int = 0,
        chunk_size: int = 1024,
    ) -> Iterator[tuple[int, int, MinedNegatives]]:
        """``mine_hard_negatives`` chunk by chunk, as each chunk is mined: yields
        ``(first_row, total_rows, MinedNegatives)``; progress is ``(first_row + len(part)) / total_rows``.

        The chunks joined (``MinedNegatives.concat``) equal ``mine_hard_negatives`` with the same arguments.
        Nothing runs before the first ``next``; stopping early cancels the rest of the job. Write the rows as
        they come with ``grove_client.training.write_training_rows``.
        """
        options = {
            "num_negatives": num_negatives,
            "range_min": range_min,
            "range_max": range_max,
            "absolute_margin": absolute_margin,
            "relative_margin": relative_margin,
            "max_score": max_score,
            "min_score": min_score,
            "sampling": sampling,
            "random_negatives": random_negatives,
            "exact": exact,
            "ef": ef,
            "seed": seed,
            "chunk_size": chunk_size,
        }
        return self._backend.mine_hard_negatives_stream(self.name, queries, positives, tenant, options)

    def dynamic_negatives(self, positives, *, tenant: str, k: int = 200) -> DynamicNegativesSession:
        """Open an ADORE session: query embeddings from the encoder being trained in, the top-``k`` ids and
        scores among the frozen vectors ``tenant`` sees out, each query's positives masked.

        ``positives``: ``{query_id: id or ids}``, or a sequence whose index is the query id. Remote, the
        session holds one bidirectional stream (and one server thread) open until ``close``; use it as a
        context manager.
        """
        return DynamicNegativesSession(self._backend.dynamic_negatives(self.name, positives, tenant, k))


def _host_array(value: object) -> object:
    """A tensor of an autograd framework (torch) as a host numpy array; anything else as it is."""
    detach = getattr(value, "detach", None)
    if callable(detach) and hasattr(value, "cpu"):
        return detach().cpu().numpy()
    return value


class DynamicNegativesSession:
    """Dynamic hard negatives for a training loop (ADORE), the same embedded and remote.

    >>> with col.dynamic_negatives(positives, tenant="acme", k=200) as session:  # doctest: +SKIP
    ...     for query_ids, batch in loader:
    ...         emb = encoder(batch)                       # a torch tensor is fine: it is detached and copied
    ...         neg = session.negatives(query_ids, emb)    # DynamicBatch: ids/scores [b, k], positive ranks
    ...         loss = adore_loss(emb, neg.ids, neg.positive_ranks); loss.backward(); ...
    ...     print(session.mrr)

    ``negatives`` returns a ``DynamicBatch``; ``stats`` and ``mrr`` are the running figures of the session.
    """

    def __init__(self, session: NegativesSession) -> None:
        self._session: NegativesSession | None = session

    def _open(self) -> NegativesSession:
        if self._session is None:
            raise FailedPrecondition(
                "this dynamic-negatives session is closed; open a new one with dynamic_negatives()"
            )
        return self._session

    @property
    def k(self) -> int:
        """Negatives returned per query."""
        return self._open().k

    @property
    def stats(self) -> dict:
        """Running counts: ``batches``, ``queries``, ``hits`` (best positive retrieved), ``reciprocal_rank_sum``."""
        return self._open().stats

    @property
    def mrr(self) -> float:
        """Mean reciprocal rank of each query's best positive over every query seen (0 when not retrieved)."""
        return self._open().mrr

    def negatives(self, query_ids, embeddings) -> DynamicBatch:
        """Search ``embeddings`` (float32 ``[b, dim]``, row i for query ``query_ids[i]``), positives masked.

        A refused batch (wrong dimension, NaN, an unknown query id) raises and leaves the session usable.
        """
        return self._open().negatives(_host_array(query_ids), _host_array(embeddings))

    __call__ = negatives

    def imap(self, batches: Iterable[tuple[object, object]]) -> Iterator[DynamicBatch]:
        """``negatives`` of each ``(query_ids, embeddings)`` of ``batches``, lazily: pass a generator that
        encodes each batch with the current encoder, and every step sees the encoder as it is then."""
        for query_ids, embeddings in batches:
            yield self.negatives(query_ids, embeddings)

    def close(self) -> None:
        """End the session (remote: closes its stream); idempotent."""
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def __enter__(self) -> DynamicNegativesSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """A Grove database: embedded (``path=``) or remote (``url=``), with the same methods either way.

    Parameters
    ----------
    path : a store directory for the embedded engine (created if missing); ``":memory:"`` for a temporary
        one removed at ``close``. The embedded client acts as the admin.
    url : ``host:port`` of a ``grove serve``; ``grpcs://``, ``groves://`` or ``https://`` before it means TLS,
        ``grpc://``, ``grove://`` or ``http://`` plaintext (``grove_client.remote.server_address``).
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
