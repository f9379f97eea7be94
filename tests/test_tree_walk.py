"""The Curator search kernel's scan-code and row scoring (``engine.kernels.tree_numba``) against a numpy reference.

``_query_codes`` + ``_scan_codes`` must rank entries like the plain float formula of the scan codes
(``engine.index.scancodes``): ``mul * <w, c> + add * sum(w) [- sub]``, with ``c`` the 8-bit code or the two
nibbles of a 4-bit byte. Both the integer path (byte codes of ``FAST_WIDTH`` bytes) and the float path (other
widths, float32 codes) are checked, with tombstones in the entry list. The rows' own scores (``_scan_full``: the exact
scan of small tenants, and the rescoring of candidates) must equal the float32 surrogate for float32 rows
and the surrogate of the decoded vector for LVQ rows (``l2``: with the originals' stored squared norms).
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.kernels import tree_numba as tk
from engine.quant import lvq


def _decoded(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes as the vectors they stand for: 8-bit as they are, 4-bit as ``[low nibbles, high nibbles]``."""
    c = codes.astype(np.float64)
    if bits == 8:
        return c
    return np.concatenate([c.astype(np.int64) & 15, c.astype(np.int64) >> 4], axis=1).astype(np.float64)


def _reference(q, cd, sc, bits, kind):
    """Scores of every code slot in float64, straight from the formulas."""
    proj, pscale, poff, scale, _ = cd
    qn = (proj.astype(np.float64) @ q.astype(np.float64)) * pscale - poff if proj.shape[0] else q[: poff.size] - poff
    w = (qn + poff) * scale if kind == tk.IP else 2.0 * qn * scale
    codes, mul, add, sub = sc
    s = _decoded(codes, bits)[:, : w.size] @ w
    if mul.size:
        s = s * mul + add * w.sum()
    if kind != tk.IP:
        s = s - sub
    return s


def _case(rng, bits, width, kind, affine, dtype=np.uint8, n=600, d=48):
    p = 2 * width if bits == 4 else width
    proj = rng.integers(-127, 128, (p, d)).astype(np.int8)
    pscale = rng.uniform(0.5, 1.5, p).astype(np.float32) / 127
    poff = rng.normal(0, 0.1, p).astype(np.float32)
    scale = rng.uniform(0.05, 0.2, p).astype(np.float32)
    cd = (proj, pscale, poff, scale, bits)
    if dtype == np.uint8:
        codes = rng.integers(0, 256, (n, width)).astype(np.uint8)
    else:
        codes = rng.normal(0, 1, (n, width)).astype(np.float32)
    empty = np.zeros(0, np.float32)
    mul = rng.uniform(0.5, 2.0, n).astype(np.float32) if affine else empty
    add = rng.normal(0, 1, n).astype(np.float32) if affine else empty
    sub = rng.uniform(0, 5, n).astype(np.float32) if kind == tk.L2 else empty
    return cd, (codes, mul, add, sub), rng.normal(0, 1, d).astype(np.float32)


def _scan(q, cd, sc, bits, kind, lst, cap):
    """Run ``_query_codes`` then ``_scan_codes`` over ``lst`` into a top-``cap`` heap: (scores, slots) best first."""
    p = cd[2].shape[0]
    h = (p + 1) // 2
    qn, qw = np.empty(p, np.float32), np.empty(p, np.float32)
    qa, qb = np.empty(h, np.float32), np.empty(h, np.float32)
    qi, qq = np.empty(2 * h, np.int16), np.empty(q.size, np.int16)
    sigma, iscale = tk._query_codes(q, cd, kind, qn, qa, qb, qw, qi, qq)
    hs, hr = np.empty(cap, np.float32), np.empty(cap, np.int64)
    qc = (qa, qb, qw, qi, iscale, sigma)
    size, since, entered = tk._scan_codes(qc, sc, bits, lst, 0, lst.size, kind, hs, hr, 0, cap)
    order = np.lexsort((hr[:size], -hs[:size]))
    return hs[:size][order], hr[:size][order], since, entered


