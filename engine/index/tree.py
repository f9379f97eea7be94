"""The global clustering tree (GCT) of the Curator index: hierarchical k-means, frozen after training.

curator.md §1.1. Each node has a centroid; an internal node's children are numbered contiguously
(``child_start[n] .. child_start[n] + child_count[n]``), so a node's children are one slice. Leaves are
ranked in depth-first order, which makes the leaves below any node one contiguous range of ranks
``[leaf_lo[n], leaf_hi[n])``: the Curator index keys every tenant entry by its leaf rank, so a tenant's entries
below a node are one contiguous slice of its sorted list (the idea of v2's path-encoded ids).

Shape (v2 style, §1.1): a node holding more than ``max_leaf_size`` vectors is split by k-means into
``min(fanout, ceil(size / max_leaf_size))`` children (at least 2); a split that would not separate anything
(every point in one cluster, e.g. duplicates) leaves the node a leaf. Training uses faiss k-means on a sample;
sizes are scaled by ``population / len(sample)`` so the leaf size refers to the whole collection.

Refinement (``build="refined"``: a collection's ``configure(refined_tree=1)``, ``GROVE_TREE_BUILD=refined``, or the
Curator index's own choice when one tenant sees at least half of the rows; not in the paper): a top-down tree's
leaves are cells of nested local k-means, so a vector's nearest leaf is often under another branch, and its leaves
covered an OOD query's true neighbours worse than flat k-means cells of the same count. So the top-down tree is only
the start: its inner levels are rebuilt bottom up over its leaves (size-weighted k-means of the leaf centroids into
parents of at most ``fanout`` children, level by level up to the root), and a few global Lloyd rounds then move
every leaf to the mean of the sample vectors whose *nearest leaf of the whole tree* it is, found by a beam descent
(``ROUTE_BEAM`` nodes per level, exact when the beam is as wide as the leaf count). Rows are placed and inserted by
the same beam descent (``route``), so they land where the refined leaves expect them. On the shared 84k set
(``bench/tree_build.py``): 2.2k leaves either way; the share of an OOD query's true top-10 inside the first 5k
entries of leaves by exact centroid order 0.912 -> 0.954 (flat k-means: 0.962), in the search walk's order 0.889 ->
0.938; a tenant that sees all of it, searched leaf by leaf in that order, scans 0.58-0.70x the entries for recall@10
0.95, at 1.24-1.40x the QPS (LeanVec-OOD, float32). Training costs more: 84k 1.4 -> 2.0-2.4 s; a 100k sample
standing for 1M vectors 2.6-3.5 -> 9-15 s, and placing the 1M rows 1-2 -> 5-9 s (2 cores). It is not the default for
every tree because the many-small-tenants workload lost by it (``bench/curator.py``, same hour, QPS at recall 0.95
over PT-IVF's: top-down 1.33-1.40x / 1.42-1.45x on the real / dense scenarios, refined 1.25-1.34x / 1.30-1.33x) and
single-row inserts cost 15 -> 22 us (the beam descent); it pays off for collections searched through large tenants.
Where the kernel layer sends a bulk route to a CUDA device (``engine.kernels.gpu_runs``: a real device and enough
work), the Lloyd rounds and bulk placement take each vector's exact nearest leaf instead of the beam's approximation
(``_nearest_leaves``); single inserts keep the beam descent. Routing, like the search's node priority, is by squared
L2 to the centroids of vectors prepared for the metric (unit vectors for cosine), whatever the metric.

An untrained tree is a single leaf: every tenant is then one shortlist at the root, i.e. exact search.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from engine import config, kernels
from engine.kernels import tree as _k

_log = logging.getLogger("grove.index")

#: a split never goes deeper than this (guards against pathological data)
MAX_DEPTH = 16
#: how a tree is trained (``ClusterTree.train``'s ``build``; env ``GROVE_TREE_BUILD``), the default first
BUILDS = ("topdown", "refined")


#: Lloyd rounds over the leaves of a refined tree
REFINE_ROUNDS = 4
#: beam width of a refined tree's routing (training, bulk placement, inserts)
ROUTE_BEAM = 8
#: a rebuilt inner level has ``fanout * BUILD_FILL`` children per node on average (at most ``fanout``)
BUILD_FILL = 0.75
#: bulk routes of at least this many rows go in the order of their greedy leaves (``route``)
_ORDERED_ROUTE = 65_536
#: rows per batch of the exact nearest-leaf assignment on a GPU (``_nearest_leaves``)
_GPU_BATCH = 65_536
#: k-means iterations that start the grouping of a rebuilt level (capacity-constrained rounds follow)
_GROUP_NITER = 5
#: candidate parents per child considered first by the capacity-constrained assignment of a rebuilt level
_CANDIDATES = 6


def server_build() -> str | None:
    """The server's tree build (setting ``engine.tree_build``: ``refined``/``topdown``), or None for auto."""
    return config.engine_setting("tree_build")


