"""LVQ: encode/decode error bounds, the numba code kernels against the numpy oracle, recall floors on real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.errors import InvalidArgument
from engine.kernels import lvq as K
from engine.kernels import reference_lvq as R
from engine.quant import codec as C
from engine.quant import lvq
from engine.types import LVQ

DIMS = (1, 3, 17, 383)
ENCODINGS = {"lvq8": (8, 0), "lvq4": (4, 0), "lvq4x8": (4, 8)}
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def rng(request):
    seed = 1234 + sum(map(ord, request.node.name)) % 1000
    print(f"seed {seed}")
    return np.random.default_rng(seed)


def _data(rng, n, d):
    """Rows with varied scales, an all-zero row, a constant row and a duplicate."""
    x = (rng.standard_normal((n, d)) * rng.uniform(0.1, 3.0, (n, 1)) + rng.standard_normal(d)).astype(np.float32)
    x[0] = 0
    x[1] = 0.25
    x[2] = x[3]
    return x


# ---------------------------------------------------------------------------------------------
# encode / decode
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("enc", ENCODINGS)
def test_roundtrip_error_bounds(rng, d, enc):
    bits, rb = ENCODINGS[enc]
    x = _data(rng, 300, d)
    mu = lvq.fit(x)
    codes = lvq.encode(x, mu, bits=bits, residual_bits=rb)
    step = codes.scale.astype(np.float64)[:, None]
    err = np.abs(lvq.decode(codes, mu).astype(np.float64) - x)
    slack = 1e-5 * (1 + np.abs(x))  # float32 rounding of the stored constants and of the output
    if rb:
        assert np.all(err <= step / 510 + slack)
        err1 = np.abs(lvq.decode(codes, mu, levels=1).astype(np.float64) - x)
        assert np.all(err1 <= step / 2 + slack)
    else:
        assert np.all(err <= step / 2 + slack)
    z = x.astype(np.float64) - mu
    assert np.allclose(codes.bias, z.min(axis=1), atol=1e-6)
    spread = (z.max(axis=1) - z.min(axis=1)) / (2**bits - 1)
    assert np.allclose(codes.scale, spread, rtol=1e-6, atol=1e-7 * (1 + np.abs(z).max()))
    # a vector with equal centred coordinates has step 0 and decodes exactly
    zero = np.zeros(d, np.float32)
    flat = lvq.encode(np.full((1, d), 0.5, np.float32), zero, bits=bits, residual_bits=rb)
    assert flat.scale[0] == 0 and np.all(lvq.decode(flat, zero) == 0.5)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("enc", ENCODINGS)
def test_decode_matches_oracle_and_layout(rng, d, enc):
    bits, rb = ENCODINGS[enc]
    x = _data(rng, 50, d)
    mu = lvq.fit(x)
    codes = lvq.encode(x, mu, bits=bits, residual_bits=rb)
    ref = R.decode(codes.codes, codes.scale, codes.bias, mu, bits=bits, dim=d, residual=codes.residual)
    assert np.allclose(lvq.decode(codes, mu), ref, atol=1e-5)
    width = d if bits == 8 else (d + 1) // 2
    assert codes.codes.shape == (50, width) and codes.codes.dtype == np.uint8
    assert codes.nbytes == 50 * lvq.bytes_per_vector(d, bits, rb)
    assert codes.encoding == enc and len(codes) == 50
    if bits == 4:
        assert codes.codes.max() <= 255 and lvq.unpack4(codes.codes, d).max() <= 15
        if d % 2:  # the unused high nibble of the last byte stays 0
            assert np.all(codes.codes[:, -1] >> 4 == 0)


def test_pack4_split_half_order():
    c = np.arange(5, dtype=np.uint8)[None, :]  # codes 0..4, h = 3
    packed = lvq.pack4(c)
    assert packed.tolist() == [[0 | 3 << 4, 1 | 4 << 4, 2]]
    assert lvq.unpack4(packed, 5).tolist() == c.tolist()


def test_take_concat_and_levels(rng):
    x = _data(rng, 40, 17)
    mu = lvq.fit(x)
    codes = lvq.encode(x, mu, bits=4, residual_bits=8)
    both = lvq.concat([codes.take(np.arange(20)), codes.take(np.arange(20, 40))])
    assert np.array_equal(lvq.decode(both, mu), lvq.decode(codes, mu))
    assert codes.primary_level().residual is None and codes.primary_level().encoding == "lvq4"
    with pytest.raises(InvalidArgument):
        lvq.concat([codes, lvq.encode(x, mu, bits=8)])


def test_encode_rejects_bad_input(rng):
    x = _data(rng, 10, 8)
    mu = lvq.fit(x)
    with pytest.raises(InvalidArgument):
        lvq.encode(x, mu, bits=3)
    with pytest.raises(InvalidArgument):
        lvq.encode(x, mu, bits=8, residual_bits=8)
    with pytest.raises(InvalidArgument):
        lvq.encode(x[:, :7], mu)
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(InvalidArgument):
        lvq.encode(bad, mu)


def test_encode_accepts_non_contiguous_input(rng):
    big = _data(rng, 60, 34)
    x = big[::2, ::2]  # strided view
    mu = lvq.fit(x)
    a = lvq.encode(x, mu)
    b = lvq.encode(np.ascontiguousarray(x), mu)
    assert np.array_equal(a.codes, b.codes) and np.array_equal(a.scale, b.scale)
    assert np.array_equal(lvq.encode(np.asfortranarray(x), mu).codes, a.codes)


# ---------------------------------------------------------------------------------------------
# kernels against the oracle
# ---------------------------------------------------------------------------------------------
def _assert_topk(got_s, got_r, exact, ref_s, ref_r, tol):
    """``got`` is a valid top-k: padding where the oracle pads, distinct rows, each score the row's exact
    score, and the k-th best scores equal to the oracle's (rows may differ only among near-ties)."""
    assert got_s.dtype == np.float32 and got_r.dtype == np.int64
    assert np.array_equal(got_r < 0, ref_r < 0)
    assert np.all(np.isneginf(got_s[got_r < 0]))
    for i in range(got_r.shape[0]):
        live = got_r[i][got_r[i] >= 0]
        assert len(set(live.tolist())) == live.size
        assert np.allclose(got_s[i, : live.size], [exact[i][r] for r in live], rtol=tol, atol=tol)
        assert np.allclose(got_s[i, : live.size], ref_s[i, : live.size], rtol=tol, atol=tol)
        assert np.all(np.diff(got_s[i, : live.size]) <= tol)


