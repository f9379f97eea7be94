"""GPU kernels on a machine with a CUDA device: check them against the numpy reference, then time batch search
against the best CPU backend on the same data. One call, a few minutes.

    python bench/gpu_check.py [--queries 10000] [--n 1000000] [--dim 384] [--cpu-queries 1000] [--json]

1. The checks of ``tests/test_gpu_kernels.py``, in-process on the device (not the simulator).
2. A medium exact check: 200 queries x 200k x dim, ip and l2, against a float64 numpy reference (tie-aware).
3. Timing: ``--queries`` queries x ``--n`` vectors x ``--dim`` float32, top-10, ip. The base is copied to the
   device once (``gpu.to_device``, timed separately) and searched with the cuBLAS product (when CuPy is
   there) and with the numba product kernel. The CPU baseline is the selected CPU backend (native if built)
   with every core, on ``--cpu-queries`` of the same queries; batch throughput is linear in the number of
   queries, so the ratio compares queries per second.
4. The k-means assignment step: ``--n`` vectors to 1,024 centroids, GPU vs CPU (top-1 search).

Prints the card, the numbers and, with ``--json``, one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

if not hasattr(np, "row_stack"):  # numba-cuda 0.2x still registers np.row_stack, which numpy 2.5 removed
    np.row_stack = np.vstack

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import kernels  # noqa: E402
from engine.kernels import gpu  # noqa: E402

K = 10


def _timed(fn, reps: int = 2) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _agree(got: tuple[np.ndarray, np.ndarray], exact: np.ndarray) -> tuple[float, float]:
    """(share of returned rows whose exact score reaches the true k-th best minus a tolerance, max score error);
    ``exact`` holds float64 scores of every row, -inf where a row is not selected."""
    s, r = got
    kth = -np.partition(-exact, K - 1, axis=1)[:, K - 1 : K]
    tol = 1e-5 * (1 + np.abs(kth).max())
    ex = np.take_along_axis(exact, r, 1)
    return float((ex >= kth - tol).mean()), float(np.abs(s - ex).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--cpu-queries", type=int, default=1_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict = {"command": " ".join(sys.argv)}
    if not gpu.has_device():
        sys.exit(f"no CUDA device: {gpu.unavailable_reason() or 'only the simulator'}")
    kernels.set_threads(os.cpu_count() or 1)
    out["gpu"] = gpu.describe()
    out["cpu"] = kernels.describe()
    print(f"GPU: {json.dumps(out['gpu'])}")
    print(f"CPU: {json.dumps(out['cpu'])}")

    # 1. the simulator checks, on the device
    sys.path.insert(0, str(ROOT / "tests"))
    import test_gpu_kernels as checks

    for name, fn in checks.CHECKS.items():
        if name == "check_errors_and_stubs":
            continue
        t = time.perf_counter()
        fn()
        print(f"ok  {name} ({time.perf_counter() - t:.1f} s)")
    gpu.SPAN, gpu.TPB = 256, 128  # the multi-round check shrinks them
    rng = np.random.default_rng(0)

    # 2. a medium exact check: 200 queries x 200k rows (float64 scores; l2 as 2 q.x - |x|^2 - |q|^2)
    nc, mc = min(200_000, args.n), min(200, args.queries)
    x = rng.standard_normal((nc, args.dim), dtype=np.float32)
    q = rng.standard_normal((mc, args.dim), dtype=np.float32)
    rows = rng.permutation(nc)[: nc * 3 // 4].astype(np.int64)
    ip = q.astype(np.float64) @ x.astype(np.float64).T
    xn = (x.astype(np.float64) ** 2).sum(1)
    qn = (q.astype(np.float64) ** 2).sum(1)
    for kind in ("ip", "l2"):
        exact = ip if kind == "ip" else 2 * ip - xn[None, :] - qn[:, None]
        masked = np.full_like(exact, -np.inf)
        masked[:, rows] = exact[:, rows]
        share, err = _agree(gpu.search(q, x, None, 0, nc, K, kind), exact)
        share_r, err_r = _agree(gpu.search(q, x, rows, 0, 0, K, kind), masked)
        err = max(err, err_r)
        print(f"check {kind}: top-{K} agreement {share:.5f} (row list {share_r:.5f}), max score error {err:.2e}")
        out[f"check_{kind}"] = {"agreement": share, "agreement_rows": share_r, "max_err": err}
    del x, ip, exact, masked

    # 3. timing
    x = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    qs = x[rng.integers(0, args.n, args.queries)] + 0.05 * rng.standard_normal(
        (args.queries, args.dim), dtype=np.float32
    )
    t0 = time.perf_counter()
    dev = gpu.to_device(x)
    gpu.cuda.synchronize()
    out["h2d_s"] = time.perf_counter() - t0
    modes = ["cublas", "numba"] if gpu._cupy() is not None else ["numba"]
    gpu_results = {}
    for mode in modes:
        saved = gpu._cupy
        if mode == "numba":
            gpu._cupy = lambda: None
        try:
            gpu.search(qs[:64], dev, None, 0, args.n, K, "ip")  # compile / warm
            t, res = _timed(lambda: gpu.search(qs, dev, None, 0, args.n, K, "ip"))
        finally:
            gpu._cupy = saved
        gpu_results[mode] = (t, res)
        flops = 2.0 * args.queries * args.n * args.dim
        shape = f"{args.queries} x {args.n} x {args.dim}"
        print(f"GPU ({mode}) {shape}: {t:.3f} s, {args.queries / t:,.0f} queries/s, {flops / t / 1e12:.1f} TFLOP/s")
        out[f"gpu_{mode}_s"] = t
        out[f"gpu_{mode}_qps"] = args.queries / t
    t_host, _ = _timed(lambda: gpu.search(qs, x, None, 0, args.n, K, "ip"), 1)
    out["gpu_with_copy_s"] = t_host
    print(f"GPU with the base copied in the call: {t_host:.3f} s (copy of the base alone {out['h2d_s']:.3f} s)")

    cpu_q = qs[: args.cpu_queries]
    kernels.search(cpu_q[:32], x[:100_000], K, "ip")  # warm
    t_cpu, cpu_res = _timed(lambda: kernels.search(cpu_q, x, K, "ip"), 1)
    out["cpu_backend"] = kernels.backend()
    out["cpu_threads"] = kernels.threads()
    out["cpu_qps"] = args.cpu_queries / t_cpu
    best_gpu = min(v[0] for v in gpu_results.values())
    out["speedup"] = (args.queries / best_gpu) / out["cpu_qps"]
    print(
        f"CPU ({kernels.backend()}, {kernels.threads()} threads) {args.cpu_queries} x {args.n} x {args.dim}: "
        f"{t_cpu:.3f} s, {out['cpu_qps']:,.0f} queries/s"
    )
    gpu_first = next(iter(gpu_results.values()))[1]
    same = float(np.mean(gpu_first[1][: args.cpu_queries] == cpu_res[1]))
    print(f"GPU vs CPU: {out['speedup']:.1f}x queries/s; top-{K} rows identical for {same:.4f} of the CPU queries")
    out["gpu_cpu_rows_identical"] = same

    # 4. k-means assignment
    cent = x[rng.choice(args.n, min(1024, args.n // 2), replace=False)]
    t_g, (lab_g, _) = _timed(lambda: gpu.kmeans_assign(x, cent, "l2"), 1)
    sub = min(args.n, 200_000)
    t_c, (_, lab_c) = _timed(lambda: kernels.search(x[:sub], cent, 1, "l2"), 1)
    out["kmeans_gpu_vps"] = args.n / t_g
    out["kmeans_cpu_vps"] = sub / t_c
    agree = float(np.mean(lab_g[:sub] == lab_c[:, 0]))
    print(
        f"k-means assignment to 1024 centroids: GPU {args.n / t_g:,.0f} vectors/s, CPU {sub / t_c:,.0f} vectors/s "
        f"({(args.n / t_g) / (sub / t_c):.1f}x); labels agree {agree:.4f}"
    )
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