CASES = [
    # bits, width, kind, affine, code dtype: 128-byte byte codes take the integer path, the others the float one
    (4, tk.FAST_WIDTH, tk.IP, False, np.uint8),  # float32 collections: 4-bit PCA codes
    (4, tk.FAST_WIDTH, tk.L2, False, np.uint8),
    (8, tk.FAST_WIDTH, tk.IP, True, np.uint8),  # compressed collections: LVQ-8 primary codes (scale, bias)
    (8, tk.FAST_WIDTH, tk.L2, True, np.uint8),
    (4, 40, tk.IP, False, np.uint8),
    (8, 40, tk.L2, True, np.uint8),
    (8, 64, tk.IP, False, np.float32),
]


@pytest.mark.parametrize(("bits", "width", "kind", "affine", "dtype"), CASES)
def test_scan_codes_matches_reference(bits, width, kind, affine, dtype):
    rng = np.random.default_rng(1000 * bits + width + 10 * kind)
    cd, sc, q = _case(rng, bits, width, kind, affine, dtype)
    n = sc[0].shape[0]
    ref = _reference(q, cd, sc, bits, kind)
    # entries in a shuffled order with some tombstones, which are skipped
    lst = rng.permutation(n).astype(np.int64)
    dead = rng.random(n) < 0.1
    dead_slots = lst[dead].copy()
    lst[dead] = tk.DEAD
    cap = 50
    scores, slots, since, entered = _scan(q, cd, sc, bits, kind, lst, cap)
    live = np.sort(lst[~dead])
    top = live[np.argsort(-ref[live], kind="stable")[:cap]]
    assert entered and scores.size == cap
    assert not np.isin(slots, dead_slots).any()
    # same scores up to the int16 weights' rounding (2^-16 of the largest weight per term) or float rounding
    tol = 1e-4 * (np.abs(ref).max() + 1.0)
    np.testing.assert_allclose(scores, ref[slots], rtol=0, atol=tol)
    # same top set except near-ties at its boundary
    kth = ref[top[-1]]
    differ = np.setxor1d(slots, top)
    assert np.all(np.abs(ref[differ] - kth) <= 2 * tol)
    # ``since`` counts the live entries after the last one that entered the heap
    pos = {int(e): i for i, e in enumerate(lst)}
    last = max(pos[int(s)] for s in slots)
    assert since == int(np.count_nonzero(lst[last + 1 :] != tk.DEAD))


def test_int16_weights_do_not_overflow():
    """The largest weight times the largest code over the whole width still fits the int32 accumulator."""
    rng = np.random.default_rng(7)
    cd, (codes, mul, add, sub), q = _case(rng, 8, tk.FAST_WIDTH, tk.IP, False, n=4, d=1000)
    codes[:] = 255
    proj, pscale, poff, scale, bits = cd
    scale[:] = 1.0  # all weights of one sign and similar size: sum |qi| c is near its bound
    proj[:] = 127
    q = np.abs(q)  # and the projection's own integer sums (int16 query x int8 rows) at their largest too
    scores, slots, _, _ = _scan(q, cd, (codes, mul, add, sub), bits, tk.IP, np.arange(4, dtype=np.int64), 4)
    ref = _reference(q, cd, (codes, mul, add, sub), bits, tk.IP)
    np.testing.assert_allclose(scores, ref[slots], rtol=1e-4)


ROW_ENCODINGS = {"float32": (8, 0), "lvq8": (8, 0), "lvq4": (4, 0), "lvq4x8": (4, 8)}
ROWS_KIND = {"float32": tk.ROWS_F32, "lvq8": tk.ROWS_LVQ8, "lvq4": tk.ROWS_LVQ4, "lvq4x8": tk.ROWS_LVQ4X8}


