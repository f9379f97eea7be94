"""Tree build benchmark: the refined clustering tree against the top-down one it starts from, one run.

    python bench/tree_build.py [--data ../shared/data] [--queries 1000] [--big 1000000] [--out bench/results]

Both trees are built the way the Curator index builds them (``ClusterTree.train``, fanout 16, leaves of <= 64,
seed 0; ``build="topdown"`` is the old build, routed greedily, ``build="refined"`` the new one, routed by a
beam descent) on the 84k real passages, and compared by:

1. **Leaf coverage**: rows placed by each tree's own rule; per query, leaves ordered by exact centroid score
   (the search's priority, squared L2 to the centroid); the share of the true top-10 inside the leaves fully
   scanned within 2.5k / 5k / 10k / 15k entries (OOD and ID queries). A flat k-means of the same leaf count
   (faiss, 20 iterations) is the reference. "walk" orders the leaves as the search's best-first walk does
   (exact centroids, shortlists of <= 128 entries), OOD only.
2. **End to end**: a collection of the embedded SDK holding every vector as one tenant (float32, and
   ``LeanVec(128, "ood", "lvq8", "lvq8")`` trained on the held-out OOD queries), built with each tree
   (``GROVE_TREE_BUILD``), recall@10 (tie-aware) vs QPS over an ef sweep for the first ``--queries`` OOD
   queries: one search thread, one query per call. Old and new points are timed alternately, best of
   ``--repeats``; entries scanned per query are counted in a separate untimed pass.
3. **Training time** on 84k, and on ``--big`` vectors (the 84k tiled with noise, re-normalised): the tree
   trained on all of them, and the Curator path (a 100k sample standing for them, then every row routed).

Writes ``tree_build.md`` and ``tree_build.json`` under ``--out``. The machine is shared: absolute QPS is noisy;
compare old and new within one run.
"""

from __future__ import annotations

import argparse
import heapq
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
sys.path.insert(0, str(HERE.parent / "clients"))
sys.path.insert(0, str(HERE.parent))  # this checkout's engine, not an installed copy
from datasets import qps_at, tie_aware_recall, true_scores  # noqa: E402

