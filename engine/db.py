"""The embedded engine: ``Database`` (collections, tenants, API keys) and ``Collection`` (vectors, access, search).

Every write goes the same way: validate, then under the collection's writer mutex check it against the
current state, write one synced RocksDB batch, and only then apply it to memory under the write side of
the collection's readers-writer lock, so a search sees a batch whole or not at all. Searches take the
read side and run GIL-free kernels, so they proceed in parallel.

``principal`` (required, ``engine.principal``) names who is calling: ``ADMIN`` (the admin key and the embedded
SDK) or a tenant name (a tenant API key). A tenant principal may act only as itself and only on rows it can see.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine import apikeys, kernels, validate, warmup
from engine.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from engine.index.curator import CuratorIndex
from engine.index.flat import FlatIndex
from engine.index.rows import CodedRows
from engine.index.table import VectorTable
from engine.jobs import FAILED, JobSlot, JobStatus, Progress, no_progress
from engine.kernels import metrics
from engine.principal import ADMIN, Principal, acting, tenant_of
from engine.quant.codec import Codec, build_codec
from engine.reservoir import QueryReservoir
from engine.rwlock import RWLock
from engine.storage import keys
from engine.storage.store import Batch, Store
from engine.tenants import TenantRegistry
from engine.training import negatives
from engine.training.dynamic import DynamicNegatives
from engine.training.prf import prf_queries
from engine.types import LVQ, PRF, CollectionInfo, Compression, LeanVec, SearchResult

if TYPE_CHECKING:
    from engine.training.search import ScopedVectors

#: a collection is indexed (Curator) automatically once it holds this many vectors; below it every search is
#: exact (a scan of the tenant's rows: at most this many, a few milliseconds). ``build_index()`` indexes
#: earlier, ``configure(auto_index_rows=...)`` moves the threshold per collection.
AUTO_INDEX_ROWS = 100_000
#: queries per mining chunk whose approximate results are checked against exact search (``exact=False``): the
#: check costs about as much as mining ~6x as many queries approximately, so it is kept to a small sample
RECALL_SAMPLE = 16
#: the index-state key whose presence says the saved index matches the stored vectors (every write deletes it)
_CLEAN = "~clean"
_log = logging.getLogger("grove.db")
#: a collection's load says how far it is at most this often (a large store takes tens of seconds)
LOAD_PROGRESS_SECONDS = 5.0


def _compression_to_json(c: Compression) -> dict | None:
    if c is None:
        return None
    if isinstance(c, LVQ):
        return {"type": "lvq", "bits": c.bits, "residual_bits": c.residual_bits}
    return {"type": "leanvec", "dim": c.dim, "kind": c.kind, "primary": c.primary, "secondary": c.secondary}


def _compression_from_json(d: dict | None) -> Compression:
    if d is None:
        return None
    kind = d.pop("type")
    return LVQ(**d) if kind == "lvq" else LeanVec(**d)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _deleting(key: bytes) -> Batch:
    batch = Batch()
    batch.delete(key)
    return batch


class Collection:
    """A named set of vectors of one dimension and metric, shared by many tenants."""

    def __init__(self, db: Database, col_no: int, info: CollectionInfo) -> None:
        self._db = db
        self._store = db._store
        self.no = col_no
        self.info = info
        self.table = VectorTable(info.dim)
        self.index: FlatIndex | CuratorIndex = FlatIndex(self.table, info.metric)
        self._rw = RWLock()
        self._writer = threading.Lock()
        self.dropped = False
        self.auto_index_rows = AUTO_INDEX_ROWS
        self.tree_build: str | None = None  # configure(refined_tree=...): None = the server's default
        self.reservoir = QueryReservoir(0, info.dim)
        self.jobs = JobSlot(info.name)  # index builds and compression training, one at a time
        self._dirty_key = keys.index_state(col_no, _CLEAN)

    # ----------------------------------------------------------------------------------- properties
    @property
    def name(self) -> str:
        return self.info.name

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def metric(self) -> str:
        return self.info.metric

    def __repr__(self) -> str:
        return f"Collection({self.name!r}, dim={self.dim}, metric={self.metric!r}, vectors={len(self.table)})"

    # ----------------------------------------------------------------------------------- helpers
    def _check_open(self) -> None:
        if self.dropped:
            raise NotFound(f"collection {self.name!r} was dropped")

    @staticmethod
    def _acting(tenant: str, principal: Principal) -> str:
        return acting(validate.name(tenant, "tenant"), principal)

    def _not_found(self, ids: np.ndarray, bad: np.ndarray, who: str) -> NotFound:
        missing = ids[bad]
        return NotFound(
            f"{missing.size} of {ids.size} ids not found for {who} in collection {self.name!r} "
            f"(first: {missing[:5].tolist()})"
        )

    def _commit(self, batch: Batch) -> None:
        batch.delete(self._dirty_key)  # the saved index no longer matches the vectors
        self._store.write(batch)

    # ----------------------------------------------------------------------------------- writes
    def upsert(self, ids, vectors, *, tenant: str, principal: Principal) -> int:
        """Insert or overwrite vectors owned by ``tenant``; all-or-nothing. Returns the number written.

        Ids are per owner: each tenant names its own vectors, and another tenant's vector with the same id is
        neither touched nor revealed. Among the vectors one tenant sees ids stay unique, so an id that names a
        vector another tenant shared with ``tenant`` is refused (``AlreadyExists``; it sees that vector anyway).
        """
        tenant = self._acting(tenant, principal)
        ids = validate.ids(ids)
        vecs = validate.vectors(vectors, self.dim, metric=self.metric)
        validate.same_length(ids, vecs)
        with self._writer:
            self._check_open()
            with self._db.tenants.claim(tenant) as claim:
                tenant_no = claim.number
                slots = self.table.visible_slots(ids, tenant_no)
                old = slots >= 0
                shared = old & ~self.table.owned_by(slots, tenant_no)
                if shared.any():
                    raise AlreadyExists(
                        f"ids {ids[shared][:5].tolist()} name vectors another tenant shares with tenant {tenant!r} "
                        f"in collection {self.name!r}; ids are unique among the vectors a tenant sees: use others"
                    )
                batch = Batch()
                claim.record(batch)
                for key, value in keys.vector_items(self.no, tenant_no, ids, vecs):
                    batch.put(key, value)
                self._commit(batch)
                claim.committed()
            prepared = metrics.prepare(self.metric, vecs)
            with self._rw.write():
                if old.any():
                    self._replace(slots[old], prepared[old])
                new = ~old
                if new.any():
                    fresh = self.table.allocate(int(new.sum()))
                    self.table.put(fresh, ids[new], prepared[new], tenant_no)
                    self.index.add(tenant_no, fresh)
            if self._index_due():
                self._build_in_background()
        return int(ids.size)

    def _replace(self, slots: np.ndarray, prepared: np.ndarray) -> None:
        """Overwrite rows in place; indexes that place rows by value re-place them."""
        by_tenant = self._group_by_tenant(slots)
        for t, rows in by_tenant.items():
            self.index.remove(t, rows)
        self.table.store.write(slots, prepared)
        for t, rows in by_tenant.items():
            self.index.add(t, rows)

    def _group_by_tenant(self, slots: np.ndarray) -> dict[int, np.ndarray]:
        groups: dict[int, list[int]] = {}
        for s in slots.tolist():
            for t in self.table.tenants_of(s):
                groups.setdefault(t, []).append(s)
        return {t: np.array(v, np.int64) for t, v in groups.items()}

    def _grant_key(self, slot: int, tenant_no: int) -> bytes:
        return keys.grant(self.no, int(self.table.owner[slot]), int(self.table.ids[slot]), tenant_no)

    def grant(self, ids, *, tenant: str, principal: Principal, owner: str | None = None) -> int:
        """Make existing vectors visible to ``tenant`` as well; returns how many were newly granted.

        Ids are per owner: ``owner`` names whose vectors ``ids`` are. Without it the admin names vectors by id
        alone, and an id that several owners use is refused as ambiguous (``FailedPrecondition``); a tenant key
        names the vectors it sees. A grant that would show ``tenant`` two vectors with one id is refused
        (``AlreadyExists``).
        """
        tenant = self._acting(tenant, principal)
        ids = validate.ids(ids)
        if owner is not None:
            owner = validate.name(owner, "owner")
            if principal is not ADMIN and owner != principal:
                raise PermissionDenied(f"this API key acts only as tenant {principal!r}, not for owner {owner!r}")
        with self._writer:
            self._check_open()
            who = tenant_of(principal)
            if owner is not None:
                owner_no = self._db.tenants.find(owner)
                slots = np.full(ids.size, -1, np.int64) if owner_no is None else self.table.slots(ids, owner_no)
                who_text = f"owner {owner!r}"
            elif who is None:
                slots, holders = self.table.owners_of(ids)
                if (holders > 1).any():
                    raise FailedPrecondition(
                        f"ids {ids[holders > 1][:5].tolist()} name vectors of several owners in collection "
                        f"{self.name!r}; name their owner (grant(..., owner=...))"
                    )
                who_text = "any tenant"
            else:
                who_no = self._db.tenants.find(who)
                slots = np.full(ids.size, -1, np.int64) if who_no is None else self.table.visible_slots(ids, who_no)
                who_text = f"tenant {who!r}"
            if (slots < 0).any():
                raise self._not_found(ids, slots < 0, who_text)
            with self._db.tenants.claim(tenant) as claim:
                tenant_no = claim.number
                seen = self.table.visible_slots(ids, tenant_no)
                clash = (seen >= 0) & (seen != slots)
                if clash.any():
                    raise AlreadyExists(
                        f"tenant {tenant!r} already sees other vectors with ids {ids[clash][:5].tolist()} in "
                        f"collection {self.name!r}; ids are unique among the vectors a tenant sees"
                    )
                todo = seen < 0
                if not todo.any():
                    return 0
                batch = Batch()
                claim.record(batch)
                for s in slots[todo].tolist():
                    batch.put(self._grant_key(s, tenant_no), b"")
                self._commit(batch)
                claim.committed()
            with self._rw.write():
                rows = self.table.grant(slots[todo], tenant_no)
                if rows.size:
                    self.index.add(tenant_no, rows)
        return int(rows.size)

    def revoke(self, ids, *, tenant: str, principal: Principal) -> int:
        """Take back grants from ``tenant``: of the vectors it sees with ``ids``. For the admin, ids it sees none
        of are left as they are; a tenant key gets ``NotFound`` for them. Returns how many grants were removed.
        The owner's own access cannot be revoked (delete instead).
        """
        tenant = self._acting(tenant, principal)
        ids = validate.ids(ids)
        with self._writer:
            self._check_open()
            tenant_no = self._db.tenants.find(tenant)
            if tenant_no is None:
                if principal is not ADMIN:
                    raise NotFound(f"{ids.size} ids not found for tenant {tenant!r} in collection {self.name!r}")
                return 0
            slots = self.table.visible_slots(ids, tenant_no)
            if principal is not ADMIN and (slots < 0).any():  # a tenant key learns only of what it sees
                raise self._not_found(ids, slots < 0, f"tenant {tenant!r}")
            owned = self.table.owned_by(slots, tenant_no)
            if owned.any():
                raise FailedPrecondition(
                    f"tenant {tenant!r} owns ids {ids[owned][:5].tolist()}; an owner's access cannot be "
                    "revoked, delete the vectors instead"
                )
            rows = slots[slots >= 0]
            if not rows.size:
                return 0
            batch = Batch()
            for s in rows.tolist():
                batch.delete(self._grant_key(s, tenant_no))
            self._commit(batch)
            with self._rw.write():
                self.table.revoke(rows, tenant_no)
                self.index.remove(tenant_no, rows)
        return int(rows.size)

    def delete(self, ids, *, tenant: str, principal: Principal) -> int:
        """Delete vectors owned by ``tenant`` (and every grant of them); all-or-nothing."""
        tenant = self._acting(tenant, principal)
        ids = validate.ids(ids)
        with self._writer:
            self._check_open()
            tenant_no = self._db.tenants.find(tenant)
            if tenant_no is None:
                raise NotFound(f"{ids.size} ids not found for tenant {tenant!r} in collection {self.name!r}")
            slots = self.table.visible_slots(ids, tenant_no)
            if (slots < 0).any():
                raise self._not_found(ids, slots < 0, f"tenant {tenant!r}")
            not_owned = self.table.owner[slots] != tenant_no
            if not_owned.any():
                raise PermissionDenied(
                    f"ids {ids[not_owned][:5].tolist()} are shared with tenant {tenant!r} but owned by another "
                    "tenant; only the owner may delete"
                )
            batch = Batch()
            for i, s in zip(ids.tolist(), slots.tolist()):
                batch.delete(keys.vector(self.no, tenant_no, i))
                for t in self.table.grants.tenants_of(s):
                    batch.delete(keys.grant(self.no, tenant_no, i, t))
            self._commit(batch)
            with self._rw.write():
                for t, rows in self._group_by_tenant(slots).items():
                    self.index.remove(t, rows)
                self.table.free(slots)
        return int(ids.size)

    # ----------------------------------------------------------------------------------- reads
    def search(
        self,
        queries,
        *,
        k: int = 10,
        tenant: str,
        ef: int | None = None,
        prf: PRF | None = None,
        principal: Principal,
    ) -> SearchResult:
        """Top-k of the vectors ``tenant`` can see, for each query row, best first.

        Scores: inner product for ``ip``, cosine similarity for ``cosine`` (higher is better), Euclidean
        distance for ``l2`` (lower is better). Rows are padded with id -1 where the tenant sees fewer
        than k vectors; a tenant that sees nothing gets an all-padding result, not an error.
        ``ef`` is the index's recall knob (more explores more; ignored by exact search); ``prf`` re-queries
        with each query moved toward its top results (``engine.training.prf``).
        """
        tenant = self._acting(tenant, principal)
        q = validate.vectors(queries, self.dim, what="queries", metric=self.metric)
        k = validate.k(k)
        ef = None if ef is None else validate.ef(ef)
        if prf is not None and not isinstance(prf, PRF):
            raise InvalidArgument(f"prf must be a PRF(depth=..., alpha=..., beta=...) value, got {prf!r}")
        m = q.shape[0]
        validate.results(m, k + (0 if prf is None else prf.depth), "this search")
        if prf is not None:  # the queries' top vectors are read back: m x depth x dim floats
            validate.results(m * prf.depth, -(-self.dim // 3), "this search's pseudo-relevance feedback")
        self.reservoir.offer(q)
        q = metrics.prepare(self.metric, q)
        tenant_no = self._db.tenants.find(tenant)
        if tenant_no is None:
            ids = np.full((m, k), -1, np.int64)
            scores = np.full((m, k), metrics.padding_score(self.metric), np.float32)
            return SearchResult(ids, scores)
        self._rw.acquire_read()
        try:
            self._check_open()
            if prf is not None:
                s, r = self.index.search(q, prf.depth, tenant_no, ef=ef)
                top = self.table.vectors(np.maximum(r, 0).ravel()).reshape(*r.shape, self.dim)
                top[r < 0] = 0
                q = prf_queries(q, top, None, depth=prf.depth, alpha=prf.alpha, beta=prf.beta)
            scores, rows = self.index.search(q, k, tenant_no, ef=ef)
            if self.table.ids.shape[0] == 0:  # no rows at all (every one deleted, then reloaded): all padding
                ids = np.full(rows.shape, -1, np.int64)
            elif m == 1:
                ids = self.table.ids.take(rows)  # padding rows (-1) read the last row: overwritten next
                if rows[0, -1] < 0:  # padding follows the hits: the last row tells (0.5 us less)
                    ids[rows < 0] = -1
            else:  # ids replace the rows in place: a large answer is held once, not twice
                padding = rows < 0
                ids = np.take(self.table.ids, rows, out=rows, mode="wrap")
                ids[padding] = -1
        finally:
            self._rw.release_read()
        return SearchResult(ids, metrics.finalize(self.metric, scores))

    # ----------------------------------------------------------------------------------- settings
    def configure(
        self,
        *,
        query_reservoir: int | None = None,
        auto_index_rows: int | None = None,
        refined_tree: int | None = None,
    ) -> dict[str, float]:
        """Change per-collection settings; persisted with the collection. Returns the settings now in force.

        ``query_reservoir``: keep a uniform sample of this many recently searched queries (0: off), from which
        ``train_compression()`` can learn a query-aware projection. ``auto_index_rows``: the size at which the
        collection indexes itself (``AUTO_INDEX_ROWS`` by default). ``refined_tree``: 1 builds the Curator tree
        refined (``engine.index.tree``: 1.3-1.4x the QPS at recall 0.95 of a tenant that sees the whole
        collection, on out-of-distribution queries, at a 5-8% cost to many small tenants and 1.5x to single
        inserts), 0 top down; from the next index build (``build_index()`` rebuilds now). Unset, the server's
        default (``GROVE_TREE_BUILD``) applies, else the index's choice: refined when one tenant sees at least
        half of the vectors (``engine.index.curator.REFINED_TENANT_SHARE``), else top down.
        """
        options = {"query_reservoir": query_reservoir, "auto_index_rows": auto_index_rows, "refined_tree": refined_tree}
        given = {name: value for name, value in options.items() if value is not None}
        for name, value in given.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgument(f"{name} must be a non-negative integer, got {value!r}")
        if given.get("refined_tree", 0) > 1:
            raise InvalidArgument(f"refined_tree must be 0 or 1, got {given['refined_tree']!r}")
        with self._writer:
            self._check_open()
            settings = {**self._settings(), **{name: int(value) for name, value in given.items()}}
            self._db._save_settings(self, settings)
            self._apply_settings(settings)
        return {k: float(v) for k, v in settings.items()}

    def _settings(self) -> dict[str, int]:
        out = {"query_reservoir": self.reservoir.capacity, "auto_index_rows": self.auto_index_rows}
        if self.tree_build is not None:  # only once set: otherwise the server's default stays in force
            out["refined_tree"] = int(self.tree_build == "refined")
        return out

    def _apply_settings(self, settings: dict[str, int]) -> None:
        if settings.get("query_reservoir", 0) != self.reservoir.capacity:
            self.reservoir = QueryReservoir(settings.get("query_reservoir", 0), self.dim)
        self.auto_index_rows = settings.get("auto_index_rows", AUTO_INDEX_ROWS)
        refined = settings.get("refined_tree")
        self.tree_build = None if refined is None else ("refined" if refined else "topdown")

    def train_compression(self, query_sample=None, *, background: bool = False) -> dict[str, float] | JobStatus:
        """(Re)learn the collection's codec from its vectors and ``query_sample`` (default: the query reservoir),
        re-encode every row and rebuild the index, then swap them in atomically.

        LeanVec-OOD learns its projection from the queries as well (``engine.quant.leanvec``); LeanVec-ID and
        LVQ learn from the vectors alone. Searches go on against the old codes while this runs; writes wait.
        The codec is stored, so a restart encodes with the same one. Returns a summary; with
        ``background=True`` it returns the job's status at once (``stats()["build"]`` follows it). Refused
        (``FailedPrecondition``) while another build or training runs.
        """
        config = self.info.compression
        if config is None:
            raise FailedPrecondition(
                f"collection {self.name!r} stores float32 vectors; create it with compression=LVQ(...) or "
                "LeanVec(...) to train a compression"
            )
        sample = None
        if query_sample is not None:
            sample = validate.vectors(query_sample, self.dim, what="query_sample", metric=self.metric)
        elif isinstance(config, LeanVec) and config.kind == "ood" and not len(self.reservoir):
            raise FailedPrecondition(
                "LeanVec(kind='ood') learns from queries: pass query_sample=..., or turn on the query "
                "reservoir with configure(query_reservoir=N) and search first"
            )
        if len(self.table) == 0:
            raise FailedPrecondition(f"collection {self.name!r} is empty: upsert vectors before training")

        def train(progress: Progress) -> dict[str, float]:
            with self._writer:
                self._check_open()
                queries = sample if sample is not None else (self.reservoir.sample() if len(self.reservoir) else None)
                return self._train_codec_locked(queries, progress)

        return self._job("train_compression", train, background)

    def _job(self, kind: str, work, background: bool) -> dict[str, float] | JobStatus:
        """Run ``work`` as the collection's job: here and now, or in the background (returning its status)."""
        self._check_open()
        if not background:
            return self.jobs.run(kind, work)
        return self.jobs.start(kind, work, on_error=lambda exc: self._log_failure(kind, exc))

    def _log_failure(self, kind: str, exc: BaseException) -> None:
        _log.error("collection %r: the background %s failed", self.name, kind, exc_info=exc)

    def _train_codec_locked(
        self, query_sample: np.ndarray | None, progress: Progress = no_progress
    ) -> dict[str, float]:
        """Learn, store and install a codec (caller holds the writer mutex); see ``train_compression``."""
        config = self.info.compression
        if len(self.table) == 0:
            raise FailedPrecondition(f"collection {self.name!r} is empty: upsert vectors before training")
        t0 = time.perf_counter()
        progress(0.0, "learning the codec")
        live = np.flatnonzero(self.table.owner >= 0)
        pick = live[np.linspace(0, live.shape[0] - 1, min(live.shape[0], 100_000)).astype(np.int64)]
        if isinstance(config, LeanVec) and config.kind == "ood" and query_sample is None:
            config = replace(config, kind="id")  # no queries seen yet: the data's own projection until there are
        codec = build_codec(config, self._originals(pick), query_sample, metric=self.metric)
        progress(0.3, "encoding the vectors")
        table = self.table.compressed(codec, self._originals)  # from the originals, never from older codes
        index: FlatIndex | CuratorIndex | None = None
        if self._indexed():
            index = CuratorIndex.build(
                table,
                self.metric,
                table.visible_rows(),
                tree_build=self.tree_build,
                progress=lambda f, phase: progress(0.5 + 0.45 * f, phase),
            )
        if index is None:
            index = FlatIndex(table, self.metric)
            for t, rows in table.visible_rows().items():
                index.add(t, rows)
        batch = Batch()
        batch.delete_range(keys.codec(self.no, ""), keys.collection_prefix(keys.CODEC, self.no + 1))
        for name, arr in codec.state().items():
            batch.put(keys.codec(self.no, name), _npy(arr))
        batch.delete(self._dirty_key)
        self._store.write(batch)
        with self._rw.write():
            self.table, self.index = table, index
        self._checkpoint(index)
        out = {"vectors": float(len(table)), "train_s": time.perf_counter() - t0}
        out.update({k: float(v) for k, v in codec.describe().items() if isinstance(v, (int, float))})
        out["code_bytes_per_vector"] = out.pop("bytes_per_vector")  # the name stats() gives the same figure
        out["queries"] = float(0 if query_sample is None else query_sample.shape[0])
        return out

    def _indexed(self) -> bool:
        return isinstance(self.index, CuratorIndex) and self.index.trained

    def _originals(self, slots: np.ndarray) -> np.ndarray:
        """The float32 vectors of ``slots`` as written (from the store), prepared for the metric."""
        owners, ids = self.table.owner[slots].tolist(), self.table.ids[slots].tolist()
        raw = self._store.get_many([keys.vector(self.no, o, i) for o, i in zip(owners, ids)])
        found = [value for value in raw if value is not None]
        if len(found) != len(raw):
            raise Internal(f"{len(raw) - len(found)} vectors of collection {self.name!r} are missing from the store")
        vecs = np.frombuffer(b"".join(found), "<f4").reshape(len(raw), self.dim)
        return metrics.prepare(self.metric, vecs.astype(np.float32))

    # ----------------------------------------------------------------------------------- index lifecycle
    def build_index(self, *, background: bool = False) -> dict[str, float] | JobStatus:
        """Train the Curator index on everything stored and swap it in atomically; also the way to retrain.

        Searches go on against the old index while it builds; writes wait for it (a few seconds per 100k
        vectors). The trained index is checkpointed to the store, so a restart reloads it without training.
        Returns a summary; with ``background=True`` it returns the job's status at once (``stats()["build"]``
        follows it). Refused (``FailedPrecondition``) while another build or training runs.
        """

        def build(progress: Progress) -> dict[str, float]:
            with self._writer:
                return self._build_locked(progress)

        return self._job("build_index", build, background)

    def _build_locked(self, progress: Progress = no_progress) -> dict[str, float]:
        self._check_open()
        warmup.say_if_compiling()
        share = 0.0
        if self.info.compression is not None and self.table.codec is None and len(self.table):
            # a compressed collection is float32 until its codec is learned: learn it (from the reservoir's
            # queries, if any) before indexing, so the index scans codes
            share = 0.4
            self._train_codec_locked(
                self.reservoir.sample() if len(self.reservoir) else None, lambda f, phase: progress(share * f, phase)
            )
        t0 = time.perf_counter()
        progress(share, "preparing the rows")
        with self._rw.write():
            self.table.fit()
        index = CuratorIndex.build(
            self.table,
            self.metric,
            self.table.visible_rows(),
            tree_build=self.tree_build,
            progress=lambda f, phase: progress(share + (0.97 - share) * f, phase),
        )
        built = time.perf_counter() - t0
        progress(0.97, "saving the index")
        self._store.write(_deleting(self._dirty_key))
        self._checkpoint(index)
        with self._rw.write():
            self.index = index
        return {"vectors": float(len(self.table)), "build_s": built, "trained": float(index.trained)}

    def _index_due(self) -> bool:
        if isinstance(self.index, FlatIndex):
            return len(self.table) >= self.auto_index_rows
        return self.index.needs_training()

    def _build_in_background(self) -> None:
        """An automatic index build (the collection grew enough, or its saved index is stale), unless a job
        already runs; its outcome shows in ``stats()["build"]``."""

        def build(progress: Progress) -> dict[str, float]:
            with self._writer:
                if self.dropped or not self._db.is_open:
                    return {}
                return self._build_locked(progress)

        self.jobs.start_automatic("build_index", build, on_error=lambda exc: self._log_failure("build_index", exc))

    def _checkpoint(self, index: FlatIndex | CuratorIndex | None = None) -> None:
        """Save the Curator index's arrays and mark them current (caller holds the writer mutex)."""
        index = index or self.index
        if not isinstance(index, CuratorIndex) or self._store.get(self._dirty_key) is not None:
            return  # nothing to save, or the saved state is current
        batch = Batch()
        batch.delete_range(keys.index_state(self.no, ""), keys.collection_prefix(keys.INDEX, self.no + 1))
        for name, arr in index.state().items():
            batch.put(keys.index_state(self.no, name), _npy(arr))
        batch.put(self._dirty_key, b"1")
        self._store.write(batch)

    def _saved_index(self) -> CuratorIndex | None:
        """The checkpointed index, if it matches the stored vectors; None when there is none or it is stale."""
        prefix = keys.index_state(self.no, "")
        state = {k[len(prefix) :].decode(): v for k, v in self._store.scan(prefix)}
        if state.pop(_CLEAN, None) is None or not state:
            return None
        try:
            arrays = {name: np.load(io.BytesIO(raw), allow_pickle=False) for name, raw in state.items()}
            return CuratorIndex.from_state(self.table, self.metric, arrays)
        except ValueError:
            return None

    def _saved_codec(self) -> Codec | None:
        """The stored codec of a compressed collection (None: none learned yet, or float32)."""
        if self.info.compression is None:
            return None
        prefix = keys.codec(self.no, "")
        state = {k[len(prefix) :].decode(): np.load(io.BytesIO(v)) for k, v in self._store.scan(prefix)}
        if not state:
            return None
        return Codec.from_state(self.info.compression, self.metric, self.dim, state)

    def _has_saved_tree(self) -> bool:
        prefix = keys.index_state(self.no, "")
        return any(True for _ in self._store.scan(prefix))

    # ----------------------------------------------------------------------------------- training hooks
    @contextmanager
    def _tenant_view(self, tenant_no: int | None) -> Iterator[ScopedVectors]:
        """Exact search and scoring over what the tenant sees, consistent while the read lock is held."""
        from engine.training.search import ScopedVectors

        with self._rw.read():
            self._check_open()
            rows = np.zeros(0, np.int64) if tenant_no is None else self.index.rows(tenant_no)
            if self.table.codec is None:
                yield ScopedVectors(self.table.data, rows, self.table.ids, metric=self.metric)
            else:  # a compressed table: the tenant's rows decoded from their codes
                yield ScopedVectors(self.table.vectors(rows), None, self.table.ids[rows], metric=self.metric)

    def _index_search_fn(self, tenant_no: int | None, ef: int | None):
        """The index's (approximate) tenant search as ``(queries, depth) -> (ids, similarities)``, for bulk jobs:
        each batch probes the tree's leaves as an inverted file (``engine.training.ann``); ``ef`` is about how
        many of the tenant's vectors each query scores. Call it, and use it, under the read lock."""
        from engine.training.ann import index_search_fn

        return index_search_fn(self.index, tenant_no, ef=ef)

    def mine_hard_negatives(self, queries, positives, *, tenant: str, **options) -> negatives.MinedNegatives:
        """Hard negatives for each query among the vectors ``tenant`` sees (STAR; sentence-transformers' names).

        Takes the options of ``mine_hard_negatives_stream`` and returns its chunks joined.
        """
        parts = [part for _, _, part in self.mine_hard_negatives_stream(queries, positives, tenant=tenant, **options)]
        return negatives.MinedNegatives.concat(parts)

    def mine_hard_negatives_stream(
        self,
        queries,
        positives,
        *,
        tenant: str,
        exact: bool = True,
        ef: int | None = None,
        chunk_size: int = 1024,
        principal: Principal,
        **options,
    ) -> Iterator[tuple[int, int, negatives.MinedNegatives]]:
        """Mine in chunks of ``chunk_size`` queries: yields ``(first_row, total_rows, MinedNegatives)``.

        Options are ``engine.training.negatives.mine_hard_negatives``'s (``num_negatives``, ``range_min``,
        ``range_max``, ``absolute_margin``, ``relative_margin``, ``max_score``, ``min_score``, ``sampling``,
        ``random_negatives``, ``seed``). Candidates, positives' scores and random negatives all come from
        the vectors ``tenant`` sees; a positive it cannot see scores NaN (no existence leak) and sets no
        margin. ``exact=False`` probes the index's tree leaves in batches (``ef``: about how many of the
        tenant's vectors each query scores; default 12% of its leaves) and reports its measured recall against
        exact search on a sample of each chunk. The read lock is held per chunk, not for the whole job.
        """
        tenant = self._acting(tenant, principal)
        q = metrics.prepare(self.metric, validate.vectors(queries, self.dim, what="queries", metric=self.metric))
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise InvalidArgument(f"chunk_size must be a positive integer, got {chunk_size!r}")
        pos = positives if isinstance(positives, np.ndarray) else list(positives)
        if len(pos) != q.shape[0]:
            raise InvalidArgument(f"got {len(pos)} positives for {q.shape[0]} queries; give one entry per query")
        tenant_no = self._db.tenants.find(tenant)
        depth = int(options.get("range_max") or 100)
        width = depth + int(options.get("num_negatives") or 0) + int(options.get("random_negatives") or 0)
        validate.results(min(chunk_size, q.shape[0]), width, "a mining chunk")
        for first in range(0, q.shape[0], chunk_size):
            part_q, part_pos = q[first : first + chunk_size], pos[first : first + chunk_size]
            with self._tenant_view(tenant_no) as view:
                search = view.search if exact else self._index_search_fn(tenant_no, ef)
                part = negatives.mine_hard_negatives(
                    search, view.score_visible, part_q, part_pos, random_pool=view.pool, row_offset=first, **options
                )
                if not exact:
                    recall = negatives.measure_recall(search, view.search, part_q, depth, max_queries=RECALL_SAMPLE)
                    part = replace(part, recall=recall)
            yield first, q.shape[0], part

    def dynamic_negatives(self, positives, *, tenant: str, k: int = 200, principal: Principal) -> DynamicNegatives:
        """ADORE: a session that searches query embeddings from the encoder being trained against the
        frozen documents ``tenant`` sees, returning top-``k`` ids and scores with each query's positives masked.
        """
        tenant = self._acting(tenant, principal)
        tenant_no = self._db.tenants.find(tenant)

        def search(embeddings: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
            q = validate.vectors(embeddings, self.dim, what="embeddings", metric=self.metric)
            validate.results(q.shape[0], depth, "this batch of dynamic negatives")
            q = metrics.prepare(self.metric, q)
            with self._tenant_view(tenant_no) as view:
                return view.search(q, depth)

        return DynamicNegatives(search, positives, k=k)

    def count(self, *, tenant: str, principal: Principal) -> int:
        """How many vectors ``tenant`` can see."""
        tenant = self._acting(tenant, principal)
        tenant_no = self._db.tenants.find(tenant)
        if tenant_no is None:
            return 0
        with self._rw.read():
            self._check_open()
            return self.index.count(tenant_no)

    def stats(self) -> dict[str, int]:
        """Vector and tenant counts, whether the codec and the refined tree are in force, and the bytes each
        in-memory component holds."""
        with self._rw.read():
            self._check_open()
            parts = {**self.table.nbytes(), **self.index.nbytes()}
            owners = set(np.unique(self.table.owner[self.table.owner >= 0]).tolist())
            n_tenants = len(owners | self.table.grants.tenants())
            out: dict[str, Any] = {"vectors": len(self.table), "tenants": n_tenants, "dim": self.dim}
            codec = self.table.codec
            out["compressed"] = int(codec is not None)
            tree = getattr(self.index, "tree", None)  # (none before the collection is indexed)
            out["refined_tree"] = int(tree is not None and tree.beam > 1)  # the build in force: set, or chosen
            if codec is not None:
                out["code_bytes_per_vector"] = codec.bytes_per_vector
                out["reduced_dim"] = codec.reduced_dim
        out["build"] = self.jobs.status().as_dict()
        out["build_failures"] = sum(t.outcomes[FAILED] for t in self.jobs.tallies.values())
        out.update(parts)
        out["total_bytes"] = sum(parts.values())
        out["bytes_per_vector"] = out["total_bytes"] // max(out["vectors"], 1)
        return out

    # ----------------------------------------------------------------------------------- loading
    def _load(self) -> str:
        """Rebuild the in-memory table and index from the store (at open, after any crash); returns what became
        of the index: ``"checkpoint"`` (reloaded), ``"rebuilding"`` (stale: rebuilt in the background) or
        ``"none"`` (too small to index yet)."""
        codec = self._saved_codec()
        if codec is not None:
            self.table.store = CodedRows(codec, self.table.capacity)
        ids, owners, rows = [], [], []
        said = time.monotonic()
        for key, value in self._store.scan(keys.collection_prefix(keys.VECTOR, self.no)):
            owner, i = keys.read_vector(key)
            ids.append(i)
            owners.append(owner)
            rows.append(value)
            if len(ids) % 65536 == 0 and time.monotonic() - said > LOAD_PROGRESS_SECONDS:
                said = time.monotonic()
                _log.info("collection %r: %d vectors read so far", self.name, len(ids))
        if ids:
            vecs = np.frombuffer(b"".join(rows), "<f4").reshape(len(ids), self.dim).astype(np.float32)
            id_arr = np.array(ids, np.int64)
            own = np.array(owners, np.int32)  # keys sort by owner: each owner's rows are contiguous
            slots = self.table.allocate(len(ids))
            self.table.put(slots, id_arr, metrics.prepare(self.metric, vecs), own)
            bounds = np.flatnonzero(np.diff(own)) + 1
            for part in np.split(np.arange(own.shape[0]), bounds):
                self.index.add(int(own[part[0]]), slots[part])
        grants = [keys.read_grant(key) for key, _ in self._store.scan(keys.collection_prefix(keys.GRANT, self.no))]
        if grants:
            owner_arr, id_arr, tenant_arr = (np.array(column, np.int64) for column in zip(*grants))
            slots = self.table.slots_of(id_arr, owner_arr)
            kept = slots >= 0  # a grant outlives its vector only if written outside Grove: ignore it
            slots, tenant_arr = slots[kept], tenant_arr[kept]
            order = np.argsort(tenant_arr, kind="stable")
            cuts = np.flatnonzero(np.diff(tenant_arr[order])) + 1
            for part in np.split(order, cuts):
                if part.size:
                    t = int(tenant_arr[part[0]])
                    self.index.add(t, self.table.grant(slots[part], t))
        self.table.fit()
        saved = self._saved_index()
        if saved is not None:
            self.index = saved
            return "checkpoint"
        if self._has_saved_tree() or len(self.table) >= self.auto_index_rows:
            # indexed before a crash (or the threshold was crossed): searches are exact until the rebuild,
            # in the background, swaps the index in
            _log.info("collection %r: the saved index is stale; rebuilding it in the background", self.name)
            self._build_in_background()
            return "rebuilding"
        return "none"


class Database:
    """One Grove database in a directory: the embedded engine behind both SDK modes and the server.

    ``Database(path)`` opens the store and loads every collection. ``Database(path, load=False)`` only opens the
    store (fast, whatever its size: keys can be checked) and ``load()`` reads the collections later, so a server
    can listen, and answer its health check, while it loads.
    """

    def __init__(self, path: str | Path, *, load: bool = True) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise FailedPrecondition(f"{self.path} is a file, not a store directory; give a directory path")
        self._store = Store(self.path)
        try:
            self._check_format()
        except FailedPrecondition:
            self._store.close()
            raise
        self._lock = threading.Lock()
        self.tenants = TenantRegistry(self._store)
        self._open = True
        self._loaded = threading.Event()
        self._collections: dict[str, Collection] = {}
        if load:
            self.load()

    def _check_format(self) -> None:
        """Stamp a new store with the key layout's version; refuse a store written in another layout."""
        raw = self._store.get(keys.format_key())
        if raw is None:
            if next(self._store.scan(keys.COLLECTION), None) is not None:
                raise FailedPrecondition(
                    f"the store at {self.path} was written by an earlier Grove (key layout 1, ids unique per "
                    f"collection); this Grove reads layout {keys.FORMAT}. Serve it with the Grove that wrote it"
                )
            batch = Batch()
            batch.put(keys.format_key(), keys.u64(keys.FORMAT))
            self._store.write(batch)
        elif keys.read_u64(raw) != keys.FORMAT:
            raise FailedPrecondition(
                f"the store at {self.path} uses key layout {keys.read_u64(raw)}; this Grove reads {keys.FORMAT}"
            )

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def loaded(self) -> bool:
        """Whether ``load()`` has finished: until then there are no collections to serve."""
        return self._loaded.is_set()

    def wait_loaded(self, timeout: float | None) -> bool:
        """Block until ``load()`` has finished or ``timeout`` seconds passed; whether it has."""
        return self._loaded.wait(timeout)

    def load(self) -> None:
        """Read every collection into memory (idempotent). An index whose checkpoint is stale (a crash during a
        build or after writes) is rebuilt in the background: searches are exact until it is swapped in."""
        if self.loaded:
            return
        kernels.warm()  # a JIT's first call costs ~1 s: pay it at open, not in the first search
        found = list(self._store.scan(keys.COLLECTION))
        t0 = time.perf_counter()
        for i, (key, value) in enumerate(found):
            meta = json.loads(value)
            info = CollectionInfo(
                key[1:].decode(), meta["dim"], meta["metric"], _compression_from_json(meta.get("compression"))
            )
            col = Collection(self, meta["id"], info)
            col._apply_settings(meta.get("settings", {}))
            _log.info("loading collection %r (%d of %d)", info.name, i + 1, len(found))
            t1 = time.perf_counter()
            index = col._load()
            fields = {"collection": info.name, "vectors": len(col.table), "index": index}
            fields["seconds"] = round(time.perf_counter() - t1, 2)
            _log.info("loaded collection %r", info.name, extra={"fields": fields})
            self._collections[info.name] = col
        if found:
            _log.info("loaded %d collections in %.1f s", len(found), time.perf_counter() - t0)
        self._loaded.set()

    # ----------------------------------------------------------------------------------- collections
    def create_collection(
        self, name: str, *, dim: int, metric: str = "ip", compression: Compression = None
    ) -> Collection:
        name = validate.name(name, "collection")
        info = CollectionInfo(name, validate.dim(dim), validate.metric(metric), compression)
        if compression is not None and not isinstance(compression, (LVQ, LeanVec)):
            raise InvalidArgument(f"compression must be LVQ(...), LeanVec(...) or None, got {compression!r}")
        with self._lock:
            if name in self._collections:
                raise AlreadyExists(f"collection {name!r} exists; get_collection({name!r}) opens it")
            col_no = self._next("collection")
            batch = Batch()
            batch.put(keys.counter("collection"), keys.u64(col_no + 1))
            meta = {"id": col_no, "dim": info.dim, "metric": info.metric}
            meta["compression"] = _compression_to_json(compression)
            batch.put(keys.collection(name), json.dumps(meta).encode())
            self._store.write(batch)
            col = self._collections[name] = Collection(self, col_no, info)
            return col

    def _save_settings(self, col: Collection, settings: dict[str, int]) -> None:
        raw = self._store.get(keys.collection(col.name))
        if raw is None:
            raise NotFound(f"collection {col.name!r} does not exist")
        meta = json.loads(raw)
        meta["settings"] = settings
        batch = Batch()
        batch.put(keys.collection(col.name), json.dumps(meta).encode())
        self._store.write(batch)

    def _next(self, counter: str) -> int:
        raw = self._store.get(keys.counter(counter))
        return 0 if raw is None else keys.read_u64(raw)

    def get_collection(self, name: str) -> Collection:
        col = self._collections.get(name) if isinstance(name, str) else None
        if col is None:
            validate.name(name, "collection")
            raise NotFound(f"no collection named {name!r}; create_collection({name!r}, dim=...) makes one")
        return col

    def list_collections(self) -> list[CollectionInfo]:
        return [c.info for c in sorted(self._collections.values(), key=lambda c: c.name)]

    def drop_collection(self, name: str) -> None:
        with self._lock:
            col = self.get_collection(name)
            with col._writer, col._rw.write():
                batch = Batch()
                batch.delete(keys.collection(name))
                for tag in (keys.VECTOR, keys.GRANT, keys.INDEX, keys.CODEC):
                    batch.delete_range(keys.collection_prefix(tag, col.no), keys.collection_prefix(tag, col.no + 1))
                self._store.write(batch)
                col.dropped = True
                del self._collections[name]

    # ----------------------------------------------------------------------------------- API keys
    def create_tenant_key(self, tenant: str) -> str:
        """A new API key that acts as ``tenant``; shown once, stored hashed. Needs no prior write."""
        validate.name(tenant, "tenant")
        key = apikeys.new_key()
        batch = Batch()
        batch.put(keys.api_key(apikeys.digest(key)), b"T" + tenant.encode())
        self._store.write(batch)
        return key

    def set_admin_key(self, key: str) -> None:
        """Store ``key``'s digest as the admin key, replacing any other (rotation: callers decide and log it)."""
        batch = Batch()
        batch.put(keys.ADMIN, apikeys.digest(apikeys.check_admin_key(key)))
        self._store.write(batch)

    def has_admin_key(self) -> bool:
        return self._store.get(keys.ADMIN) is not None

    def is_admin_key(self, key: str) -> bool:
        return self._store.get(keys.ADMIN) == apikeys.digest(key)

    def authenticate(self, key: str | None) -> Principal:
        """The principal of ``key``: ``ADMIN`` or a tenant name; ``Unauthenticated`` otherwise."""
        if not key:
            raise Unauthenticated("no API key; send it in the 'x-api-key' metadata")
        d = apikeys.digest(key)
        if self._store.get(keys.ADMIN) == d:
            return ADMIN
        who = self._store.get(keys.api_key(d))
        if who is None:
            raise Unauthenticated("unknown API key")
        return who[1:].decode()

    def close(self) -> None:
        """Checkpoint every index, flush and close the store; idempotent."""
        with self._lock:
            if not self._open:
                return
            self._open = False
            for col in self._collections.values():
                col.jobs.join()
                with col._writer:
                    col._checkpoint()
            self._store.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
