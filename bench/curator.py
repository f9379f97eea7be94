"""The Curator index against faiss multi-tenant baselines built in the same run (one thread, k = 10).

    python bench/curator.py                       # both scenarios, all baselines (~10 min on 2 shared cores)
    python bench/curator.py --scenarios real --queries 300 --no-baselines    # Grove only, quick
    python bench/curator.py --scale 100000,250000,500000,1000000               # + the scale-up (slow)
    python bench/curator.py --sdk                 # Grove through grove_client instead of the index directly

Scenarios (``../shared/data``, see its README):

* ``real``: the data set's tenants: source tenants own their vectors, team tenants are granted theirs
  (~1.5 tenants per vector), with the data set's tenant queries and filtered ground truth.
* ``dense``: like the paper's arXiv set: 1,000 tenants, each source tenant spread over 10 random ones
  (seeded), so each vector is visible to ~10 tenants; queries are a seeded mix of the ID and OOD queries
  with uniformly drawn tenants; exact filtered ground truth is computed here.
* ``--scale``: the real tenants grown to N vectors by appending seeded perturbed copies of the real vectors
  (``x + 0.02 * noise``, renormalised: cosine ~0.93 to the original; copy c of vector i has the tenants of
  i); exact ground truth is computed here by brute force. Grove and MF-IVF only (per-tenant baselines
  would not fit in memory); MF-IVF there has min(4 sqrt(N), 1024) lists, trained on at most 256 points per
  list.

Measured per scenario: recall@10 (tie-aware) against QPS, Grove over an ``ef`` sweep and each baseline over
its knob; QPS at recall 0.90 and 0.95 (interpolated); memory; insert + grant and delete latency. Baselines
(curator.md §3.3): MF-IVF (one shared IVF-Flat, nlist = 4 sqrt(N), searched with an ``IDSelectorBatch`` of the
tenant's ids), MF-HNSW (one shared HNSW, M 32, efConstruction 64, same selector), PT-IVF (one index per
tenant: flat below 2,000 vectors, else IVF-Flat with sqrt(n) lists), PT-HNSW (one HNSW per tenant, M 32,
efConstruction 64). Memory of a faiss index is its serialised size; Grove's is its own structures plus the
float32 vectors. Timing passes are interleaved over all methods (``--rounds``, default 3) and each point
keeps its fastest pass; the machine is shared, so figures are noisy. Outputs: ``bench/results/curator.md``
(tables), ``curator.json`` and ``curator.png`` (recall/QPS plot).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import RealData, qps_at, tie_aware_recall, true_scores  # noqa: E402

K = 10
EF_SWEEP = (16, 32, 64, 128, 256, 512, 1024, 2048)
RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------------- scenarios
@dataclass
class Scenario:
    """Vectors, who owns and who sees them, and tenant queries with exact filtered ground truth."""

    name: str
    base: np.ndarray  # float32 [N, d], unit rows (metric ip)
    owner: np.ndarray  # int [N]
    visible: list[np.ndarray]  # per tenant: sorted rows it sees
    queries: np.ndarray  # float32 [nq, d]
    q_tenant: np.ndarray  # int [nq]
    gt_ids: np.ndarray  # [nq, K], -1 padded
    gt_scores: np.ndarray  # [nq, K], -inf padded

    @property
    def n_pairs(self) -> int:
        return int(sum(v.size for v in self.visible))

    def recall(self, ids: np.ndarray) -> float:
        return tie_aware_recall(ids, true_scores(self.base, self.queries, ids), self.gt_ids, self.gt_scores)


def exact_truth(base: np.ndarray, queries: np.ndarray, q_tenant: np.ndarray, visible: list[np.ndarray]):
    ids = np.full((len(queries), K), -1, np.int64)
    scores = np.full((len(queries), K), -np.inf, np.float32)
    for i, (q, t) in enumerate(zip(queries, q_tenant)):
        v = visible[int(t)]
        s = base[v] @ q
        top = np.lexsort((v, -s))[:K]
        ids[i, : top.size] = v[top]
        scores[i, : top.size] = s[top]
    return ids, scores


def real_scenario(data: RealData, nq: int) -> Scenario:
    gt_ids, gt_scores = data.tenant_truth
    visible = [data.visible(t).astype(np.int64) for t in range(len(data.names))]
    return Scenario("real", data.base, data.base_tenant.astype(np.int64), visible,
                    data.tenant_query_vectors[:nq], data.tenant_queries[:nq, 2].astype(np.int64),
                    gt_ids[:nq].astype(np.int64), gt_scores[:nq])  # fmt: skip


def dense_scenario(data: RealData, nq: int, n_tenants: int = 1000, per_source: int = 10, seed: int = 7) -> Scenario:
    """Each source tenant's vectors go to ``per_source`` random tenants out of ``n_tenants`` (seeded)."""
    rng = np.random.default_rng(seed)
    src = data.base_tenant
    spread = {int(s): rng.choice(n_tenants, per_source, replace=False) for s in np.unique(src)}
    parts: list[list[np.ndarray]] = [[] for _ in range(n_tenants)]
    for s, targets in spread.items():
        rows = np.flatnonzero(src == s)
        for t in targets.tolist():
            parts[t].append(rows)
    used = [t for t in range(n_tenants) if parts[t]]
    renumber = {t: i for i, t in enumerate(used)}
    visible = [np.sort(np.concatenate(parts[t])).astype(np.int64) for t in used]
    owner = np.array([renumber[int(spread[int(s)][0])] for s in src], np.int64)
    root = data.root
    pool = np.concatenate([np.load(root / "queries_ood.f32.npy"), np.load(root / "queries_id.f32.npy")])
    queries = pool[rng.permutation(pool.shape[0])[:nq]].astype(np.float32)
    q_tenant = rng.integers(0, len(used), nq)
    gt_ids, gt_scores = exact_truth(data.base, queries, q_tenant, visible)
    return Scenario("dense", data.base, owner, visible, queries, q_tenant, gt_ids, gt_scores)


