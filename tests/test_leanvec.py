"""LeanVec: the projections (ID, OOD), their loss, the codecs built on them, and recall on shifted queries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.errors import InvalidArgument
from engine.kernels import metrics
from engine.quant import codec as C
from engine.quant import leanvec as L
from engine.types import ENCODINGS, LeanVec

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def rng(request):
    seed = 4321 + sum(map(ord, request.node.name)) % 1000
    print(f"seed {seed}")
    return np.random.default_rng(seed)


def shifted(rng, dim=64, n=5000, nq=600, band=(16, 32)):
    """Data with a power-law spectrum (variance 1/i) in a random rotation; queries from the same rotation
    with their energy in a band of mid-variance directions (``leanvec.md`` §3: the OOD queries put their
    energy where the data has little). The top-``band[0]`` data directions carry almost none of ``q . x``."""
    rot, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    i = np.arange(1, dim + 1)
    x = (rng.standard_normal((n, dim)) / np.sqrt(i)) @ rot.T
    q_scale = np.where((i > band[0]) & (i <= band[1]), 1.0, 0.05)
    q = (rng.standard_normal((nq, dim)) * q_scale) @ rot.T
    return x.astype(np.float32), q.astype(np.float32)


def recall(found, truth):
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / truth.shape[1] for f, t in zip(found, truth)]))


# ---------------------------------------------------------------------------------------------
# projections and their loss
# ---------------------------------------------------------------------------------------------
def test_fit_id_is_pca_of_the_second_moment(rng):
    x = rng.standard_normal((500, 20)).astype(np.float32) * np.linspace(3, 0.1, 20).astype(np.float32)
    p = L.fit_id(x, 5)
    assert p.kind == "id" and p.method == "pca" and (p.in_dim, p.out_dim) == (20, 5)
    assert p.data_matrix.dtype == np.float32 and np.array_equal(p.data_matrix, p.query_matrix)
    assert np.allclose(p.data_matrix.T @ p.data_matrix, np.eye(5), atol=1e-5)
    k = x.T.astype(np.float64) @ x / len(x)
    w = np.linalg.eigvalsh(k)[::-1][:5]
    assert np.allclose(np.diag(p.data_matrix.T @ k @ p.data_matrix), w, rtol=1e-4)
    assert p.project_data(x).shape == (500, 5) and p.project_queries(x[0]).shape == (1, 5)
    with pytest.raises(InvalidArgument):
        p.project_queries(x[:, :7])
    with pytest.raises(InvalidArgument):
        L.fit_id(x, 21)


def test_loss_is_the_mean_squared_error_over_pairs(rng):
    x = rng.standard_normal((80, 12))
    q = rng.standard_normal((30, 12)) + 0.5
    a = rng.standard_normal((12, 4)) * 0.3
    b = rng.standard_normal((12, 4)) * 0.3
    direct = np.mean(((q @ x.T) - (q @ a) @ (x @ b).T) ** 2)
    k_q, k_x = q.T @ q / len(q), x.T @ x / len(x)
    assert np.isclose(L.loss(k_q, k_x, a, b), direct, rtol=1e-9)
    assert np.isclose(L.relative_loss(k_q, k_x, np.zeros((12, 4)), np.zeros((12, 4))), 1.0)
    assert np.isclose(L.loss(k_q, k_x, np.eye(12), np.eye(12)), 0.0, atol=1e-9)
    assert np.allclose(L.second_moment(x.astype(np.float32)), k_x, atol=1e-5)


def test_sphering_has_the_lowest_loss(rng):
    x, q = shifted(rng, dim=32, n=2000, nq=400, band=(8, 16))
    k_x, k_q = L.second_moment(x), L.second_moment(q)
    d = 8
    a, b = L.sphering_from_moments(k_q, k_x, d, eps=1e-9)
    best = L.loss(k_q, k_x, a, b)
    p = L.pca_from_moments(k_x, d)
    fa, fb = L.frank_wolfe_from_moments(k_q, k_x, d)
    e, beta = L.eigen_search_from_moments(k_q, k_x, d)
    assert best <= L.loss(k_q, k_x, fa, fb) + 1e-12
    assert best <= L.loss(k_q, k_x, e, e) + 1e-12
    assert L.loss(k_q, k_x, fa, fb) < L.loss(k_q, k_x, p, p)  # Frank-Wolfe improves on its start
    assert L.loss(k_q, k_x, e, e) <= L.loss(k_q, k_x, p, p)  # beta = 0 is in the grid
    assert 0.0 <= beta <= 1.0


@pytest.mark.parametrize("method", L.OOD_METHODS)
def test_ood_clearly_beats_id_on_shifted_queries(rng, method):
    x, q = shifted(rng)
    q_train, q_test = q[:300], q[300:]
    exact = q_test @ x.T
    truth = np.argsort(-exact, axis=1)[:, :10]
    found = {}
    for name, proj in (("id", L.fit_id(x, 16)), ("ood", L.fit_ood(x, q_train, 16, method=method))):
        approx = proj.project_queries(q_test) @ proj.project_data(x).T
        cand = np.argpartition(-approx, 50, axis=1)[:, :50]
        order = np.argsort(-np.take_along_axis(exact, cand, 1), axis=1)[:, :10]
        found[name] = recall(np.take_along_axis(cand, order, 1), truth)
    print(method, found)
    assert found["ood"] >= 0.95 and found["id"] <= 0.3


def test_auto_does_not_lose_to_id_on_in_distribution_queries(rng):
    x = (rng.standard_normal((4000, 24)) / np.sqrt(np.arange(1, 25))).astype(np.float32)
    q_fit, q_new = x[:500] + 0.01, x[500:1500]
    k_x, k_new = L.second_moment(x), L.second_moment(q_new)
    ood = L.fit_ood(x, q_fit, 6)
    pid = L.fit_id(x, 6)
    ood_loss = L.loss(k_new, k_x, ood.query_matrix, ood.data_matrix)
    id_loss = L.loss(k_new, k_x, pid.query_matrix, pid.data_matrix)
    assert ood_loss <= 1.02 * id_loss, ood.method


def test_fit_ood_rejects_bad_input(rng):
    x = rng.standard_normal((100, 8)).astype(np.float32)
    with pytest.raises(InvalidArgument):
        L.fit_ood(x, x[:, :4], 2)
    with pytest.raises(InvalidArgument):
        L.fit_ood(x, x, 2, method="magic")
    with pytest.raises(InvalidArgument):
        L.fit_ood(x, x, 0)
    bad = x.copy()
    bad[0, 0] = np.inf
    with pytest.raises(InvalidArgument):
        L.fit_ood(x, bad, 2)


# ---------------------------------------------------------------------------------------------
# LeanVec codecs: projection + primary + secondary
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
@pytest.mark.parametrize("primary", ENCODINGS)
@pytest.mark.parametrize("kind", ["id", "ood"])
def test_leanvec_codec_reranks_exactly_with_float32(rng, metric, primary, kind):
    """With a float32 secondary and every row a candidate, search is exact whatever the primary."""
    x, q = shifted(rng, dim=24, n=300, nq=60, band=(4, 8))
    x = x + 0.3  # not centred: exercises the LVQ means and the l2 norms
    codec = C.build_codec(LeanVec(6, kind, primary, "float32"), x, q[:50], metric=metric)
    enc = codec.encode(x)
    assert enc.nbytes == len(x) * codec.bytes_per_vector
    assert (enc.sqnorms is not None) == (metric == "l2")
    prep = codec.prepare_queries(q[50:])
    rows = np.arange(len(x), dtype=np.int64)
    s, r = codec.search(prep, enc, rows, 5, candidates=len(x))
    xs = metrics.prepare(metric, x).astype(np.float64)
    qs = metrics.prepare(metric, q[50:]).astype(np.float64)
    exact = qs @ xs.T if metric != "l2" else -((qs[:, None, :] - xs[None, :, :]) ** 2).sum(-1)
    truth = np.argsort(-exact, axis=1, kind="stable")[:, :5]
    assert np.allclose(s, np.take_along_axis(exact, truth, 1), rtol=1e-4, atol=1e-4)
    # the scan alone gives approximate surrogates of the same metric
    s_scan, r_scan = codec.scan_topk(prep, enc, rows, 5)
    assert s_scan.shape == (10, 5) and np.all(r_scan >= 0)
    if metric == "l2":
        assert np.all(s_scan <= 1e-3)  # minus approximate squared distances


@pytest.mark.parametrize("secondary", ENCODINGS)
def test_leanvec_codec_secondaries(rng, secondary):
    x, q = shifted(rng, dim=24, n=400, nq=80, band=(4, 8))
    codec = C.build_codec(LeanVec(8, "ood", "lvq8", secondary), x, q[:60], ood_method="sphering")
    assert codec.has_rerank and codec.projection.kind == "ood" and codec.projection.method == "sphering"
    enc = codec.encode(x)
    prep = codec.prepare_queries(q[60:])
    s, r = codec.search(prep, enc, np.arange(400), 10, candidates=400)
    truth = np.argsort(-(q[60:] @ x.T), axis=1)[:, :10]
    floor = {"float32": 1.0, "lvq8": 0.97, "lvq4x8": 0.97, "lvq4": 0.7}[secondary]
    assert recall(r, truth) >= floor
    # padding when the tenant has fewer rows than k
    s, r = codec.search(prep, enc, np.arange(3), 10)
    assert np.all(r[:, 3:] == -1) and np.all(np.isneginf(s[:, 3:])) and np.all(r[:, :3] >= 0)
    d = codec.describe()
    assert d["reduced_dim"] == 8 and d["secondary"] == secondary and d["bytes_per_vector"] == codec.bytes_per_vector


def test_leanvec_codec_validation(rng):
    x = rng.standard_normal((50, 10)).astype(np.float32)
    with pytest.raises(InvalidArgument, match="query_sample"):
        C.build_codec(LeanVec(4, "ood"), x)
    with pytest.raises(InvalidArgument, match="larger than the vector dim"):
        C.build_codec(LeanVec(11, "id"), x)
    with pytest.raises(InvalidArgument):
        C.build_codec(LeanVec(4, "id"), x, metric="hamming")
    codec = C.build_codec(LeanVec(4, "id", "lvq4x8", "lvq8"), x)
    enc = codec.encode(x)
    assert enc.primary.residual is None  # a primary is scanned at its first level only
    assert codec.bytes_per_vector == (2 + 8) + (10 + 8)
    with pytest.raises(InvalidArgument):
        codec.prepare_queries(np.full((1, 10), np.nan, np.float32))
    # l2 through a projection keeps the squared norms, and slot-aligned writes carry them
    l2 = C.build_codec(LeanVec(4, "id", "lvq8", "float32"), x, metric="l2")
    store = l2.encode(x[:5]).resized(20)
    store.write(np.array([12]), l2.encode(x[[9]]))
    assert np.isclose(store.sqnorms[12], float(x[9] @ x[9]), rtol=1e-5) and store.sqnorms[19] == 0
    assert np.array_equal(store.secondary[12], x[9]) and store.nbytes == 20 * l2.bytes_per_vector


# ---------------------------------------------------------------------------------------------
# the real OOD queries (shared/data): the OOD projection is never worse than ID
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ood_not_worse_than_id_on_real_ood_queries():
    if not (DATA / "base_vectors.f16.npy").exists():
        pytest.skip(f"real data set not found at {DATA}")
    base = np.load(DATA / "base_vectors.f16.npy").astype(np.float32)
    queries = np.load(DATA / "queries_ood.f32.npy")
    truth = np.load(DATA / "gt_ood_top100_ids.npy")[:500, :10]
    q_test, q_train = queries[:500], queries[500:]
    rows = np.arange(len(base), dtype=np.int64)
    got = {}
    for kind in ("id", "ood"):
        codec = C.build_codec(LeanVec(128, kind, "lvq8", "lvq8"), base, q_train, metric="ip")
        enc = codec.encode(base)
        prep = codec.prepare_queries(q_test)
        got[kind] = [recall(codec.search(prep, enc, rows, 10, candidates=c)[1], truth) for c in (20, 50)]
    print(got)
    for ood, pid in zip(got["ood"], got["id"]):
        assert ood >= pid - 0.002
    assert got["ood"][1] >= 0.95
