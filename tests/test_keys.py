"""The RocksDB key layout: every key reads back as written, and keys sort by collection, owner, then id."""

from __future__ import annotations

import numpy as np

from engine.storage import keys


def test_vector_keys_built_in_bulk_equal_the_single_ones_and_read_back():
    ids = np.array([0, 5, 2**62, 2**63 - 1], np.int64)
    rows = np.arange(8, dtype=np.float32).reshape(4, 2)
    for (key, value), i, row in zip(keys.vector_items(3, 7, ids, rows), ids.tolist(), rows):
        assert key == keys.vector(3, 7, i)
        assert keys.read_vector(key) == (7, i)
        np.testing.assert_array_equal(np.frombuffer(value, "<f4"), row)


def test_grant_keys_read_back():
    key = keys.grant(2, 9, 2**40, 123_456)
    assert keys.read_grant(key) == (9, 2**40, 123_456)


def test_keys_sort_by_collection_then_owner_then_id():
    order = [(1, 0, 5), (1, 0, 6), (1, 1, 0), (2, 0, 0)]
    assert sorted(keys.vector(*k) for k in order) == [keys.vector(*k) for k in order]
    assert keys.vector(1, 2**32 - 1, 2**63 - 1) < keys.collection_prefix(keys.VECTOR, 2)
