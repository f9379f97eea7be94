"""LeanVec / LVQ benchmark: recall@10 against QPS and bytes per vector, Grove codecs against faiss, one run.

    python bench/leanvec.py [--data ../shared/data] [--queries 500] [--out bench/results]

One search thread (numba and faiss), k = 10, one query per call (as a service sees them), no tenant filter,
both query sets of the real data set (``queries_id``, ``queries_ood``; the first ``--queries`` are measured
and the rest is the held-out query sample LeanVec-OOD learns from). Grove side: a collection per configuration
through the embedded SDK, trained and indexed (Curator tree over the primary codes, rerank from the rows),
swept over ``ef``. A second part repeats float32, LVQ-8 and LeanVec-OOD with the real tenants (owners and
team grants) on the filtered tenant queries (``--tenant-queries``). faiss IVF-SQ8,
IVF-PQ and HNSW-SQ8 are built in the same run (builds may use 2 threads; searches use 1). Also times
learning the projections on a synthetic 100k x 384 set with 10k queries.

Writes ``leanvec.md`` (table), ``leanvec.png`` (plot) and ``leanvec.json`` (every point) under ``--out``.
The machine is shared: absolute QPS is noisy (+-30% or worse); compare methods within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from datasets import qps_at, tie_aware_recall, true_scores  # noqa: E402

DEFAULT_DATA = HERE.parent.parent / "shared" / "data"
K = 10
#: the reference configuration whose tree scans full float32 vectors (no scan codes)
FULL_F32 = "Grove float32 scanned in full (reference)"


def timed(search, queries: np.ndarray, passes: int = 2) -> tuple[np.ndarray, float]:
    """Run ``search(q[1, D]) -> ids[k]`` for each query; return the ids and the QPS of the fastest of
    ``passes`` passes (the machine is shared: a slow pass is someone else's load)."""
    out = np.full((len(queries), K), -1, np.int64)
    search(queries[:1])  # warm up (numba compilation, caches)
    best = np.inf
    for _ in range(passes):
        t0 = time.perf_counter()
        for i in range(len(queries)):
            ids = search(queries[i : i + 1])
            out[i, : len(ids)] = ids[:K]
        best = min(best, time.perf_counter() - t0)
    return out, len(queries) / best


# ---------------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------------
def train_and_index(col, cfg, q_train: np.ndarray) -> tuple[float, dict]:
    """Learn the collection's codec from the held-out queries (compressed configs) and build its index: the
    seconds both took, and the collection's stats after."""
    t0 = time.perf_counter()
    if cfg is not None:
        col.train_compression(query_sample=q_train)
    col.build_index()
    return time.perf_counter() - t0, col.stats()


def grove_methods(base: np.ndarray, q_train: np.ndarray, tmp: Path):
    """(name, build seconds, RAM bytes per vector, search factory(ef) -> fn, sweep, info) per Grove collection.

    Each is a collection of the embedded SDK holding every vector as one tenant, trained (``train_compression``
    with the held-out queries) and indexed (``build_index``): the Curator tree scans the primary codes and the
    rows rerank. RAM per vector is the collection's ``stats()["total_bytes"]`` (rows, scan codes, tree, id map,
    ACL) over the vector count.
    """
    from grove_client import LVQ, Client, LeanVec

    # dense around recall 0.95 on OOD queries (ef ~1.5k-2.5k), where QPS@0.95 is interpolated
    sweep = [None, 256, 512, 1024, 1536, 1792, 2048, 2304, 2560, 3072, 4096]
    configs = [
        ("Grove float32", None),
        ("Grove LVQ-8", LVQ(8)),
        ("Grove LVQ-4x8", LVQ(4, 8)),
        ("Grove LeanVec-ID 128 + LVQ-8/LVQ-8", LeanVec(128, "id", "lvq8", "lvq8")),
        ("Grove LeanVec-OOD 128 + LVQ-8/LVQ-8", LeanVec(128, "ood", "lvq8", "lvq8")),
        ("Grove LeanVec-OOD 128 + LVQ-4/LVQ-8", LeanVec(128, "ood", "lvq4", "lvq8")),
        ("Grove LeanVec-OOD 128 + LVQ-4/LVQ-4", LeanVec(128, "ood", "lvq4", "lvq4")),
        # reference: the tree scans full float32 vectors (a rotation, no reduction, no quantization), i.e. what a
        # float32 collection would cost without its 4-bit scan codes
        (FULL_F32, LeanVec(384, "id", "float32", "float32")),
    ]
    ids = np.arange(len(base), dtype=np.int64)
    for i, (name, cfg) in enumerate(configs):
        client = Client(path=tmp / f"grove-{i}-{time.monotonic_ns()}")
        col = client.create_collection("bench", dim=base.shape[1], metric="ip", compression=cfg)
        for s in range(0, len(ids), 5000):
            col.upsert(ids[s : s + 5000], base[s : s + 5000], tenant="all")
        build, stats = train_and_index(col, cfg, q_train)

        def factory(ef, col=col):
            kw = {} if ef is None else {"ef": ef}

            def search(q):
                return np.asarray(col.search(q, k=K, tenant="all", **kw).ids)[0]

            return search

        info = {k: stats[k] for k in ("code_bytes_per_vector", "vectors_bytes", "scan_codes_bytes") if k in stats}
        yield name, build, stats["total_bytes"] / stats["vectors"], factory, sweep, info


def tenant_runs(data: Path, base: np.ndarray, q_train: np.ndarray, nq: int, tmp: Path) -> list[dict]:
    """float32, LVQ-8 and LeanVec-OOD collections holding the real tenants (owners + grants), searched with the
    filtered tenant queries: recall@10 (tie-aware, against the filtered ground truth) and QPS per ef."""
    from grove_client import LVQ, Client, LeanVec

    owner = np.load(data / "base_tenant.npy")
    offs, members = np.load(data / "tenant_offsets.npy"), np.load(data / "tenant_members.npy")
    names = [t["name"] for t in json.loads((data / "tenants.json").read_text())]
    tq, qv = np.load(data / "tenant_queries.npy")[:nq], np.load(data / "tenant_queries.f32.npy")[:nq]
    gt, gts = np.load(data / "gt_tenant_top10_ids.npy")[:nq], np.load(data / "gt_tenant_top10_scores.npy")[:nq]
    out = []
    for i, (name, cfg) in enumerate(
        [("Grove float32", None), ("Grove LVQ-8", LVQ(8)), ("Grove LeanVec-OOD 128 + LVQ-8/LVQ-8", LeanVec(128, "ood"))]
    ):
        client = Client(path=tmp / f"tenants-{i}")
        col = client.create_collection("bench", dim=base.shape[1], metric="ip", compression=cfg)
        for t in np.unique(owner):
            rows = np.flatnonzero(owner == t)
            col.upsert(rows.astype(np.int64), base[rows], tenant=names[t])
        for t in range(len(names)):
            vis = members[offs[t] : offs[t + 1]]
            vis = vis[owner[vis] != t]
            if len(vis):
                col.grant(vis.astype(np.int64), tenant=names[t])
        build, stats = train_and_index(col, cfg, q_train)
        curve = []
        for ef in (None, 64, 128, 256, 512, 1024):
            kw = {} if ef is None else {"ef": ef}
            got = np.full((nq, K), -1, np.int64)
            col.search(qv[:1], k=K, tenant=names[int(tq[0, 2])], **kw)
            t0 = time.perf_counter()
            for j in range(nq):
                ids = np.asarray(col.search(qv[j : j + 1], k=K, tenant=names[int(tq[j, 2])], **kw).ids)[0]
                got[j, : len(ids)] = ids
            qps = nq / (time.perf_counter() - t0)
            rec = tie_aware_recall(got, true_scores(base, qv, got), gt, gts, k=K)
            curve.append(dict(param=ef, recall=rec, qps=qps))
            print(f"tenants {name:40s} ef={ef!s:5s} recall@10={rec:.4f} qps={qps:8.1f}", flush=True)
        out.append(
            dict(set="tenants", method=name, build_s=build, bytes_per_vector=stats["total_bytes"] / stats["vectors"],
                 curve=curve, info={})
        )  # fmt: skip
        client.close()
    return out


def faiss_methods(base: np.ndarray, build_threads: int):
    import faiss

    d = base.shape[1]
    n = len(base)
    nlist = 512
    specs = [
        ("faiss Flat IP (exact)", lambda: faiss.IndexFlatIP(d), None, [None]),
        (
            f"faiss IVF{nlist}-SQ8",
            lambda: faiss.IndexIVFScalarQuantizer(
                faiss.IndexFlatIP(d), d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
            ),
            "nprobe",
            [1, 2, 4, 8, 16, 32, 64],
        ),
        (
            f"faiss IVF{nlist}-PQ96x8",
            lambda: faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, 96, 8, faiss.METRIC_INNER_PRODUCT),
            "nprobe",
            [1, 2, 4, 8, 16, 32, 64],
        ),
        (
            "faiss HNSW32-SQ8",
            lambda: faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_8bit, 32, faiss.METRIC_INNER_PRODUCT),
            "efSearch",
            [10, 16, 32, 64, 128, 256],
        ),
    ]
    for name, make, knob, sweep in specs:
        faiss.omp_set_num_threads(build_threads)
        t0 = time.perf_counter()
        idx = make()
        if not idx.is_trained:
            idx.train(base)
        idx.add(base)
        build = time.perf_counter() - t0
        faiss.omp_set_num_threads(1)
        nbytes = len(faiss.serialize_index(idx)) / n

        def factory(param, idx=idx, knob=knob):
            if knob == "nprobe":
                idx.nprobe = param
            elif knob == "efSearch":
                idx.hnsw.efSearch = param

            def search(q):
                return idx.search(q, K)[1][0]

            return search

        yield name, build, nbytes, factory, sweep, {"knob": knob}


