"""Training hooks through the SDK in both modes and over the wire: mining, dynamic negatives, PRF, index admin.

A small seeded world (three tenants owning clustered unit vectors, some granted across) is loaded through the
SDK; every mined row is checked against a brute-force numpy oracle of what the tenant sees. ``any_client``
runs each check embedded and remote; ``both`` compares the two modes call by call (same results, same errors);
the remaining tests send raw messages to a real server for the status codes and the per-message auth check.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

from engine.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from engine.rpc.pb import grove_pb2 as pb
from engine.rpc.pb import grove_pb2_grpc
from engine.types import PRF, LeanVec
from tests.conftest import GROVE_ADMIN_KEY
from tests.test_client_congruence import compare

DIM = 16
TENANTS = ("acme", "globex", "initech")
SEED = 20240611
SC = grpc.StatusCode


class World:
    """Clustered unit vectors owned by three tenants (15% also granted to the next tenant), and per tenant
    queries near one of its vectors: that vector is the positive; every third query has a second positive."""

    def __init__(self, seed: int = SEED, n: int = 600, m: int = 24) -> None:
        print(f"world seed {seed}")
        rng = np.random.default_rng(seed)
        centers = rng.standard_normal((10, DIM)).astype(np.float32)
        x = centers[rng.integers(0, 10, n)] + 0.5 * rng.standard_normal((n, DIM)).astype(np.float32)
        self.x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        self.ids = np.arange(1000, 1000 + n, dtype=np.int64)  # ids are not row numbers
        self.owner = rng.integers(0, 3, n)
        self.visible = np.stack([self.owner == t for t in range(3)])
        extra = np.flatnonzero(rng.random(n) < 0.15)
        self.granted = {t: extra[(self.owner[extra] + 1) % 3 == t] for t in range(3)}
        for t, rows in self.granted.items():
            self.visible[t, rows] = True
        self.queries, self.positives = {}, {}
        for t in range(3):
            rows = rng.choice(np.flatnonzero(self.owner == t), m, replace=False)
            q = self.x[rows] + 0.35 * rng.standard_normal((m, DIM)).astype(np.float32)
            self.queries[t] = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
            pos = []
            for i, r in enumerate(rows):
                extra_pos = []
                if i % 3 == 0:
                    s = self.x @ self.x[r]
                    s[~self.visible[t]] = -np.inf
                    s[r] = -np.inf
                    extra_pos = [int(self.ids[np.argmax(s)])]
                pos.append([int(self.ids[r]), *extra_pos])
            self.positives[t] = pos

    def load(self, client, name: str = "train", **kw):
        col = client.create_collection(name, dim=DIM, metric="ip", **kw)
        for t, tenant in enumerate(TENANTS):
            rows = np.flatnonzero(self.owner == t)
            col.upsert(self.ids[rows], self.x[rows], tenant=tenant)
        for t, rows in self.granted.items():
            col.grant(self.ids[rows], tenant=TENANTS[t])
        return col

    def row(self, ids) -> np.ndarray:
        return np.asarray(ids, np.int64) - 1000

    def order(self, t: int, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every id tenant ``t`` sees, best first for query ``q``, and their scores."""
        s = self.x @ q
        rows = np.flatnonzero(self.visible[t])
        o = rows[np.argsort(-s[rows], kind="stable")]
        return self.ids[o], s[o]


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@pytest.fixture
def loaded(any_client, world):
    return any_client, world.load(any_client)


@pytest.fixture
def both(embedded_client, remote_client, world):
    world.load(embedded_client)
    world.load(remote_client)
    return embedded_client, remote_client


