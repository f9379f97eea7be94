"""Kernel throughput against the memory bandwidth and against faiss, with one and with two threads.

    python bench/kernels.py --json        (from the repository root; about 3-5 minutes, about 4 GB of memory)

Each thread count runs in its own process, with ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``/``GROVE_THREADS``
set before numpy, numba and faiss load, so every library uses exactly that many threads. A process measures:

* DRAM read bandwidth: a plain numpy sum over a 2 GiB float32 array (two threads: one half each);
* for each CPU backend (numba, native at its default instruction set; LVQ codes also with native VNNI):
  single-query top-10 scans over 1M vectors of dim 384 and 128 as float32, LVQ-8, LVQ-4 and LVQ-4x8 (both
  levels), in GB/s of what the scan reads and vectors/s;
* batch search: 1,000 queries x 100k float32 vectors, top-10, per backend and for faiss ``IndexFlatIP``;
* faiss ``IndexFlatIP`` and ``IndexScalarQuantizer(QT_8bit)`` single-query scans on the same 1M x 384 data
  (one thread).

The vectors are 100k "not completely random" rows (a low-rank signal plus noise) repeated to 1M; LVQ codes are
encoded from them with ``engine.quant.lvq``. Timings are the best of a few runs. It prints a table, then one JSON
object last: ``{"dram_gbps", "results": [...], "faiss": {"flat_vps", "sq8_vps"}, ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N_SCAN = 1_000_000
N_BATCH, M_BATCH = 100_000, 1_000
DIMS = (384, 128)
K = 10


def _best(fn, reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _sum_parts(parts: list) -> None:
    if len(parts) == 1:
        parts[0].sum()
        return
    ts = [threading.Thread(target=p.sum) for p in parts]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def _dram(threads: int, np) -> float:
    """GB/s of a plain numpy sum over a 2 GiB float32 array (``threads`` threads, one part each)."""
    parts = np.array_split(np.ones(2**29, np.float32), threads)
    _sum_parts(parts)
    return 2**31 / _best(lambda: _sum_parts(parts), 4) / 1e9


def _vectors(np, n: int, dim: int, seed: int = 0):
    """``n`` rows: 100k distinct low-rank-plus-noise rows, repeated."""
    rng = np.random.default_rng(seed)
    base = 100_000
    r = max(1, dim // 8)
    x = rng.standard_normal((base, r), dtype=np.float32) @ rng.standard_normal((r, dim), dtype=np.float32)
    x += 0.5 * rng.standard_normal((base, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    q = x[rng.integers(0, base, 1_000)] + 0.1 * rng.standard_normal((1_000, dim), dtype=np.float32)
    return np.tile(x, (n // base, 1)), np.ascontiguousarray(q, dtype=np.float32)


def child(threads: int) -> dict:
    """Everything measured with ``threads`` threads, as a dict (printed as one JSON line)."""
    import numpy as np

    from engine import kernels
    from engine.kernels import native
    from engine.quant import lvq

    kernels.set_threads(threads)
    import faiss

    faiss.omp_set_num_threads(threads)
    out: dict = {"threads": threads, "describe": kernels.describe(), "results": []}
    out["dram_gbps"] = _dram(threads, np)

    backends = ["numba"] + (["native"] if native.AVAILABLE else [])
    vnni = native.AVAILABLE and native.cpu_isa() == "avx512vnni" and native.isa() != "avx512vnni"
    default_isa = native.isa() if native.AVAILABLE else None

    def record(backend, op, encoding, dim, seconds, vectors, bytes_read, queries=1, isa=None):
        out["results"].append(
            {
                "backend": backend,
                "op": op,
                "encoding": encoding,
                "dim": dim,
                "threads": threads,
                "queries": queries,
                "isa": isa,
                "seconds": seconds,
                "gbps": bytes_read / seconds / 1e9,
                "vectors_per_s": vectors / seconds,
            }
        )

    for dim in DIMS:
        x, qs = _vectors(np, N_SCAN, dim)
        sample = x[:100_000]
        mean = lvq.fit(sample)
        codes = {}
        for name, bits, res in (("lvq8", 8, 0), ("lvq4", 4, 0), ("lvq4x8", 4, 8)):
            c = lvq.encode(sample, mean, bits=bits, residual_bits=res)
            tiled = lvq.LVQCodes(
                np.tile(c.codes, (10, 1)),
                np.tile(c.scale, 10),
                np.tile(c.bias, 10),
                bits,
                dim,
                None if c.residual is None else np.tile(c.residual, (10, 1)),
            )
            codes[name] = (kernels.LVQData.from_codes(tiled, mean), lvq.bytes_per_vector(dim, bits, res))
            del c
        datas = {"float32": (x, 4 * dim), **codes}
        it = iter(range(10**9))

        def one_query(backend, data, qs=qs, it=it):
            return lambda: kernels.search(qs[next(it) % 1000], data, K, "ip", backend=backend)

        def faiss_query(index, qs=qs, it=it):
            return lambda: index.search(qs[next(it) % 1000][None], K)

        for backend in backends:
            for enc, (data, bpv) in datas.items():
                f = one_query(backend, data)
                f()  # compile / warm
                t = _best(f)
                record(
                    backend, "scan", enc, dim, t, N_SCAN, N_SCAN * bpv, isa=default_isa if backend == "native" else None
                )
        if vnni:
            native.set_isa("avx512vnni")
            for enc in ("lvq8", "lvq4", "lvq4x8"):
                data, bpv = datas[enc]
                f = one_query("native", data)
                f()
                record("native", "scan", enc, dim, _best(f), N_SCAN, N_SCAN * bpv, isa="avx512vnni")
            native.set_isa(default_isa)
        if threads == 1 and dim == 384:
            flat = faiss.IndexFlatIP(dim)
            flat.add(x)
            t = _best(faiss_query(flat))
            record("faiss-flat", "scan", "float32", dim, t, N_SCAN, N_SCAN * 4 * dim)
            del flat
            sq = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
            sq.train(sample)
            sq.add(x)
            t = _best(faiss_query(sq))
            record("faiss-sq8", "scan", "sq8", dim, t, N_SCAN, N_SCAN * dim)
            del sq
        del datas, codes
        # batch: 1,000 queries x 100k vectors
        xb = np.ascontiguousarray(x[:N_BATCH])
        del x
        pairs = M_BATCH * N_BATCH
        for backend in backends:
            kernels.search(qs[:20], xb, K, "ip", backend=backend)  # warm
            t = _best(lambda b=backend, qs=qs, xb=xb: kernels.search(qs, xb, K, "ip", backend=b), 2)
            record(
                backend,
                "batch",
                "float32",
                dim,
                t,
                pairs,
                pairs * 4 * dim,
                M_BATCH,
                default_isa if backend == "native" else None,
            )
        flat = faiss.IndexFlatIP(dim)
        flat.add(xb)
        t = _best(lambda flat=flat, qs=qs: flat.search(qs, K), 2)
        record("faiss-flat", "batch", "float32", dim, t, pairs, pairs * 4 * dim, M_BATCH)
        del flat, xb
    return out


def _row(r: dict, dram: float, faiss_ref: dict) -> str:
    ref = faiss_ref.get((r["op"], r["dim"], r["threads"], r["encoding"] == "float32"))
    vs = f"{r['vectors_per_s'] / ref:5.2f}x" if ref and not r["backend"].startswith("faiss") else "     "
    backend = r["backend"] + (f"-{r['isa']}" if r["isa"] else "")
    gb = f"{r['gbps']:7.1f}" if r["op"] == "scan" else "      -"
    pct = f"{100 * r['gbps'] / dram:5.0f}%" if r["op"] == "scan" else "     -"
    return (
        f"{backend:22s} {r['op']:5s} {r['encoding']:7s} {r['dim']:4d} {r['threads']:2d} "
        f"{gb} {pct} {r['vectors_per_s'] / 1e6:10.2f} {vs}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object last")
    ap.add_argument("--threads", default="1,2", help="thread counts to measure (comma separated)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    per: dict[int, dict] = {}
    for t in (int(v) for v in args.threads.split(",")):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(t),
            "OPENBLAS_NUM_THREADS": str(t),
            "MKL_NUM_THREADS": str(t),
            "GROVE_THREADS": str(t),
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(t)], env=env, cwd=ROOT, capture_output=True, text=True
        )
        if done.returncode != 0:
            sys.exit(f"the {t}-thread run failed:\n{done.stderr[-4000:]}")
        per[t] = json.loads(done.stdout.strip().splitlines()[-1])
    results = [r for p in per.values() for r in p["results"]]
    one = per.get(1) or next(iter(per.values()))
    dram = one["dram_gbps"]

    def pick(backend: str, op: str, enc: str, dim: int, threads: int) -> float | None:
        for r in results:
            if (r["backend"], r["op"], r["encoding"], r["dim"], r["threads"]) == (backend, op, enc, dim, threads):
                if r["backend"] != "native" or r["isa"] == one["describe"].get("isa"):
                    return r["vectors_per_s"]
        return None

    faiss_ref = {}
    for r in results:
        if r["backend"] == "faiss-flat":
            faiss_ref[(r["op"], r["dim"], r["threads"], True)] = r["vectors_per_s"]
        if r["backend"] == "faiss-sq8":
            faiss_ref[("scan", r["dim"], r["threads"], False)] = r["vectors_per_s"]

    print(f"describe(): {json.dumps(one['describe'])}")
    print(
        "DRAM read bandwidth (numpy sum over 2 GiB): "
        + ", ".join(f"{p['dram_gbps']:.1f} GB/s with {t} thread(s)" for t, p in per.items())
    )
    print("timings on a shared machine are noisy; 'vs faiss' = vectors/s over faiss flat (float32) or SQ8 (LVQ)")
    head = f"{'backend':22s} {'op':5s} {'enc':7s} {'dim':>4s} {'th':>2s} {'GB/s':>7s} {'%DRAM':>6s} {'Mvec/s':>10s}"
    print(head + " vs faiss")
    for r in results:
        print(_row(r, per[r["threads"]]["dram_gbps"], faiss_ref))
    best = one["describe"]["backend"]
    flat = pick("faiss-flat", "scan", "float32", 384, 1)
    sq8 = pick("faiss-sq8", "scan", "sq8", 384, 1)
    checks = []
    for enc in ("float32", "lvq8"):
        r = next(
            (
                r
                for r in results
                if (r["backend"], r["op"], r["encoding"], r["dim"], r["threads"]) == (best, "scan", enc, 384, 1)
                and (best != "native" or r["isa"] == one["describe"].get("isa"))
            ),
            None,
        )
        if r:
            checks.append(
                (
                    f"{enc} scan >= 60% of DRAM, 1 thread ({best})",
                    r["gbps"] >= 0.6 * dram,
                    f"{100 * r['gbps'] / dram:.0f}%",
                )
            )
    f32 = pick(best, "scan", "float32", 384, 1)
    l8 = pick(best, "scan", "lvq8", 384, 1)
    if flat and f32:
        checks.append(("float32 scan >= faiss IndexFlatIP", f32 >= flat, f"{f32 / flat:.2f}x"))
    if sq8 and l8:
        checks.append(("LVQ-8 scan >= 1.5x faiss SQ8 (vectors/s)", l8 >= 1.5 * sq8, f"{l8 / sq8:.2f}x"))
    for t in per:
        for dim in DIMS:
            ours, theirs = pick(best, "batch", "float32", dim, t), pick("faiss-flat", "batch", "float32", dim, t)
            if ours and theirs:
                checks.append(
                    (
                        f"batch 1000 x 100k dim {dim} >= faiss flat, {t} thread(s)",
                        ours >= theirs,
                        f"{ours / theirs:.2f}x",
                    )
                )
    print("targets:")
    for what, ok, val in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {what}: {val}")
    if args.json:
        summary = {
            "dram_gbps": dram,
            "dram_gbps_by_threads": {str(t): p["dram_gbps"] for t, p in per.items()},
            "describe": one["describe"],
            "results": results,
            "faiss": {"flat_vps": flat, "sq8_vps": sq8},
            "targets": [{"target": w, "pass": ok, "value": v} for w, ok, v in checks],
        }
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
