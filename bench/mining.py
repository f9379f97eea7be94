"""Hard-negative mining throughput against faiss in the same run, and the PRF option's effect on recall.

    python bench/mining.py [--queries 2999] [--threads 1] [--repeat 3]

1. Exact top-100 over the full base (84k x 384), queries/s: faiss ``IndexFlatIP``; Grove's blocked GEMM
   kernel (``engine.kernels.gemm``); Grove's scan kernel (``engine.kernels.topk``, on a subset: it is slow).
2. Whole mining calls (``engine.training.mine_hard_negatives``: num_negatives=5, range_max=100,
   relative_margin=0.05, positives scored and excluded), with the GEMM search and with faiss as the search;
   and acceptance-style per-tenant mining (each query mined in its primary positive's owner tenant).
3. Recall@10 of the primary positive of the OOD queries: plain search, then vector PRF at a few settings.

BLAS and OpenMP thread counts are fixed before numpy loads (``--threads``); numba uses the same count. The
machine is shared, so figures are noisy: each timing is the best of ``--repeat`` runs.
"""

from __future__ import annotations

import os
import sys


def _threads_from_argv() -> str:
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return "1"


if __name__ == "__main__":
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = _threads_from_argv()

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datasets import DATA, RealData  # noqa: E402

from engine import kernels  # noqa: E402
from engine.training import mine_hard_negatives, prf_queries  # noqa: E402
from engine.training.search import ScopedVectors  # noqa: E402

MINING = dict(num_negatives=5, range_max=100, relative_margin=0.05, seed=0)


def best_of(repeat: int, fn) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def faiss_search_fn(index):
    def search(queries: np.ndarray, depth: int):
        scores, ids = index.search(queries, depth)
        return ids.astype(np.int64), scores

    return search


def load_ood(n: int) -> tuple[np.ndarray, list[list[int]], np.ndarray]:
    q = np.load(DATA / "queries_ood.f32.npy")[:n]
    pairs = np.load(DATA / "ood_positive_pairs.npy")
    pos: dict[int, list[int]] = {}
    primary = np.full(q.shape[0], -1, np.int64)
    for qi, pid, is_primary in pairs.tolist():
        if qi < q.shape[0]:
            pos.setdefault(qi, []).append(pid)
            if is_primary:
                primary[qi] = pid
    return q, [pos[i] for i in range(q.shape[0])], primary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=2999)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scan-queries", type=int, default=200, help="queries for the (slow) scan kernel")
    a = ap.parse_args()

    import faiss
    import numba

    numba.set_num_threads(a.threads)
    faiss.omp_set_num_threads(a.threads)
    data = RealData()
    base = data.base
    q, positives, primary = load_ood(a.queries)
    m = q.shape[0]
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    view = ScopedVectors(base)
    scan = ScopedVectors(base, method="scan")
    view.search(q[:4], 100)  # compile / warm
    scan.search(q[:2], 100)
    print(f"# base {base.shape}, {m} OOD queries, threads {a.threads}, faiss {faiss.__version__}")
    print(f"# kernels {kernels.describe()}")
    print("# timings: best of", a.repeat, "on a shared 2-core machine; noisy")

    rows = []
    t_faiss, (_, truth) = best_of(a.repeat, lambda: index.search(q, 100))
    rows.append(("exact top-100, faiss IndexFlatIP", m / t_faiss, 1.0, 1.0))
    t_gemm, (ids_g, _) = best_of(a.repeat, lambda: view.search(q, 100))
    rows.append(("exact top-100, Grove gemm kernel", m / t_gemm, t_faiss / t_gemm, float((ids_g == truth).mean())))
    ns = min(a.scan_queries, m)
    t_scan, (ids_s, _) = best_of(1, lambda: scan.search(q[:ns], 100))
    rows.append(
        (
            "exact top-100, Grove scan kernel",
            ns / t_scan,
            (ns / t_scan) / (m / t_faiss),
            float((ids_s == truth[:ns]).mean()),
        )
    )
    t_mine, mined = best_of(a.repeat, lambda: mine_hard_negatives(view.search, view.score, q, positives, **MINING))
    rows.append(("mine (gemm search), rel. margin 0.05", m / t_mine, t_faiss / t_mine, None))
    fs = faiss_search_fn(index)
    t_mine_f, _ = best_of(a.repeat, lambda: mine_hard_negatives(fs, view.score, q, positives, **MINING))
    rows.append(("mine (faiss search), rel. margin 0.05", m / t_mine_f, t_faiss / t_mine_f, None))

    # acceptance-style: each query mined in the owner tenant of its primary positive
    nt = min(500, m)
    owner = data.base_tenant[primary[:nt]]
    groups = {int(t): np.flatnonzero(owner == t) for t in np.unique(owner)}
    views = {t: ScopedVectors(base, data.visible(t).astype(np.int64)) for t in groups}

    def per_tenant():
        out = []
        for t, js in groups.items():
            v = views[t]
            ok = [[p for p in positives[j] if v.rows_of(np.array([p]))[0] >= 0] for j in js]
            out.append(mine_hard_negatives(v.search, v.score, q[js], ok, **MINING))
        return out

    t_ten, _ = best_of(a.repeat, per_tenant)
    rows.append((f"mine per tenant ({len(groups)} tenants)", nt / t_ten, None, None))
    rows.append(("mine with the ANN index", None, None, None))

    print()
    print(f"| {'what':44} | {'queries/s':>10} | {'x faiss':>8} | {'id match':>8} |")
    print(f"|{'-' * 46}|{'-' * 12}|{'-' * 10}|{'-' * 10}|")
    for name, qps, ratio, match in rows:
        qps_s = "n/a" if qps is None else f"{qps:,.0f}"
        ratio_s = "" if ratio is None else f"{ratio:.2f}"
        match_s = "" if match is None else f"{match:.4f}"
        print(f"| {name:44} | {qps_s:>10} | {ratio_s:>8} | {match_s:>8} |")
    print("\n(ANN: no ANN index in engine/ yet; `exact=False` needs one. id match: share of ids equal to faiss's)")
    print()
    print(mined.summary())

    # PRF: recall@10 of the primary positive
    top_ids, top_s = view.search(q, 10)
    tv = view.vectors(top_ids)
    plain = float((top_ids == primary[:, None]).any(axis=1).mean())
    print()
    print(f"| {'search':28} | {'recall@10 primary':>17} | {'delta':>7} |")
    print(f"|{'-' * 30}|{'-' * 19}|{'-' * 9}|")
    print(f"| {'plain':28} | {plain:17.4f} | {'':>7} |")
    for depth, beta in ((3, 0.1), (3, 0.25), (5, 0.25), (3, 0.5), (10, 0.5), (3, 1.0)):
        moved = prf_queries(q, tv, top_s, depth=depth, alpha=1.0, beta=beta)
        ids, _ = view.search(moved, 10)
        r = float((ids == primary[:, None]).any(axis=1).mean())
        print(f"| {f'PRF depth={depth} beta={beta}':28} | {r:17.4f} | {r - plain:+7.4f} |")


if __name__ == "__main__":
    main()
