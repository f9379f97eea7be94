"""Per-query cost of the Curator tree search (``engine.kernels.tree_numba.search``), one query at a time.

    python bench/tree_walk.py                               # build both collections in a temp dir, then time
    python bench/tree_walk.py --path /tmp/tw                # keep the database there and reuse it next time
    python bench/tree_walk.py --path /tmp/tw --baseline /tmp/tree_orig.py   # A/B against a copy of tree.py

One tenant owns all 84,075 vectors of ``../shared/data``; two collections are built through the embedded SDK:
``f`` (float32, 4-bit PCA scan codes) and ``lv`` (LeanVec-OOD 128-d, LVQ-8 primary and secondary: 8-bit scan
codes with a per-vector scale and bias). For each ``ef`` the first ``--queries`` OOD queries are searched one
at a time through ``col.search`` (recall@10 against the exact top 10, and QPS) and through the kernel directly
(QPS, ns per scanned entry, recall@10 of its rows, and entries scanned per query). With ``--baseline FILE`` (a
copy of ``engine/kernels/tree_numba.py``) that module's kernel is timed too, interleaved round by round with the
current one, on the same arguments (alternating which goes first), and its results are compared with the
current kernel's; with ``--native`` the native library's tree search (``engine.kernels.native.tree_search``,
at the instruction set in use) is timed the same way and compared with the numba kernel. ``col.search``
runs on the selected backend (``GROVE_KERNELS``). (For a tenant this large and a wide ``ef``, the kernel scans
leaves in their own priority order instead of walking the tree.)
Each figure keeps the fastest of ``--rounds`` passes (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "clients")]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import DATA  # noqa: E402
from grove_client import Client, LeanVec  # noqa: E402

from engine import kernels  # noqa: E402
from engine.kernels import native  # noqa: E402
from engine.kernels import tree_numba as current  # noqa: E402

K = 10
EFS = (512, 1024, 2048, 4096)
KINDS = {
    "f": None,
    "lv": LeanVec(dim=128, kind="ood", primary="lvq8", secondary="lvq8"),
}


def build(client: Client, name: str, base: np.ndarray, queries: np.ndarray):
    """The collection ``name`` (built now unless the database already holds it) and its engine object."""
    if name not in {c.name for c in client.list_collections()}:
        t0 = time.perf_counter()
        col = client.create_collection(name, dim=base.shape[1], metric="ip", compression=KINDS[name])
        ids = np.arange(base.shape[0], dtype=np.int64)
        for i in range(0, base.shape[0], 5000):
            col.upsert(ids[i : i + 5000], base[i : i + 5000], tenant="all")
        if KINDS[name] is not None:
            col.train_compression(query_sample=queries[300:])
        col.build_index()
        print(f"[{name}] built in {time.perf_counter() - t0:.0f} s", flush=True)
    col = client.get_collection(name)
    return col, client._backend._db.get_collection(name)


def kernel_args(ecol, k: int, ef: int, mod=current) -> tuple:
    """The arguments ``CuratorIndex.search`` passes to ``mod``'s kernel, for tenant "all" (queries and outputs
    apart); a baseline copy of ``tree.py`` from before ``rows_kind`` or the leaf-order scan takes one argument
    fewer for each."""
    idx = ecol.index
    lst = idx._lists[ecol._db.tenants.find("all")]
    cands = max(idx.candidates, ef >> 4, 2 * k)
    rerank = max(idx.rerank, ef >> 5, k + k // 2)
    if lst.bounds is None:
        lst.bounds = idx._leaf_bounds(lst.main)
    return (idx.table.store.kernel_args, idx._slot_row, idx._sc, idx.scan.kernel_args, lst.main, lst.tail,
            lst.nt, lst.bounds, idx._pcent, idx._bias, idx._topo) + (
            (idx._leaves,) if hasattr(mod, "_scan_leaf_order") else ()) + (k, ef, cands, rerank, idx.max_sl_size,
            idx.exact_max, idx.flat_max, idx._kind) + ((idx.table.store.rows_kind,) if hasattr(mod, "ROWS_F32")
                                                        else ())  # fmt: skip


class NativeKernel:
    """``engine.kernels.native.tree_search`` behind the numba kernel's signature (``search(queries, *args, out_s,
    out_r)``, the arguments of ``kernel_args``), so that both are timed by the same loop."""

    ROWS_F32 = current.ROWS_F32  # kernel_args passes rows_kind and the leaves, as to the current numba kernel
    _scan_leaf_order = None

    @staticmethod
    def search(queries, rows, slot_row, codes, code_query, main, tail, nt, bounds, pcent, pbias, topo, leaves, k, ef,
               cands, rerank, max_sl, exact_max, flat_max, kind, rows_kind, out_s, out_r):  # fmt: skip
        tree = kernels.TreeArrays(topo, pcent, pbias, leaves)
        tenant = kernels.TenantEntries(main, tail, nt, bounds)
        params = kernels.TreeSearchParams(k, ef, cands, rerank, max_sl, exact_max, flat_max, kind)
        return native.tree_search(queries, rows, rows_kind, slot_row, codes, code_query, tree, tenant, params, out_s,
                                  out_r)  # fmt: skip


def time_kernel(mod, queries: np.ndarray, args: tuple) -> tuple[float, int, np.ndarray]:
    """Seconds for all queries one at a time, entries scanned, and the rows found."""
    out_s = np.empty((1, K), np.float32)
    out_r = np.empty((1, K), np.int64)
    rows = np.empty((queries.shape[0], K), np.int64)
    scanned = 0
    t0 = time.perf_counter()
    for i in range(queries.shape[0]):
        scanned += mod.search(queries[i : i + 1], *args, out_s, out_r)
        rows[i] = out_r[0]
    return time.perf_counter() - t0, scanned, rows


def recall(ids: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ids.tolist(), gt.tolist())]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", help="database directory (reused when it holds the collections)")
    ap.add_argument("--baseline", help="a copy of engine/kernels/tree_numba.py to time against the current one")
    ap.add_argument("--native", action="store_true", help="time the native library's tree search too")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kinds", default="f,lv")
    ap.add_argument("--ef", default=",".join(map(str, EFS)))
    a = ap.parse_args()
    base = np.load(DATA / "base_vectors.f16.npy").astype(np.float32)
    queries = np.ascontiguousarray(np.load(DATA / "queries_ood.f32.npy"), np.float32)
    gt = np.load(DATA / "gt_ood_top100_ids.npy")[: a.queries, :K]
    q = queries[: a.queries]
    mods = {"new": current}
    if a.baseline:
        spec = importlib.util.spec_from_file_location("tree_baseline", a.baseline)
        mods["base"] = sys.modules["tree_baseline"] = importlib.util.module_from_spec(spec)  # numba's cache needs it
        spec.loader.exec_module(mods["base"])
    if a.native:
        if not native.AVAILABLE:
            raise SystemExit(f"--native: {native.ERROR}")
        mods["native"] = NativeKernel
        print(f"native tree search at {native.isa()}; col.search on {kernels.tree_backend()}", flush=True)
    tmp = None if a.path else tempfile.TemporaryDirectory(prefix="grove-tree-walk-")
    client = Client(path=a.path or tmp.name)
    efs = [int(e) for e in a.ef.split(",")]
    print(f"{'kind':4} {'ef':>5} {'recall':>7} {'sdk qps':>8} | " + " | ".join(
        f"{m:>4} qps  ns/entry  recall" for m in mods) + " | scanned/q  same top10")  # fmt: skip
    for name in a.kinds.split(","):
        col, ecol = build(client, name, base, queries)
        for ef in efs:
            args = {m: kernel_args(ecol, K, ef, mod) for m, mod in mods.items()}
            for m, mod in mods.items():  # compile or load from the cache, warm the caches
                time_kernel(mod, q[:20], args[m])
            col.search(q[:1], k=K, tenant="all", ef=ef)
            best = {m: np.inf for m in mods}
            sdk = np.inf
            res = {}
            for rnd in range(a.rounds):
                t0 = time.perf_counter()
                ids = np.concatenate([col.search(q[i : i + 1], k=K, tenant="all", ef=ef).ids for i in range(len(q))])
                sdk = min(sdk, time.perf_counter() - t0)
                for m, mod in list(mods.items())[:: 1 if rnd % 2 else -1]:  # alternate which kernel goes first
                    t, scanned, rows = time_kernel(mod, q, args[m])
                    best[m] = min(best[m], t)
                    res[m] = (scanned, rows)
            scanned = res["new"][0]
            other = "base" if "base" in res else "native" if "native" in res else None
            same = np.mean(np.all(res["new"][1] == res[other][1], axis=1)) if other else float("nan")
            ids_of = ecol.index.table.ids
            cols = " | ".join(f"{len(q) / best[m]:8.0f} {1e9 * best[m] / max(res[m][0], 1):9.2f} "
                              f"{recall(ids_of[res[m][1]], gt):7.4f}" for m in mods)  # fmt: skip
            print(f"{name:4} {ef:5d} {recall(ids, gt):7.4f} {len(q) / sdk:8.0f} | {cols} | "
                  f"{scanned / len(q):9.0f}  {same:.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