DEFAULT_DATA = HERE.parent.parent / "shared" / "data"
K = 10
BUDGETS = (2500, 5000, 10_000, 15_000)
BUILDS = ("topdown", "refined")
SWEEP = (256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
TREE = dict(fanout=16, max_leaf_size=64, seed=0)


# ---------------------------------------------------------------------------------------------- coverage
def coverage(cents: np.ndarray, leaf_of: np.ndarray, q: np.ndarray, gt: np.ndarray) -> dict[int, float]:
    """Share of ``gt`` (true top-10 rows) in the leaves fully scanned within each budget, leaves ordered by
    ``|c|^2 - 2 q.c`` per query. ``cents``: leaf centroids; ``leaf_of``: the leaf index of each row."""
    n_leaves = cents.shape[0]
    size = np.bincount(leaf_of, minlength=n_leaves)
    hits = {b: 0 for b in BUDGETS}
    cn = np.einsum("ij,ij->i", cents, cents)
    for s in range(0, q.shape[0], 256):
        pri = cn[None, :] - 2.0 * q[s : s + 256] @ cents.T
        order = np.argsort(pri, axis=1, kind="stable")
        pos = np.empty_like(order)
        np.put_along_axis(pos, order, np.arange(n_leaves)[None, :].repeat(order.shape[0], 0), axis=1)
        end = np.cumsum(size[order], axis=1)  # entries scanned once the leaf at each position is done
        g = leaf_of[gt[s : s + 256]]
        done = np.take_along_axis(end, np.take_along_axis(pos, g, axis=1), axis=1)
        for b in BUDGETS:
            hits[b] += int((done <= b).sum())
    return {b: hits[b] / gt.size for b in BUDGETS}


def walk_coverage(tree, leaf_rank: np.ndarray, q: np.ndarray, gt: np.ndarray, max_sl: int = 128) -> dict[int, float]:
    """As ``coverage``, with leaves in the order of the search's best-first walk over the tree (one tenant
    holding every row: a node of at most ``max_sl`` entries, or a leaf, is scanned whole)."""
    size = np.bincount(leaf_rank, minlength=tree.n_leaves)
    cum = np.concatenate([[0], np.cumsum(size)])
    entries = cum[tree.leaf_hi] - cum[tree.leaf_lo]
    cn = tree.cent_norm
    hits = {b: 0 for b in BUDGETS}
    for i in range(q.shape[0]):
        pri = cn - 2.0 * tree.centroids @ q[i]
        done_at = np.full(tree.n_leaves, np.iinfo(np.int64).max)
        heap, scanned = [(0.0, 0)], 0
        while heap and scanned < BUDGETS[-1]:
            _, node = heapq.heappop(heap)
            if entries[node] <= max_sl or tree.child_count[node] == 0:
                scanned += entries[node]
                done_at[tree.leaf_lo[node] : tree.leaf_hi[node]] = scanned
                continue
            c0 = tree.child_start[node]
            for c in range(c0, c0 + tree.child_count[node]):
                if entries[c]:
                    heapq.heappush(heap, (float(pri[c]), int(c)))
        done = done_at[leaf_rank[gt[i]]]
        for b in BUDGETS:
            hits[b] += int((done <= b).sum())
    return {b: hits[b] / gt.size for b in BUDGETS}


def coverage_part(base, sets, walk_queries: int) -> tuple[list[dict], dict]:
    import faiss

    from engine.index.tree import ClusterTree

    rows = np.arange(base.shape[0], dtype=np.int64)
    out, trees = [], {}
    for build in BUILDS:
        t0 = time.perf_counter()
        tree = ClusterTree.train(base, build=build, **TREE)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rank = tree.leaf_rank[tree.route(base, rows, parallel=True)]
        route_s = time.perf_counter() - t0
        trees[build] = dict(
            train_s=train_s,
            route_s=route_s,
            leaves=tree.n_leaves,
            nodes=tree.n_nodes,
            depth=int(tree.depth.max()),
            beam=tree.beam,
            max_leaf=int(np.bincount(rank).max()),
        )
        cents = tree.centroids[tree.leaf_node]
        row = dict(method=build, leaves=tree.n_leaves)
        for name, s in sets.items():
            row[name] = coverage(cents, rank, s["all_q"], s["all_gt"][:, :K])
        row["walk_ood"] = walk_coverage(
            tree, rank, sets["ood"]["all_q"][:walk_queries], sets["ood"]["all_gt"][:walk_queries, :K]
        )
        out.append(row)
        print(json.dumps(row), flush=True)
    n_leaves = trees["refined"]["leaves"]
    km = faiss.Kmeans(base.shape[1], n_leaves, niter=20, seed=0, max_points_per_centroid=256, verbose=False)
    km.train(base)
    _, lab = km.index.search(base, 1)
    row = dict(method=f"flat k-means ({n_leaves} leaves)", leaves=n_leaves)
    for name, s in sets.items():
        row[name] = coverage(km.centroids, lab[:, 0], s["all_q"], s["all_gt"][:, :K])
    out.append(row)
    print(json.dumps(row), flush=True)
    return out, trees


# ---------------------------------------------------------------------------------------------- end to end
def e2e_part(base, s, q_train, repeats: int, tmp: Path) -> list[dict]:
    from grove_client import Client, LeanVec
    from leanvec import train_and_index

    from engine.kernels import tree as ktree

    configs = [("float32", None), ("LeanVec-OOD 128 + LVQ-8/LVQ-8", LeanVec(128, "ood", "lvq8", "lvq8"))]
    ids = np.arange(base.shape[0], dtype=np.int64)
    q, gt, gts = s["test"], s["gt"], s["gt_s"]
    results = []
    for cname, cfg in configs:
        cols = {}
        for build in BUILDS:
            os.environ["GROVE_TREE_BUILD"] = build
            client = Client(path=tmp / f"{build}-{time.monotonic_ns()}")
            col = client.create_collection("bench", dim=base.shape[1], metric="ip", compression=cfg)
            for i in range(0, len(ids), 5000):
                col.upsert(ids[i : i + 5000], base[i : i + 5000], tenant="all")
            build_s, _ = train_and_index(col, cfg, q_train)
            cols[build] = (client, col, build_s)
        os.environ.pop("GROVE_TREE_BUILD", None)
        points = {b: {} for b in BUILDS}
        for _ in range(repeats):
            for ef in SWEEP:
                for build in BUILDS:  # alternate old and new at each point: load drifts hit both alike
                    col = cols[build][1]
                    col.search(q[:1], k=K, tenant="all", ef=ef)
                    got = np.full((q.shape[0], K), -1, np.int64)
                    t0 = time.perf_counter()
                    for i in range(q.shape[0]):
                        r = np.asarray(col.search(q[i : i + 1], k=K, tenant="all", ef=ef).ids)[0]
                        got[i, : len(r)] = r
                    qps = q.shape[0] / (time.perf_counter() - t0)
                    p = points[build].setdefault(ef, dict(ef=ef, qps=0.0))
                    p["qps"] = max(p["qps"], qps)
                    p["recall"] = tie_aware_recall(got, true_scores(base, q, got), gt, gts, k=K)
        # entries scanned per query: the search kernel returns them; counted untimed
        orig = ktree.search
        for build in BUILDS:
            col = cols[build][1]
            for ef in SWEEP:
                total = [0]

                def counting(*a, _orig=orig, _total=total):
                    n = _orig(*a)
                    _total[0] += n
                    return n

                ktree.search = counting
                try:
                    for i in range(q.shape[0]):
                        col.search(q[i : i + 1], k=K, tenant="all", ef=ef)
                finally:
                    ktree.search = orig
                points[build][ef]["scanned"] = total[0] / q.shape[0]
        for build in BUILDS:
            curve = [points[build][ef] for ef in SWEEP]
            for p in curve:
                print(
                    f"{cname:32s} {build:8s} ef={p['ef']:5d} recall@10={p['recall']:.4f} qps={p['qps']:8.1f} "
                    f"scanned={p['scanned']:8.0f}",
                    flush=True,
                )
            results.append(dict(config=cname, build=build, build_s=cols[build][2], curve=curve))
        for client, _, _ in cols.values():
            client.close()
    return results


def at_recall(curve: list[dict], key: str, target: float) -> float | None:
    """``key`` (qps, or scanned entries) at ``target`` recall, interpolated between the sweep's neighbours."""
    if key == "qps":
        return qps_at([(p["recall"], p["qps"]) for p in curve], target)
    pts = sorted((p["recall"], p[key]) for p in curve)
    for (r0, v0), (r1, v1) in zip(pts, pts[1:]):
        if r0 < target <= r1:
            return v0 + (v1 - v0) * (target - r0) / (r1 - r0)
    return None


# ---------------------------------------------------------------------------------------------- training time
def big_set(base: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` vectors: the base tiled, each copy with Gaussian noise (sd 0.03 per coordinate), re-normalised."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, base.shape[1]), np.float32)
    for s in range(0, n, base.shape[0]):
        e = min(n, s + base.shape[0])
        x[s:e] = base[: e - s] + np.float32(0.03) * rng.standard_normal((e - s, base.shape[1]), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def timing_part(base: np.ndarray, big: int, sample: int) -> list[dict]:
    from engine.index.tree import ClusterTree

    out = []

    def run(label: str, x: np.ndarray, fit: np.ndarray, population: int | None) -> None:
        rows = np.arange(x.shape[0], dtype=np.int64)
        for build in BUILDS:
            t0 = time.perf_counter()
            tree = ClusterTree.train(fit, build=build, population=population, **TREE)
            train_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            tree.route(x, rows, parallel=True)
            route_s = time.perf_counter() - t0
            row = dict(
                set=label,
                build=build,
                train_s=train_s,
                route_s=route_s,
                leaves=tree.n_leaves,
                depth=int(tree.depth.max()),
            )
            out.append(row)
            print(json.dumps(row), flush=True)

    run(f"{base.shape[0] // 1000}k real, tree on all", base, base, None)
    if big:
        x = big_set(base, big)
        run(f"{big / 1e6:g}M tiled+noise, tree on all", x, x, None)
        pick = np.sort(np.random.default_rng(0).choice(big, min(sample, big), replace=False))
        run(f"{big / 1e6:g}M tiled+noise, tree on a {len(pick) // 1000}k sample", x, x[pick], big)
    return out


# ---------------------------------------------------------------------------------------------- the run
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--queries", type=int, default=1000, help="OOD queries timed end to end (the rest train LeanVec)")
    ap.add_argument("--walk-queries", type=int, default=1000, help="OOD queries of the walk-order coverage")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per point (best QPS kept)")
    ap.add_argument("--big", type=int, default=1_000_000, help="vectors of the scaling run (0: skip)")
    ap.add_argument("--sample", type=int, default=100_000, help="the Curator's training sample (train_size)")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args()

    import numba

    import engine
    from engine import kernels

    data = Path(a.data)
    base = np.load(data / "base_vectors.f16.npy").astype(np.float32)
    sets = {}
    for name in ("ood", "id"):
        q = np.load(data / f"queries_{name}.f32.npy")
        gt = np.load(data / f"gt_{name}_top100_ids.npy")
        sets[name] = dict(
            all_q=q,
            all_gt=gt,
            test=q[: a.queries],
            train=q[a.queries :],
            gt=gt[: a.queries],
            gt_s=np.load(data / f"gt_{name}_top100_scores.npy")[: a.queries],
        )
    env = dict(
        machine=platform.machine(),
        cpus=os.cpu_count(),
        load_avg_start=os.getloadavg(),
        kernels=kernels.describe(),
        engine=str(Path(engine.__file__).parent),
        n=int(base.shape[0]),
        dim=int(base.shape[1]),
        queries=a.queries,
    )
    print(json.dumps(env), flush=True)

    cov, trees = coverage_part(base, sets, a.walk_queries)
    e2e = []
    if not a.skip_e2e:
        numba.set_num_threads(1)
        e2e = e2e_part(base, sets["ood"], sets["ood"]["train"], a.repeats, Path(tempfile.mkdtemp(prefix="grove-tree-")))
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    timing = timing_part(base, a.big, a.sample)
    env["load_avg_end"] = os.getloadavg()

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    everything = dict(env=env, coverage=cov, trees=trees, e2e=e2e, timing=timing)
    (out / "tree_build.json").write_text(json.dumps(everything, indent=1))
    table = render(env, cov, trees, e2e, timing)
    (out / "tree_build.md").write_text(table)
    print(table)
    print(f"wrote {out / 'tree_build.md'}, {out / 'tree_build.json'}")


def render(env, cov, trees, e2e, timing) -> str:
    def f(v, spec=".0f"):
        return "-" if v is None else format(v, spec)

    budgets = " | ".join(f"@{b // 1000 if b % 1000 == 0 else b / 1000}k" for b in BUDGETS)
    lines = [
        "# Tree build: refined (Lloyd-refined leaves, bottom-up inner levels, beam routing) vs top-down",
        "",
        f"N = {env['n']} x {env['dim']} real passages; fanout 16, leaves <= 64; 2 cores "
        f"(load average {env['load_avg_start'][0]:.1f} at start, {env['load_avg_end'][0]:.1f} at end).",
        "",
        "## Leaf coverage: share of the true top-10 in the leaves fully scanned within N entries",
        "",
        f"| tree | leaves | OOD {budgets} | ID {budgets} | OOD, walk order {budgets} |",
        "|---|---|" + "---|" * (3 * len(BUDGETS)),
    ]
    for r in cov:
        cells = [f"{r[s][b]:.3f}" for s in ("ood", "id") for b in BUDGETS]
        cells += [f"{r['walk_ood'][b]:.3f}" for b in BUDGETS] if "walk_ood" in r else ["-"] * len(BUDGETS)
        lines.append(f"| {r['method']} | {r['leaves']} | " + " | ".join(cells) + " |")
    lines += ["", "| tree | nodes | depth | routing beam | largest leaf | train s | route 84k rows s |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for b, t in trees.items():
        lines.append(
            f"| {b} | {t['nodes']} | {t['depth']} | {t['beam']} | {t['max_leaf']} | "
            f"{t['train_s']:.2f} | {t['route_s']:.2f} |"
        )
    if e2e:
        lines += [
            "",
            f"## End to end: OOD queries ({env['queries']}), recall@10 vs QPS, 1 thread, one query per call",
            "",
            "| collection | tree | build s | QPS@0.90 | QPS@0.95 | entries@0.95 | recall @ ef 1024 | max recall |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in e2e:
            c = r["curve"]
            r1024 = next((p["recall"] for p in c if p["ef"] == 1024), None)
            lines.append(
                f"| {r['config']} | {r['build']} | {r['build_s']:.1f} | {f(at_recall(c, 'qps', 0.90))} | "
                f"{f(at_recall(c, 'qps', 0.95))} | {f(at_recall(c, 'scanned', 0.95))} | {f(r1024, '.4f')} | "
                f"{max(p['recall'] for p in c):.4f} |"
            )
        lines += ["", "Ratios new / old at recall 0.95:", ""]
        for cname in dict.fromkeys(r["config"] for r in e2e):
            old, new = (next(r["curve"] for r in e2e if r["config"] == cname and r["build"] == b) for b in BUILDS)
            qo, qn = at_recall(old, "qps", 0.95), at_recall(new, "qps", 0.95)
            so, sn = at_recall(old, "scanned", 0.95), at_recall(new, "scanned", 0.95)
            lines.append(
                f"- {cname}: QPS x{f(qn / qo if qo and qn else None, '.2f')}, "
                f"entries scanned x{f(sn / so if so and sn else None, '.2f')}"
            )
        lines += ["", "| collection | tree | ef | recall@10 | QPS | entries scanned |", "|---|---|---|---|---|---|"]
        for r in e2e:
            for p in r["curve"]:
                lines.append(
                    f"| {r['config']} | {r['build']} | {p['ef']} | {p['recall']:.4f} | {p['qps']:.0f} | "
                    f"{p['scanned']:.0f} |"
                )
    lines += ["", "## Training time (seconds; route = every row placed, 2 threads)", ""]
    lines += ["| set | tree | train s | route s | leaves | depth |", "|---|---|---|---|---|---|"]
    for r in timing:
        lines.append(
            f"| {r['set']} | {r['build']} | {r['train_s']:.1f} | {r['route_s']:.1f} | {r['leaves']} | {r['depth']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