def _exact(queries, decoded, metric, sqnorms):
    s = R.surrogate(np.asarray(queries, np.float64), decoded, metric, sqnorms)
    return [dict(enumerate(row)) for row in s]


CASES = [
    ("lvq8", False),
    ("lvq4", False),
    ("lvq4x8", False),  # first level only: the scan
    ("lvq4x8", True),  # both levels: the rerank
]
METRICS = ("ip", "cosine", "l2", "l2-norms")


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}{'-full' if c[1] else ''}")
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_lvq_kernels_match_oracle(rng, d, case, metric, parallel):
    enc, full = case
    bits, rb = ENCODINGS[enc]
    n, m, k = 150, 5, 12
    x = _data(rng, n, d)
    q = rng.standard_normal((m, d)).astype(np.float32)
    q[1] = 0  # a zero query
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    mu = lvq.fit(x)
    codes = lvq.encode(x, mu, bits=bits, residual_bits=rb)
    residual = codes.residual if full else None
    dec = R.decode(codes.codes, codes.scale, codes.bias, mu, bits=bits, dim=d, residual=residual)
    kmetric = "l2" if metric == "l2-norms" else metric
    sq = (dec**2).sum(axis=1).astype(np.float32) if metric == "l2-norms" else None
    exact = _exact(q, dec, kmetric, None if sq is None else sq.astype(np.float64))
    tol = 2e-4 * max(1.0, float(np.abs(x).max()) ** 2 * d / 10)
    args = dict(bits=bits, dim=d, residual=residual, sqnorms=sq, parallel=parallel)

    rows = np.sort(rng.choice(n, size=100, replace=False)).astype(np.int64)
    got = K.lvq_topk(q, mu, codes.codes, codes.scale, codes.bias, rows, k, kmetric, **args)
    ref = R.topk(q, dec, rows, k, kmetric, sq)
    _assert_topk(*got, exact, *ref, tol)

    cand = np.stack([rng.choice(n, size=30, replace=False) for _ in range(m)]).astype(np.int64)
    cand[2, 5:] = -1  # a short candidate list
    cand[3, :] = -1  # none at all
    got = K.lvq_rerank(q, mu, codes.codes, codes.scale, codes.bias, cand, k, kmetric, **args)
    ref = R.rerank(q, dec, cand, k, kmetric, sq)
    _assert_topk(*got, exact, *ref, tol)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("metric", METRICS)
