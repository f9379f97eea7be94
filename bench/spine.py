"""The spine's figures on the real data set, against faiss in the same run.

    python bench/spine.py [--queries 3000] [--json]

1. Durable ingest, embedded (batches of 1,000, every batch WAL-synced) and remote (a ``grove serve``
   subprocess, streaming upserts of 10,000 vectors), then the team-tenant grants.
2. Exact tenant search (one thread, one query per call): recall@10 against the filtered ground truth and
   QPS against faiss ``IndexFlatIP`` searched with an ``IDSelectorBatch`` of the tenant's ids.
3. p50 latency of one query, remote minus embedded, over the same queries.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import RealData, tie_aware_recall, true_scores  # noqa: E402

ADMIN_KEY = "bench-admin-key-0123456789"


def run_queries(col, data: RealData, nq: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids of each tenant query and the latency of each call, in seconds."""
    tq, vecs = data.tenant_queries, data.tenant_query_vectors
    ids = np.full((nq, 10), -1, np.int64)
    lat = np.empty(nq)
    for i in range(nq):
        t0 = time.perf_counter()
        res = col.search(vecs[i : i + 1], k=10, tenant=data.names[tq[i, 2]])
        lat[i] = time.perf_counter() - t0
        ids[i] = res.ids[0]
    return ids, lat


def faiss_filtered_qps(data: RealData, nq: int) -> float:
    import faiss

    faiss.omp_set_num_threads(1)
    index = faiss.IndexFlatIP(data.base.shape[1])
    index.add(data.base)
    selectors: dict[int, object] = {}
    tq, vecs = data.tenant_queries, data.tenant_query_vectors
    t0 = time.perf_counter()
    for i in range(nq):
        t = int(tq[i, 2])
        if t not in selectors:
            selectors[t] = faiss.IDSelectorBatch(data.visible(t).astype(np.int64))
        index.search(vecs[i : i + 1], 10, params=faiss.SearchParameters(sel=selectors[t]))
    return nq / (time.perf_counter() - t0)


def start_server(path: str) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "engine", "serve", "--path", path, "--port", str(port), "--admin-key", ADMIN_KEY]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, start_new_session=True)
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("grove serve did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=3000)
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object last")
    args = ap.parse_args()
    import numba
    from grove_client import Client

    from engine import kernels

    numba.set_num_threads(1)
    data = RealData()
    nq = min(args.queries, data.tenant_queries.shape[0])
    out: dict[str, object] = {"kernels": kernels.describe(), "queries": nq, "vectors": int(data.base.shape[0])}
    gt_ids, gt_scores = data.tenant_truth
    with tempfile.TemporaryDirectory() as tmp:
        with Client(path=os.path.join(tmp, "embedded")) as client:
            col = client.create_collection("docs", dim=data.base.shape[1], metric="ip")
            t_up, t_grant = data.ingest(col, batch=1000)
            out["ingest_embedded_vps"] = data.base.shape[0] / t_up
            out["grant_us"] = 1e6 * t_grant / data.n_grants
            run_queries(col, data, 20)  # compile and warm
            ids, lat_embedded = run_queries(col, data, nq)
            out["exact_recall_at_10"] = tie_aware_recall(
                ids, true_scores(data.base, data.tenant_query_vectors[:nq], ids), gt_ids[:nq], gt_scores[:nq]
            )
            out["exact_qps"] = nq / lat_embedded.sum()
        out["faiss_flat_idselector_qps"] = faiss_filtered_qps(data, nq)
        out["exact_vs_faiss"] = out["exact_qps"] / out["faiss_flat_idselector_qps"]

        proc, port = start_server(os.path.join(tmp, "remote"))
        try:
            with Client(url=f"127.0.0.1:{port}", api_key=ADMIN_KEY) as client:
                col = client.create_collection("docs", dim=data.base.shape[1], metric="ip")
                t_up, _ = data.ingest(col, batch=10_000)  # > 4 MiB per call: sent as a client stream
                out["ingest_remote_stream_vps"] = data.base.shape[0] / t_up
                run_queries(col, data, 20)
                _, lat_remote = run_queries(col, data, nq)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
    out["p50_embedded_ms"] = 1e3 * float(np.median(lat_embedded))
    out["p50_remote_ms"] = 1e3 * float(np.median(lat_remote))
    out["p50_remote_minus_embedded_ms"] = out["p50_remote_ms"] - out["p50_embedded_ms"]

    print(f"kernels: {out['kernels']}")
    rows = [
        ("exact recall@10 (tenant queries)", f"{out['exact_recall_at_10']:.4f}"),
        ("exact QPS, one thread", f"{out['exact_qps']:.0f}"),
        ("faiss IndexFlatIP + IDSelectorBatch QPS", f"{out['faiss_flat_idselector_qps']:.0f}"),
        ("ratio Grove / faiss", f"{out['exact_vs_faiss']:.2f}"),
        ("durable ingest embedded, batches of 1,000 (vectors/s)", f"{out['ingest_embedded_vps']:.0f}"),
        ("durable ingest remote, streaming (vectors/s)", f"{out['ingest_remote_stream_vps']:.0f}"),
        ("grant, per (vector, tenant) pair (us)", f"{out['grant_us']:.2f}"),
        ("p50 one query embedded / remote (ms)", f"{out['p50_embedded_ms']:.3f} / {out['p50_remote_ms']:.3f}"),
        ("p50 remote minus embedded (ms)", f"{out['p50_remote_minus_embedded_ms']:.3f}"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
