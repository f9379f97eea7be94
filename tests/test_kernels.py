"""Every kernel backend x encoding x metric against the numpy reference (``engine.kernels.reference``).

One parametrisation covers the backends (numba, native at each instruction set the CPU has, cuda on a real
device), the encodings (float32, LVQ-8, LVQ-4, LVQ-4x8), the metrics (ip, cosine, l2) and the data (random with
odd dimensions 1, 3, 17, 383, zero vectors, and a slice of the real embeddings). Each case runs the row-list,
block and all-rows selections, few-query and many-query batches (the native scan and tile paths, numba's scan
and BLAS paths), non-contiguous inputs, and ``scores`` as well as ``search``. Backends that cannot run here skip
with the reason.

Results are compared tie-aware, within a tolerance scaled to the magnitudes involved: the returned scores must
be the exact scores of the returned rows, and the i-th returned score must be as good as the reference's i-th.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine import kernels
from engine.kernels import native, reference
from engine.quant import lvq as quant

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DIMS = (1, 3, 17, 383)
ENCODINGS = ("float32", "lvq8", "lvq4", "lvq4x8")
METRICS = ("ip", "cosine", "l2")


def _backends() -> list:
    params = [pytest.param(("numba", None), id="numba")]
    for isa in native.ISAS:
        params.append(pytest.param(("native", isa), id=f"native-{isa}"))
    params.append(pytest.param(("cuda", None), id="cuda"))
    return params


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    seed = 20_261_127 + sum(map(ord, request.node.name)) % 10_000
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)


@pytest.fixture(params=_backends())
def backend(request: pytest.FixtureRequest):
    """(backend name, native instruction set or None); skips with the reason where it cannot run."""
    name, isa = request.param
    if name == "native":
        if not native.AVAILABLE:
            pytest.skip(f"native: {native.ERROR}")
        if native.ISAS.index(isa) > native.ISAS.index(native.cpu_isa()):
            pytest.skip(f"native-{isa}: this CPU supports up to {native.cpu_isa()}")
        before = native.isa()
        native.set_isa(isa)
        yield name, isa
        native.set_isa(before)
        return
    if name == "cuda":
        from engine.kernels import gpu

        if not gpu.has_device():
            pytest.skip(f"cuda: {gpu.unavailable_reason() or 'only the simulator is here (tests/test_gpu_kernels.py)'}")
    yield name, isa


# ---------------------------------------------------------------------------------------------- data
def _real(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    base = DATA / "base_vectors.f16.npy"
    queries = DATA / "queries_id.f32.npy"
    if not base.exists() or not queries.exists():
        return None
    x = np.load(base, mmap_mode="r")
    start = int(rng.integers(0, x.shape[0] - n))
    q = np.load(queries, mmap_mode="r")
    return np.array(x[start : start + n], np.float32), np.array(q[:7], np.float32)


def _make(rng: np.random.Generator, case: str, dim: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(data [n, dim], queries [m, dim]) with zero rows and a zero query; unit rows for cosine."""
    if case == "real":
        got = _real(rng, 600)
        if got is None:
            pytest.skip(f"the real data set is not at {DATA}")
        x, q = got
    else:
        x = (rng.standard_normal((500, dim)) * rng.uniform(0.1, 3.0, size=(500, 1))).astype(np.float32)
        q = rng.standard_normal((7, dim)).astype(np.float32)
    x[[3, 77]] = 0.0  # zero vectors
    q[2] = 0.0
    if metric == "cosine":
        x = kernels.metrics.prepare(metric, x)
        q = kernels.metrics.prepare(metric, q)
    return x, q


def _encode(x: np.ndarray, encoding: str):
    """(what the kernels scan, the float64 rows it stands for)."""
    if encoding == "float32":
        return x, x.astype(np.float64)
    bits, res = {"lvq8": (8, 0), "lvq4": (4, 0), "lvq4x8": (4, 8)}[encoding]
    mean = quant.fit(x)
    codes = quant.encode(x, mean, bits=bits, residual_bits=res)
    data = kernels.LVQData.from_codes(codes, mean)
    return data, reference.decode(data)


def _tolerance(q: np.ndarray, x: np.ndarray, rtol: float) -> np.ndarray:
    """Per query: rtol x the size of the terms a score sums (so float32 rounding and VNNI's query rounding fit)."""
    xmax = float(np.abs(x).max()) if x.size else 0.0
    xsq = float((x * x).sum(axis=1).max()) if x.size else 0.0
    q64 = q.astype(np.float64)
    return rtol * (np.abs(q64).sum(axis=1) * xmax + (q64 * q64).sum(axis=1) + xsq + 1.0)


