"""The leaf-probe batch search (engine.training.ann) against brute force over exactly the rows a tenant sees.

Spec: a batch search probes, for each query, the ``nprobe`` leaves of highest priority (centroid score plus
the spread bonus of the module docstring) among the leaves the tenant has rows in, and returns the exact
top-``depth`` of the rows in those leaves, best first, padded with (-inf, -1); it never returns a row the
tenant does not see. The oracle is a float64 numpy model of that rule, over the sets of rows this test keeps
for each tenant (owners, grants, revokes, deletes), never over the engine's own ACL; the leaves, centroids and
spreads it ranks are checked against the index's tree.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from engine.db import Database
from engine.errors import InvalidArgument
from engine.index.curator import CuratorIndex
from engine.index.table import VectorTable
from engine.kernels import metrics
from engine.principal import ADMIN
from engine.training import _probe, ann, mine_hard_negatives
from engine.training.search import ScopedVectors
from engine.types import LVQ

SEED = int(os.environ.get("GROVE_TEST_SEED", "20240614"))
#: a small tree: leaves of a few dozen rows, so that a few thousand rows make ~100 leaves
TREE = dict(fanout=4, max_leaf_size=32, train_size=5_000)
METRICS = ("ip", "cosine", "l2")


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    print(f"{request.node.name}: seed {SEED} (set GROVE_TEST_SEED to replay)")
    return np.random.default_rng(SEED)


def blobs(rng: np.random.Generator, n: int, d: int, clusters: int = 20) -> np.ndarray:
    centers = rng.normal(size=(clusters, d)).astype(np.float32) * 2
    return (centers[rng.integers(0, clusters, n)] + rng.normal(size=(n, d))).astype(np.float32)


class World:
    """Rows in a ``VectorTable`` owned by 4 tenants, tenant 3 also granted rows of the others; a Curator index
    built over it. ``sees[t]`` is this test's own record of the rows tenant t may see."""

    def __init__(self, rng: np.random.Generator, metric: str, n: int = 3000, d: int = 16) -> None:
        self.metric = metric
        self.table = VectorTable(d, capacity=n)
        slots = self.table.allocate(n)
        owner = rng.integers(0, 4, n)
        vectors = metrics.prepare(metric, blobs(rng, n, d))
        self.table.put(slots, np.arange(1000, 1000 + n, dtype=np.int64), vectors, owner.astype(np.int32))
        self.sees = {t: set(slots[owner == t].tolist()) for t in range(4)}
        granted = slots[(owner != 3) & (rng.random(n) < 0.3)]
        self.table.grant(granted, 3)
        self.sees[3] |= set(granted.tolist())
        rows = {t: np.array(sorted(s), np.int64) for t, s in self.sees.items()}
        self.index = CuratorIndex.build(self.table, metric, rows, **TREE)

    def revoke(self, rows: np.ndarray, tenant: int) -> None:
        done = self.table.revoke(rows, tenant)
        self.index.remove(tenant, done)
        self.sees[tenant] -= set(done.tolist())

    def delete(self, rows: np.ndarray) -> None:
        for r in rows.tolist():
            for t in self.table.tenants_of(r):
                self.index.remove(t, np.array([r], np.int64))
                self.sees[t].discard(r)
        self.table.free(rows)

    def queries(self, rng: np.random.Generator, m: int = 40) -> np.ndarray:
        q = blobs(rng, m, self.table.dim) + rng.normal(size=(m, self.table.dim)).astype(np.float32)
        return np.ascontiguousarray(metrics.prepare(self.metric, q), dtype=np.float32)


