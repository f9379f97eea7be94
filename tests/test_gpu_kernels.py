"""The GPU kernels (``engine.kernels.gpu``) against the numpy reference.

Each check runs in a subprocess with ``NUMBA_ENABLE_CUDASIM=1``, so numba's CUDA simulator executes the kernels'
logic on the CPU (no GPU needed; tiny inputs, since every simulated thread is a Python thread). A subprocess
keeps the simulator flag out of this process, where a real device, if there is one, runs the same checks
(``test_checks_on_a_real_device``). Run one check by hand with ``python tests/test_gpu_kernels.py NAME``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- the checks
#: launch sizes small enough for the simulator (every simulated thread is a Python thread); valid on a device too
TINY = dict(SPAN=4, TPB=4, GROUPS=8, FILTER_TPB=8, FILTER_ITEMS=4, RANK_TPB=4, RW=2, RC=4, FINISH_TPB=4)


@contextlib.contextmanager
def _set(obj, **values):
    """Set attributes (module tunables, registry entries) for the block and put the old values back."""
    saved = {name: getattr(obj, name) for name in values}
    for name, value in values.items():
        setattr(obj, name, value)
    try:
        yield obj
    finally:
        for name, value in saved.items():
            setattr(obj, name, value)


@contextlib.contextmanager
def _product(name: str, fn):
    """Register ``fn`` as the first-stage product of precision ``name`` for the block."""
    from engine.kernels import gpu

    saved = gpu._PRODUCTS[name]
    gpu._PRODUCTS[name] = fn
    try:
        yield
    finally:
        gpu._PRODUCTS[name] = saved


def _tiny():
    from engine.kernels import gpu

    return _set(gpu, **TINY)


def _modes():
    """(precision, select, rescore): the new default and the previous path; with CuPy also the tensor cores."""
    from engine.kernels import gpu

    out = [("fp32", "filter", True), ("fp32", "rounds", False), ("fp32", "filter", False)]
    if gpu._cupy() is not None:
        out += [("fp16", "filter", True), ("tf32", "filter", True), ("fp16", "rounds", True)]
    return out


def _data(seed: int, n: int = 150, d: int = 5, m: int = 3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[7] = 0.0
    q = rng.standard_normal((m, d)).astype(np.float32)
    return rng, x, q


def _same(got, ref, atol=1e-4):
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=atol)


def _host_topk(s: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row of scores ``s`` [m, n] (row numbers ``rows`` [n]) by (score desc, row asc), padded."""
    m = s.shape[0]
    out_s = np.full((m, k), -np.inf, np.float32)
    out_r = np.full((m, k), -1, np.int64)
    for i in range(m):
        order = np.lexsort((rows, -s[i].astype(np.float64)))[:k]
        out_s[i, : len(order)] = s[i, order]
        out_r[i, : len(order)] = rows[order]
    return out_s, out_r


def _emulated_fp16(q, q_dev, dd, rows_dev, use_map, start, n, l2, out):
    """What the fp16 tensor-core product computes, on the host: both operands scaled by a power of two and rounded
    to float16, the products summed in float32, the scales undone (for the simulator, which has no cuBLAS)."""
    from engine.kernels import gpu

    x = dd.x.copy_to_host()
    sel = rows_dev.copy_to_host() if use_map else np.arange(start, start + n)
    sx = gpu._pow2_scale(float(np.abs(x).max()))
    sq = gpu._pow2_scale(float(np.abs(q).max()))
    x16 = (x[sel] * np.float32(sx)).astype(np.float16).astype(np.float32)
    q16 = (q * np.float32(sq)).astype(np.float16).astype(np.float32)
    p = (q16 @ x16.T) * np.float32(1.0 / (sx * sq))
    if l2:
        p = 2 * p - dd.norms().copy_to_host()[sel][None, :]
    out.copy_to_device(np.ascontiguousarray(p, dtype=np.float32))