def scaled_scenario(data: RealData, n: int, nq: int, seed: int = 11, noise: float = 0.02) -> Scenario:
    """The real tenants over ``n`` vectors: the real ones plus seeded perturbed copies (see the module doc)."""
    rng = np.random.default_rng(seed)
    n0 = data.base.shape[0]
    copy_of = np.arange(n) % n0
    base = np.empty((n, data.base.shape[1]), np.float32)
    base[:n0] = data.base[: min(n, n0)]
    for s in range(n0, n, 100_000):
        e = min(n, s + 100_000)
        x = data.base[copy_of[s:e]] + noise * rng.standard_normal((e - s, base.shape[1])).astype(np.float32)
        base[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    copies = (n + n0 - 1) // n0
    visible = []
    for t in range(len(data.names)):
        v = data.visible(t).astype(np.int64)
        rows = np.concatenate([v + c * n0 for c in range(copies)])
        visible.append(np.sort(rows[rows < n]))
    owner = data.base_tenant[copy_of].astype(np.int64)
    queries = data.tenant_query_vectors[:nq]
    q_tenant = data.tenant_queries[:nq, 2].astype(np.int64)
    gt_ids, gt_scores = exact_truth(base, queries, q_tenant, visible)
    return Scenario(f"scale-{n}", base, owner, visible, queries, q_tenant, gt_ids, gt_scores)


# ---------------------------------------------------------------------------------------------- Grove
class DirectGrove:
    """``CuratorIndex`` over a ``VectorTable`` (slot = row = id), built in bulk: the index as the lead embeds it."""

    label = "Grove (CuratorIndex)"

    def __init__(self, sc: Scenario, **params) -> None:
        from engine.index.curator import CuratorIndex
        from engine.index.table import VectorTable

        n = sc.base.shape[0]
        self.table = VectorTable(sc.base.shape[1], capacity=n)
        slots = self.table.allocate(n)
        self.table.put(slots, np.arange(n, dtype=np.int64), sc.base, 0)
        self.table.owner[:n] = sc.owner
        t0 = time.perf_counter()
        self.index = CuratorIndex.build(self.table, "ip", {t: v for t, v in enumerate(sc.visible) if v.size}, **params)
        self.build_s = time.perf_counter() - t0

    def search(self, q: np.ndarray, tenant: int, ef: int | None) -> np.ndarray:
        return self.index.search(q, K, tenant, ef=ef)[1][0]

    def own_bytes(self) -> dict[str, int]:
        return self.index.nbytes()


class SdkGrove:
    """The same through the SDK (``grove_client.Client(path=...)``): upsert, grant, ``build_index``, search."""

    label = "Grove (SDK, embedded)"

    def __init__(self, sc: Scenario, **params) -> None:
        import tempfile

        from grove_client import Client

        if params:
            raise SystemExit("--sdk uses the collection's own index parameters; drop the index options")
        self._tmp = tempfile.TemporaryDirectory()
        self.client = Client(path=self._tmp.name)
        self.col = self.client.create_collection("bench", dim=sc.base.shape[1], metric="ip")
        self.names = [f"t{t}" for t in range(len(sc.visible))]
        for t in np.unique(sc.owner).tolist():
            ids = np.flatnonzero(sc.owner == t)
            for s in range(0, ids.size, 2000):
                self.col.upsert(ids[s : s + 2000], sc.base[ids[s : s + 2000]], tenant=self.names[t])
        for t, v in enumerate(sc.visible):
            extra = v[sc.owner[v] != t]
            if extra.size:
                self.col.grant(extra, tenant=self.names[t])
        t0 = time.perf_counter()
        self.col.build_index()
        self.build_s = time.perf_counter() - t0

    def search(self, q: np.ndarray, tenant: int, ef: int | None) -> np.ndarray:
        return np.asarray(self.col.search(q, k=K, tenant=self.names[tenant], ef=ef).ids)[0]

    def own_bytes(self) -> dict[str, int]:
        st = self.col.stats()
        return {k: int(v) for k, v in st.items() if k.endswith("_bytes") and k not in ("vectors_bytes", "total_bytes")}


def _noop() -> None:
    return None


def measure(sc: Scenario, methods: dict[str, list], rounds: int) -> dict[str, list[tuple[str, float, float]]]:
    """(label, recall, QPS) of every point of every method; points are ``(label, prepare, one)`` where
    ``one(query [1, d], tenant) -> ids [K]`` answers one query per call.

    The passes are interleaved (round 1: every point of every method, round 2: again, ...) and each point
    keeps its fastest pass, so that load from other processes hits all methods alike.
    """
    nq = sc.queries.shape[0]
    best: dict[tuple[str, str], float] = {}
    recall: dict[tuple[str, str], float] = {}
    for r in range(rounds):
        for name, points in methods.items():
            for label, prepare, one in points:
                prepare()
                ids = np.full((nq, K), -1, np.int64)
                t0 = time.perf_counter()
                for i in range(nq):
                    got = one(sc.queries[i : i + 1], int(sc.q_tenant[i]))
                    ids[i, : got.shape[0]] = got[:K]
                dt = time.perf_counter() - t0
                key = (name, label)
                best[key] = min(best.get(key, np.inf), dt)
                if r == 0:
                    recall[key] = sc.recall(ids)
                if r == rounds - 1:
                    print(f"  {sc.name} {name:>8} {label:>14}: recall {recall[key]:.4f}  {nq / best[key]:8.0f} QPS",
                          flush=True)  # fmt: skip
    return {
        name: [(label, recall[(name, label)], nq / best[(name, label)]) for label, _, _ in points]
        for name, points in methods.items()
    }


def grove_points(sc: Scenario, grove, backend: str | None = None) -> list:
    """Grove's sweep points; with ``backend``, each timing pass first selects that kernel backend (the same index
    timed on several backends, interleaved)."""
    from engine import kernels

    prepare = _noop if backend is None else (lambda: kernels.select(backend))
    prepare()
    leaks = 0
    for i in range(min(sc.queries.shape[0], 200)):
        got = grove.search(sc.queries[i : i + 1], int(sc.q_tenant[i]), None)
        leaks += int(np.setdiff1d(got[got >= 0], sc.visible[int(sc.q_tenant[i])]).size)
    if leaks:
        raise SystemExit(f"{sc.name}: Grove returned {leaks} rows the tenant cannot see")
    return [("default" if ef is None else f"ef={ef}", prepare, lambda q, t, ef=ef: grove.search(q, t, ef))
            for ef in (None, *EF_SWEEP)]  # fmt: skip


# ---------------------------------------------------------------------------------------------- faiss
def faiss_baselines(sc: Scenario, which: tuple[str, ...], *, max_nlist: int | None = None) -> dict[str, dict]:
    """Build the named baselines (``mf_ivf``, ``mf_hnsw``, ``pt_ivf``, ``pt_hnsw``): their sweep points, bytes.

    ``max_nlist`` caps MF-IVF's list count (the scale-up uses 1,024 so that training stays minutes long).
    """
    import faiss

    faiss.omp_set_num_threads(1)
    n, d = sc.base.shape
    out: dict[str, dict] = {}
    selectors: dict[int, object] = {}

    def selector(t: int):
        if t not in selectors:
            selectors[t] = faiss.IDSelectorBatch(sc.visible[t])
        return selectors[t]

    if "mf_ivf" in which:
        t0 = time.perf_counter()
        nlist = int(4 * np.sqrt(n)) if max_nlist is None else min(int(4 * np.sqrt(n)), max_nlist)
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        train = sc.base if n <= 256 * nlist else sc.base[np.random.default_rng(0).choice(n, 256 * nlist, replace=False)]
        ivf.train(train)
        ivf.add(sc.base)
        points = []
        for nprobe in (16, 64, 256, nlist // 2, nlist):
            params: dict[int, object] = {}

            def one(q, t, nprobe=nprobe, params=params):
                p = params.get(t)
                if p is None:
                    p = params[t] = faiss.SearchParametersIVF(sel=selector(t), nprobe=nprobe)
                return ivf.search(q, K, params=p)[1][0]

            points.append((f"nprobe={nprobe}", _noop, one))
        out["MF-IVF"] = dict(points=points, bytes=len(faiss.serialize_index(ivf)),
                             build_s=time.perf_counter() - t0, index=ivf)  # fmt: skip
    if "mf_hnsw" in which:
        t0 = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 64
        hnsw.add(sc.base)
        points = []
        for ef in (16, 64, 256, 1024):
            params = {}

            def one(q, t, ef=ef, params=params):
                p = params.get(t)
                if p is None:
                    p = params[t] = faiss.SearchParametersHNSW(sel=selector(t), efSearch=ef)
                return hnsw.search(q, K, params=p)[1][0]

            points.append((f"efSearch={ef}", _noop, one))
        out["MF-HNSW"] = dict(points=points, bytes=len(faiss.serialize_index(hnsw)),
                              build_s=time.perf_counter() - t0, index=hnsw)  # fmt: skip
    for name, kind in (("PT-IVF", "pt_ivf"), ("PT-HNSW", "pt_hnsw")):
        if kind not in which:
            continue
        t0 = time.perf_counter()
        per, total = [], 0
        for v in sc.visible:
            x = sc.base[v]
            if kind == "pt_hnsw":
                idx = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
                idx.hnsw.efConstruction = 64
            elif v.size < 2000:
                idx = faiss.IndexFlatIP(d)
            else:
                idx = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, int(np.sqrt(v.size)), faiss.METRIC_INNER_PRODUCT)
                idx.train(x)
            if v.size:
                idx.add(x)
            total += len(faiss.serialize_index(idx))
            per.append(idx)
        build = time.perf_counter() - t0

        def one(q, t, per=per):
            found = per[t].search(q, K)[1][0]
            return np.where(found >= 0, sc.visible[t][np.maximum(found, 0)], -1)

        def setter(knob, per=per, kind=kind):
            def prepare() -> None:
                for idx in per:
                    if kind == "pt_hnsw":
                        idx.hnsw.efSearch = knob
                    elif hasattr(idx, "nprobe"):
                        idx.nprobe = knob

            return prepare

        knobs = (1, 2, 4, 8, 16, 32) if kind == "pt_ivf" else (16, 32, 64, 128, 256)
        label = "nprobe=" if kind == "pt_ivf" else "efSearch="
        points = [(label + str(knob), setter(knob), one) for knob in knobs]
        out[name] = dict(points=points, bytes=total, build_s=build, index=per)
    return out


# ---------------------------------------------------------------------------------------------- updates
def grove_updates(grove: DirectGrove, sc: Scenario, n: int = 500, seed: int = 3) -> dict[str, float]:
    """Per-vector latency (us) of one-row calls: delete (every tenant's entry), insert (route + encode + owner),
    grants (one per other tenant); and the same amortised over one batched call per tenant."""
    idx = grove.index
    rng = np.random.default_rng(seed)
    rows = rng.choice(sc.base.shape[0], n, replace=False)
    who = {int(r): [] for r in rows}
    for t, v in enumerate(sc.visible):
        for r in np.intersect1d(v, rows).tolist():
            who[r].append(t)
    n_grants = sum(len(ts) - 1 for ts in who.values())
    one = np.empty(1, np.int64)
    warm = int(rows[0])  # compile (or load) every kernel of the update paths before timing
    for t in who[warm]:
        idx.remove(t, np.array([warm], np.int64))
    for t in who[warm]:
        idx.add(t, np.array([warm], np.int64))
    t0 = time.perf_counter()
    for r, ts in who.items():
        one[0] = r
        for t in ts:
            idx.remove(t, one)
    t_del = time.perf_counter() - t0
    t_ins = t_grant = 0.0
    for r, ts in who.items():
        one[0] = r
        owner = int(sc.owner[r]) if int(sc.owner[r]) in ts else ts[0]
        t0 = time.perf_counter()
        idx.add(owner, one)
        t1 = time.perf_counter()
        for t in ts:
            if t != owner:
                idx.add(t, one)
        t_ins += t1 - t0
        t_grant += time.perf_counter() - t1
    by_tenant: dict[int, list[int]] = {}
    for r, ts in who.items():
        for t in ts:
            by_tenant.setdefault(t, []).append(r)
    t0 = time.perf_counter()
    for t, rs in by_tenant.items():
        idx.remove(t, np.array(rs, np.int64))
    t_del_b = time.perf_counter() - t0
    t0 = time.perf_counter()
    for t, rs in by_tenant.items():
        idx.add(t, np.array(rs, np.int64))
    t_add_b = time.perf_counter() - t0
    return {
        "vectors": n,
        "grants": n_grants,
        "insert_us": 1e6 * t_ins / n,
        "grant_us": 1e6 * t_grant / max(n_grants, 1),
        "insert_plus_grants_us": 1e6 * (t_ins + t_grant) / n,
        "delete_us": 1e6 * t_del / n,
        "batched_insert_plus_grants_us": 1e6 * t_add_b / n,
        "batched_delete_us": 1e6 * t_del_b / n,
    }


def faiss_updates(sc: Scenario, base: dict[str, dict], n: int = 200, seed: int = 3) -> dict[str, dict]:
    """Insert + grants and delete per vector for the faiss baselines (one vector per call).

    MF: one add / one remove_ids (a grant only changes the caller's id selector: not counted). PT: one add
    per tenant that sees the vector, one remove_ids per tenant index. faiss HNSW cannot remove: n/a.
    """
    import faiss

    rng = np.random.default_rng(seed)
    rows = rng.choice(sc.base.shape[0], n, replace=False)
    tenants_of = {int(r): [] for r in rows}
    for t, v in enumerate(sc.visible):
        for r in np.intersect1d(v, rows).tolist():
            tenants_of[r].append(t)
    new_id = sc.base.shape[0] + 1_000_000
    out = {}
    for name, res in base.items():
        index = res["index"]
        ins = dele = 0.0
        for j, r in enumerate(rows.tolist()):
            x = sc.base[r : r + 1]
            vid = np.array([new_id + j], np.int64)
            targets = [index] if name.startswith("MF") else [index[t] for t in tenants_of[r]]
            t0 = time.perf_counter()
            for ix in targets:
                if name == "MF-IVF":
                    ix.add_with_ids(x, vid)
                else:
                    ix.add(x)
            ins += time.perf_counter() - t0
            if "HNSW" not in name:
                t0 = time.perf_counter()
                for ix in targets:
                    if name == "MF-IVF":
                        ix.remove_ids(faiss.IDSelectorArray(vid))
                    else:
                        ix.remove_ids(faiss.IDSelectorRange(ix.ntotal - 1, ix.ntotal))
                dele += time.perf_counter() - t0
        out[name] = {
            "insert_plus_grants_us": 1e6 * ins / n,
            "delete_us": (1e6 * dele / n) if "HNSW" not in name else None,
        }
    return out


# ---------------------------------------------------------------------------------------------- report
def fmt(x, digits=0) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def report(results: dict, out_dir: Path, argv: list[str]) -> str:
    lines = ["# Curator benchmark", "", "Command: `python bench/curator.py " + " ".join(argv) + "`", "",
             "One thread, k = 10, one query per call, wall clock on a shared 2-core machine: figures are noisy.",
             ""]  # fmt: skip
    for scen, res in results.get("scenarios", {}).items():
        lines += [f"## {scen}: {res['vectors']:,} vectors, {res['tenants']} tenants, {res['pairs']:,} (vector, "
                  f"tenant) pairs, {res['queries']} queries", ""]  # fmt: skip
        lines += ["| method | QPS @ recall 0.90 | QPS @ recall 0.95 | best recall | memory (MB) | x MF-IVF memory |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        mf = res["methods"].get("MF-IVF", {}).get("bytes")
        for name, m in res["methods"].items():
            curve = [(r, q) for _, r, q in m["curve"]]
            ratio = (m["bytes"] / mf) if mf else None
            lines.append(f"| {name} | {fmt(qps_at(curve, 0.90))} | {fmt(qps_at(curve, 0.95))} | "
                         f"{max(r for r, _ in curve):.4f} | {m['bytes'] / 2**20:,.1f} | {fmt(ratio, 2)} |")  # fmt: skip
        g = res["methods"]["Grove"]
        lines += ["", "Grove points: " + ", ".join(f"{lab} {r:.3f}/{q:,.0f}" for lab, r, q in g["curve"]),
                  "", "Grove memory (bytes): " + ", ".join(f"{k} {v:,}" for k, v in g["parts"].items()),
                  f"; build {g['build_s']:.1f} s", ""]  # fmt: skip
        if "updates" in res:
            lines += ["| updates (us per vector) | insert + grants | delete |", "|---|---|---|"]
            u = res["updates"]["Grove"]
            lines.append(f"| Grove, one row per call (insert {u['insert_us']:.1f}, grant {u['grant_us']:.1f}) | "
                         f"{u['insert_plus_grants_us']:.1f} | {u['delete_us']:.1f} |")  # fmt: skip
            lines.append(f"| Grove, batched per tenant | {u['batched_insert_plus_grants_us']:.1f} | "
                         f"{u['batched_delete_us']:.1f} |")  # fmt: skip
            for name, v in res["updates"].items():
                if name != "Grove":
                    lines.append(f"| {name} | {fmt(v['insert_plus_grants_us'], 1)} | {fmt(v['delete_us'], 1)} |")
            lines.append("")
    if results.get("scale"):
        lines += ["## Scale-up (real tenants over perturbed copies)", "",
                  "| vectors | Grove QPS @ 0.95 | MF-IVF QPS @ 0.95 | Grove / MF-IVF | Grove best recall | "
                  "Grove memory (MB) | MF-IVF memory (MB) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for n, s in sorted(results["scale"].items(), key=lambda kv: int(kv[0])):
            g = qps_at([(r, q) for _, r, q in s["grove"]], 0.95)
            m = qps_at([(r, q) for _, r, q in s["mf_ivf"]], 0.95) if s.get("mf_ivf") else None
            lines.append(f"| {int(n):,} | {fmt(g)} | {fmt(m)} | {fmt(g / m if g and m else None, 1)} | "
                         f"{max(r for _, r, _ in s['grove']):.4f} | {s['grove_bytes'] / 2**20:,.0f} | "
                         f"{fmt(s.get('mf_ivf_bytes', 0) / 2**20)} |")  # fmt: skip
        lines.append("")
    if results.get("scenarios"):
        png = out_dir.resolve() / "curator.png"
        root = Path(__file__).resolve().parents[1]
        lines += [f"Plot: `{png.relative_to(root) if png.is_relative_to(root) else png}`.", ""]
    text = "\n".join(lines)
    (out_dir / "curator.md").write_text(text)
    return text


def plot(results: dict, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scen = results.get("scenarios", {})
    if not scen:
        return
    fig, axes = plt.subplots(1, len(scen), figsize=(6.5 * len(scen), 4.8), squeeze=False)
    for ax, (name, res) in zip(axes[0], scen.items()):
        for method, m in res["methods"].items():
            pts = sorted((r, q) for _, r, q in m["curve"])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method,
                    lw=2.5 if method == "Grove" else 1.2)  # fmt: skip
        ax.axvline(0.95, color="grey", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("recall@10 (tie-aware)")
        ax.set_ylabel("queries per second (1 thread)")
        ax.set_title(f"{name}: {res['vectors']:,} vectors, {res['tenants']} tenants")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "curator.png", dpi=120)


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--scenarios", default="real,dense")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--baselines", default="mf_ivf,mf_hnsw,pt_ivf,pt_hnsw")
    ap.add_argument("--scale", default="", help="comma-separated vector counts for the scale-up (slow)")
    ap.add_argument("--scale-queries", type=int, default=100)
    ap.add_argument("--sdk", action="store_true", help="Grove through grove_client instead of CuratorIndex")
    ap.add_argument("--param", action="append", default=[], help="CuratorIndex option, e.g. --param ef=256")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing passes; the fastest counts")
    ap.add_argument(
        "--backends",
        default="",
        help="kernel backends to time Grove on, interleaved, e.g. "
        "native,numba (the first is 'Grove', the others 'Grove (name)'; default: the selected one)",
    )
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv

    import faiss
    import numba

    faiss.omp_set_num_threads(1)
    numba.set_num_threads(1)
    params = {k: (float(v) if "." in v else int(v)) for k, v in (p.split("=", 1) for p in args.param)}
    Grove = SdkGrove if args.sdk else DirectGrove
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = RealData()
    results: dict = {"scenarios": {}, "scale": {}, "params": params, "grove": Grove.label}
    for name in [s for s in args.scenarios.split(",") if s]:
        t0 = time.perf_counter()
        sc = real_scenario(data, args.queries) if name == "real" else dense_scenario(data, args.queries)
        print(f"{name}: {sc.base.shape[0]:,} vectors, {len(sc.visible)} tenants, {sc.n_pairs:,} pairs "
              f"({time.perf_counter() - t0:.1f} s to set up)", flush=True)  # fmt: skip
        grove = Grove(sc, **params)
        parts = grove.own_bytes()
        vec_bytes = sc.base.nbytes + 8 * sc.base.shape[0]
        res = {"vectors": sc.base.shape[0], "tenants": len(sc.visible), "pairs": sc.n_pairs,
               "queries": int(sc.queries.shape[0]), "methods": {}}  # fmt: skip
        base = {} if args.no_baselines else faiss_baselines(sc, tuple(args.baselines.split(",")))
        backends = [b for b in args.backends.split(",") if b] or [None]
        variants = {f"Grove ({b})": grove_points(sc, grove, b) for b in backends[1:]}
        methods = {
            "Grove": grove_points(sc, grove, backends[0]),
            **variants,
            **{k: v["points"] for k, v in base.items()},
        }
        curves = measure(sc, methods, args.rounds)
        res["methods"]["Grove"] = {"curve": curves["Grove"], "bytes": vec_bytes + sum(parts.values()),
                                   "parts": parts, "build_s": grove.build_s}  # fmt: skip
        if backends[0] is not None:
            res["backends"] = backends
        for k in variants:
            res["methods"][k] = {**res["methods"]["Grove"], "curve": curves[k]}
        for k, v in base.items():
            res["methods"][k] = {"curve": curves[k], "bytes": v["bytes"], "build_s": v["build_s"]}
        if isinstance(grove, DirectGrove):
            res["updates"] = {"Grove": grove_updates(grove, sc)}
            if base:
                res["updates"].update(faiss_updates(sc, base))
        results["scenarios"][name] = res
        del grove
    for n in [int(x) for x in args.scale.split(",") if x]:
        sc = scaled_scenario(data, n, args.scale_queries)
        print(f"scale {n:,}: ground truth ready", flush=True)
        grove = DirectGrove(sc, **params)
        methods = {"Grove": grove_points(sc, grove)}
        mf = None if args.no_baselines else faiss_baselines(sc, ("mf_ivf",), max_nlist=1024)["MF-IVF"]
        if mf:
            methods["MF-IVF"] = mf["points"]
        curves = measure(sc, methods, args.rounds)
        entry = {"grove": curves["Grove"], "grove_bytes": sc.base.nbytes + 8 * n + sum(grove.own_bytes().values()),
                 "build_s": grove.build_s}  # fmt: skip
        if mf:
            entry["mf_ivf"] = curves["MF-IVF"]
            entry["mf_ivf_bytes"] = mf["bytes"]
        del grove, mf, methods
        results["scale"][str(n)] = entry
    (out_dir / "curator.json").write_text(json.dumps(results, indent=1, default=float))
    plot(results, out_dir)
    print(report(results, out_dir, argv))


if __name__ == "__main__":
    main()