def _rows(rng, encoding: str, kind: int, n: int = 300, d: int = 37):
    """``rs`` as ``engine.index.rows`` hands it to the kernel, and the vectors its scores stand for."""
    x = rng.normal(0, 1, (n, d)).astype(np.float32)
    e_f, e_u = np.zeros(0, np.float32), np.zeros((0, 0), np.uint8)
    sqn = np.einsum("ij,ij->i", x, x).astype(np.float32) if kind == tk.L2 else e_f
    if encoding == "float32":
        return (x, e_u, e_u, e_f, e_f, e_f, e_f, 8), x, sqn
    bits, residual_bits = ROW_ENCODINGS[encoding]
    mean = lvq.fit(x)
    c = lvq.encode(x, mean, bits=bits, residual_bits=residual_bits)
    res = c.residual if c.residual is not None else e_u
    return (e_f[:0].reshape(0, 0), c.codes, res, c.scale, c.bias, sqn, mean, bits), lvq.decode(c, mean), sqn


@pytest.mark.parametrize("encoding", list(ROW_ENCODINGS))
@pytest.mark.parametrize("kind", [tk.IP, tk.L2])
def test_row_scores_match_reference(encoding, kind):
    """Exact scan and rescoring score every row as the reference does, keep the top, skip tombstones."""
    rng = np.random.default_rng(len(encoding) + 10 * kind)
    rs, x, sqn = _rows(rng, encoding, kind)
    q = rng.normal(0, 1, x.shape[1]).astype(np.float32)
    q64, x64 = q.astype(np.float64), x.astype(np.float64)
    if kind == tk.IP:
        ref = x64 @ q64
    elif encoding == "float32":
        ref = -((x64 - q64) ** 2).sum(axis=1)
    else:  # 2 <q, x~> - |x|^2 - |q|^2 with the original's |x|^2
        ref = 2 * (x64 @ q64) - sqn - q64 @ q64
    n = x.shape[0]
    slot_row = rng.permutation(n).astype(np.int32)  # slot s holds row slot_row[s]
    row_slot = np.argsort(slot_row)
    lst = (rng.integers(0, 50, n).astype(np.int64) << tk.ROW_BITS) | row_slot[rng.permutation(n)]
    dead = rng.random(n) < 0.1
    lst[dead] = (lst[dead] >> tk.ROW_BITS << tk.ROW_BITS) | tk.DEAD
    h1 = rs[1].shape[1] if rs[7] == 4 else 0
    qa1, qb1 = np.empty(h1, np.float32), np.empty(h1, np.float32)
    qmu, qsum, qsq = tk._row_query(q, rs[1], rs[6], rs[7], qa1, qb1)
    k = 10
    hs, hr = np.empty(k, np.float32), np.empty(k, np.int64)
    rows_kind = ROWS_KIND[encoding]
    tail, nt = lst[:7].copy(), 5  # the first entries as a tail (two unused slots past nt), the rest as main
    main = lst[7:]
    size = tk._scan_full(q, qa1, qb1, qmu, qsum, qsq, rs, slot_row, tail, nt, main, main.size, kind, rows_kind, hs,
                         hr, 0, k)  # fmt: skip
    dead[5:7] = True  # entries 5 and 6 sit past the tail's end: never scanned
    live_rows = np.sort(slot_row[lst[~dead] & tk.ROW_MASK])
    want = live_rows[np.argsort(-ref[live_rows], kind="stable")[:k]]
    tol = 1e-4 * (np.abs(ref).max() + 1.0)
    assert size == k
    np.testing.assert_allclose(hs[:size], ref[hr[:size]], rtol=0, atol=tol)
    assert set(hr[:size].tolist()) == set(want.tolist())
    # the rescoring reads the candidates' code slots as a list of entries: every live slot a candidate, same top k
    ks, kr = np.empty(k, np.float32), np.empty(k, np.int64)
    cand = (lst[~dead] & tk.ROW_MASK).astype(np.int64)
    m = tk._scan_full(q, qa1, qb1, qmu, qsum, qsq, rs, slot_row, cand, cand.size, cand, 0, kind, rows_kind, ks, kr,
                      0, k)  # fmt: skip
    assert m == k and set(kr[:m].tolist()) == set(want.tolist())
    np.testing.assert_allclose(ks[:m], ref[kr[:m]], rtol=0, atol=tol)