def test_dense_kernels_match_oracle(rng, d, metric):
    n, m, k = 120, 4, 7
    x = _data(rng, n, d)
    q = rng.standard_normal((m, d)).astype(np.float32)
    kmetric = "l2" if metric == "l2-norms" else metric
    sq = (x.astype(np.float64) ** 2).sum(axis=1).astype(np.float32) if metric == "l2-norms" else None
    exact = _exact(q, x.astype(np.float64), kmetric, None if sq is None else sq.astype(np.float64))
    tol = 2e-4 * max(1.0, float(np.abs(x).max()) ** 2 * d / 10)
    rows = np.arange(0, n, 2, dtype=np.int64)
    for parallel in (False, True):
        got = K.dense_topk(q, x, rows, k, kmetric, sqnorms=sq, parallel=parallel)
        _assert_topk(*got, exact, *R.topk(q, x.astype(np.float64), rows, k, kmetric, sq), tol)
        cand = np.stack([rng.choice(n, size=20, replace=False) for _ in range(m)]).astype(np.int64)
        cand[0, 3:] = -1
        got = K.dense_rerank(q, x, cand, k, kmetric, sqnorms=sq, parallel=parallel)
        _assert_topk(*got, exact, *R.rerank(q, x.astype(np.float64), cand, k, kmetric, sq), tol)


def test_kernels_pad_and_accept_non_contiguous_input(rng):
    d = 17
    x = _data(rng, 40, 2 * d)[:, ::2]  # strided
    mu = lvq.fit(x)
    codes = lvq.encode(x, mu, bits=4)
    q = np.asfortranarray(rng.standard_normal((3, d)).astype(np.float32))
    rows = np.arange(0, 10, dtype=np.int32)  # fewer rows than k, another int dtype
    s, r = K.lvq_topk(q, mu, codes.codes, codes.scale, codes.bias, rows, 15, "ip", bits=4, dim=d)
    assert s.shape == (3, 15) and np.all(r[:, 10:] == -1) and np.all(np.isneginf(s[:, 10:]))
    assert sorted(r[0, :10].tolist()) == list(range(10))
    # a non-contiguous code array gives the same answer
    wide = np.zeros((40, codes.codes.shape[1] * 2), np.uint8)
    wide[:, ::2] = codes.codes
    s2, r2 = K.lvq_topk(q, mu, wide[:, ::2], codes.scale, codes.bias, rows, 15, "ip", bits=4, dim=d)
    assert np.array_equal(r, r2) and np.allclose(s, s2)
    # no rows at all: all padding
    s3, r3 = K.lvq_topk(q[0], mu, codes.codes, codes.scale, codes.bias, np.zeros(0, np.int64), 4, "l2", bits=4, dim=d)
    assert s3.shape == (1, 4) and np.all(r3 == -1)


def test_kernels_reject_bad_input(rng):
    d = 8
    x = _data(rng, 20, d)
    mu = lvq.fit(x)
    c = lvq.encode(x, mu)
    q = rng.standard_normal((2, d)).astype(np.float32)
    rows = np.arange(20)
    call = K.lvq_topk
    with pytest.raises(ValueError, match="k must be"):
        call(q, mu, c.codes, c.scale, c.bias, rows, 0, "ip", bits=8, dim=d)
    with pytest.raises(ValueError, match="rows must lie"):
        call(q, mu, c.codes, c.scale, c.bias, np.array([0, 20]), 3, "ip", bits=8, dim=d)
    with pytest.raises(ValueError, match="queries must be"):
        call(q[:, :5], mu, c.codes, c.scale, c.bias, rows, 3, "ip", bits=8, dim=d)
    with pytest.raises(ValueError, match="metric"):
        call(q, mu, c.codes, c.scale, c.bias, rows, 3, "hamming", bits=8, dim=d)
    with pytest.raises(ValueError, match="codes of dim"):
        call(q, mu, c.codes, c.scale, c.bias, rows, 3, "ip", bits=4, dim=d)
    with pytest.raises(ValueError, match="candidates"):
        K.lvq_rerank(q, mu, c.codes, c.scale, c.bias, np.zeros((3, 4), np.int64), 3, "ip", bits=8, dim=d)