def training_time(seed: int = 0) -> dict[str, float]:
    """Seconds to learn each projection from 100k x 384 vectors and 10k queries (synthetic, shifted)."""
    from engine.quant import leanvec

    rng = np.random.default_rng(seed)
    d = 384
    rot, _ = np.linalg.qr(rng.standard_normal((d, d)))
    i = np.arange(1, d + 1)
    x = ((rng.standard_normal((100_000, d)) / np.sqrt(i)) @ rot.T).astype(np.float32)
    q = ((rng.standard_normal((10_000, d)) * np.where(i > 64, 1.0, 0.2) / i**0.25) @ rot.T).astype(np.float32)
    out = {}
    t0 = time.perf_counter()
    leanvec.fit_id(x, 128)
    out["id"] = time.perf_counter() - t0
    for method in leanvec.OOD_METHODS:
        t0 = time.perf_counter()
        p = leanvec.fit_ood(x, q, 128, method=method)
        out[f"ood-{method}" + (f" (chose {p.method})" if method == "auto" else "")] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--queries", type=int, default=500, help="queries measured per set")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--skip-faiss", action="store_true")
    ap.add_argument("--tenant-queries", type=int, default=1000, help="filtered tenant queries measured (0: skip)")
    a = ap.parse_args()

    import numba

    numba.set_num_threads(1)
    from engine import kernels

    data = Path(a.data)
    base = np.load(data / "base_vectors.f16.npy").astype(np.float32)
    sets = {}
    for name in ("id", "ood"):
        q = np.load(data / f"queries_{name}.f32.npy")
        sets[name] = dict(
            test=q[: a.queries],
            train=q[a.queries :],
            gt=np.load(data / f"gt_{name}_top100_ids.npy")[: a.queries],
            gt_s=np.load(data / f"gt_{name}_top100_scores.npy")[: a.queries],
        )
    env = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg(),
        "kernels": kernels.describe() | {"threads": 1},
        "n": len(base),
        "dim": base.shape[1],
        "queries_per_set": a.queries,
    }
    print(json.dumps(env))
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="grove-leanvec-"))
    for qset, s in sets.items():
        methods = list(grove_methods(base, s["train"], tmp))
        if not a.skip_faiss and qset == "id":
            faiss_built = list(faiss_methods(base, a.build_threads))
        methods += [] if a.skip_faiss else faiss_built
        for name, build, nbytes, factory, sweep, info in methods:
            curve = []
            for param in sweep:
                ids, qps = timed(factory(param), s["test"])
                rec = tie_aware_recall(ids, true_scores(base, s["test"], ids), s["gt"], s["gt_s"], k=K)
                curve.append(dict(param=param, recall=rec, qps=qps))
                print(f"{qset:3s} {name:40s} param={param!s:5s} recall@10={rec:.4f} qps={qps:8.1f}", flush=True)
            results.append(dict(set=qset, method=name, build_s=build, bytes_per_vector=nbytes, curve=curve, info=info))
    if a.tenant_queries:
        results += tenant_runs(data, base, sets["ood"]["train"], a.tenant_queries, tmp)
    env["load_avg_end"] = os.getloadavg()
    print("training the projections on 100k x 384 + 10k queries ...", flush=True)
    train = training_time()
    print(json.dumps(train))

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "leanvec.json").write_text(json.dumps(dict(env=env, results=results, training_s=train), indent=1))
    table = render_table(results, env, train)
    (out / "leanvec.md").write_text(table)
    print(table)
    plot(results, out / "leanvec.png")
    print(f"wrote {out / 'leanvec.md'}, {out / 'leanvec.png'}, {out / 'leanvec.json'}")