# ---------------------------------------------------------------------------------------------- leaf order
def _leaf_case(rng, n_leaves: int, pn: int):
    """Leaf centroids (as the index keeps them: int8 rows in leaf-rank order), node biases, and leaf bounds with
    some leaves empty."""
    from engine.index.scancodes import int8_rows

    cent = rng.normal(size=(n_leaves, pn)).astype(np.float32)
    lcent, lscale = int8_rows(cent)
    lnode = rng.permutation(2 * n_leaves)[:n_leaves].astype(np.int32)  # leaves are some of the nodes
    pbias = rng.normal(size=2 * n_leaves).astype(np.float32) + 5
    sizes = rng.integers(0, 4, n_leaves)
    sizes[rng.random(n_leaves) < 0.3] = 0
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    return cent, (lcent, lscale, lnode), pbias, bounds


@pytest.mark.parametrize("pn", [16, 128, 600])
def test_leaf_priorities_are_the_node_priorities_of_non_empty_leaves(pn):
    """``pbias[node] - 2 q . c`` of every leaf holding entries, in leaf-rank order, within the int8/int16 rounding
    (also past 516 dims, where the query's integer weights shrink to keep the int32 sum exact)."""
    rng = np.random.default_rng(11)
    cent, leaves, pbias, bounds = _leaf_case(rng, 300, pn)
    q = rng.normal(size=pn).astype(np.float32)
    pri = np.empty(300, np.float32)
    rk = np.empty(300, np.int64)
    m, lo, hi = tk.leaf_priorities(bounds, pbias, leaves, q, np.empty(pn, np.int16), pri, rk)
    want_rank = np.flatnonzero(np.diff(bounds) > 0)
    np.testing.assert_array_equal(rk[:m], want_rank)
    want = pbias[leaves[2][want_rank]] - 2 * cent[want_rank] @ q
    dot_scale = 2 * np.abs(cent).max(axis=1)[want_rank] * np.abs(q).sum()
    assert np.all(np.abs(pri[:m] - want) <= 0.01 * dot_scale)
    assert (lo, hi) == (pri[:m].min(), pri[:m].max())


@pytest.mark.parametrize("m", [1, 3, 50, 6000])
@pytest.mark.parametrize("values", ["spread", "ties", "constant", "outlier"])
def test_priority_buckets_sorted_one_by_one_give_ascending_order(m, values):
    """Buckets hold disjoint, ordered priority ranges, so sorting each in turn (as the scan reaches it) yields
    every item once, in ascending order: ties, a single value (zero width), an outlier that crowds the rest into
    one bucket, and more items than ``4 * MAX_BUCKETS`` included."""
    rng = np.random.default_rng(m)
    pri = {
        "spread": rng.normal(size=m),
        "ties": rng.integers(0, 5, m).astype(np.float64),
        "constant": np.full(m, 2.5),
        "outlier": np.concatenate([[1e6], rng.normal(size=m - 1)]),
    }[values].astype(np.float32)
    perm = np.full(m, -7, np.int64)
    starts = np.full(m + 2, -7, np.int64)
    nb = tk.bucket_by_priority(pri, m, pri.min(), pri.max(), perm, starts)
    assert 1 <= nb <= max(1, min(m // 4, tk.MAX_BUCKETS)) and starts[0] == 0 and starts[nb] == m
    for b in range(nb):
        bucket = pri[perm[starts[b] : starts[b + 1]]]
        nxt = pri[perm[starts[b + 1] : starts[nb]]]
        assert bucket.size == 0 or nxt.size == 0 or bucket.max() <= nxt.min()
        tk._sort_bucket(pri, perm, starts[b], starts[b + 1])
    np.testing.assert_array_equal(np.sort(perm), np.arange(m))
    np.testing.assert_array_equal(pri[perm], np.sort(pri))
