"""GPU kernels on a machine with a CUDA device: check them against the numpy reference, then time batch search
in each GPU mode against the best CPU backend on the same data. One call, a few minutes.

    python bench/gpu_check.py [--quick] [--queries 10000] [--n 1000000] [--dim 384] [--cpu-queries 1000] [--json]

1. The checks of ``tests/test_gpu_kernels.py``, in-process on the device (not the simulator); with CuPy they
   include the fp16 and tf32 cuBLAS products against the reference.
2. A medium exact check per GPU mode: 200 queries x 200k x dim, ip and l2, block and row list, against a
   float64 numpy reference (tie-aware), with the queries the rescoring could not certify.
3. The CPU baseline: the selected CPU backend (native if built) with every core, named explicitly (without
   ``backend=``, ``engine.kernels.search`` sends this much work to the GPU), on ``--cpu-queries`` of the
   queries; batch throughput is linear in the number of queries, so the ratios compare queries per second.
4. Timing per GPU mode (``MODES``: first-stage precision, selection, rescoring; the old path is
   ``fp32 cuBLAS + rounds``): ``--queries`` x ``--n`` x ``--dim`` float32, top-10, ip, the base copied to the
   device once (``gpu.to_device``, timed separately). Each mode is compared with the CPU's results: top-10
   rows identical, max |score - float64 exact score|, share of rows at least as good as the CPU's 10th.
5. The k-means assignment step: ``--n`` vectors to 1,024 centroids, GPU (default and old path) vs CPU.
6. A refined tree's build (its Lloyd rounds and bulk placement assign vectors to leaves: on the GPU the exact
   nearest leaf, on the CPU a beam descent), GPU vs CPU, on 300k (100k with --quick) clustered vectors.

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
#: (label, search keywords, product backend: "cupy" needs CuPy, "numba" hides it)
MODES = (
    ("fp16 + filter + rescore", dict(precision="fp16", select="filter", rescore=True), "cupy"),
    ("tf32 + filter + rescore", dict(precision="tf32", select="filter", rescore=True), "cupy"),
    ("fp32 cuBLAS + filter", dict(precision="fp32", select="filter", rescore=False), "cupy"),
    ("fp32 cuBLAS + rounds (old)", dict(precision="fp32", select="rounds", rescore=False), "cupy"),
    ("fp32 numba + filter + rescore", dict(precision="fp32", select="filter", rescore=True), "numba"),
    ("fp32 numba + rounds (old, no CuPy)", dict(precision="fp32", select="rounds", rescore=False), "numba"),
)


def _timed(fn, reps: int = 2) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _runner(mode: str):
    """search(q, data, rows, start, stop, k, kind) in one mode (the numba modes hide CuPy from gpu)."""
    kw = dict(next(m[1] for m in MODES if m[0] == mode))
    hide = next(m[2] for m in MODES if m[0] == mode) == "numba"

    def run(*args):
        saved = gpu._cupy
        if hide:
            gpu._cupy = lambda: None
        try:
            return gpu.search(*args, **kw)
        finally:
            gpu._cupy = saved

    return run


def _agree(got: tuple[np.ndarray, np.ndarray], exact: np.ndarray) -> tuple[float, float]:
    """(share of returned rows whose exact score reaches the true k-th best minus a tolerance, max score error);
    ``exact`` holds float64 scores of every row, -inf where a row is not selected."""
    s, r = got
    kth = -np.partition(-exact, K - 1, axis=1)[:, K - 1 : K]
    tol = 1e-5 * (1 + np.abs(kth).max())
    ex = np.take_along_axis(exact, r, 1)
    return float((ex >= kth - tol).mean()), float(np.abs(s - ex).max())


def _exact_ip(q: np.ndarray, x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """float64 q_i . x[r[i, u]] for every returned row."""
    return np.einsum("id,iud->iu", q.astype(np.float64), x[r].astype(np.float64))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=None, help="default 10,000 (2,000 with --quick)")
    ap.add_argument("--n", type=int, default=None, help="default 1,000,000 (200,000 with --quick)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--cpu-queries", type=int, default=None, help="default 1,000 (300 with --quick)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes, for a first look")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    quick = args.quick
    args.queries = args.queries or (2_000 if quick else 10_000)
    args.n = args.n or (200_000 if quick else 1_000_000)
    args.cpu_queries = min(args.queries, args.cpu_queries or (300 if quick else 1_000))
    out: dict = {"command": " ".join(sys.argv)}
    if not gpu.has_device():
        sys.exit(f"no CUDA device: {gpu.unavailable_reason() or 'only the simulator'}")
    kernels.set_threads(os.cpu_count() or 1)
    cpu_backend = kernels.backend() if kernels.backend() != "cuda" else "numba"
    out["gpu"] = gpu.describe()
    out["cpu"] = kernels.describe()
    print(f"GPU: {json.dumps(out['gpu'])}")
    print(f"CPU: {json.dumps(out['cpu'])}")
    have_cupy = gpu._cupy() is not None
    modes = [m[0] for m in MODES if have_cupy or m[2] != "cupy"]
    print(f"GPU modes: {', '.join(modes)}; search's default: {gpu.default_precision()} + {gpu.default_select()}")

    # 1. the simulator checks, on the device
    sys.path.insert(0, str(ROOT / "tests"))
    import test_gpu_kernels as checks

    for name, fn in checks.CHECKS.items():
        if name == "check_errors_and_stubs":
            continue
        t = time.perf_counter()
        fn()
        print(f"ok  {name} ({time.perf_counter() - t:.1f} s)")
    rng = np.random.default_rng(0)

    # 2. a medium exact check per mode: 200 queries x 200k rows (float64 scores; l2 as 2 q.x - |x|^2 - |q|^2)
    nc, mc = min(200_000, args.n), min(200, args.queries)
    x = rng.standard_normal((nc, args.dim), dtype=np.float32)
    q = rng.standard_normal((mc, args.dim), dtype=np.float32)
    rows = rng.permutation(nc)[: nc * 3 // 4].astype(np.int64)
    ip = q.astype(np.float64) @ x.astype(np.float64).T
    xn = (x.astype(np.float64) ** 2).sum(1)
    qn = (q.astype(np.float64) ** 2).sum(1)
    dev = gpu.to_device(x)
    out["checks"] = {}
    for mode in modes:
        run = _runner(mode)
        for kind in ("ip", "l2"):
            exact = ip if kind == "ip" else 2 * ip - xn[None, :] - qn[:, None]
            masked = np.full_like(exact, -np.inf)
            masked[:, rows] = exact[:, rows]
            share, err = _agree(run(q, dev, None, 0, nc, K, kind), exact)
            unc = gpu.last_stats["uncertified"]
            share_r, err_r = _agree(run(q, dev, rows, 0, 0, K, kind), masked)
            unc += gpu.last_stats["uncertified"]
            err = max(err, err_r)
            print(
                f"check {mode:36s} {kind}: top-{K} agreement {share:.5f} (row list {share_r:.5f}), "
                f"max score error {err:.2e}, uncertified {unc}/{2 * mc}"
            )
            out["checks"][f"{mode} {kind}"] = {
                "agreement": share,
                "agreement_rows": share_r,
                "max_err": err,
                "uncertified": unc,
            }
    del x, ip, exact, masked, dev

    # 3. the CPU baseline, on the CPU by name
    x = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    qs = x[rng.integers(0, args.n, args.queries)] + 0.05 * rng.standard_normal(
        (args.queries, args.dim), dtype=np.float32
    )
    cpu_q = qs[: args.cpu_queries]
    kernels.search(cpu_q[:32], x[:100_000], K, "ip", backend=cpu_backend)  # warm
    t_cpu, (cpu_s, cpu_r) = _timed(lambda: kernels.search(cpu_q, x, K, "ip", backend=cpu_backend), 1)
    cpu_qps = args.cpu_queries / t_cpu
    cpu_kth = _exact_ip(cpu_q, x, cpu_r)[:, K - 1 : K]
    out.update(cpu_backend=cpu_backend, cpu_threads=kernels.threads(), cpu_s=t_cpu, cpu_qps=cpu_qps)
    print(
        f"CPU ({cpu_backend}, {kernels.threads()} threads) {args.cpu_queries} x {args.n} x {args.dim}: "
        f"{t_cpu:.3f} s, {cpu_qps:,.0f} queries/s"
    )

    # 4. timing per mode, and agreement with the CPU
    t0 = time.perf_counter()
    dev = gpu.to_device(x)
    gpu.cuda.synchronize()
    out["h2d_s"] = time.perf_counter() - t0
    flops = 2.0 * args.queries * args.n * args.dim
    shape = f"{args.queries} x {args.n} x {args.dim}"
    out["modes"] = {}
    for mode in modes:
        run = _runner(mode)
        run(qs[:64], dev, None, 0, args.n, K, "ip")  # compile / warm (and the float16 copy of the base)
        t, (s, r) = _timed(lambda run=run: run(qs, dev, None, 0, args.n, K, "ip"))
        st = dict(gpu.last_stats)
        c = args.cpu_queries
        ex = _exact_ip(cpu_q, x, r[:c])
        same = float(np.mean(r[:c] == cpu_r))
        err = float(np.abs(s[:c] - ex).max())
        good = float((ex >= cpu_kth - 1e-5 * (1 + np.abs(cpu_kth))).mean())
        qps = args.queries / t
        print(
            f"GPU {mode:36s} {shape}: {t:.3f} s, {qps:,.0f} queries/s, {flops / t / 1e12:.1f} TFLOP/s, "
            f"{qps / cpu_qps:.1f}x CPU | ran {st['precision']}+{st['select']}{'+rescore' if st['rescore'] else ''}, "
            f"uncertified {st['uncertified']}, overflow {st['overflow']} | vs CPU: rows identical {same:.4f}, "
            f"as good as CPU's 10th {good:.4f}, max score err {err:.1e}"
        )
        out["modes"][mode] = {
            "s": t,
            "qps": qps,
            "tflops": flops / t / 1e12,
            "speedup": qps / cpu_qps,
            "stats": st,
            "rows_identical_cpu": same,
            "as_good_as_cpu": good,
            "max_score_err": err,
        }
    default = modes[0]
    out["speedup"] = out["modes"][default]["speedup"]
    out["speedup_old"] = out["modes"].get("fp32 cuBLAS + rounds (old)", out["modes"][modes[-1]])["speedup"]
    t_host, _ = _timed(lambda: _runner(default)(qs, x, None, 0, args.n, K, "ip"), 1)
    out["gpu_with_copy_s"] = t_host
    print(f"GPU {default}, base copied in the call: {t_host:.3f} s (copy of the base alone {out['h2d_s']:.3f} s)")
    print(f"GPU ({default}) vs CPU: {out['speedup']:.1f}x queries/s (old path {out['speedup_old']:.1f}x)")

    # 5. k-means assignment
    cent = x[rng.choice(args.n, min(1024, args.n // 2), replace=False)]
    sub = min(args.n, 200_000)
    t_c, (_, lab_c) = _timed(lambda: kernels.search(x[:sub], cent, 1, "l2", backend=cpu_backend), 1)
    out["kmeans_cpu_vps"] = sub / t_c
    old = "fp32 cuBLAS + rounds (old)" if have_cupy else "fp32 numba + rounds (old, no CuPy)"
    for label, mode in (("default", None), ("old", old)):
        saved = (gpu.PRECISION, gpu.SELECT, gpu.RESCORE)
        if mode is not None:
            kw = next(m[1] for m in MODES if m[0] == mode)
            gpu.PRECISION, gpu.SELECT, gpu.RESCORE = kw["precision"], kw["select"], kw["rescore"]
        try:
            t_g, (lab_g, _) = _timed(lambda: gpu.kmeans_assign(x, cent, "l2"), 1)
        finally:
            gpu.PRECISION, gpu.SELECT, gpu.RESCORE = saved
        agree = float(np.mean(lab_g[:sub] == lab_c[:, 0]))
        out[f"kmeans_gpu_{label}_vps"] = args.n / t_g
        print(
            f"k-means assignment to {len(cent)} centroids ({label}): GPU {args.n / t_g:,.0f} vectors/s, "
            f"CPU {sub / t_c:,.0f} vectors/s ({(args.n / t_g) / (sub / t_c):.1f}x); labels agree {agree:.4f}"
        )

    # 6. a refined tree's build: its Lloyd rounds and bulk placement (exact nearest leaf on the GPU, beam on CPU)
    out["tree"] = _tree_build(rng, min(args.n, 100_000 if quick else 300_000), args.dim, cpu_backend)
    if args.json:
        print(json.dumps(out))


def _tree_build(rng: np.random.Generator, n: int, dim: int, cpu_backend: str) -> dict:
    """Train a refined Curator tree (default fanout and leaf size) on ``n`` clustered vectors and place them,
    with the bulk routes on the GPU (``kernels.gpu_runs`` decides, as in a server) and on the CPU by name; report
    both times and the share of vectors the CPU's beam descent puts in their exact nearest leaf."""
    from engine.index.tree import ClusterTree

    centers = rng.standard_normal((n // 500, dim), dtype=np.float32)
    x = centers[rng.integers(0, len(centers), n)] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = np.arange(n, dtype=np.int64)
    res: dict = {"n": n, "dim": dim}
    placed = {}
    for label, name in (("gpu", None), ("cpu", cpu_backend)):
        kernels.select(name)
        gpu.last_stats.clear()
        t = time.perf_counter()
        tree = ClusterTree.train(x, fanout=16, max_leaf_size=64, build="refined")
        t_train = time.perf_counter() - t
        t = time.perf_counter()
        placed[label] = tree.route(x, rows, parallel=True)
        res[label] = {"train_s": t_train, "place_s": time.perf_counter() - t, "leaves": tree.n_leaves,
                      "ran_on_gpu": bool(gpu.last_stats)}  # fmt: skip
    kernels.select(None)
    exact = tree.route(x, rows, parallel=True)  # the CPU-trained tree, routed on the GPU: exact nearest leaves
    res["cpu_exact_share"] = float(np.mean(placed["cpu"] == exact))
    g, c = res["gpu"], res["cpu"]
    print(
        f"refined tree, {n} x {dim}: GPU train {g['train_s']:.1f} s + place {g['place_s']:.1f} s "
        f"({g['leaves']} leaves, exact nearest leaf, ran on GPU {g['ran_on_gpu']}); CPU ({cpu_backend}) train "
        f"{c['train_s']:.1f} s + place {c['place_s']:.1f} s ({c['leaves']} leaves, beam descent: exact leaf for "
        f"{res['cpu_exact_share']:.3f} of vectors)"
    )
    return res


if __name__ == "__main__":
    main()
