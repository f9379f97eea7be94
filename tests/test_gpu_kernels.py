"""The GPU kernels (``engine.kernels.gpu``) against the numpy reference.

Each check runs in a subprocess with ``NUMBA_ENABLE_CUDASIM=1``, so numba's CUDA simulator executes the kernels'
logic on the CPU (no GPU needed; tiny inputs, since every simulated thread is a Python thread). A subprocess
keeps the simulator flag out of this process, where a real device, if there is one, runs the same checks
(``test_checks_on_a_real_device``). Run one check by hand with ``python tests/test_gpu_kernels.py NAME``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- the checks
def _data(seed: int, n: int = 150, d: int = 5, m: int = 3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[7] = 0.0
    q = rng.standard_normal((m, d)).astype(np.float32)
    return rng, x, q


def _same(got, ref, atol=1e-4):
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=atol)


def check_search_rows_block_metrics() -> None:
    """Row lists and blocks, ip and l2, k below and above the number of rows."""
    from engine.kernels import gpu, reference

    rng, x, q = _data(1)
    rows = rng.permutation(150)[:90].astype(np.int64)
    for kind in ("ip", "l2"):
        for sel, (a, b) in ((rows, (0, 0)), (None, (10, 140)), (rows[:3], (0, 0))):
            for k in (1, 5):
                _same(gpu.search(q, x, sel, a, b, k, kind), reference.search(q, x, sel, a, b, k, kind))


def check_multi_round_selection() -> None:
    """Small SPAN/TPB make the selection take several rounds (and its one-thread last round) on few rows."""
    from engine.kernels import gpu, reference

    gpu.SPAN, gpu.TPB = 4, 4
    rng, x, q = _data(2, n=200, d=3, m=2)
    for kind in ("ip", "l2"):
        _same(gpu.search(q, x, None, 0, 200, 3, kind), reference.search(q, x, None, 0, 200, 3, kind))
    x[:] = np.round(x)  # many exact ties: the smaller row must win everywhere
    _same(gpu.search(q, x, None, 0, 200, 2, "ip"), reference.search(q, x, None, 0, 200, 2, "ip"))


def check_scores_and_lvq_decode() -> None:
    from engine.kernels import LVQData, gpu, reference
    from engine.quant import lvq

    _, x, q = _data(3, n=70, d=7)
    for kind in ("ip", "l2"):
        got = gpu.scores(q, x, None, 0, 70, kind)
        np.testing.assert_allclose(got, reference.scores(q, x, None, 0, 70, kind), rtol=1e-5, atol=1e-4)
    mean = lvq.fit(x)
    for bits, res in ((8, 0), (4, 0), (4, 8)):
        data = LVQData.from_codes(lvq.encode(x, mean, bits=bits, residual_bits=res), mean)
        dev = gpu.to_device(data)
        np.testing.assert_allclose(dev.x.copy_to_host(), reference.decode(data), rtol=1e-5, atol=1e-5)
        _same(gpu.search(q, dev, None, 0, 70, 4, "ip"), reference.search(q, data, None, 0, 70, 4, "ip"))


def check_kmeans_assign() -> None:
    from engine.kernels import gpu

    rng, x, _ = _data(4, n=90, d=4)
    cent = rng.standard_normal((6, 4)).astype(np.float32)
    labels, dist = gpu.kmeans_assign(x, cent, "l2")
    d2 = ((x[:, None, :].astype(np.float64) - cent[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(labels, d2.argmin(axis=1))
    np.testing.assert_allclose(dist, d2.min(axis=1), rtol=1e-4, atol=1e-4)
    labels, sim = gpu.kmeans_assign(x, cent, "ip")
    np.testing.assert_array_equal(labels, (x @ cent.T).argmax(axis=1))


def check_errors_and_stubs() -> None:
    from engine.kernels import gpu

    _, x, q = _data(5)
    try:
        gpu.search(q, x, None, 0, 150, gpu.KMAX + 1, "ip")
    except ValueError as exc:
        assert "at most k" in str(exc)
    else:
        raise AssertionError("k > KMAX must raise")
    gpu._probe = (False, "no CUDA device in this check")  # what a machine without CUDA sees
    for call in (lambda: gpu.search(q, x, None, 0, 150, 3, "ip"), lambda: gpu.kmeans_assign(x, x[:3]), gpu.describe):
        try:
            call()
        except gpu.GpuUnavailable as exc:
            assert "no CUDA device in this check" in str(exc)
        else:
            raise AssertionError("a stub must raise GpuUnavailable")


CHECKS = {f.__name__: f for f in (
    check_search_rows_block_metrics,
    check_multi_round_selection,
    check_scores_and_lvq_decode,
    check_kmeans_assign,
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
