"""The wire against the engine: the same tenant queries embedded and through ``grove serve`` on loopback.

    python bench/wire.py [--queries 1000] [--clients 16] [--seconds 10] [--out bench/results/wire]

1. One client thread, one query per call: p50, p99 and QPS embedded and remote, on the same collection (the
   real data set, its tenants and grants, indexed) with the default ``ef``; recall@10 of both is printed, so
   the comparison is at equal recall.
2. ``--clients`` concurrent client processes, one query per call, for ``--seconds``: total QPS, p50, p99 and
   errors.
3. Batches of 100 queries per call (one tenant per call, its queries repeated to fill the batch): the cost per
   query, embedded and remote.
4. Streaming ingest, remote: vectors per second of one ``upsert`` of the whole base (an ``UpsertStream``).

Writes ``wire.md`` (the table) and ``wire.png`` (latency distributions) under ``--out``. Absolute times drift
on shared machines: read the remote / embedded ratios, measured in the same run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
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

ADMIN_KEY = "bench-wire-admin-key-0123456789"
BATCH = 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(path: str, port: int) -> subprocess.Popen:
    """``grove serve`` on loopback (output discarded, so a full pipe can never stall it), once SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    grove = Path(sys.executable).parent / "grove"
    proc = subprocess.Popen(
        [str(grove), "serve", "--path", path, "--port", str(port), "--admin-key", ADMIN_KEY],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        probe = health_pb2_grpc.HealthStub(channel)
        for _ in range(600):
            try:
                if probe.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return proc
            except grpc.RpcError:
                time.sleep(0.1)
    proc.kill()
    raise RuntimeError("grove serve did not become SERVING")


def one_by_one(col, data: RealData, nq: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Ids of each tenant query (one per call), the latency of each call (s), and the QPS over them."""
    tq, vecs = data.tenant_queries, data.tenant_query_vectors
    ids = np.full((nq, 10), -1, np.int64)
    lat = np.empty(nq)
    t0 = time.perf_counter()
    for i in range(nq):
        j = i % len(tq)
        s = time.perf_counter()
        res = col.search(vecs[j : j + 1], k=10, tenant=data.names[tq[j, 2]])
        lat[i] = time.perf_counter() - s
        ids[i] = res.ids[0]
    return ids, lat, nq / (time.perf_counter() - t0)


def batched(col, data: RealData, nq: int) -> float:
    """Seconds per query when each call carries ``BATCH`` queries of one tenant: the tenants of the first ``nq``
    tenant queries in turn, each call its tenant's queries repeated up to ``BATCH``."""
    tq, vecs = data.tenant_queries[:nq], data.tenant_query_vectors[:nq]
    tenants = np.unique(tq[:, 2])
    calls = max(1, nq // BATCH)
    batches = []
    for c in range(calls):
        t = tenants[c % tenants.size]
        rows = np.flatnonzero(tq[:, 2] == t)
        batches.append((data.names[t], vecs[np.resize(rows, BATCH)]))
    t0 = time.perf_counter()
    for name, queries in batches:
        col.search(queries, k=10, tenant=name)
    return (time.perf_counter() - t0) / (calls * BATCH)


def recall(data: RealData, ids: np.ndarray) -> float:
    n = ids.shape[0]
    gt_ids, gt_scores = data.tenant_truth
    rows = np.arange(n) % len(data.tenant_queries)
    scores = true_scores(data.base, data.tenant_query_vectors[rows], ids)
    return tie_aware_recall(ids, scores, gt_ids[rows], gt_scores[rows])


def _client(port: int, seconds: float, seed: int, out: mp.Queue) -> None:
    """One client process: searches for ``seconds``; puts (latencies, errors)."""
    from grove_client import Client

    data = RealData()
    tq, vecs, names = data.tenant_queries, data.tenant_query_vectors, data.names
    col = Client(url=f"127.0.0.1:{port}", api_key=ADMIN_KEY).get_collection("docs")
    lat, errors, i = [], 0, seed * 97
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        j = i % len(tq)
        s = time.perf_counter()
        try:
            col.search(vecs[j : j + 1], k=10, tenant=names[tq[j, 2]])
        except Exception:  # noqa: BLE001 - counted: the target is none
            errors += 1
        lat.append(time.perf_counter() - s)
        i += 1
    out.put((np.array(lat), errors))


def concurrent(port: int, clients: int, seconds: float) -> tuple[float, np.ndarray, int]:
    """Total QPS, every call's latency and the errors of ``clients`` processes searching at once."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(port, seconds, c, out)) for c in range(clients)]
    for p in procs:
        p.start()
    parts = [out.get(timeout=seconds + 300) for _ in procs]
    for p in procs:
        p.join()
    lat = np.concatenate([p[0] for p in parts])
    return lat.size / seconds, lat, sum(p[1] for p in parts)


def _ms(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "wire"))
    a = ap.parse_args()
    from grove_client import Client

    data = RealData()
    nq = a.queries
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="grove-wire-") as tmp:
        emb = Client(path=os.path.join(tmp, "embedded"))
        col = emb.create_collection("docs", dim=data.base.shape[1], metric="ip")
        data.ingest(col)
        col.build_index(progress=False)
        one_by_one(col, data, min(200, nq))  # warm
        e_ids, e_lat, e_qps = one_by_one(col, data, nq)
        e_batch = batched(col, data, nq)
        emb.close()

        port = _free_port()
        proc = start_server(os.path.join(tmp, "server"), port)
        try:
            remote = Client(url=f"127.0.0.1:{port}", api_key=ADMIN_KEY, timeout=600)
            col = remote.create_collection("docs", dim=data.base.shape[1], metric="ip")
            data.ingest(col)
            col.build_index(progress=False)
            one_by_one(col, data, min(200, nq))
            r_ids, r_lat, r_qps = one_by_one(col, data, nq)
            r_batch = batched(col, data, nq)
            c_qps, c_lat, c_err = concurrent(port, a.clients, a.seconds)
            stream = remote.create_collection("ingest", dim=data.base.shape[1], metric="ip")
            t0 = time.perf_counter()
            stream.upsert(np.arange(data.base.shape[0]), data.base, tenant="bulk")
            ingest_rate = data.base.shape[0] / (time.perf_counter() - t0)
            remote.close()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)

    e_rec, r_rec = recall(data, e_ids), recall(data, r_ids)
    rows.append(("one thread, one query per call: p50", f"{_ms(e_lat, 50):.3f} ms", f"{_ms(r_lat, 50):.3f} ms",
                 f"{_ms(r_lat, 50) / _ms(e_lat, 50):.1f}x"))  # fmt: skip
    rows.append(("one thread: p99", f"{_ms(e_lat, 99):.3f} ms", f"{_ms(r_lat, 99):.3f} ms",
                 f"{_ms(r_lat, 99) / _ms(e_lat, 99):.1f}x"))  # fmt: skip
    rows.append(("one thread: QPS", f"{e_qps:,.0f}", f"{r_qps:,.0f}", f"{r_qps / e_qps:.2f}x"))
    rows.append(("recall@10 (default ef)", f"{e_rec:.3f}", f"{r_rec:.3f}", ""))
    rows.append((f"{a.clients} client processes: total QPS", "", f"{c_qps:,.0f}", ""))
    rows.append((f"{a.clients} client processes: p50 / p99", "", f"{_ms(c_lat, 50):.2f} / {_ms(c_lat, 99):.2f} ms",
                 f"errors {c_err}"))  # fmt: skip
    rows.append((f"batches of {BATCH}: cost per query", f"{e_batch * 1e6:.1f} us", f"{r_batch * 1e6:.1f} us",
                 f"{r_batch / e_batch:.2f}x"))  # fmt: skip
    rows.append(("streaming ingest, remote", "", f"{ingest_rate:,.0f} vectors/s", ""))
    table = ["| measure | embedded | remote | remote / embedded |", "|---|---|---|---|"]
    table += [f"| {m} | {e} | {r} | {x} |" for m, e, r, x in rows]
    text = "\n".join(table)
    print(text)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python bench/wire.py " + " ".join(sys.argv[1:])
    header = f"# Wire vs engine\n\n`{cmd}` ({nq} tenant queries of the shared data, k = 10, loopback)\n\n"
    out.with_suffix(".md").write_text(header + text + "\n")
    series = {"embedded": e_lat, "remote, 1 thread": r_lat, f"remote, {a.clients} clients": c_lat}
    _plot(out.with_suffix(".png"), series)


def _plot(path: Path, series: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, lat in series.items():
        xs = np.sort(lat) * 1e3
        ax.plot(xs, np.arange(1, xs.size + 1) / xs.size, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("latency per call (ms, log scale)")
    ax.set_ylabel("fraction of calls")
    ax.set_title("Tenant search latency: embedded vs through grove serve")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
