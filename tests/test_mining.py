"""Training hooks: hard-negative mining rules on every row, tenant scope, determinism, ADORE, TAS, PRF, outputs.

The oracle is a brute-force, tenant-masked numpy search written here; the real-data tests use
``../shared/data`` (OOD queries with their real positives) and skip with a reason when it is absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from engine.errors import InvalidArgument, NotFound
from engine.kernels import gemm, reference
from engine.training import (
    BalancedMarginSampler,
    DynamicNegatives,
    MinedNegatives,
    TopicAwareSampler,
    cluster_queries,
    measure_recall,
    mine_hard_negatives,
    mine_in_chunks,
    prf_queries,
    prf_search,
    training_rows,
    write_jsonl,
)
from engine.training.search import ScopedVectors

DATA = Path(os.environ.get("GROVE_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
SEED = 20240611


@pytest.fixture
def rng() -> np.random.Generator:
    print(f"seed {SEED}")
    return np.random.default_rng(SEED)


# --------------------------------------------------------------------------------------------- oracle
def brute_search(base: np.ndarray, visible: np.ndarray):
    """Exact inner-product search over ``base[visible]`` (a boolean mask), ties to the smaller id."""

    def search(queries: np.ndarray, depth: int):
        s = queries.astype(np.float32) @ base.T
        s[:, ~visible] = -np.inf
        order = np.argsort(-s, axis=1, kind="stable")[:, :depth]
        sc = np.take_along_axis(s, order, axis=1)
        return np.where(np.isfinite(sc), order, -1).astype(np.int64), sc.astype(np.float32)

    return search


def brute_score(base: np.ndarray, visible: np.ndarray):
    def score(queries: np.ndarray, ids: np.ndarray):
        real = ids >= 0
        if not visible[ids[real]].all():
            raise NotFound("not visible")
        out = np.einsum("md,mpd->mp", queries, base[np.maximum(ids, 0)])
        return np.where(real, out, -np.inf).astype(np.float32)

    return score


class World:
    """Clustered unit vectors shared by three tenants (owners plus grants), with queries near a positive."""

    def __init__(self, rng: np.random.Generator, n: int = 3000, d: int = 24, m: int = 60) -> None:
        centers = rng.standard_normal((30, d)).astype(np.float32)
        lab = rng.integers(0, 30, n)
        x = centers[lab] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
        self.base = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        owner = rng.integers(0, 3, n)
        self.visible = np.stack([owner == t for t in range(3)])
        extra = rng.random(n) < 0.2
        self.visible[(owner[extra] + 1) % 3, np.flatnonzero(extra)] = True
        self.m = m
        self.lab = lab

    def queries(self, rng: np.random.Generator, tenant: int, n_pos: int = 3):
        """Queries near one visible vector each; positives: it plus up to n_pos - 1 visible same-cluster ones."""
        vis = np.flatnonzero(self.visible[tenant])
        first = rng.choice(vis, self.m, replace=False)
        q = self.base[first] + 0.5 * rng.standard_normal((self.m, self.base.shape[1])).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        positives = []
        for f in first:
            same = vis[(self.lab[vis] == self.lab[f]) & (vis != f)]
            k = int(rng.integers(0, n_pos))
            positives.append([int(f), *rng.choice(same, min(k, same.size), replace=False).tolist()])
        return q.astype(np.float32), positives


@pytest.fixture
def world(rng) -> World:
    return World(rng)


def check_rows(mined: MinedNegatives, search, score, queries, positives, pool, opts: dict) -> None:
    """Every rule of ``opts`` on every row, against the full exact ranking of the visible vectors."""
    n_hard = opts.get("num_negatives", 3)
    lo = opts.get("range_min", 0)
    hi = opts.get("range_max", 100) or mined.stats["range_max"]
    am, rm = opts.get("absolute_margin"), opts.get("relative_margin")
    mx, mn = opts.get("max_score"), opts.get("min_score")
    all_ids, all_s = search(queries, len(pool))
    pool_set = set(pool.tolist())
    for i in range(len(mined)):
        pos = set(positives[i])
        low = min(float(score(queries[i : i + 1], np.array([[p]]))[0, 0]) for p in pos)
        assert mined.positive_scores[i] == pytest.approx(low, abs=1e-5)
        ranked = [(int(j), float(s)) for j, s in zip(all_ids[i], all_s[i]) if j >= 0 and int(j) not in pos]

        def upper_ok(s: float, low: float = low) -> bool:
            return (
                (am is None or s <= low - am + 1e-6)
                and (rm is None or s <= low * (1 - rm) + 1e-6)
                and (mx is None or s <= mx + 1e-6)
            )

        qualified = [j for r, (j, s) in enumerate(ranked[:hi]) if r >= lo and upper_ok(s) and (mn is None or s >= mn)]
        rank_of = {j: r for r, (j, _) in enumerate(ranked)}
        hard = [int(j) for j in mined.ids[i, :n_hard] if j >= 0]
        assert (mined.ids[i, len(hard) : n_hard] == -1).all(), "padding only at the end"
        assert len(hard) == min(n_hard, len(qualified))
        assert len(set(hard)) == len(hard)
        for j, s in zip(mined.ids[i, :n_hard], mined.scores[i, :n_hard]):
            if j < 0:
                assert s == -np.inf
                continue
            assert int(j) not in pos and int(j) in pool_set
            assert lo <= rank_of[int(j)] < hi
            assert upper_ok(float(s)) and (mn is None or s >= mn - 1e-6)
        if opts.get("sampling", "top") == "top":
            assert hard == qualified[:n_hard]
        else:
            assert set(hard) <= set(qualified)
            assert [rank_of[j] for j in hard] == sorted(rank_of[j] for j in hard), "random picks in rank order"
        rand = [int(j) for j in mined.ids[i, n_hard:] if j >= 0]
        assert len(set(rand)) == len(rand)
        for j, s in zip(mined.ids[i, n_hard:], mined.scores[i, n_hard:]):
            if j >= 0:
                assert int(j) not in pos and int(j) in pool_set and int(j) not in hard
                assert upper_ok(float(s))


OPTION_SETS = [
    {},
    {"num_negatives": 5, "range_min": 5, "range_max": 30, "absolute_margin": 0.05},
    {"num_negatives": 4, "relative_margin": 0.05, "max_score": 0.9, "min_score": 0.1, "sampling": "random"},
    {"num_negatives": 2, "range_max": None, "relative_margin": 0.1, "random_negatives": 3},
    {"num_negatives": 6, "range_max": 12, "sampling": "random", "random_negatives": 2, "absolute_margin": 0.0},
]


@pytest.mark.parametrize("opts", OPTION_SETS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
@pytest.mark.parametrize("tenant", [0, 2])
def test_rules_hold_on_every_row(world, rng, opts, tenant):
    q, positives = world.queries(rng, tenant)
    vis = world.visible[tenant]
    search, score = brute_search(world.base, vis), brute_score(world.base, vis)
    pool = np.flatnonzero(vis)
    mined = mine_hard_negatives(search, score, q, positives, random_pool=pool, seed=3, **opts)
    width = opts.get("num_negatives", 3) + opts.get("random_negatives", 0)
    assert mined.ids.shape == mined.scores.shape == (world.m, width)
    assert mined.ids.dtype == np.int64 and mined.scores.dtype == np.float32
    assert mined.positive_scores.shape == (world.m,) and mined.positive_scores.dtype == np.float32
    check_rows(mined, search, score, q, positives, pool, opts)
    st = mined.stats
    rules = sum(st[f"skipped_{r}"] for r in ("absolute_margin", "relative_margin", "max_score", "min_score"))
    assert st["candidates"] == st["skipped_range_min"] + rules + st["qualified"]
    assert st["missing"] == int((mined.ids[:, : st["num_negatives"]] < 0).sum())
    assert "potential negatives" in mined.summary() or rules + st["skipped_range_min"] == 0


def test_one_positive_per_query_as_flat_array(world, rng):
    q, positives = world.queries(rng, 1, n_pos=1)
    vis = world.visible[1]
    flat = np.array([p[0] for p in positives])
    a = mine_hard_negatives(brute_search(world.base, vis), brute_score(world.base, vis), q, flat, num_negatives=4)
    b = mine_hard_negatives(
        brute_search(world.base, vis), brute_score(world.base, vis), q, [[p] for p in flat], num_negatives=4
    )
    np.testing.assert_array_equal(a.ids, b.ids)
    assert not (a.ids == flat[:, None]).any()


def test_deterministic_for_a_seed_and_chunking(world, rng):
    q, positives = world.queries(rng, 0)
    vis = world.visible[0]
    args = (brute_search(world.base, vis), brute_score(world.base, vis), q, positives)
    opts = dict(num_negatives=4, sampling="random", random_negatives=3, random_pool=np.flatnonzero(vis))
    a = mine_hard_negatives(*args, seed=7, **opts)
    b = mine_hard_negatives(*args, seed=7, **opts)
    c = mine_hard_negatives(*args, seed=8, **opts)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert (a.ids != c.ids).any(), "another seed draws other negatives"
    search, score = args[0], args[1]
    parts = [
        mine_hard_negatives(search, score, q[s : s + 25], positives[s : s + 25], seed=7, row_offset=s, **opts)
        for s in range(0, world.m, 25)
    ]
    whole = MinedNegatives.concat(parts)
    np.testing.assert_array_equal(whole.ids, a.ids)
    assert whole.stats == a.stats
    streamed = list(mine_in_chunks(search, score, q, positives, chunk_size=16, seed=7, **opts))
    assert [s for s, _ in streamed] == [0, 16, 32, 48]
    joined = MinedNegatives.concat([p for _, p in streamed])
    np.testing.assert_array_equal(joined.ids, a.ids)
    np.testing.assert_allclose(joined.scores, a.scores, rtol=1e-6)  # BLAS may round other block sizes differently


def test_tenant_scope_by_construction(world, rng):
    """Mining through a tenant's ScopedVectors returns only that tenant's ids, and refuses foreign positives."""
    for tenant in range(3):
        vis = world.visible[tenant]
        view = ScopedVectors(world.base, np.flatnonzero(vis))
        q, positives = world.queries(rng, tenant)
        mined = mine_hard_negatives(
            view.search, view.score, q, positives, num_negatives=8, random_negatives=4, random_pool=view.pool
        )
        got = mined.ids[mined.ids >= 0]
        assert got.size and vis[got].all()
        foreign = int(np.flatnonzero(~vis)[0])
        with pytest.raises(NotFound):
            mine_hard_negatives(view.search, view.score, q[:1], [foreign])
        # with NaN for what the caller cannot see, a foreign positive sets no margin and leaks no score
        mixed = [[*p, foreign] for p in positives]
        lenient = mine_hard_negatives(view.search, view.score_visible, q, mixed, num_negatives=8)
        strict = mine_hard_negatives(view.search, view.score, q, positives, num_negatives=8)
        np.testing.assert_array_equal(lenient.ids, strict.ids)
        np.testing.assert_array_equal(lenient.positive_scores, strict.positive_scores)
        assert lenient.stats["positives_not_visible"] == world.m
        with pytest.raises(NotFound, match="no positive among the vectors this caller can see"):
            mine_hard_negatives(view.search, view.score_visible, q[:1], [foreign])


def test_too_few_candidates_pad_with_minus_one(world):
    view = ScopedVectors(world.base, np.arange(6))
    args = (view.search, view.score, world.base[:2], [[0], [1]])
    mined = mine_hard_negatives(*args, num_negatives=10)
    assert (mined.counts == 5).all(), "6 visible minus the positive"
    assert (mined.ids[:, 5:] == -1).all() and (mined.scores[:, 5:] == -np.inf).all()
    assert mined.stats["rows_short"] == 2 and mined.stats["missing"] == 10
    mixed = mine_hard_negatives(*args, num_negatives=3, random_negatives=3, random_pool=view.pool)
    assert (mixed.counts == 5).all(), "3 hard, then the 2 vectors left as random ones"
    assert mixed.stats["random_rows_short"] == 2 and mixed.stats["random_missing"] == 2
    assert set(mixed.ids[0, 3:5].tolist()) == set(range(6)) - {0} - set(mixed.ids[0, :3].tolist())
    empty = ScopedVectors(world.base, np.zeros(0, np.int64))
    with pytest.raises(NotFound):
        mine_hard_negatives(empty.search, empty.score, world.base[:1], [0])


@pytest.mark.parametrize(
    "bad",
    [
        {"sampling": "hardest"},
        {"range_min": 10, "range_max": 10},
        {"range_max": 20_000},
        {"num_negatives": -1},
        {"num_negatives": 0},
        {"num_negatives": 1.5},
        {"relative_margin": float("nan")},
        {"random_negatives": 2},
        {"seed": -1},
    ],
)
def test_invalid_arguments_raise(world, bad):
    vis = np.ones(world.base.shape[0], bool)
    with pytest.raises(InvalidArgument):
        mine_hard_negatives(brute_search(world.base, vis), brute_score(world.base, vis), world.base[:2], [0, 1], **bad)


def test_invalid_inputs_raise(world):
    vis = np.ones(world.base.shape[0], bool)
    s, f = brute_search(world.base, vis), brute_score(world.base, vis)
    with pytest.raises(InvalidArgument, match="one entry per query"):
        mine_hard_negatives(s, f, world.base[:2], [0])
    with pytest.raises(InvalidArgument, match="no positive"):
        mine_hard_negatives(s, f, world.base[:2], [[0], []])
    with pytest.raises(InvalidArgument, match="NaN"):
        mine_hard_negatives(s, f, np.full((1, world.base.shape[1]), np.nan), [0])
    with pytest.raises(InvalidArgument, match="shape"):
        mine_hard_negatives(lambda q, d: (np.zeros((5, d), np.int64), np.zeros((5, d))), f, world.base[:2], [0, 1])


# --------------------------------------------------------------------------------------------- exact search
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_gemm_topk_matches_reference(rng, metric):
    base = rng.standard_normal((700, 16)).astype(np.float32)
    q = rng.standard_normal((45, 16)).astype(np.float32)
    rows = rng.permutation(700)[:500].astype(np.int64)
    for r in (None, rows, rows[:7]):
        s, ids = gemm.topk_gemm(q, base, r, 20, metric, query_block=16, row_block=64)
        s_ref, ids_ref = reference.topk(q, base, r, 20, metric)
        np.testing.assert_array_equal(ids, ids_ref)
        np.testing.assert_allclose(s, s_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["best", "gemm", "scan"])
def test_scoped_vectors_matches_brute_force(world, method):
    vis = world.visible[1]
    ids = np.arange(world.base.shape[0], dtype=np.int64) * 10 + 3
    view = ScopedVectors(world.base, np.flatnonzero(vis), ids, method=method)
    got, s = view.search(world.base[:20], 15)
    want, ws = brute_search(world.base, vis)(world.base[:20], 15)
    np.testing.assert_array_equal(got, ids[want])
    np.testing.assert_allclose(s, ws, atol=1e-5)
    np.testing.assert_allclose(view.score(world.base[:20], got), s, atol=1e-5)
    np.testing.assert_array_equal(view.vectors(got[:, :2]), world.base[want[:, :2]])
    assert set(view.pool.tolist()) == set(ids[vis].tolist())
    l2 = ScopedVectors(world.base, metric="l2", method=method)
    ids2, s2 = l2.search(world.base[:3], 4)
    assert (ids2[:, 0] == np.arange(3)).all() and np.allclose(s2[:, 0], 0, atol=1e-3)
    assert (np.diff(s2, axis=1) <= 1e-6).all(), "similarities (minus distances), best first"


def test_measure_recall(world):
    vis = world.visible[0]
    exact = brute_search(world.base, vis)

    def half(q, d):
        ids, s = exact(q, d)
        ids[:, ::2] = -1
        return ids, s

    assert measure_recall(exact, exact, world.base[:40], 10) == 1.0
    assert measure_recall(half, exact, world.base[:40], 10, max_queries=16) == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------- ADORE
def test_dynamic_negatives_mask_positives(world, rng):
    vis = world.visible[2]
    search = brute_search(world.base, vis)
    q, positives = world.queries(rng, 2)
    qids = np.arange(100, 100 + world.m)
    dyn = DynamicNegatives(search, dict(zip(qids.tolist(), positives)), k=25)
    batch = dyn(qids[:20], q[:20])
    assert batch.ids.shape == (20, 25)
    full, full_s = search(q[:20], 60)
    for i in range(20):
        pos = set(positives[i])
        want = [int(j) for j in full[i] if int(j) not in pos][:25]
        assert batch.ids[i].tolist() == want
        for p, r in zip(batch.positive_ids[i], batch.positive_ranks[i]):
            if p < 0:
                continue
            where = np.flatnonzero(full[i] == p)
            if r >= 0:
                assert where.size and where[0] == r
                assert batch.positive_scores[i][batch.positive_ids[i].tolist().index(p)] == full_s[i, r]
            else:
                assert not where.size or where[0] >= 25 + len(positives[i])
    assert dyn.stats["queries"] == 20 and 0 < dyn.mrr <= 1
    with pytest.raises(InvalidArgument, match="no positives"):
        dyn([7], q[:1])


# --------------------------------------------------------------------------------------------- TAS-Balanced
def test_topic_aware_batches_one_cluster_each_and_cover_the_epoch(world):
    clusters = cluster_queries(world.base[:600], 12, seed=1)
    again = cluster_queries(world.base[:600], 12, seed=1)
    np.testing.assert_array_equal(clusters.assignment, again.assignment)
    assert clusters.centroids.shape == (12, world.base.shape[1]) and clusters.sizes.sum() == 600
    sampler = TopicAwareSampler(clusters.assignment, 16, seed=5)
    epochs = []
    for e in range(2):
        batches = list(sampler.epoch(e))
        assert len(batches) == len(sampler)
        seen = np.concatenate([b.queries for b in batches])
        assert np.array_equal(np.sort(seen), np.arange(600)), "every query once per epoch"
        for b in batches:
            assert 1 <= len(b) <= 16 and (clusters.assignment[b.queries] == b.cluster).all()
        epochs.append(seen)
    assert not np.array_equal(epochs[0], epochs[1])
    assert np.array_equal(np.concatenate([b.queries for b in sampler.epoch(1)]), epochs[1]), "epochs replay"
    assert all(len(b) == 16 for b in TopicAwareSampler(clusters.assignment, 16, drop_last=True).epoch(0))


def test_balanced_margin_sampling_spreads_over_bins(rng):
    # query 0: 90 pairs with small margins and 10 with large ones; balanced sampling draws both halves alike
    margins = np.concatenate([rng.uniform(0, 0.1, 90), rng.uniform(0.9, 1.0, 10)])
    pairs = BalancedMarginSampler(
        np.zeros(100, np.int64), np.arange(100), np.arange(100, 200), margins, n_queries=2, n_bins=2
    )
    pos, neg, mg = pairs.sample(np.zeros(4000, np.int64), np.random.default_rng(0))
    assert 0.45 < (mg > 0.5).mean() < 0.55
    assert ((neg - pos) == 100).all()
    p1, n1, m1 = pairs.sample(np.array([1]), np.random.default_rng(0))
    assert p1[0] == -1 and n1[0] == -1 and np.isnan(m1[0])
    grid = BalancedMarginSampler.from_scores(
        np.array([[1, -1], [2, 3]]), np.array([[7, 8], [9, -1]]), np.ones((2, 2)), np.zeros((2, 2)), n_bins=3
    )
    assert grid.counts.sum() == 4
    for b in TopicAwareSampler(np.array([0, 1]), 1, pairs=grid):
        assert b.positives[0] in ([1], [2, 3])[int(b.queries[0])]
        assert b.margins[0] == 1.0


# --------------------------------------------------------------------------------------------- PRF
def test_prf_queries_is_rocchio():
    q = np.array([[1.0, 0.0, 0.0]], np.float32)
    top = np.array([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [5.0, 5.0, 5.0]]], np.float32)
    moved = prf_queries(q, top, np.array([[0.9, 0.8, -np.inf]]), depth=3, alpha=1.0, beta=1.0, normalize=False)
    np.testing.assert_allclose(moved, [[1.0, 0.5, 0.5]], atol=1e-6)
    unit = prf_queries(q, top, None, depth=1, alpha=1.0, beta=1.0)
    np.testing.assert_allclose(unit, [[2**-0.5, 2**-0.5, 0.0]], atol=1e-6)
    with pytest.raises(InvalidArgument):
        prf_queries(q, top[:, :, :2])


# --------------------------------------------------------------------------------------------- outputs
def test_output_formats_and_jsonl(tmp_path):
    mined = MinedNegatives(
        np.array([[5, 6], [7, -1]]), np.zeros((2, 2), np.float32), np.zeros(2, np.float32), {"queries": 2}
    )
    texts = {i: f"doc{i}" for i in range(10)}
    rows = list(training_rows(mined, ["q0", "q1"], [[1, 2], [3]], texts))
    assert len(rows) == 5 and rows[0] == {"anchor": "q0", "positive": "doc1", "negative": "doc5"}
    tup = list(training_rows(mined, ["q0", "q1"], [[1, 2], [3]], texts, output_format="n-tuple", anchor="query"))
    assert tup == [{"query": "q0", "positive": f"doc{p}", "negative_1": "doc5", "negative_2": "doc6"} for p in (1, 2)]
    lst = list(training_rows(mined, ["q0", "q1"], [1, 3], lambda i: f"d{i}", output_format="labeled-list"))
    assert lst[1] == {"anchor": "q1", "docs": ["d3", "d7"], "labels": [1, 0]}
    pairs = list(training_rows(mined, ["q0", "q1"], [1, 3], texts, output_format="labeled-pair"))
    assert [r["label"] for r in pairs] == [1, 0, 0, 1, 0]
    path = tmp_path / "triplets.jsonl"
    assert write_jsonl(path, rows) == 5
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == rows
    with pytest.raises(InvalidArgument):
        list(training_rows(mined, ["q0", "q1"], [1, 3], texts, output_format="parquet"))


# --------------------------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def real():
    need = ["base_vectors.f16.npy", "queries_ood.f32.npy", "ood_positive_pairs.npy", "base_tenant.npy"]
    missing = [n for n in need if not (DATA / n).exists()]
    if missing:
        pytest.skip(f"shared data absent at {DATA} (missing {', '.join(missing)}); set GROVE_DATA")
    base = np.load(DATA / "base_vectors.f16.npy").astype(np.float32)
    q = np.load(DATA / "queries_ood.f32.npy")
    pairs = np.load(DATA / "ood_positive_pairs.npy")
    pos: dict[int, list[int]] = {}
    primary = np.full(q.shape[0], -1, np.int64)
    for qi, pid, is_primary in pairs.tolist():
        pos.setdefault(qi, []).append(pid)
        if is_primary:
            primary[qi] = pid
    return {
        "base": base,
        "q": q,
        "positives": [pos[i] for i in range(q.shape[0])],
        "primary": primary,
        "tenant": np.load(DATA / "base_tenant.npy"),
        "view": ScopedVectors(base),
    }


def test_real_pairs_rules_and_hardness(real):
    n = 300
    q, positives, view = real["q"][:n], real["positives"][:n], real["view"]
    opts = dict(num_negatives=5, range_max=100, relative_margin=0.05)
    mined = mine_hard_negatives(view.search, view.score, q, positives, seed=0, **opts)
    again = mine_hard_negatives(view.search, view.score, q, positives, seed=0, **opts)
    np.testing.assert_array_equal(mined.ids, again.ids)
    for i in range(n):
        got = mined.ids[i][mined.ids[i] >= 0]
        assert not set(got.tolist()) & set(positives[i])
        assert (mined.scores[i][mined.ids[i] >= 0] <= 0.95 * mined.positive_scores[i] + 1e-5).all()
    neg_mean = float(mined.scores[mined.ids >= 0].mean())
    rand = np.random.default_rng(0).integers(0, real["base"].shape[0], (n, 5))
    rand_mean = float(np.einsum("md,mkd->mk", q, real["base"][rand]).mean())
    assert neg_mean > rand_mean + 0.2, (neg_mean, rand_mean)


def test_real_tenant_scoped_mining(real):
    """Mine as the owner tenant of each query's primary positive; nothing outside that tenant comes back."""
    n = 400
    owner = real["tenant"][real["primary"][:n]]
    groups = sorted(np.unique(owner), key=lambda t: -(owner == t).sum())[:4]
    for t in groups:
        js = np.flatnonzero(owner == t)
        rows = np.flatnonzero(real["tenant"] == t)
        view = ScopedVectors(real["base"], rows)
        positives = [real["positives"][j] for j in js]
        mined = mine_hard_negatives(
            view.search,
            view.score_visible,
            real["q"][js],
            positives,
            num_negatives=5,
            relative_margin=0.05,
            random_negatives=2,
            random_pool=view.pool,
        )
        got = mined.ids[mined.ids >= 0]
        assert got.size and (real["tenant"][got] == t).all()
        real_neg = mined.ids >= 0
        assert (mined.scores <= 0.95 * mined.positive_scores[:, None] + 1e-5)[real_neg].all()


def test_real_prf_keeps_recall_of_the_primary_positive(real, record_property):
    n = 1000
    q, primary, view = real["q"][:n], real["primary"][:n], real["view"]
    ids, _ = view.search(q, 10)
    base_recall = float((ids == primary[:, None]).any(axis=1).mean())
    prf_ids, _ = prf_search(view.search, view.vectors, q, 10)
    prf_recall = float((prf_ids == primary[:, None]).any(axis=1).mean())
    record_property("recall10_plain", base_recall)
    record_property("recall10_prf", prf_recall)
    print(f"recall@10 of the primary positive: plain {base_recall:.4f}, prf {prf_recall:.4f}")
    assert prf_recall >= base_recall - 0.015
