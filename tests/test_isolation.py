"""Tenant isolation: seeded random sequences of writes and searches, each search checked against the oracle.

Runs in both SDK modes (embedded, and remote through an in-process server on port 0): no tenant ever
sees a vector it has no access to, and every result is the exact filtered top-k.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import AlreadyExists, FailedPrecondition, NotFound, PermissionDenied
from tests.oracle import ModelCollection, assert_matches_oracle

TENANTS = ["acme", "beta", "team:ops", "deb:google-cloud-cli/compute", "zeta", "ünïcode", "t7", "t8"]
ID_POOL = 240


def _pick(rng: np.random.Generator, pool: list[int], most: int) -> np.ndarray:
    n = int(rng.integers(1, min(most, len(pool)) + 1))
    return np.array(rng.choice(pool, size=n, replace=False), np.int64)


def run_random_sequence(
    col, model: ModelCollection, rng: np.random.Generator, steps: int, *, build_every: int = 0
) -> None:
    """Random writes and searches; with ``build_every``, the Curator index is (re)built every that many steps
    and searches are checked for leaks, true scores and order rather than exactness."""
    dim = model.dim
    exact = True
    for step in range(steps):
        if build_every and step and step % build_every == 0:
            col.build_index()
            exact = False
        op = rng.choice(["upsert", "upsert", "grant", "revoke", "delete", "search", "search", "count", "bad"])
        tenant = str(rng.choice(TENANTS))
        mine = [i for i, o in model.owner.items() if o == tenant]
        free = [i for i in range(ID_POOL) if i not in model.owner]
        existing = list(model.owner)
        ctx = f"step {step}: {op} as {tenant}"
        if op == "upsert" and (free or mine):
            ids = _pick(rng, free + mine, 25)
            vecs = rng.standard_normal((ids.size, dim)).astype(np.float32)
            col.upsert(ids, vecs, tenant=tenant)
            model.upsert(ids, vecs, tenant)
        elif op == "grant" and existing:
            ids = _pick(rng, existing, 30)
            col.grant(ids, tenant=tenant)
            model.grant(ids, tenant)
        elif op == "revoke":
            shared = [i for i in existing if model.owner[i] != tenant]
            if shared:
                ids = _pick(rng, shared, 30)
                col.revoke(ids, tenant=tenant)
                model.revoke(ids, tenant)
        elif op == "delete" and mine:
            ids = _pick(rng, mine, 10)
            col.delete(ids, tenant=tenant)
            model.delete(ids)
        elif op == "count":
            assert col.count(tenant=tenant) == len(model.visible(tenant)), ctx
        elif op == "bad":
            _bad_write_changes_nothing(col, model, rng, tenant)
        elif op == "search":
            k = int(rng.integers(1, 13))
            queries = rng.standard_normal((int(rng.integers(1, 4)), dim)).astype(np.float32)
            res = col.search(queries, k=k, tenant=tenant)
            assert res.ids.shape == (queries.shape[0], k) and res.ids.dtype == np.int64, ctx
            assert res.scores.dtype == np.float32, ctx
            for q, ids, scores in zip(queries, res.ids, res.scores):
                assert_matches_oracle(model, q, k, tenant, ids, scores, exact=exact)


def _bad_write_changes_nothing(col, model: ModelCollection, rng: np.random.Generator, tenant: str) -> None:
    """A refused batch (an id shared with the writer, an invisible id, revoking the owner) leaves every tenant's
    view as it was."""
    foreign = [i for i, o in model.owner.items() if o != tenant and tenant not in model.granted[i]]
    mine = [i for i, o in model.owner.items() if o == tenant]
    before = {t: col.count(tenant=t) for t in TENANTS}
    if foreign:  # ids are per owner: another tenant's id is not this tenant's to delete (nor to learn of)
        with pytest.raises(NotFound):
            col.delete(np.array([foreign[0]], np.int64), tenant=tenant)
    shared_with_me = [i for i, o in model.owner.items() if o != tenant and tenant in model.granted[i]]
    if shared_with_me:
        with pytest.raises(AlreadyExists):  # ids stay unique among what one tenant sees
            col.upsert(
                np.array(shared_with_me[:1]), rng.standard_normal((1, model.dim)).astype(np.float32), tenant=tenant
            )
        with pytest.raises(PermissionDenied):
            col.delete(np.array(shared_with_me[:1] + mine[:1], np.int64), tenant=tenant)
    if mine:
        with pytest.raises(FailedPrecondition):
            col.revoke(np.array(mine[:2], np.int64), tenant=tenant)
    with pytest.raises(NotFound):
        col.grant(np.array([ID_POOL + 1000], np.int64), tenant=tenant)
    assert {t: col.count(tenant=t) for t in TENANTS} == before


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_sequences_match_the_oracle(any_client, metric, seed):
    rng = np.random.default_rng(seed)
    print(f"seed={seed} metric={metric}")
    col = any_client.create_collection(f"iso_{metric}_{seed}", dim=7, metric=metric)
    model = ModelCollection(7, metric)
    run_random_sequence(col, model, rng, steps=150)
    for tenant in [*TENANTS, "never-written"]:
        q = rng.standard_normal((1, 7)).astype(np.float32)
        res = col.search(q, k=ID_POOL, tenant=tenant)
        assert_matches_oracle(model, q[0], ID_POOL, tenant, res.ids[0], res.scores[0])


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_no_leaks_with_the_curator_index_active(any_client, metric):
    """The same sequences with the index built and rebuilt midway: never a vector the tenant cannot see."""
    rng = np.random.default_rng(7)
    col = any_client.create_collection(f"idx_{metric}", dim=7, metric=metric)
    model = ModelCollection(7, metric)
    run_random_sequence(col, model, rng, steps=300, build_every=60)
    for tenant in [*TENANTS, "never-written"]:
        q = rng.standard_normal((1, 7)).astype(np.float32)
        res = col.search(q, k=ID_POOL, tenant=tenant, ef=10_000)
        assert_matches_oracle(model, q[0], ID_POOL, tenant, res.ids[0], res.scores[0], exact=False)


def test_a_tenant_that_sees_nothing_gets_padding_not_an_error(any_client):
    col = any_client.create_collection("pad", dim=3, metric="l2")
    col.upsert(np.array([1, 2]), np.eye(3, dtype=np.float32)[:2], tenant="acme")
    res = col.search(np.ones((2, 3), np.float32), k=4, tenant="nobody")
    assert (res.ids == -1).all() and np.isinf(res.scores).all() and (res.scores > 0).all()
    res = col.search(np.ones((1, 3), np.float32), k=4, tenant="acme")
    assert res.ids[0, 2:].tolist() == [-1, -1] and res.counts.tolist() == [2]
    assert col.count(tenant="nobody") == 0


def test_a_shared_vector_is_stored_once(any_client):
    col = any_client.create_collection("once", dim=4, metric="ip")
    col.upsert(np.arange(10), np.ones((10, 4), np.float32), tenant="acme")
    one = col.stats()["vectors"]
    for t in ("b", "c", "d"):
        col.grant(np.arange(10), tenant=t)
    stats = col.stats()
    assert stats["vectors"] == one == 10
    assert all(col.count(tenant=t) == 10 for t in ("acme", "b", "c", "d"))
