"""Compressed collections (LVQ, LeanVec) through the SDK: scope, recall floors, RAM, training, persistence.

A compressed collection keeps float32 rows until its codec is learned; then RAM holds only codes, the Curator
index scans the primary codes and reranks with the rows' codes. Whatever the encoding, a tenant sees only what
it may see (checked against the brute-force oracle), and search quality stays above a floor per encoding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from grove_client import LVQ, Client, LeanVec

from engine.errors import FailedPrecondition, InvalidArgument
from tests.oracle import ModelCollection

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

CONFIGS = {
    "leanvec-ood lvq8/lvq8": LeanVec(dim=16, kind="ood", primary="lvq8", secondary="lvq8"),
    "leanvec-id lvq4/float32": LeanVec(dim=24, kind="id", primary="lvq4", secondary="float32"),
    "leanvec-ood float32/lvq4x8": LeanVec(dim=16, kind="ood", primary="float32", secondary="lvq4x8"),
    "lvq8": LVQ(bits=8),
    "lvq4x8": LVQ(bits=4, residual_bits=8),
    "lvq4": LVQ(bits=4),
}


def clustered(rng: np.random.Generator, n: int, dim: int, centers: int = 40) -> np.ndarray:
    """Vectors around random centres with a decaying spectrum, like embeddings (a projection can keep most)."""
    spectrum = 1.0 / np.arange(1, dim + 1) ** 0.7
    c = rng.standard_normal((centers, dim)) * spectrum * 3
    x = c[rng.integers(0, centers, n)] + rng.standard_normal((n, dim)) * spectrum
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def rng_data():
    rng = np.random.default_rng(7)
    return clustered(rng, 6000, 48), clustered(rng, 80, 48) + 0.3


# ============================================================================================ scope
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_a_tenant_sees_only_its_vectors_before_and_after_training_and_indexing(tmp_path, rng_data, name, metric):
    x, q = rng_data
    rng = np.random.default_rng(3)
    model = ModelCollection(48, metric)
    client = Client(path=tmp_path / "db")
    col = client.create_collection("c", dim=48, metric=metric, compression=CONFIGS[name])
    owners = rng.choice(["acme", "globex", "initech"], x.shape[0])
    for t in ("acme", "globex", "initech"):
        ids = np.flatnonzero(owners == t)
        col.upsert(ids, x[ids], tenant=t)
        model.upsert(ids, x[ids], t)
    shared = rng.choice(np.flatnonzero(owners == "acme"), 300, replace=False)
    col.grant(shared, tenant="globex")
    model.grant(shared, "globex")

    def check(stage: str) -> None:
        for t in ("acme", "globex", "initech", "nobody"):
            res = col.search(q[:20], k=10, tenant=t, ef=64)
            visible = set(model.visible(t))
            got = np.asarray(res.ids)
            assert set(got[got >= 0].tolist()) <= visible, f"{stage}: {t} saw a vector it may not see"
            assert ((got >= 0).sum(axis=1) == min(10, len(visible))).all(), f"{stage}: {t} got too few results"

    check("float32, flat")
    col.train_compression(query_sample=q)
    check("codes, flat")
    col.build_index()
    check("codes, indexed")
    gone = shared[:100]
    col.revoke(gone, tenant="globex")
    model.revoke(gone, "globex")
    deleted = np.flatnonzero(owners == "initech")[:500]
    col.delete(deleted, tenant="initech")
    model.delete(deleted)
    fresh = np.arange(10_000, 10_200)
    col.upsert(fresh, x[:200] * 1.1, tenant="initech")
    model.upsert(fresh, x[:200] * 1.1, "initech")
    check("codes, indexed, after writes")
    client.close()


# ============================================================================================ RAM
def test_ram_holds_codes_only(tmp_path, rng_data):
    x, q = rng_data
    client = Client(path=tmp_path / "db")
    plain = client.create_collection("plain", dim=48, metric="ip")
    lean = client.create_collection("lean", dim=48, metric="ip", compression=LeanVec(16, "ood", "lvq8", "lvq8"))
    for col in (plain, lean):
        col.upsert(np.arange(6000), x, tenant="a")
    assert lean.stats()["compressed"] == 0  # float32 until trained
    lean.train_compression(query_sample=q)
    for col in (plain, lean):
        col.build_index()
    p, s = plain.stats(), lean.stats()
    assert s["compressed"] == 1 and s["reduced_dim"] == 16
    # rows: LVQ-8 of 48 dims + scale and bias = 56 B; scan codes: 16 + 8 B per vector
    assert s["vectors_bytes"] == 6000 * 56 and p["vectors_bytes"] == 6000 * 48 * 4
    assert s["code_bytes_per_vector"] == 56 + 24
    assert s["total_bytes"] < 0.5 * p["total_bytes"]
    client.close()


# ============================================================================================ quality
def recall_at_10(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(g[g >= 0]) & set(t)) / 10 for g, t in zip(got, truth)]))


#: recall@10 floors on real embeddings (21k passages, 200 OOD queries, ``ef=EF``): what each encoding keeps
EF = 2048
FLOORS = {
    "lvq8": LVQ(bits=8),
    "lvq4x8": LVQ(bits=4, residual_bits=8),
    "lvq4": LVQ(bits=4),
    "leanvec-id": LeanVec(dim=128, kind="id", primary="lvq8", secondary="lvq8"),
    "leanvec-ood": LeanVec(dim=128, kind="ood", primary="lvq8", secondary="lvq8"),
}
FLOOR = {"lvq8": 0.97, "lvq4x8": 0.98, "lvq4": 0.88, "leanvec-id": 0.96, "leanvec-ood": 0.96, "float32": 0.98}


@pytest.fixture(scope="module")
def real():
    if not (DATA / "base_vectors.f16.npy").exists():
        pytest.skip(f"real data set not found at {DATA}")
    base = np.load(DATA / "base_vectors.f16.npy")[::4].astype(np.float32)  # 21k passages
    queries = np.load(DATA / "queries_ood.f32.npy")
    return base, queries[:200], queries[200:2200]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,metric",
    [(n, "ip") for n in FLOORS] + [("float32", "ip"), ("leanvec-ood", "l2"), ("lvq4x8", "l2"), ("lvq8", "cosine")],
)
def test_recall_floor_per_encoding_and_metric_on_real_data(tmp_path, real, name, metric):
    base, q, q_train = real
    if metric == "l2":
        d2 = (q**2).sum(1)[:, None] - 2 * q @ base.T + (base**2).sum(1)[None]
        truth = np.argsort(d2, axis=1)[:, :10]
    else:
        truth = np.argsort(-(q @ base.T), axis=1)[:, :10]  # unit vectors: cosine == ip
    client = Client(path=tmp_path / "db")
    col = client.create_collection("c", dim=384, metric=metric, compression=FLOORS.get(name))
    for s in range(0, base.shape[0], 5000):
        col.upsert(np.arange(s, min(s + 5000, base.shape[0])), base[s : s + 5000], tenant="all")
    if name != "float32":
        col.train_compression(query_sample=q_train)
    col.build_index()
    got = np.asarray(col.search(q, k=10, tenant="all", ef=EF).ids)
    rec = recall_at_10(got, truth)
    print(f"{name} {metric}: recall@10 {rec:.4f}")
    assert rec >= FLOOR[name]
    client.close()


# ============================================================================================ training
def test_ood_needs_queries_and_can_learn_them_from_the_reservoir(tmp_path, rng_data):
    x, q = rng_data
    client = Client(path=tmp_path / "db")
    col = client.create_collection("c", dim=48, metric="ip", compression=LeanVec(16, "ood", "lvq8", "lvq8"))
    col.upsert(np.arange(6000), x, tenant="a")
    with pytest.raises(FailedPrecondition, match="learns from queries"):
        col.train_compression()
    with pytest.raises(InvalidArgument):
        col.train_compression(query_sample=q[:, :5])
    col.configure(query_reservoir=64)
    col.search(q, k=3, tenant="a")
    summary = col.train_compression()
    assert summary["queries"] == 64 and summary["reduced_dim"] == 16


def test_indexing_before_any_query_uses_the_data_projection_until_trained(tmp_path, rng_data):
    x, q = rng_data
    client = Client(path=tmp_path / "db")
    col = client.create_collection("c", dim=48, metric="ip", compression=LeanVec(16, "ood", "lvq8", "lvq8"))
    col.upsert(np.arange(6000), x, tenant="a")
    col.build_index()  # learns an ID projection first: no queries yet
    assert col.stats()["compressed"] == 1
    before = np.asarray(col.search(q, k=10, tenant="a", ef=2000).ids)
    col.train_compression(query_sample=q)  # re-learned from queries, rows re-encoded, index rebuilt
    after = np.asarray(col.search(q, k=10, tenant="a", ef=2000).ids)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    assert recall_at_10(before, exact) >= 0.9
    assert recall_at_10(after, exact) >= recall_at_10(before, exact) - 0.02


def test_training_twice_re_encodes_from_the_originals(tmp_path, rng_data):
    """Re-learning starts from the float32 originals in the store, not from the previous codes: training
    twice on the same queries gives the same results as training once."""
    x, q = rng_data
    client = Client(path=tmp_path / "db")
    col = client.create_collection("c", dim=48, metric="l2", compression=LVQ(bits=4))
    col.upsert(np.arange(6000), x, tenant="a")
    col.train_compression()
    once = col.search(q, k=10, tenant="a")
    col.train_compression()
    twice = col.search(q, k=10, tenant="a")
    assert np.array_equal(np.asarray(once.ids), np.asarray(twice.ids))
    np.testing.assert_allclose(np.asarray(once.scores), np.asarray(twice.scores), rtol=1e-6)


def test_a_new_vector_is_encoded_and_found(tmp_path, rng_data):
    x, q = rng_data
    client = Client(path=tmp_path / "db")
    col = client.create_collection("c", dim=48, metric="cosine", compression=LVQ(bits=8))
    col.upsert(np.arange(6000), x, tenant="a")
    col.train_compression()
    col.build_index()
    probe = q[5] * 3.0
    col.upsert([99_999], probe[None], tenant="a")
    res = col.search(q[5:6], k=1, tenant="a")
    assert np.asarray(res.ids)[0, 0] == 99_999 and abs(float(np.asarray(res.scores)[0, 0]) - 1.0) < 0.01


def test_compression_survives_a_restart(tmp_path, rng_data):
    x, q = rng_data
    path = tmp_path / "db"
    client = Client(path=path)
    col = client.create_collection("c", dim=48, metric="ip", compression=LeanVec(16, "ood", "lvq8", "lvq4x8"))
    col.upsert(np.arange(6000), x, tenant="a")
    col.grant(np.arange(0, 6000, 2), tenant="b")
    col.train_compression(query_sample=q)
    col.build_index()
    before = {t: col.search(q, k=10, tenant=t) for t in ("a", "b")}
    stats = col.stats()
    client.close()
    client = Client(path=path)
    col = client.get_collection("c")
    assert col.stats()["compressed"] == 1 and col.stats()["vectors_bytes"] == stats["vectors_bytes"]
    for t, res in before.items():
        again = col.search(q, k=10, tenant=t)
        assert np.array_equal(np.asarray(again.ids), np.asarray(res.ids))
    client.close()