def surrogate(metric: str, q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """float64 kernel surrogate of every query against every row: dot, or minus the squared distance."""
    q, x = q.astype(np.float64), x.astype(np.float64)
    if metric == "l2":
        return -((q[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    return q @ x.T


def probed_rows(probe: ann.LeafProbe, q: np.ndarray) -> list[np.ndarray]:
    """For each query, the rows of the leaves the rule probes (priorities computed here, in float64)."""
    pri = surrogate(probe.metric, q, probe.centroids)
    r = probe.spread_weight * probe.spread.astype(np.float64)
    if probe.metric == "l2":
        pri = pri + 2 * r * np.sqrt(np.maximum(-pri, 0)) - r * r
    else:
        pri = pri + r * np.linalg.norm(q.astype(np.float64), axis=1, keepdims=True)
    top = np.argsort(-pri, axis=1, kind="stable")[:, : probe.nprobe]
    return [np.concatenate([probe.rows[probe.ptr[leaf] : probe.ptr[leaf + 1]] for leaf in t]) for t in top]


def oracle_top(metric: str, data: np.ndarray, q: np.ndarray, rows: np.ndarray, depth: int):
    """Exact top-``depth`` (surrogate, row) of ``rows`` for one query ``q`` ``[1, d]``, best first, ties to the
    smaller row."""
    s = surrogate(metric, q, data[rows])[0]
    order = np.lexsort((rows, -s))[:depth]
    return s[order], rows[order]


def probe_count(index: CuratorIndex) -> int:
    """Non-empty leaves of tenant 0."""
    return int(np.unique(index.leaf_members(0)[0]).shape[0])


def check_shape_of_result(s: np.ndarray, r: np.ndarray, sees: set[int]) -> None:
    """Best first; padding (-inf, -1) only at the tail; no duplicate; every row visible."""
    for srow, rrow in zip(s, r):
        real = rrow >= 0
        n = int(real.sum())
        assert real[:n].all() and not real[n:].any(), "padding must come last"
        assert np.isneginf(srow[n:]).all()
        assert np.all(np.diff(srow[:n]) <= 0), "results must be best first"
        assert len(set(rrow[:n].tolist())) == n, "a row came back twice"
        assert set(rrow[:n].tolist()) <= sees, "a row the tenant cannot see came back"


# ---------------------------------------------------------------------------------------------- the rule
@pytest.mark.parametrize("metric", METRICS)
def test_result_is_the_exact_top_k_of_the_probed_leaves(rng, metric):
    world = World(rng, metric)
    q = world.queries(rng)
    depth = 50
    for tenant in range(4):
        probe = ann.LeafProbe(world.index, tenant, nprobe=12, exact_max=0)
        assert not probe.exact and 12 < probe.n_leaves
        s, r = probe.search(q, depth)
        check_shape_of_result(s, r, world.sees[tenant])
        for i, cand in enumerate(probed_rows(probe, q)):
            want_s, _ = oracle_top(metric, world.table.data, q[i : i + 1], cand, depth)
            n = want_s.shape[0]
            assert (r[i, :n] >= 0).all() and (r[i, n:] == -1).all()
            assert set(r[i, :n].tolist()) <= set(cand.tolist()), "a row outside the probed leaves came back"
            # the same scores as the oracle's top-k (ties may swap rows), and each is the row's true score
            np.testing.assert_allclose(s[i, :n], want_s, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(s[i, :n], surrogate(metric, q[i : i + 1], world.table.data[r[i, :n]])[0],
                                       rtol=1e-4, atol=1e-4)  # fmt: skip


def test_leaves_are_the_trees_with_their_centroid_and_sampled_spread(rng):
    world = World(rng, "l2")
    probe = ann.LeafProbe(world.index, 3, exact_max=0)
    ranks, rows = world.index.leaf_members(3)
    assert sorted(probe.rows.tolist()) == sorted(world.sees[3])
    for leaf in range(probe.n_leaves):
        members = probe.rows[probe.ptr[leaf] : probe.ptr[leaf + 1]]
        rank = ranks[rows == members[0]][0]
        assert (ranks[np.isin(rows, members)] == rank).all() and (ranks == rank).sum() == members.shape[0]
        c = world.index.tree.centroids[world.index.tree.leaf_node[rank]]
        np.testing.assert_array_equal(probe.centroids[leaf], c)
        sample = world.table.data[members[: ann.SPREAD_SAMPLE]]
        want = np.sqrt(((sample.astype(np.float64) - c) ** 2).sum(axis=1).mean())
        np.testing.assert_allclose(probe.spread[leaf], want, rtol=1e-4)


@pytest.mark.parametrize("metric", METRICS)
def test_probing_every_leaf_or_a_small_tenant_is_exact_search(rng, metric):
    world = World(rng, metric)
    q = world.queries(rng)
    for tenant, probe in (
        (3, ann.LeafProbe(world.index, 3, nprobe=10_000, exact_max=0)),  # more probes than leaves
        (0, ann.LeafProbe(world.index, 0, exact_max=10_000)),  # a tenant below exact_max
    ):
        assert probe.exact
        rows = np.array(sorted(world.sees[tenant]), np.int64)
        s, r = probe.search(q, 30)
        for i in range(q.shape[0]):
            want_s, want_r = oracle_top(metric, world.table.data, q[i : i + 1], rows, 30)
            np.testing.assert_allclose(s[i], want_s, rtol=1e-4, atol=1e-4)
            assert (r[i] == want_r).mean() > 0.9  # near-ties in float32 may swap neighbours


def test_more_probes_find_more_of_the_exact_top_k(rng):
    world = World(rng, "ip")
    q = world.queries(rng, m=60)
    rows = np.array(sorted(world.sees[3]), np.int64)
    truth = [set(oracle_top("ip", world.table.data, q[i : i + 1], rows, 20)[1].tolist()) for i in range(60)]
    recalls = []
    for nprobe in (2, 8, 32):
        _, r = ann.LeafProbe(world.index, 3, nprobe=nprobe, exact_max=0).search(q, 20)
        recalls.append(np.mean([len(truth[i] & set(r[i].tolist())) / 20 for i in range(60)]))
    assert recalls[0] < recalls[1] < recalls[2]
    assert recalls[2] >= 0.9, recalls


def test_spread_weight_zero_ranks_leaves_by_centroid_alone(rng):
    world = World(rng, "ip")
    q = world.queries(rng)
    probe = ann.LeafProbe(world.index, 3, nprobe=6, exact_max=0, spread_weight=0)
    s, r = probe.search(q, 40)
    for i, cand in enumerate(probed_rows(probe, q)):
        want_s, _ = oracle_top("ip", world.table.data, q[i : i + 1], cand, 40)
        np.testing.assert_allclose(s[i, : want_s.shape[0]], want_s, rtol=1e-4, atol=1e-4)


def test_ties_go_to_the_smaller_row(rng):
    """30 distinct vectors, 20 copies of each: every score is tied 20 ways, and the smaller rows win."""
    d, copies = 8, 20
    distinct = blobs(rng, 30, d)
    table = VectorTable(d, capacity=30 * copies)
    slots = table.allocate(30 * copies)
    table.put(slots, slots + 7, distinct[rng.permutation(np.repeat(np.arange(30), copies))], 0)
    index = CuratorIndex.build(table, "ip", {0: slots}, **TREE)
    q = np.ascontiguousarray(blobs(rng, 20, d))
    probe = ann.LeafProbe(index, 0, nprobe=max(2, probe_count(index) // 3), exact_max=0)
    s, r = probe.search(q, 45)
    for i, cand in enumerate(probed_rows(probe, q)):
        want_s, want_r = oracle_top("ip", table.data, q[i : i + 1], cand, 45)
        np.testing.assert_array_equal(r[i, : want_r.shape[0]], want_r)


def select_one(scores: np.ndarray, leaf_rows: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """``_probe.select`` for one query whose probed leaves (in this order) hold ``leaf_rows`` and score
    ``scores`` (laid out as ``scan`` writes them: each leaf's segment padded with -inf to a multiple of 4)."""
    ptr = np.cumsum([0] + [len(x) for x in leaf_rows]).astype(np.int64)
    padded = [np.concatenate([part, np.full(-len(part) % 4, -np.inf, np.float32)])
              for part in np.split(scores.astype(np.float32), ptr[1:-1])]  # fmt: skip
    flat = np.concatenate(padded)
    out_s = np.full((1, k), -np.inf, np.float32)
    out_r = np.full((1, k), -1, np.int64)
    probes = np.arange(len(leaf_rows), dtype=np.int64)[None]
    _probe.select(flat, probes, ptr, np.concatenate(leaf_rows), np.array([0, flat.shape[0]], np.int64),
                  np.zeros(1, np.float32), out_s, out_r)  # fmt: skip
    return out_s[0], out_r[0]


def test_select_breaks_ties_to_the_smaller_row_across_leaves():
    """All scores equal; the first leaf offered holds the larger rows: the smaller rows must still win."""
    s, r = select_one(np.ones(20), [np.arange(200, 210), np.arange(100, 110)], 5)
    np.testing.assert_array_equal(r, np.arange(100, 105))
    np.testing.assert_array_equal(s, np.ones(5, np.float32))


def test_a_sample_threshold_set_too_high_still_gives_the_exact_top_k():
    """``select`` first skips the scores below a bar taken from every 16th score; when fewer than k scores
    reach the bar (here only the sampled ones are high), it must select again without the bar."""
    k, n = 20, 400
    scores = np.full(n, 0.5, np.float32) - np.arange(n, dtype=np.float32) * 1e-4
    scores[0:48:16] = 10.0  # the sample's three best: the bar is 10, reached by 3 < k scores
    rows = np.arange(100, 100 + n, dtype=np.int64)
    s, r = select_one(scores, [rows], k)
    want = np.lexsort((rows, -scores))[:k]
    np.testing.assert_array_equal(r, rows[want])
    np.testing.assert_array_equal(s, scores[want])


# ---------------------------------------------------------------------------------------------- scope
def test_never_returns_a_row_the_tenant_cannot_see_after_grants_revokes_and_deletes(rng):
    world = World(rng, "ip")
    q = world.queries(rng)
    granted = np.array(sorted(world.sees[3] - set(np.flatnonzero(world.table.owner == 3).tolist())), np.int64)
    revoked = granted[: granted.shape[0] // 2]
    world.revoke(revoked, 3)
    deleted = rng.choice(np.flatnonzero(world.table.owner >= 0), 300, replace=False)
    world.delete(deleted)
    for tenant in range(4):
        for nprobe in (1, 5, 40):
            s, r = ann.LeafProbe(world.index, tenant, nprobe=nprobe, exact_max=0).search(q, 200)
            check_shape_of_result(s, r, world.sees[tenant])
    _, r = ann.LeafProbe(world.index, 3, nprobe=40, exact_max=0).search(q, 200)
    assert not (set(revoked.tolist()) | set(deleted.tolist())) & set(r.reshape(-1).tolist())


def test_depth_beyond_the_probed_rows_is_padded(rng):
    world = World(rng, "ip")
    q = world.queries(rng, m=8)
    probe = ann.LeafProbe(world.index, 1, nprobe=1, exact_max=0)
    s, r = probe.search(q, 500)
    for i, cand in enumerate(probed_rows(probe, q)):
        n = cand.shape[0]
        assert n < 500
        assert sorted(r[i, :n].tolist()) == sorted(cand.tolist())
        assert (r[i, n:] == -1).all() and np.isneginf(s[i, n:]).all()


def test_unknown_tenant_and_empty_batch_find_nothing(rng):
    world = World(rng, "ip")
    q = world.queries(rng, m=3)
    s, r = ann.LeafProbe(world.index, 99).search(q, 7)
    assert (r == -1).all() and np.isneginf(s).all() and r.shape == (3, 7)
    s, r = ann.LeafProbe(world.index, 0, exact_max=0).search(q[:0], 7)
    assert r.shape == (0, 7)


def test_large_batches_are_split_without_changing_results(rng, monkeypatch):
    world = World(rng, "l2")
    q = world.queries(rng, m=50)
    probe = ann.LeafProbe(world.index, 2, nprobe=7, exact_max=0)
    whole = probe.search(q, 25)
    monkeypatch.setattr(ann, "MAX_BUFFER", 3 * 7 * 40)  # a few queries per pass
    parts = probe.search(q, 25)
    np.testing.assert_array_equal(whole[1], parts[1])
    np.testing.assert_allclose(whole[0], parts[0], rtol=1e-6)


# ---------------------------------------------------------------------------------------------- for mining
def test_index_search_fn_returns_ids_and_similarities_of_the_tenant(rng):
    world = World(rng, "l2")
    q = world.queries(rng)
    search = ann.index_search_fn(world.index, 3, ef=400)
    ids, sims = search(q, 30)
    probe = ann.LeafProbe(world.index, 3, ef=400)
    s, r = probe.search(q, 30)
    assert probe.nprobe == int(np.ceil(400 / probe.mean_leaf))
    np.testing.assert_array_equal(ids, world.table.ids[r])
    np.testing.assert_allclose(sims, -np.sqrt(-s), rtol=1e-5)  # l2: minus the distance
    assert set(ids.reshape(-1).tolist()) <= set(world.table.ids[sorted(world.sees[3])].tolist())
    ids, sims = ann.index_search_fn(world.index, None)(q, 30)
    assert (ids == -1).all() and np.isneginf(sims).all()


def test_mining_with_the_leaf_probe_mines_only_the_tenants_vectors(rng):
    world = World(rng, "ip")
    q = world.queries(rng, m=30)
    rows = np.array(sorted(world.sees[3]), np.int64)
    view = ScopedVectors(world.table.data, rows, world.table.ids, metric="ip")
    exact_ids, _ = view.search(q, 1)
    search = ann.index_search_fn(world.index, 3)
    mined = mine_hard_negatives(search, view.score_visible, q, exact_ids[:, 0], num_negatives=4, range_max=40)
    got = set(mined.ids.reshape(-1).tolist()) - {-1}
    assert got and got <= set(world.table.ids[rows].tolist())
    assert not (mined.ids == exact_ids).any(), "a positive came back as a negative"


@pytest.mark.parametrize("compression", [None, LVQ(bits=8)], ids=["float32", "lvq8"])
def test_a_collections_index_serves_the_leaf_probe_within_each_tenant(tmp_path, rng, compression):
    """The function ``Collection._index_search_fn`` hands mining, on a real collection (float32 rows, or codes
    only: then the tenant's rows are decoded), with owners and a grant: only the tenant's ids, good recall."""
    x = blobs(rng, 15_000, 24)  # 5,000 per tenant: above EXACT_MAX, so the leaves are probed
    owners = rng.integers(0, 3, x.shape[0])
    db = Database(tmp_path / "db")
    try:
        col = db.create_collection("c", dim=24, metric="cosine", compression=compression)
        for t in range(3):
            ids = np.flatnonzero(owners == t)
            col.upsert(ids, x[ids], tenant=f"t{t}", principal=ADMIN)
        shared = np.flatnonzero(owners == 0)[:500]
        col.grant(shared, tenant="t2", principal=ADMIN)
        col.build_index()
        q = np.ascontiguousarray(metrics.prepare("cosine", blobs(rng, 40, 24)))
        for t in range(3):
            visible = np.flatnonzero(owners == t)
            if t == 2:
                visible = np.union1d(visible, shared)
            tenant_no = db.tenants.find(f"t{t}")
            assert not ann.LeafProbe(col.index, tenant_no).exact
            ids, sims = ann.index_search_fn(col.index, tenant_no, ef=1500)(q, 20)
            assert set(ids.reshape(-1).tolist()) <= set(visible.tolist())
            unit = metrics.prepare("cosine", x[visible])
            truth = visible[np.argsort(-(q @ unit.T), axis=1)[:, :20]]
            recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(ids.tolist(), truth.tolist())])
            assert recall >= 0.85, (t, recall)
            assert (np.diff(sims, axis=1) <= 1e-6).all()
    finally:
        db.close()


# ---------------------------------------------------------------------------------------------- arguments
def test_bad_arguments_raise_invalid_argument(rng):
    world = World(rng, "ip")
    q = world.queries(rng, m=2)
    for kw in (dict(nprobe=0), dict(nprobe=2.5), dict(ef=-1), dict(nprobe=3, ef=100), dict(spread_weight=-1),
               dict(spread_weight=float("nan")), dict(exact_max=-1)):  # fmt: skip
        with pytest.raises(InvalidArgument):
            ann.LeafProbe(world.index, 0, **kw)
    probe = ann.LeafProbe(world.index, 0, exact_max=0)
    for bad in (q.astype(np.float64), q[:, :3], q[0]):
        with pytest.raises(InvalidArgument, match="float32"):
            probe.search(bad, 5)
    with pytest.raises(InvalidArgument, match="depth"):
        probe.search(q, 0)
    nan = q.copy()
    nan[0, 0] = np.nan
    with pytest.raises(InvalidArgument, match="NaN"):
        probe.search(nan, 5)
