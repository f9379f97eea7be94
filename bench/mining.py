"""Hard-negative mining throughput against faiss in the same run, exact and ANN, and the PRF option's effect.

    python bench/mining.py [--queries 2999] [--threads 1] [--repeat 3]

On the OOD queries of ``../shared/data`` (real query -> positive pairs), over the full base (84k x 384):

1. faiss ``IndexFlatIP``, top-100 batch search: the baseline every ratio is taken against.
2. Grove exact top-100: the raw kernel (``ScopedVectors`` -> ``engine.kernels.search``), ``Collection.search``
   (all vectors owned by one tenant ``"all"``, not indexed: exact), and ``col.mine_hard_negatives(exact=True)``;
   id agreement with faiss and tie-aware recall@100 against the exact ground truth.
3. Grove ANN after ``col.build_index()``: ``col.search(q, k=100, ef=E)`` (the Curator walk) for an ef sweep, all
   queries in one call and one query per call; recall@100 (tie-aware) against ``gt_ood_top100_ids.npy``; then
   its figures are for comparison: bulk mining does not use the walk.
4. Grove leaf probe (``engine.training.ann``: the tree's leaves as an inverted file, for batches): an ``nprobe``
   sweep of ``index_search_fn(col.index, tenant, ef=nprobe x mean leaf size)`` over chunks of 1,024 queries
   (built per chunk, as mining does); then ``col.mine_hard_negatives(exact=False)``, which searches with it, at
   the smallest nprobe reaching recall 0.95.
5. Mining settings: ``relative_margin=0.05, num_negatives=5, range_max=100``, all positives of each query.
6. PRF: recall@10 of the primary positive via ``col.search(..., prf=PRF(depth=3, alpha=1.0, beta=b))``, exact
   collection and indexed.

Targets (issue 6): exact >= 1x faiss; ANN >= 5x faiss at recall >= 0.95 (batch search, and the mining call).
BLAS / OpenMP / numba / native threads are all ``--threads`` (set before numpy loads). The machine is shared, so
figures are noisy: each batch timing is the best of ``--repeat`` runs. Writes ``bench/results/mining.md``.
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
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datasets import DATA, RealData, qps_at, tie_aware_recall, true_scores  # noqa: E402

from engine import kernels  # noqa: E402
from engine.db import RECALL_SAMPLE, Database  # noqa: E402
from engine.principal import ADMIN  # noqa: E402
from engine.training import ann  # noqa: E402
from engine.training.search import ScopedVectors  # noqa: E402
from engine.types import PRF  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
K = 100
TENANT = "all"
MINING = dict(num_negatives=5, range_max=100, relative_margin=0.05, seed=0)
EFS = (128, 256, 512, 1024, 2048, 3072, 4096, 6144)
NPROBES = (128, 192, 224, 240, 256, 288, 320, 384)
CHUNK = 1024  # queries per mining chunk (``mine_hard_negatives_stream``'s default chunk_size)
BETAS = (0.1, 0.3, 0.5)
TARGET_RECALL = 0.95


def best_of(repeat: int, fn) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def load_ood(n: int) -> tuple[np.ndarray, list[list[int]], np.ndarray, np.ndarray, np.ndarray]:
    """Queries, all positives per query, the primary positive, exact top-100 ids and scores."""
    q = np.load(DATA / "queries_ood.f32.npy")[:n]
    gt_ids = np.load(DATA / "gt_ood_top100_ids.npy")[:n].astype(np.int64)
    gt_s = np.load(DATA / "gt_ood_top100_scores.npy")[:n]
    pos: dict[int, list[int]] = {}
    primary = np.full(q.shape[0], -1, np.int64)
    for qi, pid, is_primary in np.load(DATA / "ood_positive_pairs.npy").tolist():
        if qi < q.shape[0]:
            pos.setdefault(qi, []).append(pid)
            if is_primary:
                primary[qi] = pid
    return q, [pos[i] for i in range(q.shape[0])], primary, gt_ids, gt_s


def probe_search(index, tenant_no: int, q: np.ndarray, depth: int, ef: int) -> np.ndarray:
    """The leaf-probe search as mining runs it: a search function per chunk of ``CHUNK`` queries; the ids."""
    out = []
    for s in range(0, q.shape[0], CHUNK):
        search = ann.index_search_fn(index, tenant_no, ef=ef)
        out.append(search(q[s : s + CHUNK], depth)[0])
    return np.concatenate(out)


def hit_at(ids: np.ndarray, primary: np.ndarray, k: int = 10) -> float:
    return float((ids[:, :k] == primary[:, None]).any(axis=1).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=2999)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="batch timings keep the best of this many runs")
    ap.add_argument("--out", type=Path, default=RESULTS / "mining.md")
    a = ap.parse_args()

    import faiss
    import numba

    faiss.omp_set_num_threads(a.threads)
    # faiss 1.15 only takes its BLAS path for large batches (default threshold 128,000): force it from 20
    # queries up, so that the baseline is its fastest at any --queries (at 2,999 queries it changes nothing)
    faiss.cvar.distance_compute_blas_threshold = 20
    numba.set_num_threads(min(a.threads, numba.config.NUMBA_NUM_THREADS))
    kernels.set_threads(a.threads)
    base = RealData().base
    q, positives, primary, gt_ids, gt_s = load_ood(a.queries)
    m = q.shape[0]

    def recall100(ids: np.ndarray) -> float:
        return tie_aware_recall(ids, true_scores(base, q, ids), gt_ids, gt_s, k=K)

    head = [
        f"base {base.shape[0]:,} x {base.shape[1]}, {m:,} OOD queries, top-{K}, threads {a.threads}, "
        f"faiss {faiss.__version__}",
        f"kernels: backend {kernels.backend()}, isa {kernels.describe().get('isa')}",
        f"batch timings: best of {a.repeat}; one-query-per-call: one pass; shared 2-core machine, figures are noisy",
        "faiss: BLAS path from 20 queries up (`faiss.cvar.distance_compute_blas_threshold = 20`)",
    ]
    for line in head:
        print("#", line)
    rows: list[tuple[str, float | None, str, str]] = []  # what, queries/s, id match vs faiss, recall@100

    def add(name: str, qps: float | None, match: float | None = None, rec: float | None = None) -> None:
        rows.append((name, qps, "" if match is None else f"{match:.4f}", "" if rec is None else f"{rec:.4f}"))
        qs = "n/a" if qps is None else f"{qps:,.0f}"
        ratio = "" if qps is None else f"{qps / qps_faiss:.2f}x"
        print(f"  {name:58} {qs:>9} q/s {ratio:>7}  match {rows[-1][2]:>6}  recall {rows[-1][3]:>6}", flush=True)

    # 1. faiss
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    index.search(q[:8], K)
    t_faiss, (_, f_ids) = best_of(a.repeat, lambda: index.search(q, K))
    f_ids = f_ids.astype(np.int64)
    qps_faiss = m / t_faiss
    add("faiss IndexFlatIP, batch", qps_faiss, 1.0, recall100(f_ids))

    # 2. Grove exact
    view = ScopedVectors(base)
    view.search(q[:8], K)  # load / compile
    t, (ids, _) = best_of(a.repeat, lambda: view.search(q, K))
    add("Grove exact, raw kernel (ScopedVectors), batch", m / t, float((ids == f_ids).mean()), recall100(ids))
    exact_raw_qps = m / t

    with tempfile.TemporaryDirectory(prefix="grove-mining-") as tmp:
        db = Database(tmp)
        col = db.create_collection("mining", dim=base.shape[1], metric="ip")
        t0 = time.perf_counter()
        for s in range(0, base.shape[0], 5000):
            part = np.arange(s, min(s + 5000, base.shape[0]), dtype=np.int64)
            col.upsert(part, base[part], tenant=TENANT, principal=ADMIN)
        t_ingest = time.perf_counter() - t0
        col.search(q[:8], k=K, tenant=TENANT, principal=ADMIN)
        t, res = best_of(a.repeat, lambda: col.search(q, k=K, tenant=TENANT, principal=ADMIN))
        exact_col_qps = m / t
        add("Grove exact, Collection.search, batch", m / t, float((res.ids == f_ids).mean()), recall100(res.ids))
        t, mined_exact = best_of(
            a.repeat,
            lambda: col.mine_hard_negatives(q, positives, tenant=TENANT, principal=ADMIN, exact=True, **MINING),
        )
        mine_exact_qps = m / t
        add("Grove mine_hard_negatives(exact=True)", m / t)

        # 5a. PRF on the exact collection
        prf_rows: dict[str, dict[str, float]] = {"plain": {}}
        plain = col.search(q, k=10, tenant=TENANT, principal=ADMIN)
        prf_rows["plain"]["exact"] = hit_at(plain.ids, primary)
        top10 = {"exact": plain.recall_at(gt_ids[:, :10])}
        for b in BETAS:
            r = col.search(q, k=10, tenant=TENANT, principal=ADMIN, prf=PRF(depth=3, alpha=1.0, beta=b))
            prf_rows.setdefault(f"PRF depth=3 alpha=1 beta={b}", {})["exact"] = hit_at(r.ids, primary)

        # 3. ANN
        t0 = time.perf_counter()
        built = col.build_index()
        t_build = time.perf_counter() - t0
        col.search(q[:8], k=K, tenant=TENANT, principal=ADMIN, ef=EFS[0])
        curve_batch, curve_one, sweep = [], [], []
        for ef in EFS:
            t, res = best_of(a.repeat, lambda ef=ef: col.search(q, k=K, tenant=TENANT, principal=ADMIN, ef=ef))
            rec = recall100(res.ids)
            qb = m / t
            t0 = time.perf_counter()
            for i in range(m):
                col.search(q[i : i + 1], k=K, tenant=TENANT, principal=ADMIN, ef=ef)
            q1 = m / (time.perf_counter() - t0)
            curve_batch.append((rec, qb))
            curve_one.append((rec, q1))
            sweep.append((ef, rec, qb, q1))
            add(f"Grove ANN ef={ef}, batch", qb, float((res.ids == f_ids).mean()), rec)
            add(f"Grove ANN ef={ef}, one query per call", q1, None, rec)
        depth = int(mined_exact.stats["depth"])  # the mining call searches this deep (range_max + most positives)

        # 4. leaf probe: the tree's leaves as an inverted file, a batch per chunk
        tenant_no = db.tenants.find(TENANT)
        mean_leaf = ann.LeafProbe(col.index, tenant_no).mean_leaf
        probe_search(col.index, tenant_no, q[:64], K, ef=int(NPROBES[0] * mean_leaf))  # load / compile
        curve_probe, probe_sweep = [], []
        for nprobe in NPROBES:
            ef = int(nprobe * mean_leaf)  # ceil(ef / mean leaf size) = nprobe leaves per query
            t, ids = best_of(a.repeat, lambda ef=ef: probe_search(col.index, tenant_no, q, K, ef))
            rec = recall100(ids)
            curve_probe.append((rec, m / t))
            probe_sweep.append((nprobe, ef, rec, m / t))
            add(f"Grove leaf probe nprobe={nprobe} (ef={ef:,}), batches of {CHUNK:,}", m / t,
                float((ids == f_ids).mean()), rec)  # fmt: skip
        ok = [s for s in probe_sweep if s[2] >= TARGET_RECALL]
        nprobe_mine, ef_probe = (ok[0][0], ok[0][1]) if ok else probe_sweep[-1][:2]
        t, mined_probe = best_of(
            a.repeat,
            lambda: col.mine_hard_negatives(
                q, positives, tenant=TENANT, principal=ADMIN, exact=False, ef=ef_probe, **MINING
            ),
        )
        mine_probe_qps = m / t
        add(f"Grove mine_hard_negatives(exact=False, ef={ef_probe:,}) with the leaf probe", m / t, None,
            mined_probe.recall)  # fmt: skip
        t, _ = best_of(a.repeat, lambda: probe_search(col.index, tenant_no, q, depth, ef_probe))
        add(f"  (its search alone: leaf probe nprobe={nprobe_mine}, depth {depth}, batches of {CHUNK:,})", m / t)
        t, _ = best_of(a.repeat, lambda: view.search(q[:RECALL_SAMPLE], K))
        exact256 = 256 / t

        # 5b. PRF on the indexed collection, at the index's default ef and at a larger one
        for label, ef in ((f"indexed, default ef ({col.index.ef})", None), ("indexed, ef=3072", 3072)):
            plain = col.search(q, k=10, tenant=TENANT, principal=ADMIN, ef=ef)
            prf_rows["plain"][label] = hit_at(plain.ids, primary)
            top10[label] = plain.recall_at(gt_ids[:, :10])
            for b in BETAS:
                r = col.search(q, k=10, tenant=TENANT, principal=ADMIN, ef=ef, prf=PRF(depth=3, alpha=1.0, beta=b))
                prf_rows[f"PRF depth=3 alpha=1 beta={b}"][label] = hit_at(r.ids, primary)
        db.close()

    # verdicts
    best_ann = max((s for s in sweep if s[1] >= TARGET_RECALL), key=lambda s: s[2], default=None)
    at95 = qps_at(curve_batch, TARGET_RECALL)
    top = max(sweep, key=lambda s: s[1])
    verdicts = [
        f"exact >= 1x faiss: search (Collection.search) {exact_col_qps / qps_faiss:.2f}x, raw kernel "
        f"{exact_raw_qps / qps_faiss:.2f}x, whole mining call {mine_exact_qps / qps_faiss:.2f}x -> "
        + ("HOLDS" if min(exact_col_qps, mine_exact_qps) >= qps_faiss else "DOES NOT HOLD (for every line)"),
    ]
    if best_ann is None:
        verdicts.append(
            f"Curator walk (ANN) >= 5x faiss at recall >= {TARGET_RECALL}: DOES NOT HOLD: no ef of the sweep reaches "
            f"{TARGET_RECALL} (best {top[1]:.4f} at ef={top[0]}, {top[2] / qps_faiss:.2f}x faiss)"
        )
    else:
        ratio = best_ann[2] / qps_faiss
        verdicts.append(
            f"Curator walk (ANN) >= 5x faiss at recall >= {TARGET_RECALL}: "
            + ("HOLDS" if ratio >= 5 else "DOES NOT HOLD")
            + f": best sweep point reaching it is ef={best_ann[0]}, recall {best_ann[1]:.4f}, "
            f"{best_ann[2]:,.0f} q/s batch = {ratio:.2f}x faiss (interpolated QPS at recall {TARGET_RECALL}: "
            f"{at95:,.0f} = {at95 / qps_faiss:.2f}x); bulk mining does not use the walk (leaf probe below)"
        )
    best_probe = max((s for s in probe_sweep if s[2] >= TARGET_RECALL), key=lambda s: s[3], default=None)
    if best_probe is None:
        top = max(probe_sweep, key=lambda s: s[2])
        verdicts.append(
            f"leaf probe >= 5x faiss at recall >= {TARGET_RECALL}: DOES NOT HOLD: no nprobe of the sweep reaches it "
            f"(best {top[2]:.4f} at nprobe={top[0]})"
        )
    else:
        ratio = best_probe[3] / qps_faiss
        at95p = qps_at(curve_probe, TARGET_RECALL)
        verdicts.append(
            f"leaf probe (batch ANN) >= 5x faiss at recall >= {TARGET_RECALL}: "
            + ("HOLDS" if ratio >= 5 else "DOES NOT HOLD")
            + f": nprobe={best_probe[0]} (ef={best_probe[1]:,}), recall {best_probe[2]:.4f}, {best_probe[3]:,.0f} "
            f"q/s = {ratio:.2f}x faiss (interpolated at recall {TARGET_RECALL}: {at95p:,.0f} = "
            f"{at95p / qps_faiss:.2f}x)"
        )
    verdicts.append(
        f"mining with the leaf probe (exact=False, ef={ef_probe:,}, nprobe={nprobe_mine}): "
        f"{mine_probe_qps / qps_faiss:.2f}x faiss, measured recall {mined_probe.recall:.4f} -> "
        + ("HOLDS" if mine_probe_qps >= 5 * qps_faiss and mined_probe.recall >= TARGET_RECALL else "DOES NOT HOLD")
        + f" for the whole call: besides its search (at depth 161, past the top-100) it applies the margin rules "
        f"and measures recall on {RECALL_SAMPLE} of every {CHUNK:,} queries with an exact search (the raw kernel, "
        f"{RECALL_SAMPLE} queries per call: {exact256:,.0f} q/s) and the ANN again"
    )
    at90 = qps_at(curve_batch, 0.9)
    if at90 is not None:
        verdicts.append(
            f"for reference: Curator walk, batch, at recall 0.90: {at90:,.0f} q/s = {at90 / qps_faiss:.2f}x faiss"
        )
    fives = [s for s in sweep if s[2] >= 5 * qps_faiss]
    if fives:
        s = max(fives, key=lambda s: s[1])
        verdicts.append(f"for reference: the Curator walk's best recall at >= 5x faiss is {s[1]:.4f} (ef={s[0]})")
    else:
        verdicts.append("for reference: no ef of the Curator sweep reaches 5x faiss")
    fives = [s for s in probe_sweep if s[3] >= 5 * qps_faiss]
    if fives:
        s = max(fives, key=lambda s: s[2])
        verdicts.append(f"for reference: the leaf probe's best recall at >= 5x faiss is {s[2]:.4f} (nprobe={s[0]})")
    else:
        verdicts.append("for reference: no nprobe of the leaf-probe sweep reaches 5x faiss")

    # report
    command = " ".join(["python bench/mining.py", *sys.argv[1:]])
    md = ["# Mining benchmark", "", f"Command: `{command}`", ""]
    md += [f"* {line}" for line in head]
    md += [
        f"* ingest {base.shape[0]:,} vectors (one tenant `{TENANT}`, batches of 5,000): {t_ingest:.1f} s; "
        f"build_index: {t_build:.1f} s (reported {built.get('build_s', 0):.1f} s)",
        "* id match: share of (query, rank) positions whose id equals faiss's; recall@100: tie-aware, against "
        "the exact ground truth `gt_ood_top100_ids.npy` (mining row: `MinedNegatives.recall`, measured by the "
        "call against exact search on `RECALL_SAMPLE` sampled queries per chunk of 1,024)",
        f"* leaf probe: `engine.training.ann.index_search_fn(col.index, tenant, ef=nprobe x mean leaf size "
        f"({mean_leaf:.1f}))`, built and run per chunk of {CHUNK:,} queries (as mining does), so each row includes "
        "reading the tenant's leaf lists; `mine_hard_negatives(exact=False)` searches with it",
        f"* mining: `relative_margin=0.05, num_negatives=5, range_max=100`, all positives of each query "
        f"(search depth {mined_exact.stats['depth']}); the exact=False call includes its recall measurement",
        "",
        "| what | queries/s | x faiss | id match vs faiss | recall@100 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, qps, match, rec in rows:
        qs, ratio = ("n/a", "") if qps is None else (f"{qps:,.0f}", f"{qps / qps_faiss:.2f}")
        md.append(f"| {name} | {qs} | {ratio} | {match} | {rec} |")
    md += ["", "## Targets", ""] + [f"* {v}" for v in verdicts]
    md += ["", "## Mining statistics", "", "exact:", "", "```", mined_exact.summary(), "```", ""]
    md += [f"ANN, leaf probe (ef={ef_probe:,}, nprobe={nprobe_mine}):", "", "```", mined_probe.summary(), "```", ""]
    for label, mined in (("leaf probe", mined_probe),):
        same = float((mined.ids == mined_exact.ids).all(axis=1).mean())
        md += [f"Rows of mined negatives identical between exact and ANN mining ({label}): {same:.4f}", ""]
    cols = list(prf_rows["plain"])
    md += ["## PRF: recall@10 of the primary positive", "", "| search | " + " | ".join(cols) + " |"]
    md += ["|---|" + "---:|" * len(cols)]
    for name, vals in prf_rows.items():
        cells = []
        for c in cols:
            d = vals[c] - prf_rows["plain"][c]
            cells.append(f"{vals[c]:.4f}" + ("" if name == "plain" else f" ({d:+.4f})"))
        md.append(f"| {name} | " + " | ".join(cells) + " |")
    at10 = ", ".join(f"{c} {v:.4f}" for c, v in top10.items())
    md += ["", f"Plain search recall@10 against the exact top-10: {at10}"]
    text = "\n".join(md) + "\n"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print()
    print(text)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
