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

An untrained tree is a single leaf: every tenant is then one shortlist at the root, i.e. exact search.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from engine.kernels import tree as _k

#: a split never goes deeper than this (guards against pathological data)
MAX_DEPTH = 16


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
    """

    def __init__(self, centroids: np.ndarray, child_start: np.ndarray, child_count: np.ndarray) -> None:
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
    ) -> ClusterTree:
        """Hierarchical k-means over ``sample`` (float32 ``[n, d]``), breadth first.

        Parameters
        ----------
        sample : the training vectors (already prepared for the metric).
        fanout : the most children of a node.
        max_leaf_size : a node standing for more vectors than this is split.
        population : how many vectors ``sample`` stands for (default ``len(sample)``); sizes scale by
            ``population / len(sample)``.
        niter : k-means iterations per node (v2: 20).
        seed : k-means seed.
        """
        import faiss

        x = np.ascontiguousarray(sample, np.float32)
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

    def route(self, data: np.ndarray, rows: np.ndarray, *, parallel: bool = False) -> np.ndarray:
        """Leaf node (int32) reached by greedy nearest-centroid descent for each ``data[rows]``."""
        out = np.zeros(rows.shape[0], np.int32)
        if self.trained and rows.shape[0]:
            fn = _k.route_rows_parallel if parallel else _k.route_rows
            fn(data, rows, self.centroids, self.child_start, self.child_count, out)
        return out

    def state(self) -> dict[str, np.ndarray]:
        return {"centroids": self.centroids, "child_start": self.child_start, "child_count": self.child_count}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> ClusterTree:
        return cls(state["centroids"], state["child_start"], state["child_count"])

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