class ClusterTree:
    """Frozen hierarchical k-means tree: centroids and topology as flat arrays (numba-friendly).

    Attributes
    ----------
    centroids : float32 ``[n_nodes, d]``
    child_start, child_count : int32 ``[n_nodes]``; ``child_count == 0`` marks a leaf.
    parent : int32 ``[n_nodes]``, -1 at the root (node 0).
    leaf_rank : int32 ``[n_nodes]``, the depth-first rank of a leaf, -1 for internal nodes.
    leaf_node : int32 ``[n_leaves]``, the node of each leaf rank.
    leaf_lo, leaf_hi : int32 ``[n_nodes]``, the leaf ranks below each node.
    cent_norm : float32 ``[n_nodes]``, squared centroid norms.
    beam : routing width of ``route``: 1 is the greedy descent, more is a beam descent (``ROUTE_BEAM`` for a
        refined tree); it is part of the saved state, so rows inserted after a reload land where the build
        put their neighbours.
    """

    def __init__(
        self, centroids: np.ndarray, child_start: np.ndarray, child_count: np.ndarray, *, beam: int = 1
    ) -> None:
        self.beam = int(beam)
        if self.beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        self.centroids = np.ascontiguousarray(centroids, np.float32)
        self.child_start = np.ascontiguousarray(child_start, np.int32)
        self.child_count = np.ascontiguousarray(child_count, np.int32)
        n = self.centroids.shape[0]
        if n < 1 or self.child_start.shape != (n,) or self.child_count.shape != (n,):
            raise ValueError(f"tree arrays disagree: {n} centroids, child arrays {self.child_start.shape}")
        self.parent = np.full(n, -1, np.int32)
        self.depth = np.zeros(n, np.int32)
        for node in range(n):
            c0, cn = int(self.child_start[node]), int(self.child_count[node])
            if cn and not (node < c0 and c0 + cn <= n):
                raise ValueError(f"tree node {node} has children {c0}..{c0 + cn} outside 1..{n}")
            self.parent[c0 : c0 + cn] = node
            self.depth[c0 : c0 + cn] = self.depth[node] + 1
        self.leaf_rank = np.full(n, -1, np.int32)
        self.leaf_lo = np.zeros(n, np.int32)
        self.leaf_hi = np.zeros(n, np.int32)
        self._rank_leaves()
        self.leaf_node = np.flatnonzero(self.child_count == 0).astype(np.int32)
        self.leaf_node = self.leaf_node[np.argsort(self.leaf_rank[self.leaf_node])]
        self.cent_norm = np.einsum("ij,ij->i", self.centroids, self.centroids).astype(np.float32)

    def _rank_leaves(self) -> None:
        """Depth-first leaf ranks (children in id order) and each node's range of them."""
        rank = 0
        stack = [(0, False)]
        while stack:
            node, done = stack.pop()
            cn = int(self.child_count[node])
            if done:
                c0 = int(self.child_start[node])
                self.leaf_lo[node] = self.leaf_lo[c0]
                self.leaf_hi[node] = self.leaf_hi[c0 + cn - 1]
                continue
            if cn == 0:
                self.leaf_rank[node] = rank
                self.leaf_lo[node] = rank
                self.leaf_hi[node] = rank + 1
                rank += 1
                continue
            stack.append((node, True))
            c0 = int(self.child_start[node])
            stack.extend((c, False) for c in range(c0 + cn - 1, c0 - 1, -1))

    # ------------------------------------------------------------------------------------------ build
    @classmethod
    def single(cls, dim: int) -> ClusterTree:
        """The untrained tree: one leaf (search is then exact)."""
        return cls(np.zeros((1, dim), np.float32), np.zeros(1, np.int32), np.zeros(1, np.int32))

    @classmethod
    def train(
        cls,
        sample: np.ndarray,
        *,
        fanout: int = 16,
        max_leaf_size: int = 64,
        population: int | None = None,
        niter: int = 20,
        seed: int = 0,
        build: str | None = None,
        refine_rounds: int = REFINE_ROUNDS,
        beam: int = ROUTE_BEAM,
    ) -> ClusterTree:
        """Train a tree on ``sample`` (float32 ``[n, d]``): top-down hierarchical k-means, optionally refined.

        Parameters
        ----------
        sample : the training vectors (already prepared for the metric; routing is by L2 to the centroids).
        fanout : the most children of a node.
        max_leaf_size : a node standing for more vectors than this is split.
        population : how many vectors ``sample`` stands for (default ``len(sample)``); sizes scale by
            ``population / len(sample)``.
        niter : k-means iterations per node (v2: 20).
        seed : k-means seed.
        build : ``"refined"`` (the top-down tree's leaves under inner levels rebuilt bottom up, then moved by
            global Lloyd rounds; routed by a beam descent, ``_refined``) or ``"topdown"`` (the top-down tree as
            trained, routed greedily). Default: the ``GROVE_TREE_BUILD`` environment variable, else
            ``"topdown"``.
        refine_rounds : Lloyd rounds over the leaves (refined build).
        beam : the refined tree's routing width (training, placement and inserts: ``route``).
        """
        build = build or server_build() or "topdown"
        if build not in BUILDS:
            raise ValueError(f"build must be one of {', '.join(BUILDS)}, got {build!r} (check GROVE_TREE_BUILD)")
        if beam < 1 or refine_rounds < 0:
            raise ValueError(f"beam must be >= 1 and refine_rounds >= 0, got {beam} and {refine_rounds}")
        x = np.ascontiguousarray(sample, np.float32)
        with _faiss_threads(1):
            tree = cls._topdown(x, fanout, max_leaf_size, population, niter, seed)
            if build == "topdown" or tree.n_leaves < 2:
                return tree
            return tree._refined(x, fanout, refine_rounds, beam, seed)

    @classmethod
    def _topdown(
        cls, x: np.ndarray, fanout: int, max_leaf_size: int, population: int | None, niter: int, seed: int
    ) -> ClusterTree:
        """Hierarchical k-means over ``x``, breadth first (curator.md §1.1, v2 shape); greedy routing."""
        import faiss

        n, d = x.shape
        if n == 0:
            return cls.single(d)
        scale = max(1.0, (population or n) / n)
        cents = [x.mean(axis=0)]
        child_start = [0]
        child_count = [0]
        depth = [0]
        queue = deque([(0, np.arange(n))])
        while queue:
            node, idx = queue.popleft()
            size = len(idx) * scale
            if size <= max_leaf_size or depth[node] >= MAX_DEPTH or len(idx) < 2:
                continue
            nc = min(fanout, max(2, math.ceil(size / max_leaf_size)), len(idx))
            pts = x[idx]
            km = faiss.Kmeans(
                d,
                nc,
                niter=niter,
                seed=seed + node,
                min_points_per_centroid=1,
                max_points_per_centroid=256,
                verbose=False,
            )
            km.train(pts)
            _, lab = km.index.search(pts, 1)
            lab = lab[:, 0]
            used = np.flatnonzero(np.bincount(lab, minlength=nc))
            if used.size < 2:
                continue  # k-means could not separate these points: keep the node a leaf
            child_start[node] = len(cents)
            child_count[node] = int(used.size)
            for c in used.tolist():
                members = idx[lab == c]
                cents.append(x[members].mean(axis=0))
                child_start.append(0)
                child_count.append(0)
                depth.append(depth[node] + 1)
                queue.append((len(cents) - 1, members))
        return cls(np.stack(cents), np.array(child_start), np.array(child_count))

    def _refined(self, x: np.ndarray, fanout: int, rounds: int, beam: int, seed: int) -> ClusterTree:
        """This tree's leaves under rebuilt inner levels, then refined by global Lloyd rounds.

        1. The inner levels are rebuilt bottom up over the leaves that the greedy descent gives vectors of ``x``
           (``_bottom_up``, weighted by those counts): a balanced tree of ``fanout * BUILD_FILL`` children per
           node on average, cheaper to descend with a beam than the top-down tree and routing better.
        2. ``rounds`` Lloyd rounds over its leaves (``_lloyd``): every vector goes to the leaf a beam descent of
           width ``beam`` finds (the nearest leaf of the whole tree, approximately: the rule ``route`` then
           places rows by), each leaf moves to the mean of its vectors and each inner centroid to the
           size-weighted mean of its children.
        3. Leaves left empty by the last round are dropped (and inner nodes left without children).
        """
        nodes = self.route(x, np.arange(x.shape[0], dtype=np.int64), parallel=True, beam=1)
        counts = np.bincount(nodes, minlength=self.n_nodes)
        keep = np.flatnonzero((self.child_count == 0) & (counts > 0))
        c, parent, w = _bottom_up(self.centroids[keep], counts[keep].astype(np.float64), fanout, seed)
        tree = _from_parents(c, parent, w, None, beam)
        if rounds == 0:
            return tree
        cent = tree.centroids.copy()
        order = np.argsort(self.leaf_rank[nodes], kind="stable")
        counts = _lloyd(x, order, cent, tree.child_start, tree.child_count, beam, rounds)
        drop = (tree.child_count == 0) & (counts == 0)
        return _from_parents(cent, tree.parent, counts.astype(np.float64), drop, beam)

    # ------------------------------------------------------------------------------------------ use
    @property
    def n_nodes(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def n_leaves(self) -> int:
        return int(self.leaf_node.shape[0])

    @property
    def trained(self) -> bool:
        return self.n_nodes > 1

    def route(
        self, data: np.ndarray, rows: np.ndarray, *, parallel: bool = False, beam: int | None = None
    ) -> np.ndarray:
        """The leaf node (int32) of each ``data[rows]``: by greedy nearest-centroid descent (``beam`` 1), or the
        nearest leaf found by a beam descent keeping the ``beam`` nearest inner nodes per step (squared L2 to the
        centroids). ``beam`` defaults to the tree's own; one at least ``n_leaves`` wide is exact."""
        out = np.zeros(rows.shape[0], np.int32)
        if not self.trained or rows.shape[0] == 0:
            return out
        beam = beam or self.beam
        args = (self.centroids, self.child_start, self.child_count)
        exact = parallel and beam > 1 and _on_gpu(rows.shape[0], self.child_count, data.shape[1])
        if parallel and beam > 1 and rows.shape[0] >= _ORDERED_ROUTE and not exact:
            # neighbours in a row (by their greedy leaf) read the same centroids: measured 1.2x faster in bulk
            _route(data, rows, *args, 1, out, True)
            order = np.argsort(self.leaf_rank[out], kind="stable")
            part = np.empty_like(out)
            _route(data, rows[order], *args, beam, part, True)
            out[order] = part
        else:
            _route(data, rows, *args, beam, out, parallel)
        return out

    def state(self) -> dict[str, np.ndarray]:
        return {
            "centroids": self.centroids,
            "child_start": self.child_start,
            "child_count": self.child_count,
            "beam": np.array([self.beam], np.int32),
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> ClusterTree:
        """The tree ``state()`` saved; a state without ``beam`` (saved before beam routing) routes greedily."""
        beam = int(state["beam"][0]) if "beam" in state else 1
        return cls(state["centroids"], state["child_start"], state["child_count"], beam=beam)

    def nbytes(self) -> dict[str, int]:
        topo = (
            self.child_start,
            self.child_count,
            self.parent,
            self.depth,
            self.leaf_rank,
            self.leaf_lo,
            self.leaf_hi,
            self.leaf_node,
            self.cent_norm,
        )
        return {"tree_bytes": int(sum(a.nbytes for a in topo)), "centroids_bytes": int(self.centroids.nbytes)}


# ---------------------------------------------------------------------------------------------- refined build
@contextmanager
def _faiss_threads(n: int) -> Iterator[None]:
    """faiss (OpenMP) limited to ``n`` threads in the calling thread for the block.

    A tree's k-means jobs are small (a node's points, or a level's centroids), thousands of them, each with
    OpenMP barriers: on the shared 2-core machine two threads measured anywhere from 1.1 s to 59 s for the same
    84k top-down build, one thread a steady 1.1-1.6 s.
    """
    import faiss

    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)


def _on_gpu(n_rows: int, child_count: np.ndarray, d: int) -> bool:
    """Whether the kernel layer sends an exact scan of ``n_rows`` rows against every leaf to a CUDA device."""
    return kernels.gpu_runs(n_rows * int(np.count_nonzero(child_count == 0)) * d)


def _nearest_leaves(data, rows, cent, child_count, out: np.ndarray) -> None:
    """``out[i]`` = the leaf whose centroid is nearest ``data[rows[i]]`` (squared L2) among all leaves: exact.

    The limit the beam descent approximates, at a cost only a GPU pays easily: 1M rows against the 25k leaves of
    a 1M-vector tree at d = 384 is 1e13 multiply-adds. ``engine.kernels.search`` runs it there (its exact top-1:
    a reduced-precision first stage, rescored and certified); the caller asks ``_on_gpu`` first.
    """
    leaves = np.flatnonzero(child_count == 0)
    cents = np.ascontiguousarray(cent[leaves], np.float32)
    for s in range(0, rows.shape[0], _GPU_BATCH):
        part = rows[s : s + _GPU_BATCH]
        _, best = kernels.search(data[part], cents, 1, "l2", backend="cuda")
        out[s : s + part.shape[0]] = leaves[best[:, 0]]


def _route(data, rows, cent, child_start, child_count, beam: int, out: np.ndarray, parallel: bool) -> None:
    """``out[i]`` = the leaf of ``data[rows[i]]``: greedy descent for ``beam`` 1, else a beam descent (the exact
    nearest leaf, ``_nearest_leaves``, where a bulk route goes to a GPU)."""
    if beam > 1 and parallel and _on_gpu(rows.shape[0], child_count, data.shape[1]):
        try:
            _nearest_leaves(data, rows, cent, child_count, out)
            return
        except Exception as exc:  # noqa: BLE001 - the GPU is an accelerator, never a requirement: say so, go on
            _log.warning("the GPU could not route %d rows (%s); routing them on the CPU", rows.shape[0], exc)
    if beam <= 1:
        fn = _k.route_rows_parallel if parallel else _k.route_rows
        fn(data, rows, cent, child_start, child_count, out)
    else:
        fn = _k.beam_route_rows_parallel if parallel else _k.beam_route_rows
        fn(data, rows, cent, child_start, child_count, beam, out)


def _lloyd(x, rows, cent, child_start, child_count, beam: int, rounds: int) -> np.ndarray:
    """``rounds`` Lloyd rounds over the leaves of a tree, in place; returns each node's count of ``x``.

    Each round routes every vector (``beam``), moves each leaf that received vectors to their mean (an empty
    leaf keeps its centroid) and each inner centroid to the count-weighted mean of its children. The counts
    returned are those of the last assignment (0 at inner nodes). ``rows`` is every row of ``x`` once, in the
    order of the first round (neighbours together, for the cache); later rounds go leaf by leaf.
    """
    n, d = x.shape
    nodes = np.empty(n, np.int32)
    leaf = child_count == 0
    counts = np.zeros(cent.shape[0], np.int64)
    for i in range(rounds):
        if i:  # vectors of one leaf in a row: their descents read the same centroids (measured 1.5x faster)
            rows = rows[np.argsort(nodes, kind="stable")]
        _route(x, rows, cent, child_start, child_count, beam, nodes, True)
        sums = np.zeros((cent.shape[0], d), np.float64)
        counts[:] = 0
        _k.leaf_sums(x, rows, nodes, sums, counts)
        hit = leaf & (counts > 0)
        cent[hit] = sums[hit] / counts[hit, None]
        _k.inner_means(cent, child_start, child_count, counts.astype(np.float64))
    return counts


def _group(c: np.ndarray, w: np.ndarray, groups: int, cap: int, seed: int, rounds: int = 3):
    """Cluster points ``c`` (weights ``w``) into at most ``groups`` groups of at most ``cap`` points each.

    Weighted k-means (faiss, ``_GROUP_NITER`` iterations) starts it; ``rounds`` capacity-constrained Lloyd
    rounds follow: each point's ``_CANDIDATES`` nearest groups (faiss), assigned nearest pairs first while a
    group has room (``capacity_assign``; a point whose candidates filled takes the nearest group with room),
    then each group's centroid becomes the weighted mean of its points. Returns ``(group of each point,
    centroids, weights)`` with empty groups dropped.
    """
    import faiss

    m, d = c.shape
    km = faiss.Kmeans(d, groups, niter=_GROUP_NITER, seed=seed, min_points_per_centroid=1, verbose=False)
    km.train(c, weights=w.astype(np.float32))
    pc = np.ascontiguousarray(km.centroids, np.float32)
    t = min(groups, _CANDIDATES)
    out = np.empty(m, np.int64)
    wc = w[:, None] * c
    for _ in range(rounds):
        index = faiss.IndexFlatL2(d)
        index.add(pc)
        dist, cand = index.search(c, t)
        room = np.full(groups, cap, np.int64)
        if _k.capacity_assign(np.argsort(dist, axis=None, kind="stable"), cand, room, out):
            left = np.flatnonzero(out < 0)
            full = np.einsum("ij,ij->i", pc, pc)[None, :] - 2.0 * (c[left] @ pc.T)
            _k.assign_leftovers(left, full, room, out)
        by = np.argsort(out, kind="stable")
        used, first = np.unique(out[by], return_index=True)
        pc[used] = np.add.reduceat(wc[by], first, axis=0) / np.add.reduceat(w[by], first)[:, None]
    used, a = np.unique(out, return_inverse=True)
    return a, pc[used], np.bincount(out, weights=w, minlength=groups)[used]


def _bottom_up(cents: np.ndarray, weights: np.ndarray, fanout: int, seed: int):
    """Inner levels over leaf centroids ``cents`` (weights: their sizes), bottom up, up to one root.

    Each level's nodes are grouped into parents of at most ``fanout`` children (``fanout * BUILD_FILL`` on
    average) by ``_group``, until at most ``fanout`` are left; they become the root's children. A parent's
    centroid is the size-weighted mean of its children. Returns ``(centroids, parent, weights)`` over all
    nodes: the leaves first (in the order given), then each level, the root last.
    """
    level_c, level_w = [cents], [weights]
    parents: list[np.ndarray] = []
    while level_c[-1].shape[0] > fanout:
        c, w = level_c[-1], level_w[-1]
        groups = math.ceil(c.shape[0] / max(fanout * BUILD_FILL, 1.5))
        a, pc, pw = _group(c, w, groups, fanout, seed + len(parents))
        parents.append(a)
        level_c.append(pc)
        level_w.append(pw)
    offs = np.cumsum([0] + [c.shape[0] for c in level_c])
    root = int(offs[-1])
    parent = np.full(root + 1, -1, np.int64)
    for i, a in enumerate(parents):
        parent[offs[i] : offs[i + 1]] = offs[i + 1] + a
    parent[offs[-2] : offs[-1]] = root
    top_w = level_w[-1]
    root_c = (top_w[:, None] * level_c[-1]).sum(axis=0) / top_w.sum()
    cent = np.concatenate(level_c + [root_c[None, :]]).astype(np.float32)
    return cent, parent, np.concatenate(level_w + [top_w.sum(keepdims=True)])


def _from_parents(cent, parent, weight, drop, beam: int) -> ClusterTree:
    """A ``ClusterTree`` (ids breadth first, so children are contiguous) from a forest of parent pointers.

    ``parent`` is -1 at the root only; ``drop`` marks leaves to leave out, and an inner node left without
    children goes too. Inner centroids become the ``weight``-weighted means of their children (leaf weights
    count).
    """
    n = parent.shape[0]
    alive = np.ones(n, bool) if drop is None else ~drop
    has_parent = parent >= 0
    inner = np.bincount(parent[has_parent], minlength=n) > 0
    while True:
        kids = np.bincount(parent[alive & has_parent], minlength=n)
        dead = alive & inner & (kids == 0)
        if not dead.any():
            break
        alive &= ~dead
    root = int(np.flatnonzero(~has_parent)[0])
    members = np.flatnonzero(alive & has_parent)
    members = members[np.argsort(parent[members], kind="stable")]
    lo = np.searchsorted(parent[members], np.arange(n))
    hi = np.searchsorted(parent[members], np.arange(n), side="right")
    walk = [root]
    start = np.zeros(n, np.int64)
    for node in walk:  # breadth first: the list grows while it is walked
        start[node] = len(walk)
        walk.extend(members[lo[node] : hi[node]].tolist())
    order = np.array(walk)
    count = (hi - lo)[order].astype(np.int32)
    child_start = np.where(count > 0, start[order], 0).astype(np.int32)
    cents = np.ascontiguousarray(cent[order], np.float32)
    w = np.where(count > 0, 0.0, weight[order]).astype(np.float64)
    _k.inner_means(cents, child_start, count, w)
    return ClusterTree(cents, child_start, count, beam=beam)
