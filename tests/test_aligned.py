"""Arrays the search kernels read row by row start on a cache line (``engine.index.aligned``)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.index.aligned import CACHE_LINE, aligned_copy, aligned_zeros
from engine.index.curator import CuratorIndex
from engine.index.table import VectorTable
from engine.kernels import metrics


@pytest.mark.parametrize(
    ("shape", "dtype"), [((0, 128), np.uint8), ((7, 3), np.float32), (5, np.int64), ((3, 383), np.uint8)]
)
def test_aligned_zeros_is_zeroed_aligned_and_shaped(shape, dtype):
    for _ in range(20):  # allocations land at different offsets; every one must be aligned
        a = aligned_zeros(shape, dtype)
        assert a.size == 0 or a.ctypes.data % CACHE_LINE == 0  # an empty array points nowhere in particular
        assert a.shape == ((shape,) if isinstance(shape, int) else shape) and a.dtype == dtype
        assert a.flags.c_contiguous and a.flags.writeable and not a.any()


def test_aligned_copy_keeps_the_first_rows_and_zeroes_the_rest():
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    grown = aligned_copy(a, 6)
    assert grown.ctypes.data % CACHE_LINE == 0
    np.testing.assert_array_equal(grown[:4], a)
    assert not grown[4:].any()
    np.testing.assert_array_equal(aligned_copy(a, 2), a[:2])


def test_rows_and_scan_codes_stay_aligned_as_a_collection_grows():
    rng = np.random.default_rng(3)
    table = VectorTable(64, capacity=16)
    index = CuratorIndex(table, "ip", code_dim=32, train_size=2_000)
    for start in range(0, 3_000, 500):  # several growths of the table and of the index's code arrays
        vecs = rng.normal(size=(500, 64)).astype(np.float32)
        slots = table.allocate(500)
        table.put(slots, np.arange(start, start + 500, dtype=np.int64), metrics.prepare("ip", vecs), 0)
        index.add(0, slots)
        if start == 1_000:
            index.train(table.store.data[:1_500])
        assert table.store.data.ctypes.data % CACHE_LINE == 0
        if start >= 1_000:  # codes exist once the tree is trained
            assert index._sc[0].shape[0] >= 1_500
            assert index._sc[0].ctypes.data % CACHE_LINE == 0