def check_rows(world: World, t: int, q: np.ndarray, positives, mined, *, num_negatives, **rules) -> None:
    """Every rule on every row, against the oracle: exclusions, scope, true scores, margins, window, top choice."""
    lo, hi = rules.get("range_min", 0), rules.get("range_max", 100)
    rel, ab = rules.get("relative_margin"), rules.get("absolute_margin")
    max_s, min_s = rules.get("max_score"), rules.get("min_score")
    sampling = rules.get("sampling", "top")
    assert mined.ids.dtype == np.int64 and mined.scores.dtype == np.float32
    assert mined.ids.shape == (len(q), num_negatives + rules.get("random_negatives", 0))
    for r in range(len(q)):
        pos = set(positives[r])
        got = mined.ids[r]
        real = got >= 0
        assert not pos & set(got.tolist()), f"row {r}: a positive was returned as a negative"
        assert world.visible[t, world.row(got[real])].all(), f"row {r}: an id the tenant cannot see"
        assert len(set(got[real].tolist())) == int(real.sum()), f"row {r}: a repeated negative"
        assert np.all(np.isneginf(mined.scores[r][~real]))
        true = world.x[world.row(got[real])] @ q[r]
        np.testing.assert_allclose(mined.scores[r][real], true, atol=1e-4)
        lowest = min(float(world.x[world.row([p])[0]] @ q[r]) for p in pos)
        assert mined.positive_scores[r] == pytest.approx(lowest, abs=1e-4)
        s = mined.scores[r][real]
        if rel is not None:
            assert np.all(s <= lowest * (1 - rel) + 1e-4), f"row {r}: relative margin broken"
        if ab is not None:
            assert np.all(s <= lowest - ab + 1e-4), f"row {r}: absolute margin broken"
        if max_s is not None:
            assert np.all(s <= max_s + 1e-4)
        hard = got[:num_negatives][got[:num_negatives] >= 0]
        if min_s is not None:
            assert np.all(mined.scores[r][: len(hard)] >= min_s - 1e-4)
        order, scores = world.order(t, q[r])
        keep = ~np.isin(order, list(pos))
        order, scores = order[keep], scores[keep]
        rank = {int(i): j for j, i in enumerate(order)}
        assert all(lo <= rank[int(i)] < hi for i in hard), f"row {r}: a hard negative outside the rank window"
        ok = np.ones(order.size, bool)
        ok[:lo] = False
        ok[hi:] = False
        if rel is not None:
            ok &= scores <= lowest * (1 - rel)
        if ab is not None:
            ok &= scores <= lowest - ab
        if max_s is not None:
            ok &= scores <= max_s
        if min_s is not None:
            ok &= scores >= min_s
        qualified = order[ok]
        if sampling == "top":
            assert set(hard.tolist()) == set(qualified[:num_negatives].tolist()), f"row {r}: not the top qualified"
        else:
            assert set(hard.tolist()) <= set(qualified.tolist())
            assert len(hard) == min(num_negatives, qualified.size)


# ================================================================================ mining, in each mode
RULES = [
    dict(num_negatives=5, range_max=100, relative_margin=0.05),
    dict(num_negatives=4, range_min=2, range_max=30, absolute_margin=0.02, max_score=0.9, min_score=-0.2),
    dict(num_negatives=3, range_max=60, relative_margin=0.1, sampling="random", random_negatives=2, seed=3),
]


@pytest.mark.parametrize("rules", RULES, ids=["relative", "window+absolute+bounds", "random+STAR"])
def test_mining_rules_hold_on_every_row(loaded, world, rules):
    _client, col = loaded
    for t, tenant in enumerate(TENANTS):
        q, positives = world.queries[t], world.positives[t]
        mined = col.mine_hard_negatives(q, positives, tenant=tenant, **rules)
        check_rows(world, t, q, positives, mined, **rules)
        assert mined.recall is None
        assert mined.stats["queries"] == len(q) and mined.stats["skipped_positives"] > 0
        assert (mined.ids[:, : rules["num_negatives"]] >= 0).mean() > 0.5  # the rules leave negatives to check


def test_mining_is_deterministic_for_a_seed(loaded, world):
    _client, col = loaded
    q, positives = world.queries[0], world.positives[0]
    opts = dict(tenant="acme", num_negatives=4, range_max=50, sampling="random", random_negatives=3)
    a = col.mine_hard_negatives(q, positives, seed=11, **opts)
    b = col.mine_hard_negatives(q, positives, seed=11, **opts)
    c = col.mine_hard_negatives(q, positives, seed=12, **opts)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.stats == b.stats
    assert not np.array_equal(a.ids, c.ids)


def test_mining_stays_in_the_tenants_scope(loaded, world):
    _client, col = loaded
    q = world.queries[0]
    for t, tenant in enumerate(TENANTS):
        positives = [[int(world.order(t, qi)[0][0])] for qi in q]  # one of its own ids per query
        mined = col.mine_hard_negatives(q, positives, tenant=tenant, num_negatives=10, random_negatives=5)
        real = mined.ids[mined.ids >= 0]
        assert real.size and world.visible[t, world.row(real)].all()
    foreign = [[int(world.ids[np.flatnonzero(~world.visible[1])[0]])] for _ in q]
    with pytest.raises(NotFound, match="no positive among the vectors this caller can see"):
        col.mine_hard_negatives(q, foreign, tenant="globex")


