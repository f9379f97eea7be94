"""The shared clustering tree's build (engine.index.tree): the refined tree keeps the layout the Curator index
relies on, its leaves are at least as tight as the top-down tree's, and rows go to the nearest leaf it can find.

Spec (module docstring of ``engine.index.tree``): children of a node are one contiguous slice of later ids;
leaves are ranked depth first; every node's leaves are the rank range ``[leaf_lo, leaf_hi)``. The refined
build routes by a beam descent, which is exact when the beam is as wide as the tree has leaves.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from engine.index import tree as tree_mod
from engine.index.tree import ClusterTree
from engine.kernels import tree as ktree

SEED = int(os.environ.get("GROVE_TEST_SEED", "20240613"))


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    print(f"{request.node.name}: seed {SEED} (set GROVE_TEST_SEED to replay)")
    return np.random.default_rng(SEED)


def clustered(rng: np.random.Generator, n: int, d: int, clusters: int = 24) -> np.ndarray:
    """Gaussian blobs of unequal spread (structure for the tree to find, and for top-down k-means to cut badly)."""
    centers = rng.normal(size=(clusters, d)).astype(np.float32) * 3
    spread = rng.uniform(0.5, 2.0, clusters).astype(np.float32)
    lab = rng.integers(0, clusters, n)
    return (centers[lab] + spread[lab, None] * rng.normal(size=(n, d))).astype(np.float32)


def all_rows(x: np.ndarray) -> np.ndarray:
    return np.arange(x.shape[0], dtype=np.int64)


def check_layout(t: ClusterTree, fanout: int) -> None:
    """The invariants the Curator index keys its entries by, recomputed independently."""
    n = t.n_nodes
    assert t.parent[0] == -1 and t.depth[0] == 0
    for node in range(n):
        c0, cn = int(t.child_start[node]), int(t.child_count[node])
        assert 0 <= cn <= fanout, f"node {node} has {cn} children (fanout {fanout})"
        if cn:
            assert node < c0 and c0 + cn <= n, "children are a slice of later ids"
            assert (t.parent[c0 : c0 + cn] == node).all()
    assert (np.bincount(t.parent[1:], minlength=n) == t.child_count).all(), "every non-root node has one parent"
    # depth-first leaf ranks, children in id order, and each node's range of them
    ranks, lo, hi = {}, {}, {}

    def visit(node: int) -> None:
        c0, cn = int(t.child_start[node]), int(t.child_count[node])
        if cn == 0:
            lo[node] = ranks[node] = len(ranks)
            hi[node] = lo[node] + 1
            return
        for c in range(c0, c0 + cn):
            visit(c)
        lo[node], hi[node] = lo[c0], hi[c0 + cn - 1]

    visit(0)
    leaves = np.flatnonzero(t.child_count == 0)
    assert t.n_leaves == len(ranks) == leaves.shape[0]
    assert [int(t.leaf_rank[v]) for v in leaves] == [ranks[int(v)] for v in leaves]
    assert (t.leaf_rank[t.child_count > 0] == -1).all()
    assert (t.leaf_rank[t.leaf_node] == np.arange(t.n_leaves)).all()
    assert [int(t.leaf_lo[v]) for v in range(n)] == [lo[v] for v in range(n)]
    assert [int(t.leaf_hi[v]) for v in range(n)] == [hi[v] for v in range(n)]


def nearest_leaf(t: ClusterTree, x: np.ndarray) -> np.ndarray:
    """The exact nearest leaf (node id) of each row of ``x`` by squared L2, in float64."""
    c = t.centroids[t.leaf_node].astype(np.float64)
    d2 = ((x.astype(np.float64)[:, None, :] - c[None, :, :]) ** 2).sum(axis=2)
    return t.leaf_node[np.argmin(d2, axis=1)]


def mean_sq_to_leaf(t: ClusterTree, x: np.ndarray) -> float:
    """Mean squared distance of each vector to the centroid of the leaf ``route`` places it in."""
    leaf = t.route(x, all_rows(x))
    return float(((x - t.centroids[leaf]) ** 2).sum(axis=1).mean())


# ---------------------------------------------------------------------------------------------- layout
@pytest.mark.parametrize("fanout, max_leaf_size", [(16, 64), (4, 16), (2, 8)])
def test_refined_tree_keeps_the_layout(rng, fanout, max_leaf_size):
    x = clustered(rng, 3000, 12)
    t = ClusterTree.train(x, fanout=fanout, max_leaf_size=max_leaf_size, build="refined")
    assert t.trained and t.beam == tree_mod.ROUTE_BEAM
    check_layout(t, fanout)
    assert np.bincount(t.leaf_rank[t.route(x, all_rows(x))], minlength=t.n_leaves).min() > 0, "no empty leaf"


def test_topdown_tree_keeps_the_layout(rng):
    x = clustered(rng, 3000, 12)
    t = ClusterTree.train(x, fanout=4, max_leaf_size=16, build="topdown")
    assert t.beam == 1
    check_layout(t, 4)


def test_inner_centroids_are_size_weighted_means_of_their_children(rng):
    """Every centroid is the mean of the sample vectors below it in the last Lloyd round: the root's is the
    sample mean, and each inner node's lies inside its children's bounding box."""
    x = clustered(rng, 2000, 8)
    t = ClusterTree.train(x, fanout=4, max_leaf_size=16, build="refined")
    np.testing.assert_allclose(t.centroids[0], x.astype(np.float64).mean(axis=0), rtol=1e-4, atol=1e-4)
    for node in np.flatnonzero(t.child_count > 0):
        kids = t.centroids[t.child_start[node] : t.child_start[node] + t.child_count[node]]
        c = t.centroids[node]
        assert (c >= kids.min(axis=0) - 1e-5).all() and (c <= kids.max(axis=0) + 1e-5).all()


def test_small_and_degenerate_samples():
    d = 5
    assert not ClusterTree.train(np.zeros((0, d), np.float32)).trained
    assert not ClusterTree.train(np.ones((500, d), np.float32), max_leaf_size=8).trained, "duplicates: one leaf"
    x = np.random.default_rng(1).normal(size=(40, d)).astype(np.float32)
    t = ClusterTree.train(x, fanout=4, max_leaf_size=8, build="refined")
    check_layout(t, 4)


# ---------------------------------------------------------------------------------------------- quality
@pytest.mark.parametrize("d, fanout, max_leaf_size", [(16, 16, 64), (8, 4, 16)])
def test_refined_leaves_are_at_least_as_tight(rng, d, fanout, max_leaf_size):
    """Vectors sit no farther from their leaf's centroid (each tree placing them by its own rule), with about
    as many leaves."""
    x = clustered(rng, 6000, d)
    old = ClusterTree.train(x, fanout=fanout, max_leaf_size=max_leaf_size, build="topdown")
    new = ClusterTree.train(x, fanout=fanout, max_leaf_size=max_leaf_size, build="refined")
    assert new.n_leaves <= old.n_leaves and new.n_leaves >= 0.9 * old.n_leaves
    before, after = mean_sq_to_leaf(old, x), mean_sq_to_leaf(new, x)
    assert after <= before, f"mean squared distance to the leaf centroid rose from {before:.4f} to {after:.4f}"


def test_refined_rows_mostly_reach_their_nearest_leaf(rng):
    """The beam descent finds the exact nearest leaf for nearly every vector; greedy descent far less often."""
    x = clustered(rng, 4000, 12)
    t = ClusterTree.train(x, fanout=4, max_leaf_size=16, build="refined")
    exact = nearest_leaf(t, x)
    beam = (t.route(x, all_rows(x)) == exact).mean()
    greedy = (t.route(x, all_rows(x), beam=1) == exact).mean()
    assert beam >= 0.97 and beam >= greedy, f"beam finds the nearest leaf for {beam:.3f}, greedy {greedy:.3f}"


# ---------------------------------------------------------------------------------------------- routing
@pytest.mark.parametrize("build", ["refined", "topdown"])
@pytest.mark.parametrize("parallel", [False, True])
def test_beam_as_wide_as_the_leaves_is_exact(rng, build, parallel):
    x = clustered(rng, 800, 6)
    t = ClusterTree.train(x, fanout=4, max_leaf_size=16, build=build)
    q = rng.normal(scale=3.0, size=(300, 6)).astype(np.float32)  # anywhere, not only near the data
    got = t.route(q, all_rows(q), parallel=parallel, beam=t.n_leaves)
    np.testing.assert_array_equal(got, nearest_leaf(t, q))


def test_beam_one_is_the_greedy_descent(rng):
    x = clustered(rng, 800, 6)
    t = ClusterTree.train(x, fanout=4, max_leaf_size=16, build="refined")
    rows = all_rows(x)
    node = np.zeros(rows.size, np.int64)
    while (t.child_count[node] > 0).any():
        for i in np.flatnonzero(t.child_count[node] > 0):
            c0, cn = t.child_start[node[i]], t.child_count[node[i]]
            node[i] = c0 + np.argmin(((t.centroids[c0 : c0 + cn] - x[i].astype(np.float64)) ** 2).sum(axis=1))
    np.testing.assert_array_equal(t.route(x, rows, beam=1), node)


def test_bulk_route_in_leaf_order_equals_row_by_row(rng, monkeypatch):
    x = clustered(rng, 3000, 8)
    t = ClusterTree.train(x, fanout=4, max_leaf_size=16, build="refined")
    rows = rng.permutation(x.shape[0]).astype(np.int64)[:2000]
    one_by_one = t.route(x, rows)
    monkeypatch.setattr(tree_mod, "_ORDERED_ROUTE", 100)
    np.testing.assert_array_equal(t.route(x, rows, parallel=True), one_by_one)


def _gpu_stand_in(monkeypatch, search) -> None:
    """Make the kernel layer say bulk routes run on a GPU, with ``search`` standing in for its search."""
    monkeypatch.setattr(tree_mod.kernels, "gpu_runs", lambda work: True)
    monkeypatch.setattr(tree_mod.kernels, "search", search)


def test_bulk_routes_take_the_exact_nearest_leaf_where_a_gpu_runs(rng, monkeypatch):
    """Where the kernel layer sends a bulk route to a GPU, rows go to their exact nearest leaf (in batches);
    single rows keep the beam descent. (The CUDA kernels themselves: tests/test_gpu_kernels.py.)"""
    x = clustered(rng, 3000, 8)
    t = ClusterTree.train(x, fanout=4, max_leaf_size=16, build="refined")
    beam_one_by_one = t.route(x, all_rows(x))
    cpu_search = tree_mod.kernels.search
    calls = []

    def on_cpu(q, data, k, metric, backend=None):
        calls.append(backend)
        return cpu_search(q, data, k, metric)

    _gpu_stand_in(monkeypatch, on_cpu)
    monkeypatch.setattr(tree_mod, "_GPU_BATCH", 700)
    np.testing.assert_array_equal(t.route(x, all_rows(x), parallel=True), nearest_leaf(t, x))
    assert calls == ["cuda"] * 5  # 3000 rows in batches of 700
    np.testing.assert_array_equal(t.route(x, all_rows(x)), beam_one_by_one)
    assert len(calls) == 5


def test_a_failing_gpu_leaves_the_route_to_the_cpu(rng, monkeypatch, caplog):
    x = clustered(rng, 2000, 8)
    t = ClusterTree.train(x, fanout=4, max_leaf_size=16, build="refined")
    want = t.route(x, all_rows(x), parallel=True)

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA_ERROR_OUT_OF_MEMORY")

    _gpu_stand_in(monkeypatch, broken)
    np.testing.assert_array_equal(t.route(x, all_rows(x), parallel=True), want)
    assert "CUDA_ERROR_OUT_OF_MEMORY" in caplog.text and "routing them on the CPU" in caplog.text


def test_beam_kernels_agree(rng):
    x = clustered(rng, 1500, 8)
    t = ClusterTree.train(x, fanout=4, max_leaf_size=16, build="refined")
    rows = all_rows(x)[::3]
    a = np.empty(rows.size, np.int32)
    b = np.empty(rows.size, np.int32)
    ktree.beam_route_rows(x, rows, t.centroids, t.child_start, t.child_count, 3, a)
    ktree.beam_route_rows_parallel(x, rows, t.centroids, t.child_start, t.child_count, 3, b)
    np.testing.assert_array_equal(a, b)
    assert (t.child_count[a] == 0).all()


def test_capacity_assign_respects_the_room(rng):
    """Every item gets a group, no group takes more than its room; with room to spare it is the nearest group."""
    m, groups = 200, 30
    dist = rng.random((m, groups)).astype(np.float32)
    for cap, t in ((7, 4), (m, groups)):
        cand = np.argsort(dist, axis=1)[:, :t]
        order = np.argsort(np.take_along_axis(dist, cand, axis=1), axis=None, kind="stable")
        room = np.full(groups, cap, np.int64)
        out = np.empty(m, np.int64)
        left = ktree.capacity_assign(order, cand, room, out)
        assert left == (out < 0).sum()
        items = np.flatnonzero(out < 0)
        ktree.assign_leftovers(items, dist[items], room, out)
        assert (out >= 0).all() and np.bincount(out, minlength=groups).max() <= cap and (room >= 0).all()
        if cap == m:
            assert left == 0
            np.testing.assert_array_equal(out, dist.argmin(axis=1))


# ---------------------------------------------------------------------------------------------- reproducible
def test_training_is_deterministic_for_a_seed(rng):
    x = clustered(rng, 3000, 8)
    a = ClusterTree.train(x, fanout=4, max_leaf_size=16, seed=3, build="refined")
    b = ClusterTree.train(x, fanout=4, max_leaf_size=16, seed=3, build="refined")
    for k, v in a.state().items():
        np.testing.assert_array_equal(v, b.state()[k], err_msg=k)
    np.testing.assert_array_equal(a.route(x, all_rows(x)), b.route(x, all_rows(x)))


def test_state_keeps_the_routing_rule(rng):
    x = clustered(rng, 1000, 8)
    t = ClusterTree.train(x, fanout=4, max_leaf_size=16, build="refined")
    back = ClusterTree.from_state(t.state())
    assert back.beam == t.beam
    np.testing.assert_array_equal(back.route(x, all_rows(x)), t.route(x, all_rows(x)))
    legacy = {k: v for k, v in t.state().items() if k != "beam"}  # saved before beam routing: placed greedily
    assert ClusterTree.from_state(legacy).beam == 1


def test_build_is_chosen_by_argument_or_environment(rng, grove_env):
    x = clustered(rng, 600, 4)
    grove_env("GROVE_TREE_BUILD", "topdown")
    assert ClusterTree.train(x, fanout=4, max_leaf_size=16).beam == 1
    assert ClusterTree.train(x, fanout=4, max_leaf_size=16, build="refined").beam == tree_mod.ROUTE_BEAM
    grove_env("GROVE_TREE_BUILD", "flat")
    with pytest.raises(ValueError, match="GROVE_TREE_BUILD"):
        ClusterTree.train(x)
    with pytest.raises(ValueError, match="beam"):
        ClusterTree.train(x, build="refined", beam=0)


@pytest.mark.parametrize(
    ("sizes", "chosen", "env", "built"),
    [
        ((600, 100, 100), None, None, "refined"),  # one tenant sees at least half of the rows
        ((300, 300, 200), None, None, "topdown"),  # none does
        ((600, 100, 100), "topdown", None, "topdown"),  # the collection's own choice wins
        ((300, 300, 200), "refined", None, "refined"),
        ((600, 100, 100), None, "topdown", "topdown"),  # and so does the server's
    ],
)
def test_curator_build_refines_the_tree_where_one_tenant_dominates(rng, grove_env, sizes, chosen, env, built):
    from engine.index.curator import CuratorIndex
    from engine.index.table import VectorTable

    if env is None:
        grove_env("GROVE_TREE_BUILD", None)
    else:
        grove_env("GROVE_TREE_BUILD", env)
    x = clustered(rng, sum(sizes), 8)
    table = VectorTable(8, capacity=x.shape[0])
    slots = table.allocate(x.shape[0])
    table.put(slots, slots.astype(np.int64), x, 0)
    tenants = dict(enumerate(np.split(slots, np.cumsum(sizes)[:-1])))
    idx = CuratorIndex.build(table, "l2", tenants, fanout=4, max_leaf_size=16, tree_build=chosen)
    assert idx.tree.trained
    assert idx.tree.beam == (tree_mod.ROUTE_BEAM if built == "refined" else 1)
