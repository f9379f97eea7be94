"""The index's life in a collection: built on demand or past a threshold, swapped atomically, saved with the
store and reloaded without training, rebuilt from the store after a crash; searches and writes side by side."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engine.db import Database
from engine.errors import InvalidArgument
from engine.index.curator import CuratorIndex
from engine.index.flat import FlatIndex
from engine.principal import ADMIN

DIM = 16


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def _fill(col, rng, n=3000, tenants=5):
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    owner = rng.integers(0, tenants, n)
    for t in range(tenants):
        ids = np.flatnonzero(owner == t).astype(np.int64)
        col.upsert(ids, vecs[ids], tenant=f"t{t}", principal=ADMIN)
    col.grant(np.arange(0, n, 3, dtype=np.int64), tenant="shared", principal=ADMIN)
    return vecs, owner


def _answers(col, queries):
    return {t: col.search(queries, k=10, tenant=t, principal=ADMIN, ef=4096).ids for t in ("t0", "t3", "shared")}


def test_the_index_is_reloaded_at_open_without_training(tmp_path, rng, monkeypatch):
    db = Database(tmp_path)
    col = db.create_collection("c", dim=DIM, metric="ip")
    _fill(col, rng)
    col.build_index()
    assert isinstance(col.index, CuratorIndex) and col.index.trained
    q = rng.standard_normal((5, DIM)).astype(np.float32)
    before = _answers(col, q)
    db.close()

    def no_training(*args, **kwargs):
        raise AssertionError("the saved index should have been loaded, not trained again")

    monkeypatch.setattr(CuratorIndex, "build", no_training)
    db = Database(tmp_path)
    col = db.get_collection("c")
    assert isinstance(col.index, CuratorIndex) and col.index.trained
    after = _answers(col, q)
    assert all(np.array_equal(before[t], after[t]) for t in before)
    db.close()


def test_writes_after_the_checkpoint_are_recovered_from_the_store_after_a_crash(tmp_path, rng):
    db = Database(tmp_path)
    col = db.create_collection("c", dim=DIM, metric="l2")
    _, owner = _fill(col, rng)
    col.build_index()
    late = rng.standard_normal((50, DIM)).astype(np.float32)
    col.upsert(np.arange(10_000, 10_050), late, tenant="late", principal=ADMIN)
    col.delete(np.flatnonzero(owner == 0)[:20].astype(np.int64), tenant="t0", principal=ADMIN)
    counts = {t: col.count(tenant=t, principal=ADMIN) for t in ("t0", "t1", "shared", "late")}
    db._store.close()  # a crash: no checkpoint of the index after the last writes

    db = Database(tmp_path)  # opens at once: the stale index is rebuilt in the background, searches go on
    col = db.get_collection("c")
    assert {t: col.count(tenant=t, principal=ADMIN) for t in counts} == counts
    res = col.search(late[:3], k=1, tenant="late", principal=ADMIN, ef=4096)
    assert res.ids[:, 0].tolist() == [10_000, 10_001, 10_002]
    col.jobs.wait(120)
    assert isinstance(col.index, CuratorIndex) and col.index.trained
    assert {t: col.count(tenant=t, principal=ADMIN) for t in counts} == counts
    res = col.search(late[:3], k=1, tenant="late", principal=ADMIN, ef=4096)
    assert res.ids[:, 0].tolist() == [10_000, 10_001, 10_002] and np.allclose(res.scores[:, 0], 0, atol=1e-3)
    db.close()


def test_a_collection_indexes_itself_past_its_threshold(tmp_path, rng):
    db = Database(tmp_path)
    col = db.create_collection("c", dim=DIM, metric="ip")
    col.configure(auto_index_rows=2000)
    assert isinstance(col.index, FlatIndex)
    _fill(col, rng, n=2500)
    col.jobs.wait(120)
    assert isinstance(col.index, CuratorIndex) and col.index.trained
    db.close()
    db = Database(tmp_path)
    assert db.get_collection("c").auto_index_rows == 2000  # settings persist
    db.close()


def test_the_tree_build_is_a_persisted_per_collection_setting(tmp_path, rng, grove_env):
    """``refined_tree`` picks how the next index build makes its tree, over the server's default, and survives
    a restart; a refined tree routes by a beam, a top-down one greedily (``ClusterTree.beam``)."""
    grove_env("GROVE_TREE_BUILD", "refined")  # the server's default, which a setting overrides
    db = Database(tmp_path)
    plain, chosen = db.create_collection("plain", dim=DIM, metric="ip"), db.create_collection("c", dim=DIM, metric="ip")
    assert "refined_tree" not in chosen.configure()  # unset until set: the default applies
    assert chosen.configure(refined_tree=0)["refined_tree"] == 0
    for col in (plain, chosen):
        _fill(col, rng)
        col.build_index()
    assert plain.index.tree.beam > 1 and chosen.index.tree.beam == 1
    assert plain.stats()["refined_tree"] == 1 and chosen.stats()["refined_tree"] == 0
    vecs = rng.standard_normal((5, DIM)).astype(np.float32)
    before = _answers(chosen, vecs)
    db.close()
    grove_env("GROVE_TREE_BUILD", "topdown")
    db = Database(tmp_path)
    chosen = db.get_collection("c")
    assert chosen.configure()["refined_tree"] == 0
    after = _answers(chosen, vecs)  # the saved index reloads as it was
    assert all(np.array_equal(after[t], before[t]) for t in before)
    chosen.configure(refined_tree=1)
    chosen.build_index()
    assert chosen.index.tree.beam > 1
    for bad in (2, -1, True, 0.5):
        with pytest.raises(InvalidArgument):
            chosen.configure(refined_tree=bad)
    db.close()


def test_unset_the_tree_is_refined_where_one_tenant_sees_half_the_vectors(tmp_path, rng, grove_env):
    """With neither a setting nor a server default, the index refines the tree of a collection one tenant
    dominates (it is searched leaf by leaf, where refined leaves pay) and keeps many tenants' top down; ``stats``
    says which it built."""
    grove_env("GROVE_TREE_BUILD", None)
    db = Database(tmp_path)
    one, many = db.create_collection("one", dim=DIM, metric="ip"), db.create_collection("many", dim=DIM, metric="ip")
    _fill(one, rng, tenants=1)
    _fill(many, rng, tenants=5)
    for col in (one, many):
        col.build_index()
    assert one.stats()["refined_tree"] == 1 and one.index.tree.beam > 1
    assert many.stats()["refined_tree"] == 0 and many.index.tree.beam == 1
    assert "refined_tree" not in one.configure()  # a choice, not a setting: the next build chooses again
    db.close()


def test_searches_never_see_half_a_batch_while_writes_and_a_rebuild_run(tmp_path, rng):
    """Each batch goes to its own tenant, so any count other than 0 or the batch size is a torn read."""
    db = Database(tmp_path)
    col = db.create_collection("c", dim=DIM, metric="ip")
    _fill(col, rng)
    col.build_index()
    batch, n_batches = 64, 40
    vecs = rng.standard_normal((batch * n_batches, DIM)).astype(np.float32)
    torn: list[str] = []
    done = threading.Event()

    def writer():
        for b in range(n_batches):
            ids = np.arange(100_000 + b * batch, 100_000 + (b + 1) * batch, dtype=np.int64)
            col.upsert(ids, vecs[b * batch : (b + 1) * batch], tenant=f"w{b}", principal=ADMIN)
            if b == n_batches // 2:
                col.build_index(background=True)
        done.set()

    def reader(seed):
        r = np.random.default_rng(seed)
        while not done.is_set():
            b = int(r.integers(0, n_batches))
            n = col.count(tenant=f"w{b}", principal=ADMIN)
            hits = col.search(
                vecs[b * batch : b * batch + 1], k=batch, tenant=f"w{b}", principal=ADMIN, ef=4096
            ).counts[0]
            if n not in (0, batch) or hits not in (0, batch):
                torn.append(f"batch {b}: count {n}, hits {hits}")

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not torn, torn[:5]
    assert all(col.count(tenant=f"w{b}", principal=ADMIN) == batch for b in range(n_batches))
    db.close()
