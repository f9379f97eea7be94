"""The Curator multi-tenant index (curator.md): one shared clustering tree, a subtree per tenant.

Design, and where it departs from the paper
-------------------------------------------
* **Shared tree (GCT, §1.1)**: ``engine.index.tree.ClusterTree``, hierarchical k-means trained on a sample,
  frozen after training. A row is routed to a leaf once, the first time any tenant sees it, and stored once:
  its vector stays in the ``VectorTable``; a row visible to several tenants repeats only as an id.
* **Per-tenant shortlists (§1.2, §1.4)** are slices of one sorted array per tenant, its *entries*
  ``(leaf_rank << 32) | code_slot`` (8 B per (vector, tenant) pair; a row's code slot is where its scan code
  lives, see below, and maps back to the table row). Leaves are ranked depth first, so the entries
  below any tree node are one contiguous slice, found by binary search. A tenant's Curator TCT follows from
  counts: node ``n`` holds a shortlist for tenant ``t`` exactly when ``t`` has at most ``max_sl_size`` entries
  below ``n`` and more below ``n``'s parent (or ``n`` is a GCT leaf): the v2 split/merge rule (§2.5).
  Splits and merges therefore move no data, so crossing the threshold either way costs nothing: there is
  no split/merge churn to damp and no hysteresis band is needed.
* **Tenant presence (§1.3)** is exact, read from the same sorted arrays (an empty slice means absent),
  instead of per-node Bloom filters: no false positives, no stale bits after deletes, no bytes beyond the
  entries (curator.md §5.5 allows an exact structure). ``nbytes()`` reports ``bloom_filters_bytes = 0``,
  and there is no ``engine/index/bloom.py``: it would only add false positives and memory.
* **Small tenants**: a tenant with at most ``exact_max`` vectors is scanned exhaustively in full precision
  (exact results); one with at most ``flat_max`` has all its scan codes scanned, without the tree (like
  PT-IVF's flat index below 2,000 vectors: at that size a tree walk costs more than it saves).
* **Updates**: new entries go to a short unsorted per-tenant *tail* (at most ``TAIL_CAP``, scanned by every
  search), merged into the sorted array when full; deletes tombstone the entry in place (row field
  ``DEAD``) and the array is compacted once tombstones exceed ``DEAD_FRACTION`` of it. A single update costs
  O(log n) plus amortised O(n / TAIL_CAP) copying.
* **Scan codes** (not in the paper; they are what makes a gather scan competitive with per-tenant indexes,
  whose vectors are contiguous): each placed row has a 4-bit code of its top ``code_dim`` principal
  coordinates (``code_dim / 2`` bytes, ``scancodes.PCACodes``). A search ranks candidates by their codes (two
  cache lines per candidate instead of 24 for a 384-d float32 vector) and rescores the best ``rerank`` from
  the float32 vectors in the table, so the returned scores are exact. Over a compressed table (the table's
  row store holds a codec's codes) the scan codes are the codec's primary (``scancodes.PrimaryCodes``, e.g.
  LVQ-8 of the LeanVec projection) and the rescoring reads the rows' secondary codes, so scores are those of
  the secondary encoding; routing and codes then use vectors decoded from the rows. Codes sit in *code
  slots* handed out in leaf order by bulk placement and ``compact()``, so the codes of a shortlist lie close
  together (measured: a third less scan time than codes indexed by table row); rows inserted later take
  free or new slots.
* **Search (§2.6-2.7)**: best-first over the tenant's subtree by the distance of the projected query to the
  projected centroids (v2's variance boost is available, but measured worse on the shared data, so it
  defaults to 0); shortlists are scanned into a candidate heap; the search stops once the last ``ef``
  scanned candidates left the heap unchanged. This is v2's early stop counted in candidates rather than in
  shortlists (v2 stops at the first shortlist that leaves a list of capacity ``ef`` unchanged, which
  measured a worse recall/speed curve here). A larger ``ef`` explores more.
* **Large tenants** (ours, not in the paper, whose tenants are small next to the tree): a tenant with at least
  ``BOUNDS_PER_LEAF`` entries per leaf, searched with an ``ef`` of at least a quarter of the leaf count, skips
  the walk. Its non-empty leaves are ranked by their own centroid priority (int8 leaf centroids, counted into
  buckets, each bucket sorted when reached) and scanned in that order with the same early stop. The walk
  reaches a leaf through ancestors whose priorities stand for whole subtrees, so it scans leaves out of their
  own order: on one 84k tenant (OOD queries) leaf order scans ~30% fewer entries for recall@10 0.95.

Rows are ``VectorTable`` slots; scores are the kernel surrogates (``ip`` -> dot, ``l2`` -> minus squared
distance; cosine rows are stored unit-normalised and scored as ``ip``). Not thread-safe by itself:
``engine.db.Collection`` serialises writes against searches with its readers-writer lock; searches run in
parallel with each other (the kernels release the GIL).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from engine import kernels
from engine.index.rows import DenseRows
from engine.index.scancodes import PCACodes, PrimaryCodes, ScanCodes, int8_rows
from engine.index.tree import ClusterTree, server_build
from engine.kernels import metrics
from engine.kernels import tree as _k

#: unsorted new entries per tenant before they are merged into its sorted array
TAIL_CAP = 32
#: a tenant list is compacted once it holds more tombstones than this fraction of its length
DEAD_FRACTION = 0.125
#: a tenant with at least this many entries per tree leaf keeps its leaf bounds (``_leaf_bounds``)
BOUNDS_PER_LEAF = 4
#: ``build`` refines the tree (``ClusterTree.train(build="refined")``) when no build was chosen and one tenant sees
#: at least this share of the rows: such a tenant is searched leaf by leaf, where refined leaves (nearest-leaf
#: cells) pay most (one 84k tenant, OOD queries, ``bench/tree_build.py``: QPS at recall@10 0.95 1.37-1.40x
#: float32, 1.24-1.32x LeanVec-OOD), while many small tenants lose 5-8% with it and single inserts cost 1.5x
REFINED_TENANT_SHARE = 0.5
#: version of the arrays written by ``state()``
STATE_VERSION = 3
#: a collection with fewer vectors than this is best served untrained (exact); a suggestion for callers
MIN_TRAIN_ROWS = 4096
#: the default ef of a tenant is at least this share of its vectors: a fixed budget that suits tenants of up to
#: ~20k vectors gives recall@10 0.73 over one 84k-vector tenant of the shared data (OOD queries); 1/56 gives 0.974
#: with the refined tree that tenant gets, 0.957 with a top-down one (1/40: 0.990 / 0.980 at 0.80x the QPS)
LARGE_TENANT_SHARE = 1 / 56
#: the same over primary codes of a compressed table, whose approximate scores stop a search a little early
#: (same tenant, LeanVec-OOD 128 + LVQ-8, the whole candidate list rescored: recall@10 0.971 refined, 0.961 top
#: down; 1/56: 0.961 / 0.944; 1/40: 0.980 / 0.970 at 0.86x the QPS)
LARGE_TENANT_SHARE_CODED = 1 / 47

_EMPTY = np.zeros(0, np.int64)
_EMPTY32 = np.zeros(0, np.int32)
_BITS = _k.ROW_BITS
_MASK = np.int64(_k.ROW_MASK)

#: constructor parameters, in the order ``state()`` stores them
_PARAMS = (
    "fanout",
    "max_leaf_size",
    "max_sl_size",
    "exact_max",
    "flat_max",
    "ef",
    "candidates",
    "rerank",
    "code_dim",
    "variance_boost",
    "train_size",
    "seed",
)


def _no_centroids(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((n, 0), np.float32), np.zeros(n, np.float32)


def _grown(a: np.ndarray, cap: int, fill) -> np.ndarray:
    """``a`` copied into a longer array (``cap`` rows), the new rows set to ``fill``."""
    out = np.full((cap, *a.shape[1:]), fill, a.dtype)
    out[: a.shape[0]] = a
    return out


class _TenantList:
    """One tenant's entries: a sorted array (with tombstones) plus a short unsorted tail.

    ``bounds`` caches, for a large tenant, where each leaf rank starts in ``main`` (``leaf_bounds``); None
    until a search computes it, and reset whenever ``main`` is rebuilt (tombstones keep their leaf bits, so
    they do not move entries).
    """

    __slots__ = ("main", "dead", "tail", "nt", "bounds")

    def __init__(self, main: np.ndarray = _EMPTY) -> None:
        self.main = main
        self.dead = 0
        self.tail = _EMPTY
        self.nt = 0
        self.bounds: np.ndarray | None = None

    def count(self) -> int:
        return self.main.shape[0] - self.dead + self.nt

    def live_main(self) -> np.ndarray:
        if not self.dead:
            return self.main
        return self.main[(self.main & _MASK) != _k.DEAD]

    def add(self, entries: np.ndarray) -> None:
        b = entries.shape[0]
        if self.nt + b <= TAIL_CAP:
            if self.tail.shape[0] == 0:
                self.tail = np.empty(TAIL_CAP, np.int64)
            self.tail[self.nt : self.nt + b] = entries
            self.nt += b
            return
        new = np.concatenate((self.tail[: self.nt], entries)) if self.nt else entries.copy()
        new.sort()
        live = self.live_main()
        self.main = new if live.shape[0] == 0 else np.insert(live, np.searchsorted(live, new), new)
        self.bounds = None
        self.dead = 0
        self.nt = 0

    def remove(self, entries: np.ndarray) -> np.ndarray:
        """Drop entries (-1: skip) from the tail, else by tombstone; returns which of them were there."""
        found = np.zeros(entries.shape[0], np.bool_)
        killed, self.nt = _k.remove_entries(self.main, self.tail, self.nt, entries, found)
        if killed:
            self.dead += killed
            if self.dead > DEAD_FRACTION * self.main.shape[0]:
                self.main = self.live_main()
                self.bounds = None
                self.dead = 0
        return found

    def entries(self) -> np.ndarray:
        """All live entries, sorted."""
        out = np.concatenate((self.live_main(), self.tail[: self.nt]))
        out.sort()
        return out

    def nbytes(self) -> int:
        return int(self.main.nbytes + self.tail.nbytes + (0 if self.bounds is None else self.bounds.nbytes))


class CuratorIndex:
    """Multi-tenant Curator index over a ``VectorTable``, with the interface of ``FlatIndex``.

    Parameters
    ----------
    table : the collection's ``VectorTable`` (rows are its slots; vectors stay there).
    metric : ``"ip"``, ``"cosine"`` or ``"l2"``.
    fanout : the most children of a tree node (default 16).
    max_leaf_size : a tree node standing for more vectors than this is split at training (default 64).
    max_sl_size : shortlist threshold: a tenant's entries below a node are scanned as one shortlist when there
        are at most this many (default 128).
    exact_max : tenants with at most this many vectors are searched exactly, in full precision (default 128).
    flat_max : tenants with at most this many vectors have all their codes scanned, without the tree
        (default 2048; like a per-tenant flat index, it is cheaper than a tree walk at that size).
    ef : default early-stop budget of a search: it stops once this many scanned candidates in a row left the
        candidate list unchanged (default 512, raised to ``LARGE_TENANT_SHARE`` of a tenant's size for tenants
        above ~20k vectors); the per-call ``ef`` overrides it. Larger explores more.
    candidates : size of the candidate list, ranked by scan codes (default 32; at least ``ef / 16``).
    rerank : how many of the candidates are rescored exactly from the vectors (default 16; at least ``ef / 32``,
        or ``ef / 16`` over a compressed table: its primary codes, e.g. 128 LeanVec dimensions, rank candidates
        more coarsely than 4-bit codes of 256 principal coordinates, so rescoring the whole candidate list pays:
        one 84k tenant, OOD queries, ef 1536, recall@10 0.951 -> 0.963 for 1% more time; float32 rows gain
        nothing from it).
    code_dim : principal coordinates kept in the 4-bit scan code (default 256; cut to the dimension).
    variance_boost : weight of a node's mean squared radius in its priority (v2 uses 0.4; default 0).
    train_size : at most this many vectors are sampled to train the tree and codes (default 100_000).
    seed : seed of the training sample and of k-means (default 0).
    tree_build : how ``train`` builds the tree: ``"topdown"`` or ``"refined"`` (``ClusterTree.train``'s
        ``build``); None (default) lets ``build`` choose by the tenants' shape (``REFINED_TENANT_SHARE``) unless
        ``GROVE_TREE_BUILD`` is set, and otherwise takes ``ClusterTree.train``'s default. A trained tree keeps
        its own routing, so this is not part of ``params()``.

    The index starts untrained (one leaf: every search is exact). ``train(sample)`` builds the tree and codes
    and re-places the rows already added; ``build(...)`` trains and bulk-loads in one call.
    """

    def __init__(
        self,
        table,
        metric: str,
        *,
        fanout: int = 16,
        max_leaf_size: int = 64,
        max_sl_size: int = 128,
        exact_max: int = 128,
        flat_max: int = 2048,
        ef: int = 512,
        candidates: int = 32,
        rerank: int = 16,
        code_dim: int = 256,
        variance_boost: float = 0.0,
        train_size: int = 100_000,
        seed: int = 0,
        tree_build: str | None = None,
    ) -> None:
        if metric not in metrics.KERNEL_METRIC:
            raise ValueError(f"metric must be one of {', '.join(metrics.KERNEL_METRIC)}, got {metric!r}")
        for name, value, low in (
            ("fanout", fanout, 2),
            ("max_leaf_size", max_leaf_size, 1),
            ("max_sl_size", max_sl_size, 1),
            ("exact_max", exact_max, 0),
            ("flat_max", flat_max, 0),
            ("ef", ef, 1),
            ("candidates", candidates, 1),
            ("rerank", rerank, 1),
            ("code_dim", code_dim, 1),
            ("train_size", train_size, 1),
            ("seed", seed, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not np.isfinite(variance_boost) or variance_boost < 0:
            raise ValueError(f"variance_boost must be a finite number >= 0, got {variance_boost!r}")
        self.table = table
        self.metric = metric
        self.fanout = int(fanout)
        self.max_leaf_size = int(max_leaf_size)
        self.max_sl_size = int(max_sl_size)
        self.exact_max = int(exact_max)
        self.flat_max = int(flat_max)
        self.ef = int(ef)
        self.candidates = int(candidates)
        self.rerank = int(rerank)
        self.code_dim = int(code_dim)
        self.variance_boost = float(variance_boost)
        self.train_size = int(train_size)
        self.seed = int(seed)
        self.tree_build = tree_build
        self._kind = _k.L2 if metrics.KERNEL_METRIC[metric] == "l2" else _k.IP
        self._lists: dict[int, _TenantList] = {}
        # per table row: leaf rank (-1 when unplaced), how many tenants see it, its code slot (-1: none)
        self._rank = np.full(0, -1, np.int32)
        self._refs = np.zeros(0, np.int32)
        self._slot = np.full(0, -1, np.int32)
        self._n_placed = 0  # rows placed now
        self._n_trained = 0  # rows placed right after the last training
        self._set_tree(ClusterTree.single(table.dim), PCACodes.none(table.dim))

    # ------------------------------------------------------------------------------------------ tree
    def _set_tree(self, tree: ClusterTree, scan: ScanCodes) -> None:
        """Install a tree and its scan codes; node statistics and codes restart empty (rows are placed after)."""
        self.tree = tree
        self.scan = scan
        coded = not isinstance(scan, PCACodes)
        self._ef_share = LARGE_TENANT_SHARE_CODED if coded else LARGE_TENANT_SHARE
        # how many candidates are rescored, as a shift of ef (the list holds ef >> 4): the ``rerank`` docstring
        self._rerank_shift = 4 if coded else 5
        n = tree.n_nodes
        self._sqsum = np.zeros(n, np.float64)
        self._pop = np.zeros(n, np.int64)
        self._pcent, self._pnorm = scan.centroids(tree.centroids) if tree.trained else _no_centroids(n)
        self._bias = self._pnorm.copy()
        # the leaves' node-priority centroids in leaf-rank order, as int8 rows, for large tenants' leaf-order scan
        lcent, lscale = int8_rows(self._pcent[tree.leaf_node])
        self._leaves = (lcent, lscale, np.ascontiguousarray(tree.leaf_node, np.int32))
        self._topo = np.ascontiguousarray(np.stack([tree.child_start, tree.child_count, tree.leaf_lo]), np.int32)
        # per code slot: the scan code arrays (``ScanCodes``), the table row (-1: free). Slots are handed out in
        # leaf order by bulk placement and ``compact()``, so a shortlist's codes lie close together in memory.
        self._slot[:] = -1
        self._sc = scan.empty()
        self._slot_row = np.full(0, -1, np.int32)
        self._free: list[int] = []
        self._slot_high = 0

    @property
    def trained(self) -> bool:
        return self.tree.trained

    def needs_training(self, *, growth: float = 2.0) -> bool:
        """Whether (re)training is due: untrained with at least ``MIN_TRAIN_ROWS`` vectors, or the collection
        grew ``growth`` times since the tree was trained (the tree is frozen, so new data only fills leaves)."""
        if not self.trained:
            return self._n_placed >= MIN_TRAIN_ROWS
        return self._n_placed > growth * max(self._n_trained, 1)

    def train(self, sample: np.ndarray, *, population: int | None = None) -> None:
        """Build the tree and codes from ``sample`` (float32 ``[n, d]``, prepared for the metric); re-place rows.

        ``population`` is how many vectors the sample stands for (default: the larger of ``len(sample)`` and
        the rows placed now). Tenant lists are re-keyed in bulk.
        """
        sample = np.ascontiguousarray(sample, np.float32)
        if sample.ndim != 2 or sample.shape[1] != self.table.dim:
            raise ValueError(f"sample must be float32 [n, {self.table.dim}], got shape {sample.shape}")
        placed = np.flatnonzero(self._refs > 0)
        old_rows = {t: self.rows(t) for t in self._lists}
        pop = population or max(sample.shape[0], placed.shape[0])
        tree = ClusterTree.train(
            sample,
            fanout=self.fanout,
            max_leaf_size=self.max_leaf_size,
            population=pop,
            seed=self.seed,
            build=self.tree_build,
        )
        self._set_tree(tree, self._fit_scan(sample) if tree.trained else PCACodes.none(self.table.dim))
        self._n_placed = 0
        if placed.shape[0]:
            self._place(placed, bulk=True)
            for t, rows in old_rows.items():
                self._lists[t] = _TenantList(self._sorted_entries(rows))
        self._n_trained = max(self._n_placed, pop)

    def _ensure(self, high: int) -> None:
        """Grow the per-row arrays to hold rows below ``high``."""
        old = self._rank.shape[0]
        if high > old:
            cap = max(high, self.table.capacity, int(old * 1.5))
            self._rank = _grown(self._rank, cap, -1)
            self._refs = _grown(self._refs, cap, 0)
            self._slot = _grown(self._slot, cap, -1)

    def _alloc_slots(self, n: int) -> np.ndarray:
        """``n`` code slots: freed ones first, then fresh ones at the end (growing the per-slot arrays)."""
        take = min(n, len(self._free))
        reused = [self._free.pop() for _ in range(take)]
        fresh = n - take
        if self._slot_high + fresh > self._slot_row.shape[0]:
            cap = max(self._slot_high + fresh, int(self._slot_row.shape[0] * 1.5) + 1024)
            self._sc = self.scan.grown(self._sc, cap)
            self._slot_row = _grown(self._slot_row, cap, -1)
        out = np.empty(n, np.int64)
        out[:take] = reused
        out[take:] = np.arange(self._slot_high, self._slot_high + fresh)
        self._slot_high += fresh
        return out

    def _place(self, rows: np.ndarray, *, bulk: bool = False) -> None:
        """Route rows to leaves, give them code slots (in leaf order), encode them, update node statistics.

        Rows go where the tree's own rule sends them (``ClusterTree.route``: for a refined tree the beam descent
        its training used, so they land in the leaf the Lloyd rounds expect; greedy for a top-down tree)."""
        t = self.tree
        data, local = self._vectors_of(rows)
        leaves = t.route(data, local, parallel=bulk)
        ranks = t.leaf_rank[leaves]
        if rows.shape[0] > 1:
            order = np.lexsort((rows, ranks))
            rows, leaves, ranks, local = rows[order], leaves[order], ranks[order], local[order]
        self._rank[rows] = ranks
        self._n_placed += rows.shape[0]
        slots = self._alloc_slots(rows.shape[0])
        self._slot[rows] = slots
        self._slot_row[slots] = rows
        if t.trained:
            self._path_stats(data, local, leaves, 1)
            self.scan.encode(data, local, slots, self._sc, self._sqnorms(rows))

    def _vectors_of(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(matrix, positions)`` with ``matrix[positions[i]]`` the float32 vector of ``rows[i]``: the table's
        own matrix, or for a compressed table the rows decoded from their codes (routing and scan codes are
        then a function of the stored codes alone, the same online and in a rebuild)."""
        if isinstance(self.table.store, DenseRows):
            return self.table.data, rows
        return self.table.vectors(rows), np.arange(rows.shape[0], dtype=np.int64)

    def _sqnorms(self, rows: np.ndarray) -> np.ndarray | None:
        """The rows' squared norms where the scan codes keep them (``l2`` over primary codes)."""
        if isinstance(self.scan, PrimaryCodes) and self.scan.per_slot[3]:
            return self.table.store.sqnorms(rows)
        return None

    def _fit_scan(self, sample: np.ndarray) -> ScanCodes:
        """Scan codes for a trained tree: the collection codec's primary, else PCA codes learned from ``sample``."""
        codec = self.table.codec
        return PCACodes.fit(sample, self.code_dim) if codec is None else PrimaryCodes(codec)

    def _unplace(self, rows: np.ndarray) -> None:
        if self.tree.trained:
            data, local = self._vectors_of(rows)
            self._path_stats(data, local, self.tree.leaf_node[self._rank[rows]], -1)
        slots = self._slot[rows]
        self._n_placed -= rows.shape[0]
        self._slot_row[slots] = -1
        self._free.extend(slots.tolist())
        self._slot[rows] = -1
        self._rank[rows] = -1

    def compact(self) -> None:
        """Hand out code slots anew in leaf order (rows inserted since the last build get scattered slots).

        O(vectors + pairs log pairs); searches are faster afterwards. ``train`` and ``build`` do it anyway.
        """
        placed = np.flatnonzero(self._refs > 0)
        old_rows = {t: self._slot_row[lst.entries() & _MASK] for t, lst in self._lists.items()}
        order = placed[np.lexsort((placed, self._rank[placed]))]
        self._sc = self.scan.permuted(self._sc, self._slot[order])
        self._slot_row[:] = -1
        self._slot_row[: order.shape[0]] = order
        self._slot[order] = np.arange(order.shape[0])
        self._free = []
        self._slot_high = int(order.shape[0])
        for t, rows in old_rows.items():
            self._lists[t] = _TenantList(self._sorted_entries(rows))

    def _path_stats(self, data: np.ndarray, local: np.ndarray, leaves: np.ndarray, sign: int) -> None:
        t = self.tree
        _k.path_stats(data, local, leaves, t.parent, t.centroids, self._sqsum, self._pop, sign,
                      self._pnorm, self.variance_boost, self._bias)  # fmt: skip

    def _entries(self, rows: np.ndarray) -> np.ndarray:
        return (self._rank[rows].astype(np.int64) << _BITS) | self._slot[rows]

    def _sorted_entries(self, rows: np.ndarray) -> np.ndarray:
        e = self._entries(rows)
        e.sort()
        return e

    # ------------------------------------------------------------------------------------------ updates
    def add(self, tenant: int, rows: np.ndarray) -> None:
        """Make ``rows`` (not yet visible to ``tenant``, no repeats) visible to it; new rows are routed."""
        rows = np.asarray(rows, np.int64)
        n = rows.shape[0]
        if n == 0:
            return
        self._ensure(int(rows[0] if n == 1 else rows.max()) + 1)
        fresh = np.empty(n, np.int64)
        m = _k.acquire(self._refs, rows, fresh)
        if m:
            self._place(fresh[:m], bulk=m >= 4096)
        entries = np.empty(n, np.int64)
        _k.entries_of(self._rank, self._slot, rows, entries)
        lst = self._lists.get(tenant)
        if lst is None:
            lst = self._lists[tenant] = _TenantList()
        lst.add(entries)

    def add_many(self, tenants_rows: Mapping[int, np.ndarray]) -> None:
        """Bulk ``add`` for many tenants at once (the fast path of ``build``)."""
        parts = [np.asarray(r, np.int64) for r in tenants_rows.values()]
        parts = [p for p in parts if p.shape[0]]
        if not parts:
            return
        allr = np.concatenate(parts)
        self._ensure(int(allr.max()) + 1)
        uniq, cnt = np.unique(allr, return_counts=True)
        fresh = uniq[self._refs[uniq] == 0]
        if fresh.shape[0]:
            self._place(fresh, bulk=True)
        self._refs[uniq] += cnt.astype(np.int32)
        for t, rows in tenants_rows.items():
            rows = np.asarray(rows, np.int64)
            if rows.shape[0] == 0:
                continue
            lst = self._lists.get(t)
            if lst is None:
                self._lists[t] = _TenantList(self._sorted_entries(rows))
            else:
                lst.add(self._entries(rows))

    def remove(self, tenant: int, rows: np.ndarray) -> None:
        """Make ``rows`` invisible to ``tenant``; a row no tenant sees any more leaves the tree.

        Rows the tenant does not see are ignored.
        """
        lst = self._lists.get(tenant)
        rows = np.asarray(rows, np.int64)
        n = rows.shape[0]
        if lst is None or n == 0:
            return
        entries = np.empty(n, np.int64)
        _k.entries_of(self._rank, self._slot, rows, entries)
        found = lst.remove(entries)
        freed = np.empty(n, np.int64)
        m = _k.release(self._refs, rows, found, freed)
        if m:
            self._unplace(freed[:m])
        if lst.count() == 0:
            del self._lists[tenant]

    # ------------------------------------------------------------------------------------------ reads
    def count(self, tenant: int) -> int:
        lst = self._lists.get(tenant)
        return 0 if lst is None else lst.count()

    def rows(self, tenant: int) -> np.ndarray:
        """The rows ``tenant`` sees (ordered by leaf, then row)."""
        lst = self._lists.get(tenant)
        return _EMPTY if lst is None else self._slot_row[lst.entries() & _MASK].astype(np.int64)

    def tenants(self) -> list[int]:
        return list(self._lists)

    def leaf_members(self, tenant: int) -> tuple[np.ndarray, np.ndarray]:
        """``(leaf_ranks, rows)`` of the rows ``tenant`` sees, sorted by leaf rank (int32, int64).

        Leaf rank ``r`` is the tree node ``self.tree.leaf_node[r]`` with centroid ``self.tree.centroids[...]``:
        with them the shared tree serves as an inverted file over one tenant (bulk, batched searches).
        """
        lst = self._lists.get(tenant)
        if lst is None:
            return np.zeros(0, np.int32), _EMPTY
        entries = lst.entries()
        return (entries >> _BITS).astype(np.int32), self._slot_row[entries & _MASK].astype(np.int64)

    def search(
        self, queries: np.ndarray, k: int, tenant: int, ef: int | None = None, **_: object
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k surrogate scores and rows among the rows ``tenant`` sees, best first, padded (-inf, -1).

        ``queries`` is float32 ``[m, d]``, C-ordered, prepared for the metric; ``k >= 1``. ``ef`` (default
        ``self.ef``) is the early-stop budget: the search ends once ``ef`` scanned candidates in a row left
        its candidate list unchanged, so a larger ``ef`` explores more of the tenant's subtree; the candidate
        list holds ``max(candidates, ef / 16)`` and ``max(rerank, ef / 32)`` of them are rescored exactly
        (``ef / 16``, the whole list, over a compressed table's primary codes).
        Tenants with at most ``exact_max`` vectors are searched exactly. Batches of queries run in parallel.
        """
        m = queries.shape[0]
        lst = self._lists.get(tenant)
        if lst is None:
            return np.full((m, k), -np.inf, np.float32), np.full((m, k), -1, np.int64)
        out_s = np.empty((m, k), np.float32)
        out_r = np.empty((m, k), np.int64)
        if ef is None:
            ef = max(self.ef, int(lst.count() * self._ef_share))
        ef = int(ef)
        # a large ef also widens the candidate list and the exact rescoring, so recall keeps rising with it
        # and a deep k needs a candidate list and a rescoring that hold k (k = 10 keeps the defaults)
        cands = max(self.candidates, ef >> 4, 2 * k)
        rerank = max(self.rerank, ef >> self._rerank_shift, k + k // 2)
        if lst.bounds is None:
            lst.bounds = self._leaf_bounds(lst.main)
        store = self.table.store
        kernels.tree_search(
            queries,
            rows=store.kernel_args,
            rows_kind=store.rows_kind,
            slot_row=self._slot_row,
            codes=self._sc,
            code_query=self.scan.kernel_args,
            tree=kernels.TreeArrays(self._topo, self._pcent, self._bias, self._leaves),
            tenant=kernels.TenantEntries(lst.main, lst.tail, lst.nt, lst.bounds),
            params=kernels.TreeSearchParams(
                k, ef, cands, rerank, self.max_sl_size, self.exact_max, self.flat_max, self._kind
            ),
            out_s=out_s,
            out_r=out_r,
        )
        return out_s, out_r

    def _leaf_bounds(self, main: np.ndarray) -> np.ndarray:
        """Where each leaf rank's entries start in ``main`` (int32 ``[leaves + 1]``), for a tenant with at least
        ``BOUNDS_PER_LEAF`` entries per leaf; empty otherwise.

        A tenant with them, searched wide (``engine.kernels.tree_numba.LEAF_ORDER_EF_PER_LEAF``), is scanned leaf by
        leaf in the order of the leaves' own priorities (``_scan_leaf_order``), which reads each leaf's entries
        from them; searched narrow, its tree walk reads each split point from them instead of binary-searching
        ``main`` for it. They cost 4 bytes per leaf, so only tenants large enough for that to stay under a byte
        per entry get them; below that, a walk's cost follows the few nodes that hold the tenant.
        """
        leaves = self.tree.n_leaves if self.tree.trained else 0
        if leaves == 0 or main.shape[0] < BOUNDS_PER_LEAF * leaves:
            return _EMPTY32
        keys = np.arange(leaves + 1, dtype=np.int64) << _BITS
        return np.searchsorted(main, keys).astype(np.int32)

    def warm(self) -> None:
        """Run one search of each kind (exact and tree, one query and a batch) so that the search kernels are
        ready before the first real query: on the numba backend loaded or compiled (otherwise the first queries
        after a build or a load pay for it, tens of milliseconds; measured as a third less QPS over a 500-query
        pass); on the native backend (``engine.kernels.tree_search``) nothing compiles, and this only builds the
        library's views of the index's arrays."""
        if not self._lists:
            return
        small = min(self._lists, key=lambda t: self._lists[t].count())
        large = max(self._lists, key=lambda t: self._lists[t].count())
        for m in (1, 2):
            q = np.zeros((m, self.table.dim), np.float32)
            for t in {small, large}:
                self.search(q, 10, t)

    def nbytes(self) -> dict[str, int]:
        """Bytes of this index's own structures (the vectors live in the table and are counted there)."""
        tb = self.tree.nbytes()
        node_stats = self._sqsum.nbytes + self._pop.nbytes + self._bias.nbytes + self._pnorm.nbytes
        return {
            "tree_bytes": tb["tree_bytes"] + int(node_stats + self._topo.nbytes),
            "centroids_bytes": tb["centroids_bytes"] + int(self._pcent.nbytes + sum(a.nbytes for a in self._leaves)),
            "bloom_filters_bytes": 0,  # presence is exact, read from the sorted shortlists (module docstring)
            "shortlists_bytes": int(sum(lst.nbytes() for lst in self._lists.values())),
            "scan_codes_bytes": self.scan.nbytes_of(self._sc) + self.scan.nbytes(),
            "row_placement_bytes": int(self._rank.nbytes + self._refs.nbytes + self._slot.nbytes)
            + int(self._slot_row.nbytes + 8 * len(self._free)),
            # a _TenantList object and its dict entry per tenant (CPython sizes, measured roughly)
            "tenant_overhead_bytes": 200 * len(self._lists),
        }

    # ------------------------------------------------------------------------------------------ persistence
    def params(self) -> dict[str, int | float]:
        """The constructor parameters, as ``CuratorIndex(table, metric, **index.params())`` takes them."""
        return {p: getattr(self, p) for p in _PARAMS}

    def state(self) -> dict[str, np.ndarray]:
        """The index as arrays: parameters, tree, codec, row placement, and each tenant's members.

        Rows are stored as (owner, external id) pairs, so a reload whose table numbers its slots differently
        still maps them; codes and node statistics are recomputed from the vectors at load.
        """
        placed = np.flatnonzero(self._refs > 0)
        pos = np.full(self._refs.shape[0], -1, np.int64)
        pos[placed] = np.arange(placed.shape[0])
        tenants = np.array(sorted(self._lists), np.int64)
        members = [pos[self.rows(int(t))] for t in tenants]
        offsets = np.zeros(tenants.shape[0] + 1, np.int64)
        offsets[1:] = np.cumsum([m.shape[0] for m in members])
        out = {f"tree_{k}": v for k, v in self.tree.state().items()}
        if isinstance(self.scan, PCACodes):
            out.update({f"codec_{k}": v for k, v in self.scan.state().items()})
        out.update(
            version=np.array([STATE_VERSION], np.int64),
            params=np.array([getattr(self, p) for p in _PARAMS], np.float64),
            metric=np.frombuffer(self.metric.encode(), np.uint8).copy(),
            placed_ids=self.table.ids[placed].astype(np.int64),
            placed_owners=self.table.owner[placed].astype(np.int64),
            placed_rank=self._rank[placed].astype(np.int32),
            tenant_ids=tenants,
            tenant_offsets=offsets,
            tenant_members=np.concatenate(members) if members else _EMPTY,
        )
        return out

    @classmethod
    def from_state(cls, table, metric: str, state: Mapping[str, np.ndarray], *, verify: bool = False) -> CuratorIndex:
        """Rebuild an index saved by ``state()`` over ``table`` without retraining.

        Raises ``ValueError`` when the state does not fit the table (an id the table lacks, another metric,
        dimension or version, inconsistent arrays): the caller then rebuilds from the table. With ``verify``,
        every (tenant, row) pair is also checked against the table's access lists (``verify()``).
        """
        try:
            version = int(state["version"][0])
            if version != STATE_VERSION:
                raise ValueError(f"index state version {version}, this build reads {STATE_VERSION}")
            saved_metric = bytes(np.asarray(state["metric"], np.uint8)).decode()
            if saved_metric != metric:
                raise ValueError(f"index state is for metric {saved_metric!r}, the collection uses {metric!r}")
            raw = np.asarray(state["params"], np.float64)
            if raw.shape != (len(_PARAMS),):
                raise ValueError(f"index state has {raw.shape} parameters, expected {len(_PARAMS)}")
            kw: dict[str, Any] = {p: (float(v) if p == "variance_boost" else int(v)) for p, v in zip(_PARAMS, raw)}
            tree = ClusterTree.from_state({k[5:]: v for k, v in state.items() if k.startswith("tree_")})
            pca = table.codec is None
            scan = PCACodes.from_state({k: state[f"codec_{k}"] for k in ("proj", "poff", "scale")}) if pca else None
            ids = np.asarray(state["placed_ids"], np.int64)
            owners = np.asarray(state["placed_owners"], np.int64)
            rank = np.asarray(state["placed_rank"], np.int32)
            tenants = np.asarray(state["tenant_ids"], np.int64)
            offsets = np.asarray(state["tenant_offsets"], np.int64)
            members = np.asarray(state["tenant_members"], np.int64)
        except KeyError as e:
            raise ValueError(f"index state lacks {e}; rebuild the index from the table") from None
        d = table.dim
        if tree.centroids.shape[1] != d or (scan is not None and scan.proj.shape[1] != d):
            raise ValueError(f"index state is for another dimension than the table's {d}")
        if (
            ids.shape != rank.shape
            or ids.shape != owners.shape
            or offsets.shape != (tenants.shape[0] + 1,)
            or offsets[-1] != members.shape[0]
        ):
            raise ValueError("index state arrays disagree in length; rebuild the index from the table")
        if rank.shape[0] and (rank.min() < 0 or rank.max() >= tree.n_leaves):
            raise ValueError("index state places rows in leaves the tree does not have")
        if members.shape[0] and (members.min() < 0 or members.max() >= ids.shape[0]):
            raise ValueError("index state lists members it did not place")
        slots = table.slots_of(ids, owners)
        if (slots < 0).any():
            raise ValueError(f"{int((slots < 0).sum())} ids of the index state are not in the table (stale state)")
        refs = np.bincount(members, minlength=ids.shape[0]).astype(np.int32)
        if (refs == 0).any():
            raise ValueError("index state places rows no tenant sees")
        idx = cls(table, metric, **kw)
        idx._ensure(int(slots.max()) + 1 if slots.shape[0] else 0)
        idx._set_tree(
            tree, (scan if scan is not None else PrimaryCodes(table.codec)) if tree.trained else PCACodes.none(d)
        )
        order = np.lexsort((slots, rank))
        rows, rank = slots[order], rank[order]
        idx._rank[rows] = rank
        idx._refs[slots] = refs
        code_slots = idx._alloc_slots(rows.shape[0])
        idx._n_placed = idx._n_trained = int(rows.shape[0])
        idx._slot[rows] = code_slots
        idx._slot_row[code_slots] = rows
        if tree.trained and rows.shape[0]:
            data, local = idx._vectors_of(rows)
            idx._path_stats(data, local, tree.leaf_node[rank], 1)
            idx.scan.encode(data, local, code_slots, idx._sc, idx._sqnorms(rows))
        for i, t in enumerate(tenants.tolist()):
            members_t = slots[members[offsets[i] : offsets[i + 1]]]
            if members_t.shape[0]:
                idx._lists[t] = _TenantList(idx._sorted_entries(members_t))
        if verify:
            idx.verify()
        idx.warm()
        return idx

    def verify(self) -> None:
        """Check every (tenant, row) pair against the table's access lists; ``ValueError`` on a mismatch.

        O(pairs) Python work: meant for tests and for an optional check at open, not for the hot path.
        """
        table = self.table
        expect = {t: rows.shape[0] for t, rows in table.visible_rows().items()}
        for t in self._lists:
            rows = self.rows(t)
            if rows.shape[0] != expect.get(t, 0):
                raise ValueError(f"tenant {t}: index lists {rows.shape[0]} rows, the table {expect.get(t, 0)}")
            for r in rows.tolist():
                if not table.sees(r, t):
                    raise ValueError(f"tenant {t}: index lists row {r}, which the table does not show it")
        missing = set(expect) - set(self._lists)
        if missing:
            raise ValueError(f"tenants {sorted(missing)[:5]} see rows the index does not list")
        placed = np.flatnonzero(self._refs > 0)
        if (self._rank[placed] < 0).any() or (self._rank[self._refs == 0] >= 0).any():
            raise ValueError("row placement disagrees with the tenant lists")
        if (self._slot_row[self._slot[placed]] != placed).any():
            raise ValueError("code slots disagree with the rows placed")

    # ------------------------------------------------------------------------------------------ bulk build
    @staticmethod
    def tenants_rows(table) -> dict[int, np.ndarray]:
        """Every tenant's visible rows according to ``table`` (owners and grants): the input of ``build``."""
        return table.visible_rows()

    @classmethod
    def from_table(cls, table, metric: str, **params: Any) -> CuratorIndex:
        """A complete, trained index of everything in ``table`` (e.g. at open without a usable state, or to
        retrain in the background and swap). The table must not change while this runs."""
        return cls.build(table, metric, cls.tenants_rows(table), **params)

    @classmethod
    def build(
        cls,
        table,
        metric: str,
        tenants_rows: Mapping[int, np.ndarray],
        *,
        progress: Callable[[float, str], None] | None = None,
        **params: Any,
    ) -> CuratorIndex:
        """Train on a sample of the rows in ``tenants_rows`` and bulk-load them: a complete index in one call.

        ``tenants_rows`` maps tenant -> the rows it sees (e.g. ``FlatIndex.rows(t)`` for every tenant).
        Keyword ``params`` are the constructor's. With no rows at all the index stays untrained. Unless
        ``tree_build`` or the server's setting (``engine.tree_build``) says otherwise, the tree is refined when
        one tenant sees at least ``REFINED_TENANT_SHARE`` of the rows, else built top down. ``progress(fraction,
        phase)`` hears how far the build is, phase by phase (the share of each: measured, 100k-1M rows).
        """
        report = progress or (lambda fraction, phase: None)
        idx = cls(table, metric, **params)
        parts = [np.asarray(r, np.int64) for r in tenants_rows.values() if len(r)]
        if parts:
            union = np.unique(np.concatenate(parts))
            if idx.tree_build is None and server_build() is None:
                largest = max(p.shape[0] for p in parts)
                idx.tree_build = "refined" if largest >= REFINED_TENANT_SHARE * union.shape[0] else "topdown"
            rng = np.random.default_rng(idx.seed)
            pick = union if union.shape[0] <= idx.train_size else rng.choice(union, idx.train_size, replace=False)
            report(0.0, "training the tree")
            idx.train(table.vectors(np.sort(pick)), population=int(union.shape[0]))
            report(0.6, "placing the rows")
            idx.add_many(tenants_rows)
        report(0.95, "loading the search kernels")
        idx.warm()
        report(1.0, "built")
        return idx
