"""Shared evaluation helpers for every benchmark: the real data set, tie-aware recall, QPS at a recall.

Loads ``../shared/data`` (see its README): real MiniLM embeddings with real tenants and exact ground
truth. Nothing here is tuned to a query; every figure is a mean over a query set.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("GROVE_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@dataclass
class RealData:
    """The shared data set, loaded lazily; ``visible(t)`` is tenant t's access list."""

    root: Path = DATA

    def _load(self, name: str) -> np.ndarray:
        return np.load(self.root / name)

    @cached_property
    def base(self) -> np.ndarray:
        return self._load("base_vectors.f16.npy").astype(np.float32)

    @cached_property
    def base_tenant(self) -> np.ndarray:
        return self._load("base_tenant.npy")

    @cached_property
    def offsets(self) -> np.ndarray:
        return self._load("tenant_offsets.npy")

    @cached_property
    def members(self) -> np.ndarray:
        return self._load("tenant_members.npy")

    @cached_property
    def names(self) -> list[str]:
        return [t["name"] for t in json.loads((self.root / "tenants.json").read_text())]

    @cached_property
    def tenant_queries(self) -> np.ndarray:
        return self._load("tenant_queries.npy")

    @cached_property
    def tenant_query_vectors(self) -> np.ndarray:
        return self._load("tenant_queries.f32.npy")

    @cached_property
    def tenant_truth(self) -> tuple[np.ndarray, np.ndarray]:
        return self._load("gt_tenant_top10_ids.npy"), self._load("gt_tenant_top10_scores.npy")

    def visible(self, t: int) -> np.ndarray:
        return self.members[self.offsets[t] : self.offsets[t + 1]]

    def ingest(self, col, batch: int = 1000) -> tuple[float, float]:
        """Upsert every base vector under its owner tenant, then grant the team tenants.

        Returns (seconds for the upserts, seconds for the grants).
        """
        import time

        bt = self.base_tenant
        t0 = time.perf_counter()
        for t in np.unique(bt):
            ids = np.flatnonzero(bt == t)
            for s in range(0, ids.size, batch):
                part = ids[s : s + batch]
                col.upsert(part.astype(np.int64), self.base[part], tenant=self.names[t])
        t1 = time.perf_counter()
        for t in range(len(self.names)):
            ids = self.visible(t)
            ids = ids[bt[ids] != t]
            if ids.size:
                col.grant(ids.astype(np.int64), tenant=self.names[t])
        return t1 - t0, time.perf_counter() - t1

    @property
    def n_grants(self) -> int:
        bt = self.base_tenant
        return int(sum((bt[self.visible(t)] != t).sum() for t in range(len(self.names))))


def true_scores(base: np.ndarray, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Inner products of each query with the ids it was given (-inf for padding)."""
    out = np.full(ids.shape, -np.inf, np.float32)
    for i in range(ids.shape[0]):
        ok = ids[i] >= 0
        out[i, ok] = base[ids[i, ok]] @ queries[i]
    return out


def tie_aware_recall(
    ids: np.ndarray, scores: np.ndarray, gt_ids: np.ndarray, gt_scores: np.ndarray, k: int = 10, eps: float = 1e-4
) -> float:
    """Recall@k where a returned id also counts when its true score ties the k-th true score."""
    hits = total = 0
    for r, rs, g, gs in zip(ids[:, :k], scores[:, :k], gt_ids[:, :k], gt_scores[:, :k]):
        valid = g >= 0
        n = int(valid.sum())
        if n == 0:
            continue
        kth = gs[valid][-1]
        want = set(g[valid].tolist())
        got = len({int(i) for i, s in zip(r, rs) if i >= 0 and (int(i) in want or s >= kth - eps)})
        hits += min(got, n)
        total += n
    return hits / max(total, 1)


def qps_at(curve: list[tuple[float, float]], target: float) -> float | None:
    """Highest QPS among (recall, qps) points reaching ``target``, interpolating between neighbours."""
    pts = sorted(curve)
    best = None
    for (r0, q0), (r1, q1) in zip(pts, pts[1:]):
        if r0 < target <= r1:
            best = max(best or 0.0, q0 + (q1 - q0) * (target - r0) / (r1 - r0))
    for r, q in pts:
        if r >= target:
            best = max(best or 0.0, q)
    return best