def test_stream_chunks_join_to_the_unary_result(loaded, world):
    _client, col = loaded
    q, positives = world.queries[1], world.positives[1]
    opts = dict(tenant="globex", num_negatives=5, relative_margin=0.05, random_negatives=2, seed=4)
    whole = col.mine_hard_negatives(q, positives, **opts)
    chunks = list(col.mine_hard_negatives_stream(q, positives, chunk_size=7, **opts))
    assert [(first, total) for first, total, _ in chunks] == [(0, 24), (7, 24), (14, 24), (21, 24)]
    assert [len(part) for _, _, part in chunks] == [7, 7, 7, 3]
    joined = type(whole).concat([part for _, _, part in chunks])
    np.testing.assert_array_equal(joined.ids, whole.ids)
    np.testing.assert_allclose(joined.scores, whole.scores, atol=1e-5)
    np.testing.assert_allclose(joined.positive_scores, whole.positive_scores, atol=1e-5)
    assert joined.stats == whole.stats


def test_stream_runs_nothing_before_next_and_stops_early(loaded, world):
    _client, col = loaded
    lazy = col.mine_hard_negatives_stream(world.queries[0], world.positives[0], tenant="nobody\n")
    with pytest.raises(InvalidArgument):  # the bad tenant name is seen at the first next, not at the call
        next(iter(lazy))
    stream = col.mine_hard_negatives_stream(world.queries[0], world.positives[0], tenant="acme", chunk_size=5)
    first_row, total, part = next(iter(stream))
    assert (first_row, total, len(part)) == (0, 24, 5)
    stream.close()
    assert col.count(tenant="acme") == int(world.visible[0].sum())  # the service keeps serving


def test_approximate_mining_reports_recall(loaded, world):
    _client, col = loaded
    mined = col.mine_hard_negatives(world.queries[2], world.positives[2], tenant="initech", exact=False, ef=64)
    assert isinstance(mined.recall, float) and 0.0 <= mined.recall <= 1.0
    assert "recall" in mined.summary()


def test_training_rows_from_a_stream_equal_those_of_the_result(loaded, world, tmp_path):
    from grove_client.training import write_training_rows

    _client, col = loaded
    q, positives = world.queries[0], world.positives[0]
    texts = {int(i): f"passage {int(i)}" for i in world.ids}
    query_texts = [f"query {i}" for i in range(len(q))]
    mined = col.mine_hard_negatives(q, positives, tenant="acme", num_negatives=3)
    n = write_training_rows(tmp_path / "whole.jsonl", mined, query_texts, positives, texts)
    stream = col.mine_hard_negatives_stream(q, positives, tenant="acme", num_negatives=3, chunk_size=5)
    assert write_training_rows(tmp_path / "stream.jsonl", stream, query_texts, positives, texts) == n
    assert (tmp_path / "whole.jsonl").read_text() == (tmp_path / "stream.jsonl").read_text()
    rows = [json.loads(line) for line in (tmp_path / "whole.jsonl").read_text().splitlines()]
    assert n == len(rows) == sum(len(p) * int((mined.ids[i] >= 0).sum()) for i, p in enumerate(positives))
    assert set(rows[0]) == {"anchor", "positive", "negative"}
    n_tuple = write_training_rows(tmp_path / "nt.jsonl", mined, query_texts, positives, texts, output_format="n-tuple")
    assert n_tuple > 0


