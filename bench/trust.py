"""Bounded work, fair service and recovery of ``grove serve``, measured on this machine (issue 14's figures).

1. **Oversized search**: a tenant key's m=5000, k=10000 search (600 MB of answer): how fast it is refused and
   the server's peak RSS growth; and an accepted search at the result limit (400 x 10000 = 4M results, 48 MB of
   answer), whose RSS growth is compared with its answer's size.
2. **Fair service**: admin ``Count`` and one-query ``Search`` latency (p50, p99) while idle, and while one tenant
   key holds its cap of open streams and keeps asking for more (refused at once).
3. **Recovery**: 1M vectors, kill -9 while the index builds; on restart, the time until the port listens,
   until the health check says SERVING, until a search is answered, and until the rebuilt index is in place.

    python bench/trust.py [--vectors 1000000] [--dim 64] [--calls 2000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chaos import free_port, kill9, start_server  # noqa: E402

ADMIN = "trust-bench-admin-key-0123456789"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """The largest RSS of ``pid`` while the block runs (sampled every 10 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.base = pid, 0.0, rss_mb(pid)
        self._stop = threading.Event()

    def __enter__(self) -> PeakRss:
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> float:
        return max(0.0, self.peak - self.base)


@contextmanager
def served(path: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """A ``grove serve`` on ``path``: its process and URL; killed at the end."""
    port = free_port()
    proc = start_server(path, port, ADMIN)
    try:
        yield proc, f"127.0.0.1:{port}"
    finally:
        kill9(proc)


def _twenty_thousand(admin, *, dim: int, tenant: str, seed: int):
    """Collection ``docs`` with 20,000 random vectors of ``tenant``; returns it and the generator."""
    col = admin.create_collection("docs", dim=dim, metric="ip")
    rng = np.random.default_rng(seed)
    col.upsert(np.arange(20_000), rng.standard_normal((20_000, dim)).astype(np.float32), tenant=tenant)
    return col, rng


def oversized(tmp: Path) -> None:
    from grove_client import Client

    with served(tmp / "big") as (proc, url):
        with Client(url=url, api_key=ADMIN, timeout=600) as admin:
            _col, rng = _twenty_thousand(admin, dim=8, tenant="acme", seed=0)
            key = admin.create_tenant_key("acme")
        with Client(url=url, api_key=key, timeout=600) as tenant:
            tcol = tenant.get_collection("docs")
            tcol.search(rng.standard_normal((10, 8)).astype(np.float32), k=100, tenant="acme")  # warm
            with PeakRss(proc.pid) as rss:
                t0 = time.perf_counter()
                try:
                    tcol.search(rng.standard_normal((5000, 8)).astype(np.float32), k=10_000, tenant="acme")
                    outcome = "answered"
                except Exception as exc:  # noqa: BLE001 - reported
                    outcome = f"refused: {type(exc).__name__}"
                dt = time.perf_counter() - t0
            print(f"oversized m=5000 k=10000: {outcome} in {dt * 1e3:.1f} ms, server RSS +{rss.growth:.1f} MB")
            q = rng.standard_normal((400, 8)).astype(np.float32)
            for k in (2_500, 5_000, 10_000, 10_000):  # growing answers, and the largest twice
                with PeakRss(proc.pid) as rss:
                    t0 = time.perf_counter()
                    res = tcol.search(q, k=k, tenant="acme")
                    dt = time.perf_counter() - t0
                answer_mb = (res.ids.nbytes + res.scores.nbytes) / 2**20
                del res
                print(
                    f"m=400 k={k} ({400 * k:,} results, answer {answer_mb:.0f} MB): answered in {dt:.2f} s, server "
                    f"RSS peak +{rss.growth:.0f} MB over the idle server = {rss.growth / answer_mb:.2f}x the answer"
                )


def _percentiles(samples: list[float]) -> str:
    a = np.array(samples) * 1e3
    return f"p50 {np.percentile(a, 50):.2f} ms, p99 {np.percentile(a, 99):.2f} ms"


def fairness(tmp: Path, calls: int) -> None:
    import grpc
    from grove_client import Client

    from engine.rpc.pb import grove_pb2 as pb
    from engine.rpc.pb import grove_pb2_grpc as pbg

    with served(tmp / "fair") as (_proc, url):
        with Client(url=url, api_key=ADMIN, timeout=60) as admin:
            col, rng = _twenty_thousand(admin, dim=32, tenant="beta", seed=1)
            key = admin.create_tenant_key("acme")
            q = rng.standard_normal((1, 32)).astype(np.float32)

            def measure() -> tuple[list[float], list[float]]:
                counts, searches = [], []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    col.count(tenant="beta")
                    counts.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    col.search(q, k=10, tenant="beta")
                    searches.append(time.perf_counter() - t0)
                return counts, searches

            measure()  # warm
            idle_c, idle_s = measure()
            hold = threading.Event()
            channel = grpc.insecure_channel(url)
            stub = pbg.GroveStub(channel)

            def idle_stream():
                m = pb.Matrix(data=np.ones((1, 32), "<f4").tobytes(), rows=1, dim=32)
                yield pb.UpsertRequest(collection="docs", tenant="acme", ids=[1], vectors=m)
                hold.wait(120)

            held = [stub.UpsertStream.future(idle_stream(), metadata=(("x-api-key", key),)) for _ in range(4)]
            time.sleep(1.0)
            held_c, held_s = measure()
            refused = [0]
            stop = threading.Event()

            def pester():  # keeps asking for more streams than its cap, as fast as it can
                while not stop.is_set():
                    f = stub.UpsertStream.future(idle_stream(), metadata=(("x-api-key", key),))
                    try:
                        f.result(timeout=5)
                    except grpc.RpcError as exc:
                        refused[0] += exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    except grpc.FutureTimeoutError:
                        f.cancel()

            pesterer = threading.Thread(target=pester, daemon=True)
            pesterer.start()
            time.sleep(1.0)
            pest_c, pest_s = measure()
            stop.set()
            hold.set()
            pesterer.join(10)
            for f in held:
                f.cancel()
            channel.close()
        for name, idle, held_, pest in (("Count", idle_c, held_c, pest_c), ("Search", idle_s, held_s, pest_s)):
            print(
                f"admin {name}: idle {_percentiles(idle)}; a tenant holding its 4 streams {_percentiles(held_)}; "
                f"and asking for more without pause {_percentiles(pest)}"
            )
        print(f"  ({refused[0]} streams asked for beyond the cap were refused at once)")


def recovery(tmp: Path, vectors: int, dim: int) -> None:
    import grpc
    from grove_client import Client
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    path, port = tmp / "recover", free_port()
    proc = start_server(path, port, ADMIN)
    url = f"127.0.0.1:{port}"
    with Client(url=url, api_key=ADMIN, timeout=3600) as admin:
        col = admin.create_collection("docs", dim=dim, metric="l2")  # indexes itself past 100k, and as it grows
        rng = np.random.default_rng(2)
        t0 = time.perf_counter()
        for first in range(0, vectors, 50_000):
            n = min(50_000, vectors - first)
            col.upsert(np.arange(first, first + n), rng.standard_normal((n, dim)).astype(np.float32), tenant="all")
        print(f"recovery: ingested {vectors} x {dim} in {time.perf_counter() - t0:.0f} s")
        while col.stats()["build"]["state"] == "running":
            time.sleep(0.5)
        col.build_index(background=True)  # a rebuild over all of them, killed midway
        time.sleep(3.0)
        running = col.stats()["build"]["state"] == "running"
    kill9(proc)
    print(f"recovery: killed -9 while the index built (build running: {running})")
    t0 = time.perf_counter()
    proc = start_server(path, port, ADMIN)
    listen = time.perf_counter() - t0
    channel = grpc.insecure_channel(url)
    probe = health_pb2_grpc.HealthStub(channel)
    while True:
        status = probe.Check(health_pb2.HealthCheckRequest(), timeout=60).status
        if status == health_pb2.HealthCheckResponse.SERVING:
            break
        time.sleep(0.05)
    serving = time.perf_counter() - t0
    with Client(url=url, api_key=ADMIN, timeout=600) as admin:
        col = admin.get_collection("docs")
        res = col.search(rng.standard_normal((1, dim)).astype(np.float32), k=10, tenant="all")
        first_search = time.perf_counter() - t0
        while col.stats()["build"]["state"] == "running":
            time.sleep(0.5)
        rebuilt = time.perf_counter() - t0
        stats = col.stats()
    channel.close()
    kill9(proc)
    print(
        f"recovery after kill -9 with {vectors} vectors mid-build: listening after {listen:.1f} s, SERVING after "
        f"{serving:.1f} s, first search answered ({int((res.ids >= 0).sum())} hits) after {first_search:.1f} s, "
        f"index rebuilt in the background after {rebuilt:.1f} s (build failures {stats['build_failures']})"
    )


def main() -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--skip", nargs="*", default=[], choices=["oversized", "fairness", "recovery"])
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="grove-trust-", dir=os.environ.get("TMPDIR")) as tmp:
        if "oversized" not in a.skip:
            oversized(Path(tmp))
        if "fairness" not in a.skip:
            fairness(Path(tmp), a.calls)
        if "recovery" not in a.skip:
            recovery(Path(tmp), a.vectors, a.dim)
    return 0


if __name__ == "__main__":
    sys.exit(main())