def _check(got, q, dec, sel, k, kind, tol):
    got_s, got_r = got
    m = q.shape[0]
    assert got_s.shape == (m, k) and got_r.shape == (m, k)
    assert got_s.dtype == np.float32 and got_r.dtype == np.int64
    exact = reference.surrogate_scores(q, dec, sel, kind)
    ref_s, _ = reference.topk(q, dec, sel, k, kind)
    where = {int(r): j for j, r in enumerate(sel)}
    count = min(k, len(sel))
    for i in range(m):
        rows = got_r[i, :count]
        assert (got_r[i, count:] == -1).all() and np.isneginf(got_s[i, count:]).all(), "padding"
        assert len(set(rows.tolist())) == count, "a row appears twice"
        assert all(int(r) in where for r in rows), "a row outside the selection"
        ex = exact[i, [where[int(r)] for r in rows]]
        np.testing.assert_allclose(got_s[i, :count], ex, rtol=0, atol=tol[i], err_msg="score of a returned row")
        assert (ex >= ref_s[i, :count] - 2 * tol[i]).all(), "a better row was missed"
        assert (np.diff(got_s[i, :count]) <= tol[i]).all(), "not best first"


def _selections(rng: np.random.Generator, n: int):
    rows = rng.permutation(n)[: n * 2 // 3].astype(np.int64)
    yield {"rows": rows}, rows
    yield {"block": (n // 5, n - 7)}, np.arange(n // 5, n - 7)
    yield {}, np.arange(n)


# ---------------------------------------------------------------------------------------------- the matrix
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("case", [*(f"random-{d}" for d in DIMS), "real"])
def test_backend_matches_reference(backend, case, encoding, metric, rng):
    name, isa = backend
    dim = 384 if case == "real" else int(case.split("-")[1])
    x, q = _make(rng, case, dim, metric)
    data, dec = _encode(x, encoding)
    kind = kernels.metrics.KERNEL_METRIC[metric]
    vnni = isa == "avx512vnni" and encoding != "float32" and kind == "ip"
    tol = _tolerance(q, dec, 3e-4 if vnni else 3e-5)
    qs = np.repeat(q, 3, axis=0)[:20]  # a batch big enough for the tile / BLAS paths
    tol_many = np.repeat(tol, 3)[:20]
    for sel_args, sel in _selections(rng, x.shape[0]):
        for queries, t in ((q[:1], tol[:1]), (q, tol), (qs, tol_many)):
            for k in (1, 10):
                got = kernels.search(queries, data, k, metric, backend=name, **sel_args)
                _check(got, queries, dec, sel, k, kind, t)
        got = kernels.scores(q, data, metric, backend=name, **sel_args)
        ref = reference.surrogate_scores(q, dec, sel, kind)
        assert got.shape == ref.shape and got.dtype == np.float32
        assert (np.abs(got - ref) <= tol[:, None]).all(), "scores"


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_native_scan_and_tile_paths_agree_with_reference(encoding, rng):
    """The native library switches from per-query scans to the tile path at a batch size: force each."""
    if not native.AVAILABLE:
        pytest.skip(f"native: {native.ERROR}")
    x, q = _make(rng, "random-17", 17, "l2")
    data, dec = _encode(x, encoding)
    tol = _tolerance(q, dec, 3e-5)
    old = native.set_tile_min(1)
    try:
        for tile_min in (1, 1000):
            native.set_tile_min(tile_min)
            for metric in ("ip", "l2"):
                got = kernels.search(q, data, 5, metric, backend="native")
                _check(got, q, dec, np.arange(x.shape[0]), 5, metric, tol)
    finally:
        native.set_tile_min(old)


def test_more_k_than_rows_and_empty_selections(backend, rng):
    name, _ = backend
    x, q = _make(rng, "random-3", 3, "ip")
    s, r = kernels.search(q, x, 8, "ip", rows=np.array([4, 9, 2], np.int64), backend=name)
    assert (r[:, 3:] == -1).all() and np.isneginf(s[:, 3:]).all()
    assert sorted(r[0, :3].tolist()) == [2, 4, 9]
    s, r = kernels.search(q, x, 4, "l2", rows=np.zeros(0, np.int64), backend=name)
    assert (r == -1).all() and np.isneginf(s).all()
    assert kernels.scores(q, x, "ip", block=(5, 5), backend=name).shape == (q.shape[0], 0)


def test_non_contiguous_and_other_dtype_inputs(backend, rng):
    name, _ = backend
    big = rng.standard_normal((300, 40)).astype(np.float32)
    x = big[:, ::2]  # strided rows
    q = np.asfortranarray(rng.standard_normal((6, 20)))  # float64, Fortran order
    rows = np.arange(0, 300, 3)[::-1].astype(np.int32)  # reversed, int32
    dec = x.astype(np.float64)
    tol = _tolerance(q.astype(np.float32), dec, 3e-5)
    for kind in ("ip", "l2"):
        got = kernels.search(q, x, 5, kind, rows=rows, backend=name)
        _check(got, q.astype(np.float32), dec, rows.astype(np.int64), 5, kind, tol)
    mean = quant.fit(big[:, :20])
    codes = quant.encode(big[:, :20], mean, bits=8)
    strided = kernels.LVQData(mean, np.asfortranarray(codes.codes), codes.scale[::1], codes.bias, 8, 20)
    got = kernels.search(q, strided, 5, "ip", backend=name)
    _check(got, q.astype(np.float32), reference.decode(strided), np.arange(300), 5, "ip", tol * 10)


def test_two_threads_split_rows_and_queries(rng):
    """With two threads the CPU backends split one query's rows (then merge) or a batch's queries."""
    x = rng.standard_normal((40_000, 128)).astype(np.float32)
    q = rng.standard_normal((5, 128)).astype(np.float32)
    before = kernels.threads()
    kernels.set_threads(2)
    try:
        for name in ("numba", "native"):
            if name == "native" and not native.AVAILABLE:
                continue
            for queries in (q[:1], q):
                s, r = kernels.search(queries, x, 10, "ip", backend=name)
                ref_s, ref_r = reference.topk(queries, x, None, 10, "ip")
                np.testing.assert_array_equal(r, ref_r)
                np.testing.assert_allclose(s, ref_s, rtol=1e-4, atol=1e-3)
    finally:
        kernels.set_threads(before)


# ---------------------------------------------------------------------------------------------- the facade
def test_topk_keeps_its_signature_and_warm_runs(rng):
    x = rng.standard_normal((50, 8)).astype(np.float32)
    q = rng.standard_normal((2, 8)).astype(np.float32)
    rows = np.arange(10, 40, dtype=np.int64)
    s, r = kernels.topk(q, x, rows, 5, "l2")
    ref_s, ref_r = reference.topk(q, x, rows, 5, "l2")
    np.testing.assert_array_equal(r, ref_r)
    kernels.warm()


def test_describe_reports_the_choice():
    info = kernels.describe()
    assert info["backend"] in kernels.BACKENDS
    assert {"isa", "cpu_flags", "threads", "cuda"} <= set(info)
    if native.AVAILABLE:
        assert info["backend"] == "native" or info["forced"]
        assert info["isa"] in native.ISAS


def test_select_and_its_errors(monkeypatch, grove_env):
    before = kernels.backend()
    try:
        assert kernels.select("numpy") == "numpy"
        assert kernels.backend() == "numpy"
        grove_env("GROVE_KERNELS", "numba")
        assert kernels.select() == "numba"
        grove_env("GROVE_KERNELS", "fortran")
        with pytest.raises(ValueError, match="GROVE_KERNELS"):
            kernels.select()
        grove_env("GROVE_KERNELS", None)
        monkeypatch.setattr(native, "AVAILABLE", False)
        monkeypatch.setattr(native, "ERROR", "not built in this test")
        with pytest.raises(ValueError, match="not built in this test"):
            kernels.select("native")
    finally:
        grove_env("GROVE_KERNELS", None)
        monkeypatch.undo()
        kernels.select(before if before in ("numba", "native") else None)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x, q: kernels.search(q, x, 0, "ip"), ValueError, "k must be"),
        (lambda x, q: kernels.search(q, x, 3, "manhattan"), ValueError, "metric must be"),
        (lambda x, q: kernels.search(q[:, :5], x, 3, "ip"), ValueError, "queries must be"),
        (lambda x, q: kernels.search(np.full_like(q, np.nan), x, 3, "ip"), ValueError, "NaN"),
        (lambda x, q: kernels.search(q, x, 3, "ip", rows=[0, 99]), ValueError, "rows must lie"),
        (lambda x, q: kernels.search(q, x, 3, "ip", block=(5, 2)), ValueError, "block must"),
        (lambda x, q: kernels.search(q, x, 3, "ip", rows=[1], block=(0, 2)), ValueError, "not both"),
        (lambda x, q: kernels.search(q.astype(np.int32), x, 3, "ip"), TypeError, "float32"),
        (lambda x, q: kernels.search(q, x, 3, "ip", backend="tpu"), ValueError, "backend must"),
        (lambda x, q: kernels.LVQData(x[0], np.zeros((4, 3), np.uint8), x[0, :4], x[0, :4], 8, 6), ValueError, "codes"),
    ],
)
def test_bad_input_raises_clear_errors(call, error, match):
    x = np.ones((20, 6), np.float32)
    q = np.ones((2, 6), np.float32)
    with pytest.raises(error, match=match):
        call(x, q)
