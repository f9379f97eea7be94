"""The compact maps behind the vector table: id -> slot and the (row, tenant) grants, against dict/set models."""

from __future__ import annotations

import numpy as np
import pytest

from engine.index import grants as grants_mod
from engine.index import idmap as idmap_mod
from engine.index.grants import GrantSet
from engine.index.idmap import IdMap


@pytest.fixture(autouse=True)
def tiny_tails(monkeypatch):
    """Small tails, so merges and compactions happen many times in a short test."""
    monkeypatch.setattr(grants_mod, "TAIL_MAX", 7)
    monkeypatch.setattr(idmap_mod, "TAIL_MAX", 7)


@pytest.mark.parametrize("seed", range(4))
def test_id_map_matches_a_dict(seed):
    rng = np.random.default_rng(seed)
    m, model = IdMap(), {}
    for _ in range(300):
        if rng.random() < 0.6 or not model:
            fresh = np.setdiff1d(rng.integers(-(2**62), 2**62, 5), list(model))
            slots = rng.integers(0, 10**6, fresh.size)
            m.put_many(fresh, slots)
            model.update(zip(fresh.tolist(), slots.tolist()))
        else:
            gone = rng.choice(list(model), size=min(3, len(model)), replace=False)
            m.remove_many(np.array(gone, np.int64))
            for g in gone:
                del model[int(g)]
        probe = np.array(list(model)[:20] + rng.integers(-100, 100, 5).tolist(), np.int64)
        assert m.get_many(probe).tolist() == [model.get(int(i), -1) for i in probe]
        assert len(m) == len(model)
    m.compact()
    assert len(m) == len(model) and all(m.get(i) == s for i, s in model.items())


@pytest.mark.parametrize("seed", range(4))
def test_grant_set_matches_a_set_of_pairs(seed):
    rng = np.random.default_rng(seed)
    g, model = GrantSet(), set()
    for _ in range(300):
        op, tenant = rng.random(), int(rng.integers(0, 6))
        rows = np.unique(rng.integers(0, 40, 6))
        if op < 0.5:
            new = np.array([r for r in rows.tolist() if (r, tenant) not in model], np.int64)
            g.add(new, tenant)
            model |= {(r, tenant) for r in new.tolist()}
        elif op < 0.8:
            g.remove(rows, tenant)
            model -= {(r, tenant) for r in rows.tolist()}
        else:
            g.remove_rows(rows[:2])
            model = {(r, t) for r, t in model if r not in rows[:2].tolist()}
        assert g.has(np.arange(40), tenant).tolist() == [(r, tenant) in model for r in range(40)]
        for r in range(0, 40, 7):
            assert sorted(g.tenants_of(r)) == sorted(t for rr, t in model if rr == r)
        assert len(g) == len(model)
    rows, tenants = g.pairs()
    assert set(zip(rows.tolist(), tenants.tolist())) == model
    assert g.tenants() == {t for _, t in model}