# ================================================================================ dynamic negatives, in each mode
class FakeTensor:
    """Enough of a torch tensor for the session: ``detach().cpu().numpy()`` (torch is not a dependency)."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self.arr


def test_dynamic_negatives_mask_positives_and_match_the_oracle(loaded, world):
    _client, col = loaded
    t, k = 1, 12
    q, positives = world.queries[t], world.positives[t]
    registered = {100 + i: p for i, p in enumerate(positives)}
    with col.dynamic_negatives(registered, tenant="globex", k=k) as session:
        assert session.k == k and session.mrr == 0.0 and session.stats["batches"] == 0
        reciprocal = []
        for start in (0, 10, 20):
            qids = np.arange(100 + start, 100 + min(start + 10, len(q)))
            emb = q[qids - 100]
            batch = session.negatives(qids, FakeTensor(emb) if start == 10 else emb)
            np.testing.assert_array_equal(batch.query_ids, qids)
            assert batch.ids.shape == (len(qids), k) and batch.ids.dtype == np.int64
            for r, qid in enumerate(qids.tolist()):
                pos = registered[qid]
                order, scores = world.order(t, emb[r])
                expect = [i for i in order.tolist() if i not in pos][:k]
                assert batch.ids[r].tolist() == expect, f"query {qid}"
                np.testing.assert_allclose(batch.scores[r], world.x[world.row(expect)] @ emb[r], atol=1e-4)
                where = {int(i): j for j, i in enumerate(order[: k + batch.positive_ids.shape[1]])}
                ranks = [where.get(p, -1) for p in pos]
                assert batch.positive_ranks[r][: len(pos)].tolist() == ranks
                best = min((x for x in ranks if x >= 0), default=None)
                reciprocal.append(0.0 if best is None else 1.0 / (best + 1))
        assert session.stats["batches"] == 3 and session.stats["queries"] == len(q)
        assert session.mrr == pytest.approx(np.mean(reciprocal))


def test_dynamic_session_survives_a_refused_batch_and_closes(loaded, world):
    _client, col = loaded
    q = world.queries[0]
    session = col.dynamic_negatives(world.positives[0], tenant="acme", k=5)
    session.negatives([0, 1], q[:2])
    with pytest.raises(InvalidArgument, match="dim 3"):
        session.negatives([0, 1], q[:2, :3])
    bad = q[:2].copy()
    bad[1, 4] = np.nan
    with pytest.raises(InvalidArgument, match="NaN"):
        session.negatives([0, 1], bad)
    with pytest.raises(InvalidArgument, match="query id 999 has no positives"):
        session.negatives([999], q[:1])
    assert session.stats["batches"] == 1
    again = session.negatives([2], q[2])
    assert again.ids.shape == (1, 5) and session.stats["batches"] == 2
    session.close()
    session.close()
    with pytest.raises(FailedPrecondition, match="closed"):
        session.negatives([0], q[:1])
    with pytest.raises(InvalidArgument, match="k must be"):
        col.dynamic_negatives(world.positives[0], tenant="acme", k=0)


def test_dynamic_negatives_imap_runs_lazily(loaded, world):
    _client, col = loaded
    q = world.queries[2]
    made = []

    def batches():
        for s in range(0, 9, 3):
            made.append(s)
            yield np.arange(s, s + 3), q[s : s + 3]

    with col.dynamic_negatives(world.positives[2], tenant="initech", k=4) as session:
        out = session.imap(batches())
        assert made == []
        first = next(out)
        assert made == [0] and len(first) == 3
        assert len(list(out)) == 2 and session.stats["queries"] == 9


# ================================================================================ PRF search, in each mode
def test_prf_search_moves_queries_toward_their_top_results(loaded, world):
    _client, col = loaded
    t, depth, alpha, beta, k = 2, 3, 1.0, 0.5, 8
    q = world.queries[t][:6]
    res = col.search(q, k=k, tenant="initech", prf=PRF(depth=depth, alpha=alpha, beta=beta))
    plain = col.search(q, k=k, tenant="initech")
    for r in range(len(q)):
        top, _ = world.order(t, q[r])
        moved = alpha * q[r].astype(np.float64) + beta * world.x[world.row(top[:depth])].mean(axis=0)
        moved *= np.linalg.norm(q[r]) / np.linalg.norm(moved)
        expect, scores = world.order(t, moved.astype(np.float32))
        assert res.ids[r].tolist() == expect[:k].tolist()
        np.testing.assert_allclose(res.scores[r], scores[:k], atol=1e-4)
    assert not np.array_equal(res.scores, plain.scores)
    with pytest.raises(InvalidArgument, match="PRF depth"):
        PRF(depth=0)
    with pytest.raises(InvalidArgument, match="prf must be a PRF"):
        col.search(q, k=3, tenant="initech", prf={"depth": 3})


# ================================================================================ index and compression, each mode
def _numbers(summary: dict) -> None:
    assert isinstance(summary, dict) and summary
    assert all(isinstance(key, str) and isinstance(v, (int, float)) for key, v in summary.items()), summary


def test_build_index_returns_a_summary_and_keeps_the_scope(loaded, world):
    _client, col = loaded
    summary = col.build_index()
    _numbers(summary)
    assert summary["vectors"] == len(world.ids)
    for t, tenant in enumerate(TENANTS):
        res = col.search(world.queries[t], k=10, tenant=tenant)
        assert world.visible[t, world.row(res.ids[res.ids >= 0])].all()
        mined = col.mine_hard_negatives(world.queries[t], world.positives[t], tenant=tenant, exact=False)
        assert 0.0 <= mined.recall <= 1.0 and world.visible[t, world.row(mined.ids[mined.ids >= 0])].all()
    job = col.build_index(background=True)
    assert job.kind == "build_index" and _finished(col, job).state == "done"


def _finished(col, job):
    """The job once it has ended."""
    while col.job(job.id).running:
        time.sleep(0.01)
    return col.job(job.id)


def test_configure_returns_the_settings(loaded):
    _client, col = loaded
    now = col.configure(query_reservoir=200)
    _numbers(now)
    assert now["query_reservoir"] == 200
    assert col.configure() == now  # nothing changed
    assert col.configure(auto_index_rows=10_000)["auto_index_rows"] == 10_000
    assert col.configure(query_reservoir=0)["query_reservoir"] == 0
    assert col.configure(refined_tree=1)["refined_tree"] == 1
    with pytest.raises(InvalidArgument, match="query_reservoir must be a non-negative integer"):
        col.configure(query_reservoir=-1)
    with pytest.raises(InvalidArgument, match="refined_tree must be 0 or 1"):
        col.configure(refined_tree=2)


def test_train_compression_returns_a_summary(any_client, world):
    col = world.load(any_client, "lean", compression=LeanVec(dim=8, kind="ood", primary="lvq8", secondary="float32"))
    _numbers(col.train_compression(query_sample=world.queries[0]))
    col.configure(query_reservoir=200)
    col.search(world.queries[1], k=5, tenant="globex")
    _numbers(col.train_compression())  # from the reservoir of searched queries


def test_index_and_compression_calls_are_congruent(both, world):
    calls = {
        "configure": lambda c: c.get_collection("train").configure(query_reservoir=50),
        "configure nothing": lambda c: c.get_collection("train").configure(),
        "configure=-1": lambda c: c.get_collection("train").configure(query_reservoir=-1),
        "configure=1.5": lambda c: c.get_collection("train").configure(query_reservoir=1.5),
        "configure=np.int64": lambda c: c.get_collection("train").configure(auto_index_rows=np.int64(5)),
        "configure auto": lambda c: c.get_collection("train").configure(auto_index_rows=2_000),
        "configure refined": lambda c: c.get_collection("train").configure(refined_tree=1),
        "configure refined=2": lambda c: c.get_collection("train").configure(refined_tree=2),
        "build_index": lambda c: sorted(c.get_collection("train").build_index()),
        "build_index, background": lambda c: (
            _finished(c.get_collection("train"), c.get_collection("train").build_index(background=True)).state
        ),
        "train float32": lambda c: c.get_collection("train").train_compression(world.queries[0]),
        "train wrong dim": lambda c: c.get_collection("train").train_compression(world.queries[0][:, :3]),
    }
    for what, call in calls.items():
        compare(call, *both, what)


# ================================================================================ congruence: embedded == remote
def test_training_calls_are_congruent(both, world):
    embedded, remote = both
    q0, p0 = world.queries[0], world.positives[0]
    for rules in RULES:
        compare(
            lambda c, r=rules: _mined_tuple(c.get_collection("train").mine_hard_negatives(q0, p0, tenant="acme", **r)),
            *both,
        )
    compare(
        lambda c: [
            (first, total, _mined_tuple(part))
            for first, total, part in c.get_collection("train").mine_hard_negatives_stream(
                q0, np.array([p[0] for p in p0]), tenant="acme", chunk_size=5, random_negatives=2
            )
        ],
        *both,
    )
    exact_off = lambda c: c.get_collection("train").mine_hard_negatives(q0, p0, tenant="acme", exact=False).recall
    compare(exact_off, embedded, remote)
    compare(lambda c: c.get_collection("train").search(q0, k=7, tenant="acme", prf=PRF(depth=2, beta=0.3)), *both)
    sessions = [c.get_collection("train").dynamic_negatives(dict(enumerate(p0)), tenant="acme", k=9) for c in both]
    try:
        for step, (ids, emb) in enumerate([([0, 1, 2], q0[:3]), ([5], q0[5]), ([7, 3], q0[[7, 3]])]):
            e, r = (s.negatives(ids, emb) for s in sessions)
            for field in ("query_ids", "ids", "positive_ids", "positive_ranks"):
                np.testing.assert_array_equal(getattr(e, field), getattr(r, field), err_msg=f"step {step} {field}")
                assert getattr(e, field).dtype == getattr(r, field).dtype
            np.testing.assert_allclose(e.scores, r.scores, atol=1e-6)
            np.testing.assert_allclose(e.positive_scores, r.positive_scores, atol=1e-6)
            assert sessions[0].stats == sessions[1].stats and sessions[0].mrr == sessions[1].mrr
        for bad in (([0], q0[:1, :4]), ([0, 1], q0[:1]), ([12345], q0[:1]), (["a"], q0[:1])):
            compare(lambda c, b=bad, s={embedded: sessions[0], remote: sessions[1]}: s[c].negatives(*b), *both)
    finally:
        for s in sessions:
            s.close()


def _mined_tuple(m):
    return (m.ids.tolist(), np.round(m.scores, 5).tolist(), np.round(m.positive_scores, 5).tolist(), m.stats, m.recall)


def _mine_dropped(client):
    col = client.create_collection("gone", dim=DIM)
    client.drop_collection("gone")
    return col.mine_hard_negatives(np.ones((1, DIM), np.float32), [1], tenant="acme")


def test_refused_training_calls_are_congruent(both, world):
    q, p = world.queries[0], world.positives[0]

    def mine(queries=q, positives=p, **kw):
        options = {"tenant": "acme", **kw}
        return lambda c: _mined_tuple(c.get_collection("train").mine_hard_negatives(queries, positives, **options))

    calls = {
        "num_negatives=-1": mine(num_negatives=-1),
        "no negatives": mine(num_negatives=0),
        "range_max=0": mine(range_max=0),
        "empty window": mine(range_min=10, range_max=10),
        "huge window": mine(range_max=20_000),
        "sampling=best": mine(sampling="best"),
        "sampling=None": mine(sampling=None),
        "margin=str": mine(relative_margin="0.05"),
        "margin=nan": mine(relative_margin=float("nan")),
        "chunk_size=0": mine(chunk_size=0),
        "seed=-1": mine(seed=-1),
        "tenant=''": mine(tenant=""),
        "tenant=None": mine(tenant=None),
        "unseen positives": mine(tenant="nobody"),
        "positives count": mine(positives=p[:-1]),
        "empty positives": mine(positives=[[]] * len(q)),
        "float positives": mine(positives=[1.5] * len(q)),
        "whole floats": mine(positives=np.array([x[0] for x in p], np.float64)),
        "wrong dim": mine(queries=q[:, :5]),
        "dropped collection": _mine_dropped,
        "dynamic k=0": lambda c: c.get_collection("train").dynamic_negatives(p, tenant="acme", k=0),
        "dynamic empty row": lambda c: c.get_collection("train").dynamic_negatives([[1000], []], tenant="acme"),
        "dynamic bad tenant": lambda c: c.get_collection("train").dynamic_negatives(p, tenant="a\tb"),
        "prf=dict": lambda c: c.get_collection("train").search(q, k=2, tenant="acme", prf={"depth": 2}),
        "prf depth > k": lambda c: c.get_collection("train").search(q, k=2, tenant="acme", prf=PRF(depth=50)),
    }
    outcomes = {what: compare(call, *both, what)[0] for what, call in calls.items()}
    assert outcomes["whole floats"] == outcomes["prf depth > k"] == "ok"
    assert sum(v == "error" for v in outcomes.values()) == len(calls) - 2, outcomes


# ================================================================================ over the wire
@pytest.fixture
def wire(grove_server, world):
    """The world on a server, an admin client, a tenant client for "acme", and a raw stub."""
    admin = grove_server.client()
    world.load(admin)
    key = admin.create_tenant_key("acme")
    acme = grove_server.client(api_key=key)
    channel = grpc.insecure_channel(grove_server.url)
    yield admin, acme, key, grove_pb2_grpc.GroveStub(channel)
    channel.close()
    acme.close()
    admin.close()


def _matrix(arr) -> pb.Matrix:
    arr = np.ascontiguousarray(np.atleast_2d(arr), "<f4")
    return pb.Matrix(data=arr.tobytes(), rows=arr.shape[0], dim=arr.shape[1])


def _id_lists(lists) -> pb.IdLists:
    return pb.IdLists(ids=[i for x in lists for i in x], offsets=np.cumsum([0] + [len(x) for x in lists]).tolist())


def _code(call, request, key: str = GROVE_ADMIN_KEY) -> grpc.StatusCode:
    try:
        reply = call(request, metadata=(("x-api-key", key),), timeout=30)
        if not hasattr(reply, "SerializeToString"):
            list(reply)  # a streamed reply fails while it is read
    except grpc.RpcError as err:
        assert err.details(), "every error carries a message"
        return err.code()
    return SC.OK


def test_tenant_key_mines_only_as_itself(wire, world):
    admin, acme, key, stub = wire
    q, p = world.queries[0], world.positives[0]
    mine = acme.get_collection("train").mine_hard_negatives(q, p, tenant="acme", num_negatives=4, random_negatives=1)
    as_admin = admin.get_collection("train").mine_hard_negatives(
        q, p, tenant="acme", num_negatives=4, random_negatives=1
    )
    np.testing.assert_array_equal(mine.ids, as_admin.ids)
    with pytest.raises(PermissionDenied, match="acts only as tenant 'acme'"):
        acme.get_collection("train").mine_hard_negatives(world.queries[1], world.positives[1], tenant="globex")
    with pytest.raises(PermissionDenied):
        acme.get_collection("train").dynamic_negatives(world.positives[1], tenant="globex")
    request = pb.MineHardNegativesRequest(
        collection="train", tenant="globex", queries=_matrix(world.queries[1]), positives=_id_lists(world.positives[1])
    )
    assert _code(stub.MineHardNegatives, request, key) == SC.PERMISSION_DENIED
    assert _code(stub.MineHardNegatives, request) == SC.OK
    with acme.get_collection("train").dynamic_negatives(p, tenant="acme", k=3) as session:
        assert session.negatives([0], q[0]).ids.shape == (1, 3)


def test_every_message_of_a_dynamic_stream_is_checked(wire, world):
    _admin, _acme, key, stub = wire
    q, p = world.queries[0], world.positives[0]
    opening = pb.DynamicNegativesRequest(collection="train", tenant="acme")
    opening.open.k = 4
    opening.open.query_ids.extend(range(len(p)))
    opening.open.positives.CopyFrom(_id_lists(p))

    def batch(tenant: str = "", collection: str = "", ids=(0,)):
        msg = pb.DynamicNegativesRequest(collection=collection, tenant=tenant)
        msg.batch.query_ids.extend(ids)
        msg.batch.embeddings.CopyFrom(_matrix(q[[i % len(q) for i in ids]]))
        return msg

    def run(messages, k=key):
        return _code(stub.DynamicNegatives, iter(messages), k)

    assert run([opening, batch(), batch("acme", "train", (1, 2))]) == SC.OK
    assert run([opening, batch(), batch("globex")]) == SC.PERMISSION_DENIED  # tenant key, later message
    assert run([opening, batch(), batch("globex")], GROVE_ADMIN_KEY) == SC.INVALID_ARGUMENT  # tenant switch
    assert run([opening, batch(collection="other")], GROVE_ADMIN_KEY) == SC.INVALID_ARGUMENT
    assert run([batch("acme", "train")]) == SC.INVALID_ARGUMENT  # no opening message
    assert run([opening, opening]) == SC.INVALID_ARGUMENT
    assert run([pb.DynamicNegativesRequest(collection="train", tenant="acme")]) == SC.INVALID_ARGUMENT
    bad_open = pb.DynamicNegativesRequest()
    bad_open.CopyFrom(opening)
    bad_open.open.query_ids.append(99)  # one more query id than lists
    assert run([bad_open]) == SC.INVALID_ARGUMENT
    replies = list(
        stub.DynamicNegatives(iter([opening, batch(ids=(0, 1)), batch(ids=(77,))]), metadata=(("x-api-key", key),))
    )
    assert [r.HasField("error") for r in replies] == [False, False, True]  # a refused batch is answered in-band
    assert replies[2].error.code == "INVALID_ARGUMENT" and "77" in replies[2].error.message
    assert replies[1].rows == 2 and replies[2].stats.ints["batches"] == 1


def test_mining_messages_and_defaults_on_the_wire(wire, world):
    _admin, _acme, _key, stub = wire
    q, p = world.queries[2], world.positives[2]
    plain = pb.MineHardNegativesRequest(
        collection="train", tenant="initech", queries=_matrix(q), positives=_id_lists(p)
    )
    replies = list(stub.MineHardNegatives(plain, metadata=(("x-api-key", GROVE_ADMIN_KEY),), timeout=30))
    assert len(replies) == 1 and replies[0].width == 3 and replies[0].total_rows == len(q)  # engine defaults
    # unset range_max is None: sentence-transformers' window, range_min + num_negatives + most positives = 5
    assert replies[0].stats.ints["range_max"] == 5 and not replies[0].HasField("recall")
    chunked = pb.MineHardNegativesRequest()
    chunked.CopyFrom(plain)
    chunked.chunk_size, chunked.exact = 10, False
    replies = list(stub.MineHardNegatives(chunked, metadata=(("x-api-key", GROVE_ADMIN_KEY),), timeout=30))
    assert [r.first_row for r in replies] == [0, 10, 20] and all(r.HasField("recall") for r in replies)
    broken = pb.MineHardNegativesRequest()
    broken.CopyFrom(plain)
    broken.positives.offsets[1] = 10_000
    assert _code(stub.MineHardNegatives, broken) == SC.INVALID_ARGUMENT
    for field, value in (("num_negatives", 0), ("sampling", "best"), ("chunk_size", 0), ("range_max", 0)):
        bad = pb.MineHardNegativesRequest()
        bad.CopyFrom(plain)
        setattr(bad, field, value)
        assert _code(stub.MineHardNegatives, bad) == SC.INVALID_ARGUMENT, field
    unknown = pb.MineHardNegativesRequest()
    unknown.CopyFrom(plain)
    unknown.collection = "nope"
    assert _code(stub.MineHardNegatives, unknown) == SC.NOT_FOUND


def test_a_stalled_stream_raises_deadline_exceeded(grove_server, world, monkeypatch):
    from engine.db import Collection

    with grove_server.client(timeout=0.5) as client:
        col = world.load(client)
        real = Collection.mine_hard_negatives_stream

        def stalled(self, *args, **kw):
            for first_row, total, part in real(self, *args, **kw):
                if first_row > 0:
                    time.sleep(1.5)
                yield first_row, total, part

        monkeypatch.setattr(Collection, "mine_hard_negatives_stream", stalled)
        stream = col.mine_hard_negatives_stream(world.queries[0], world.positives[0], tenant="acme", chunk_size=10)
        assert next(stream)[0] == 0
        with pytest.raises(DeadlineExceeded, match="no reply from the server within 0.5 s"):
            next(stream)
        monkeypatch.undo()
        assert col.mine_hard_negatives(world.queries[0], world.positives[0], tenant="acme").ids.shape == (24, 3)


def test_prf_is_validated_on_the_wire(wire, world):
    _admin, _acme, key, stub = wire
    good = pb.SearchRequest(collection="train", tenant="acme", queries=_matrix(world.queries[0][:2]), k=3)
    assert _code(stub.Search, good, key) == SC.OK
    for depth, alpha, beta in ((0, 1.0, 0.1), (1001, 1.0, 0.1), (3, float("nan"), 0.1), (3, 1.0, float("inf"))):
        bad = pb.SearchRequest()
        bad.CopyFrom(good)
        bad.prf.depth, bad.prf.alpha, bad.prf.beta = depth, alpha, beta
        assert _code(stub.Search, bad, key) == SC.INVALID_ARGUMENT, (depth, alpha, beta)
    ok = pb.SearchRequest()
    ok.CopyFrom(good)
    ok.prf.depth, ok.prf.alpha, ok.prf.beta = 3, 1.0, 0.2
    assert _code(stub.Search, ok, key) == SC.OK


def test_index_and_compression_calls_are_admin_only(wire):
    admin, acme, key, stub = wire
    col = acme.get_collection("train")
    for call in (col.build_index, col.train_compression, lambda: col.configure(query_reservoir=10)):
        with pytest.raises(PermissionDenied, match="needs the admin key"):
            call()
    for method, request in (
        (stub.BuildIndex, pb.BuildIndexRequest(collection="train")),
        (stub.TrainCompression, pb.TrainCompressionRequest(collection="train")),
        (stub.Configure, pb.ConfigureRequest(collection="train", query_reservoir=10)),
    ):
        assert _code(method, request, key) == SC.PERMISSION_DENIED
        request.collection = "nope"
        assert _code(method, request, GROVE_ADMIN_KEY) == SC.NOT_FOUND
    assert col.count(tenant="acme") == admin.get_collection("train").count(tenant="acme")


# ================================================================================ SDK packaging
def test_sdk_exports_stay_cheap_to_import():
    code = (
        "import sys, grove_client\n"
        "from grove_client import PRF, MinedNegatives, DynamicBatch, DynamicNegativesSession\n"
        "from grove_client.training import TopicAwareSampler, BalancedMarginSampler, cluster_queries\n"
        "from grove_client.training import training_rows, write_jsonl, write_training_rows\n"
        "assert grove_client.training.TopicAwareSampler is TopicAwareSampler\n"
        "print(sorted(m for m in ('numba', 'grpc', 'faiss', 'rocksdict', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
