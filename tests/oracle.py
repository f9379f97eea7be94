"""A brute-force model of one collection: who owns and who sees each vector, and exact filtered top-k.

It is the access-control oracle: every search Grove answers is compared with ``ModelCollection.search``.
"""

from __future__ import annotations

import numpy as np


class ModelCollection:
    def __init__(self, dim: int, metric: str) -> None:
        self.dim = dim
        self.metric = metric
        self.vectors: dict[int, np.ndarray] = {}
        self.owner: dict[int, str] = {}
        self.granted: dict[int, set[str]] = {}

    def sees(self, i: int, tenant: str) -> bool:
        return i in self.owner and (self.owner[i] == tenant or tenant in self.granted[i])

    def visible(self, tenant: str) -> list[int]:
        return sorted(i for i in self.owner if self.sees(i, tenant))

    def upsert(self, ids, vectors, tenant: str) -> None:
        for i, v in zip(ids.tolist(), vectors):
            if i not in self.owner:
                self.granted[i] = set()
            self.owner[i] = tenant
            self.vectors[i] = np.asarray(v, np.float32).copy()

    def grant(self, ids, tenant: str) -> None:
        for i in ids.tolist():
            if self.owner[i] != tenant:
                self.granted[i].add(tenant)

    def revoke(self, ids, tenant: str) -> None:
        for i in ids.tolist():
            self.granted[i].discard(tenant)

    def delete(self, ids) -> None:
        for i in ids.tolist():
            del self.owner[i], self.vectors[i], self.granted[i]

    def true_scores(self, query: np.ndarray, ids: list[int]) -> np.ndarray:
        """User-facing scores (similarity for ip/cosine, Euclidean distance for l2), in float64."""
        if not ids:
            return np.zeros(0)
        x = np.stack([self.vectors[i] for i in ids]).astype(np.float64)
        q = query.astype(np.float64)
        if self.metric == "l2":
            return np.sqrt(((x - q) ** 2).sum(axis=1))
        if self.metric == "cosine":
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
            q = q / max(np.linalg.norm(q), 1e-30)
        return x @ q

    def search(self, query: np.ndarray, k: int, tenant: str) -> tuple[list[int], np.ndarray]:
        """Exact top-k ids and scores of what ``tenant`` sees, best first."""
        ids = self.visible(tenant)
        s = self.true_scores(query, ids)
        order = np.argsort(s if self.metric == "l2" else -s, kind="stable")[:k]
        return [ids[j] for j in order], s[order]


def assert_matches_oracle(
    model: ModelCollection, query: np.ndarray, k: int, tenant: str, ids, scores, *, exact: bool = True
) -> None:
    """Grove's row never shows an invisible id, has min(k, visible) distinct hits with their true scores, best
    first, and (``exact``) equals the oracle's exact top-k up to score ties."""
    want_ids, want_scores = model.search(query, k, tenant)
    ids = [int(i) for i in ids]
    got = [i for i in ids if i >= 0]
    assert len(got) == len(want_ids), f"tenant {tenant}: {len(got)} hits, oracle has {len(want_ids)}"
    assert ids[len(got) :] == [-1] * (k - len(got)), "padding must follow the real hits"
    for i in got:
        assert model.sees(i, tenant), f"LEAK: tenant {tenant} was shown id {i} it cannot see"
    assert len(set(got)) == len(got), "duplicate ids in one result row"
    true = model.true_scores(query, got)
    np.testing.assert_allclose(np.asarray(scores, np.float64)[: len(got)], true, rtol=1e-4, atol=1e-4)
    order = true if model.metric == "l2" else -true
    assert np.all(np.diff(order) >= -1e-4), "hits are not ordered best first"
    if exact:
        np.testing.assert_allclose(true, want_scores, rtol=1e-4, atol=1e-4, err_msg="not the exact top-k")