# ---------------------------------------------------------------------------------------------
# codecs of full-dimension LVQ (the LeanVec codecs are in test_leanvec.py)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [None, LVQ(8), LVQ(4), LVQ(4, 8)], ids=str)
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_codec_search_matches_decoded_oracle(rng, config, metric):
    d = 33
    x = _data(rng, 200, d)
    codec = C.build_codec(config, x, metric=metric)
    enc = codec.encode(x)
    assert len(enc) == 200 and enc.nbytes == 200 * codec.bytes_per_vector
    q = rng.standard_normal((4, d)).astype(np.float32)
    prep = codec.prepare_queries(q)
    rows = np.arange(200, dtype=np.int64)
    s, r = codec.search(prep, enc, rows, 10, candidates=40)
    # oracle: decode what the final scores read, score exactly
    xs = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30) if metric == "cosine" else x
    if config is None:
        dec = xs.astype(np.float64)
    else:
        p = enc.primary
        dec = R.decode(p.codes, p.scale, p.bias, codec.primary.mean, bits=p.bits, dim=d, residual=p.residual)
    exact = _exact(prep.full, dec, metric, None)
    for i in range(4):
        assert np.allclose(s[i], [exact[i][j] for j in r[i]], rtol=1e-4, atol=1e-4)
    if config is None or config.residual_bits == 0:
        ref = R.topk(prep.full, dec, rows, 10, metric)
        _assert_topk(s, r, exact, *ref, 1e-4)


def test_codec_take_and_concat(rng):
    x = _data(rng, 60, 12)
    codec = C.build_codec(LVQ(4, 8), x, metric="l2")
    enc = codec.encode(x)
    both = C.concat([codec.encode(x[:25]), codec.encode(x[25:])])
    assert np.array_equal(both.primary.codes, enc.primary.codes)
    assert np.array_equal(enc.take([3, 5]).primary.residual, enc.primary.residual[[3, 5]])
    # slot-aligned storage: grow, then write rows in place
    store = codec.encode(x[:10]).resized(100)
    assert len(store) == 100 and store.nbytes == 100 * codec.bytes_per_vector
    store.write(np.array([50, 99]), codec.encode(x[[7, 8]]))
    assert np.array_equal(store.take([50, 99]).primary.residual, enc.primary.residual[[7, 8]])
    assert np.array_equal(store.take([3]).primary.codes, enc.primary.codes[[3]])
    with pytest.raises(InvalidArgument):
        store.write(np.array([1, 2, 3]), codec.encode(x[:2]))
    with pytest.raises(InvalidArgument):
        codec.encode(x[:, :5])
    with pytest.raises(InvalidArgument):
        C.build_codec("lvq8", x)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# recall floors on the real data set (shared/data), exact ground truth per metric
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real():
    if not (DATA / "base_vectors.f16.npy").exists():
        pytest.skip(f"real data set not found at {DATA}")
    base = np.load(DATA / "base_vectors.f16.npy").astype(np.float32)
    queries = np.load(DATA / "queries_id.f32.npy")[:200]
    return base, queries


def exact_top10(base: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    if metric == "cosine":
        base = base / np.maximum(np.linalg.norm(base, axis=1, keepdims=True), 1e-30)
    s = queries @ base.T
    if metric == "l2":
        s = 2 * s - (base.astype(np.float64) ** 2).sum(axis=1)[None, :]
    return np.argsort(-s, axis=1, kind="stable")[:, :10]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / 10 for f, t in zip(found, truth)]))


#: (config, metric) -> minimum recall@10 (scan, then a 50-candidate rerank where the codec has one)
FLOORS = {
    "float32": 0.999,  # measured 1.000
    "lvq8": 0.98,  # measured 0.994-0.996
    "lvq4": 0.90,  # measured 0.936-0.942 (no rerank)
    "lvq4x8": 0.995,  # measured 1.000
}


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
@pytest.mark.parametrize("name", list(FLOORS))
def test_recall_floors_real_data(real, name, metric):
    base, queries = real
    config = {"float32": None, "lvq8": LVQ(8), "lvq4": LVQ(4), "lvq4x8": LVQ(4, 8)}[name]
    codec = C.build_codec(config, base, metric=metric)
    enc = codec.encode(base)
    _, rows = codec.search(codec.prepare_queries(queries), enc, np.arange(len(base)), 10, candidates=50)
    got = recall(rows, exact_top10(base, queries, metric))
    print(f"{name} {metric} recall@10 {got:.4f}")
    assert got >= FLOORS[name]