def render_table(results, env, train) -> str:
    f32 = {r["set"]: r for r in results if r["method"] == "Grove float32"}
    full = {r["set"]: r for r in results if r["method"] == FULL_F32}
    lines = [
        "# LeanVec / LVQ benchmark",
        "",
        f"N = {env['n']} x {env['dim']} (real documentation embeddings), {env['queries_per_set']} queries per set, "
        "k = 10, one search thread, one query per call through the embedded SDK, no tenant filter (one tenant owns "
        "every vector). Grove = a collection with the Curator index (its leaves scanned best first by the primary "
        "scan codes, rerank from the rows), swept over ef (None = the default). Noisy shared 2-core machine "
        f"(load average {env['load_avg_start'][0]:.1f} at start, {env['load_avg_end'][0]:.1f} at end): "
        "compare within the run.",
        "",
        "| set | method | bytes/vec | vs f32 bytes | build s | QPS@0.90 | QPS@0.95 | x f32 @0.95 | x full f32 @0.95 "
        "| max recall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        curve = [(p["recall"], p["qps"]) for p in r["curve"]]
        q90, q95 = qps_at(curve, 0.90), qps_at(curve, 0.95)
        base95 = qps_at([(p["recall"], p["qps"]) for p in f32[r["set"]]["curve"]], 0.95)
        full95 = qps_at([(p["recall"], p["qps"]) for p in full[r["set"]]["curve"]], 0.95) if r["set"] in full else None

        def fmt(v, spec=".0f"):
            return "-" if v is None else format(v, spec)

        lines.append(
            f"| {r['set']} | {r['method']} | {r['bytes_per_vector']:.0f} | "
            f"{r['bytes_per_vector'] / (4 * env['dim']):.2f} | {r['build_s']:.1f} | {fmt(q90)} | {fmt(q95)} | "
            f"{fmt(q95 / base95 if q95 and base95 else None, '.2f')} | "
            f"{fmt(q95 / full95 if q95 and full95 else None, '.2f')} | {max(c[0] for c in curve):.4f} |"
        )
    lines += ["", "Projection training on 100k x 384 vectors + 10k queries (synthetic, shifted), seconds:", ""]
    lines += [f"- {k}: {v:.1f}" for k, v in train.items()]
    lines += [
        "",
        "Grove bytes/vec = the collection's RAM (stats total_bytes: rows, scan codes, tree, shortlists, id map) / N;",
        "faiss = serialized index / N. Grove float32 keeps the float32 rows *and* 4-bit PCA scan codes (the tree",
        f"scans the codes, then reranks from the rows); '{FULL_F32}' is a collection whose tree scans the",
        "full float32 vectors instead (LeanVec(384, 'id', 'float32', 'float32'): a rotation, no reduction): the",
        "'x full f32' column compares with it.",
    ]
    return "\n".join(lines) + "\n"


def plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [q for q in ("id", "ood", "tenants") if any(r["set"] == q for r in results)]
    fig, axes = plt.subplots(1, len(sets), figsize=(7 * len(sets), 6), sharey=True)
    for ax, qset in zip(axes, sets):
        for r in results:
            if r["set"] != qset:
                continue
            rec = [min(max(p["recall"], 0.01), 0.9995) for p in r["curve"]]  # the logit axis has no 0 or 1
            qps = [p["qps"] for p in r["curve"]]
            style = "-o" if r["method"].startswith("Grove") else "--s"
            ax.plot(rec, qps, style, label=f"{r['method']} ({r['bytes_per_vector']:.0f} B/vec)", markersize=4)
        ax.set_xscale("logit")
        ax.set_yscale("log")
        ax.set_xlabel("recall@10 (tie-aware; 1.0 drawn at 0.9995)")
        what = "filtered tenant queries" if qset == "tenants" else f"queries_{qset}, no filter"
        ax.set_title(f"{what}: 1 thread, k=10, Grove = Curator index over codes")
        ax.grid(True, which="both", alpha=0.3)
        ax.axvline(0.95, color="grey", lw=0.8)
    axes[0].set_ylabel("queries per second")
    axes[1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