def _perturbed(rng: np.random.Generator, frac: float, precision: str = "fp16"):
    """The float32 product plus uniform noise of ``frac`` times the error bound ``precision`` allows."""
    from engine.kernels import gpu

    def product(q, q_dev, dd, rows_dev, use_map, start, n, l2, out):
        gpu._product_fp32(q, q_dev, dd, rows_dev, use_map, start, n, l2, out)
        eps, _ = gpu._bounds(q, dd.xmax(), precision, l2)
        s = out.copy_to_host().astype(np.float64)
        s += rng.uniform(-frac, frac, s.shape) * eps[:, None]
        out.copy_to_device(s.astype(np.float32))

    return product


def _near_duplicates(seed: int, groups: int = 30, copies: int = 4, d: int = 6, m: int = 4):
    """Rows in groups of near-copies (relative differences ~1e-4, below float16's resolution): the first stage
    cannot order a group, the rescoring must."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((groups, d))
    x = np.repeat(base, copies, axis=0) + 1e-4 * rng.standard_normal((groups * copies, d))
    x = x[rng.permutation(len(x))].astype(np.float32)
    q = rng.standard_normal((m, d)).astype(np.float32)
    return rng, x, q


def check_search_rows_block_metrics() -> None:
    """Row lists and blocks, ip and l2, k below and above the number of rows, every mode."""
    from engine.kernels import gpu, reference

    rng, x, q = _data(1)
    rows = rng.permutation(150)[:90].astype(np.int64)
    with _tiny():
        for precision, select, rescore in _modes():
            for kind in ("ip", "l2"):
                for sel, (a, b) in ((rows, (0, 0)), (None, (10, 140)), (rows[:3], (0, 0))):
                    for k in (1, 5):
                        got = gpu.search(q, x, sel, a, b, k, kind, precision=precision, select=select, rescore=rescore)
                        _same(got, reference.search(q, x, sel, a, b, k, kind))


def check_multi_round_selection() -> None:
    """Small SPAN/TPB make the rounds selection take several rounds (and its one-thread last round) on few rows;
    a small CAP makes the filter's buffers overflow, so those queries go through the rounds too."""
    from engine.kernels import gpu, reference

    rng, x, q = _data(2, n=200, d=3, m=2)
    with _tiny():
        for kind in ("ip", "l2"):
            got = gpu.search(q, x, None, 0, 200, 3, kind, select="rounds", rescore=False)
            _same(got, reference.search(q, x, None, 0, 200, 3, kind))
        x[:] = np.round(x)  # many exact ties: the smaller row must win everywhere
        for select, rescore in (("rounds", False), ("filter", True), ("filter", False)):
            _same(
                gpu.search(q, x, None, 0, 200, 2, "ip", select=select, rescore=rescore),
                reference.search(q, x, None, 0, 200, 2, "ip"),
            )
        q[1] = 0.0  # every score 0: all 200 reach the threshold
        with _set(gpu, CAP=12):
            got = gpu.search(q, x, None, 0, 200, 2, "ip", select="filter", rescore=False)
            assert gpu.last_stats["overflow"] >= 1, gpu.last_stats
            _same(got, reference.search(q, x, None, 0, 200, 2, "ip"))


def check_filter_selection() -> None:
    """The threshold-filter-rank selection alone, against a host top-k: random scores, exact ties, a permuted row
    list, fewer rows than k, and buffers that overflow (those queries through the rounds)."""
    from engine.kernels import gpu

    rng = np.random.default_rng(6)
    cuda = gpu.cuda
    with _tiny():
        for n, kk, cap, ties, mapped in ((120, 5, 2048, False, False), (120, 5, 2048, True, True),
                                         (3, 5, 2048, False, False), (90, 4, 10, True, False),
                                         (90, 7, 2048, False, True)):  # fmt: skip
            s = rng.standard_normal((4, n)).astype(np.float32)
            if ties:
                s = np.round(s * 2).astype(np.float32)
                s[0] = 1.0  # one row all ties: every score reaches the threshold
            rows = rng.permutation(10 * n)[:n].astype(np.int64) if mapped else np.arange(5, 5 + n, dtype=np.int64)
            rows_dev = cuda.to_device(rows if mapped else gpu._DUMMY_ROWS)
            S = cuda.to_device(s)
            with _set(gpu, CAP=cap):
                stats: dict = {}
                got_s, got_r = gpu._select_filter(S, rows_dev, mapped, 5, n, kk, stats)
            want = _host_topk(s, rows, kk)
            np.testing.assert_array_equal(got_r.copy_to_host(), want[1])
            np.testing.assert_array_equal(got_s.copy_to_host(), want[0])
            assert (stats["overflow"] > 0) == (cap < n and ties), stats
            rounds = gpu._select(S, rows_dev, mapped, 5, n, kk)
            np.testing.assert_array_equal(rounds[1].copy_to_host(), want[1])


def check_rescore_and_certificate() -> None:
    """Exact float64 rescoring of candidate lists (with padding), the top-k of them, and the certificate."""
    from engine.kernels import gpu

    cuda = gpu.cuda
    rng, x, q = _data(7, n=40, d=6, m=4)
    cand = np.stack([rng.permutation(40)[:6] for _ in range(4)]).astype(np.int64)
    cand[1, 4:] = -1
    with _tiny():
        for l2 in (False, True):
            ex = cuda.device_array(cand.shape, np.float64)
            grid = (4, (cand.shape[1] + gpu.RC - 1) // gpu.RC)
            gpu._rescore_kernel[grid, (gpu.RW, gpu.RC)](
                cuda.to_device(q), cuda.to_device(x), cuda.to_device(cand), l2, ex
            )
            q64, x64 = q.astype(np.float64), x.astype(np.float64)
            want = np.where(cand >= 0, 0.0, -np.inf)
            for i in range(4):
                for c in range(cand.shape[1]):
                    if cand[i, c] >= 0:
                        v = x64[cand[i, c]]
                        want[i, c] = -((v - q64[i]) ** 2).sum() if l2 else q64[i] @ v
            np.testing.assert_allclose(ex.copy_to_host(), want, rtol=1e-12, atol=1e-12)

    # the finishing kernel on hand-made lists (k = 2, k' = 4, eps = 0.1): first-stage scores a, exact scores e.
    # 0: the first stage swapped two candidates within eps: reordered, certified. 1: the 4th candidate's
    # first-stage score + eps reaches the 2nd exact score: not certified unless all rows are candidates (n = 4).
    # 2: a candidate 0.5 off its first-stage score: never certified. 3: an exact tie, to the smaller row.
    # 4: fewer candidates than k' (padding): all rows seen, certified.
    a = np.array([[9, 8.98, 7, 5], [9, 8, 7, 7.95], [9, 8, 7, 5], [9, 9, 7, 5], [9, 8, -np.inf, -np.inf]], np.float32)
    e = np.array([[8.95, 9.05, 7, 5], [9, 8, 7, 7.9], [9, 8.5, 7, 5], [9, 9, 7.05, 5], [9, 8, -np.inf, -np.inf]])
    r = np.array([[4, 2, 6, 1], [3, 1, 0, 2], [3, 1, 0, 2], [3, 1, 0, 2], [5, 0, -1, -1]], np.int64)
    eps = np.full(5, 0.1)
    shift = np.zeros(5)
    for n, ok_want in ((100, [1, 0, 0, 1, 1]), (4, [1, 1, 0, 1, 1])):
        out_s = cuda.device_array((5, 2), np.float32)
        out_r = cuda.device_array((5, 2), np.int64)
        ok = cuda.device_array(5, np.int32)
        args = (cuda.to_device(e), cuda.to_device(a), cuda.to_device(r), 2, n, cuda.to_device(eps))
        gpu._finish_kernel[2, 4](*args, cuda.to_device(shift), out_s, out_r, ok)
        np.testing.assert_array_equal(ok.copy_to_host(), ok_want)
        np.testing.assert_array_equal(out_r.copy_to_host(), [[2, 4], [3, 1], [3, 1], [1, 3], [5, 0]])
        np.testing.assert_allclose(out_s.copy_to_host()[:, 0], [9.05, 9, 9, 9, 9], rtol=1e-6)


def check_two_stage_emulated_fp16() -> None:
    """The two-stage search over a first stage that rounds like the fp16 tensor cores: near-duplicate rows it
    cannot order come back in the exact order, ip and l2, row lists and blocks, and the certificate holds."""
    from engine.kernels import gpu, reference

    rng, x, q = _near_duplicates(8)
    rows = rng.permutation(len(x))[:100].astype(np.int64)
    with _tiny(), _product("fp16", _emulated_fp16):
        for kind in ("ip", "l2"):
            for sel, (a, b) in ((None, (0, len(x))), (rows, (0, 0))):
                for k in (1, 6):
                    got = gpu.search(q, x, sel, a, b, k, kind, precision="fp16")
                    _same(got, reference.search(q, x, sel, a, b, k, kind))
                    assert gpu.last_stats["precision"] == "fp16" and gpu.last_stats["rescore"], gpu.last_stats
                    assert gpu.last_stats["uncertified"] <= 1, gpu.last_stats


def check_perturbed_first_stage() -> None:
    """First-stage scores off by up to 0.9 x the bound: still the exact top-k. Off by 100 x the bound: every
    query's certificate is withdrawn and the fp32 path answers, exact again. A bound set huge: the certificates
    fail on the gap test instead, same outcome."""
    from engine.kernels import gpu, reference

    rng, x, q = _near_duplicates(9, m=5)
    with _tiny():
        for kind in ("ip", "l2"):
            ref = reference.search(q, x, None, 0, len(x), 4, kind)
            with _product("fp16", _perturbed(rng, 0.9)):
                _same(gpu.search(q, x, None, 0, len(x), 4, kind, precision="fp16"), ref)
            with _product("fp16", _perturbed(rng, 100.0)):
                _same(gpu.search(q, x, None, 0, len(x), 4, kind, precision="fp16"), ref)
                assert gpu.last_stats["uncertified"] == 5, gpu.last_stats
            with _product("fp16", _perturbed(rng, 0.9, "fp32")), _set(gpu, _coef=lambda precision, d: 10.0):
                _same(gpu.search(q, x, None, 0, len(x), 4, kind, precision="fp16"), ref)
                assert gpu.last_stats["uncertified"] == 5, gpu.last_stats


def check_scores_and_lvq_decode() -> None:
    from engine.kernels import LVQData, gpu, reference
    from engine.quant import lvq

    _, x, q = _data(3, n=70, d=7)
    for kind in ("ip", "l2"):
        got = gpu.scores(q, x, None, 0, 70, kind)
        np.testing.assert_allclose(got, reference.scores(q, x, None, 0, 70, kind), rtol=1e-5, atol=1e-4)
    mean = lvq.fit(x)
    with _tiny():
        for bits, res in ((8, 0), (4, 0), (4, 8)):
            data = LVQData.from_codes(lvq.encode(x, mean, bits=bits, residual_bits=res), mean)
            dev = gpu.to_device(data)
            np.testing.assert_allclose(dev.x.copy_to_host(), reference.decode(data), rtol=1e-5, atol=1e-5)
            _same(gpu.search(q, dev, None, 0, 70, 4, "ip"), reference.search(q, data, None, 0, 70, 4, "ip"))


def check_kmeans_assign() -> None:
    from engine.kernels import gpu

    rng, x, _ = _data(4, n=90, d=4)
    cent = rng.standard_normal((6, 4)).astype(np.float32)
    with _tiny():
        labels, dist = gpu.kmeans_assign(x, cent, "l2")
        d2 = ((x[:, None, :].astype(np.float64) - cent[None, :, :]) ** 2).sum(axis=2)
        np.testing.assert_array_equal(labels, d2.argmin(axis=1))
        np.testing.assert_allclose(dist, d2.min(axis=1), rtol=1e-4, atol=1e-4)
        labels, sim = gpu.kmeans_assign(x, cent, "ip")
        np.testing.assert_array_equal(labels, (x @ cent.T).argmax(axis=1))


def check_refined_tree_on_gpu() -> None:
    """With the GPU taking the bulk routes, a refined tree's Lloyd rounds and its bulk placement assign every
    vector to its exact nearest leaf: the tree equals one trained on the CPU with a beam as wide as the leaves."""
    from engine import kernels
    from engine.index.tree import ClusterTree
    from engine.kernels import gpu

    rng = np.random.default_rng(10)
    x = (rng.standard_normal((80, 5)) + 3.0 * rng.standard_normal((8, 5))[rng.integers(0, 8, 80)]).astype(np.float32)
    args = dict(fanout=4, max_leaf_size=8, build="refined", refine_rounds=1)  # small: ~0.15 s a simulated query
    with _tiny():
        kernels.select("cuda")
        assert kernels.gpu_runs(1)
        gpu.last_stats.clear()
        on_gpu = ClusterTree.train(x, **args)
        assert gpu.last_stats.get("queries") == len(x), gpu.last_stats  # the Lloyd round ran on the GPU
        gpu.last_stats.clear()
        placed = on_gpu.route(x, np.arange(len(x), dtype=np.int64), parallel=True)
        assert gpu.last_stats.get("queries") == len(x), gpu.last_stats  # and so did the bulk placement
        kernels.select("numba")
    assert not kernels.gpu_runs(10**15)  # numba forced: no route goes to the GPU
    exact = ClusterTree.train(x, **args, beam=10**6)
    assert on_gpu.n_leaves >= 6, on_gpu.n_leaves
    np.testing.assert_array_equal(on_gpu.child_start, exact.child_start)
    np.testing.assert_array_equal(on_gpu.child_count, exact.child_count)
    np.testing.assert_allclose(on_gpu.centroids, exact.centroids, rtol=1e-5, atol=1e-5)
    leaves = on_gpu.leaf_node
    d2 = ((x[:, None, :].astype(np.float64) - on_gpu.centroids[leaves][None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(placed, leaves[d2.argmin(axis=1)])


def _raises(exc_type, text: str, call) -> None:
    try:
        call()
    except exc_type as exc:
        assert text in str(exc), str(exc)
    else:
        raise AssertionError(f"expected {exc_type.__name__} containing {text!r}")


def check_errors_and_stubs() -> None:
    from engine.kernels import gpu

    _, x, q = _data(5)
    _raises(ValueError, "at most k", lambda: gpu.search(q, x, None, 0, 150, gpu.KMAX + 1, "ip"))
    _raises(ValueError, "precision must be", lambda: gpu.search(q, x, None, 0, 150, 3, "ip", precision="bf16"))
    _raises(ValueError, "select must be", lambda: gpu.search(q, x, None, 0, 150, 3, "ip", select="heap"))
    if gpu._cupy() is None:  # the tensor-core products need CuPy, and say so
        _raises(gpu.GpuUnavailable, "CuPy", lambda: gpu.search(q, x, None, 0, 150, 3, "ip", precision="fp16"))
        assert gpu.describe()["precision"] == (gpu.PRECISION or "fp32")
    gpu._probe = (False, "no CUDA device in this check")  # what a machine without CUDA sees
    for call in (lambda: gpu.search(q, x, None, 0, 150, 3, "ip"), lambda: gpu.kmeans_assign(x, x[:3]), gpu.describe):
        _raises(gpu.GpuUnavailable, "no CUDA device in this check", call)


CHECKS = {f.__name__: f for f in (
    check_search_rows_block_metrics,
    check_multi_round_selection,
    check_filter_selection,
    check_rescore_and_certificate,
    check_two_stage_emulated_fp16,
    check_perturbed_first_stage,
    check_scores_and_lvq_decode,
    check_kmeans_assign,
    check_refined_tree_on_gpu,
    check_errors_and_stubs,
)}  # fmt: skip


# ---------------------------------------------------------------------------------------------- pytest
def _simulator_or_skip() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "import numba.cuda as c; assert c.is_available()"],
        env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if probe.returncode != 0:
        pytest.skip(f"numba's CUDA simulator is not usable here: {probe.stderr.strip()[-300:]}")


@pytest.fixture(scope="module")
def simulator() -> None:
    _simulator_or_skip()


@pytest.mark.parametrize("name", list(CHECKS))
def test_under_the_cuda_simulator(simulator, name):
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, __file__, name], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{name} failed under the simulator:\n{done.stdout}\n{done.stderr[-4000:]}"


@pytest.mark.parametrize("name", [n for n in CHECKS if n != "check_errors_and_stubs"])
def test_checks_on_a_real_device(name):
    from engine.kernels import gpu

    if not gpu.has_device():
        pytest.skip(f"no CUDA device here: {gpu.unavailable_reason() or 'simulator only'}")
    CHECKS[name]()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    for arg in sys.argv[1:] or list(CHECKS):
        CHECKS[arg]()
        print(f"ok {arg}")
