"""What the server records of every call: Prometheus metrics (``--metrics-port``) and the access log.

``GuardInterceptor`` opens a ``CallRecord`` for each call of the Grove service and closes it with the status
code; ``AuthInterceptor`` fills in who called (``note_caller``). The record holds the RPC name, the kind of
principal (``admin``, ``tenant``, or ``none`` before a key is resolved), the tenant the call acts as, bytes in
and out, and never a key or a vector. Tenant names reach metric labels only with ``tenant_labels`` (one series
per tenant: thousands of tenants would swamp Prometheus).
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from engine import logs
from engine.principal import ADMIN, Principal

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

_access = logging.getLogger("grove.access")
_log = logging.getLogger("grove.metrics")
_CALL: ContextVar[CallRecord | None] = ContextVar("grove_call", default=None)
#: latency buckets, seconds: sub-millisecond searches up to minute-long streams
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


@dataclass
class CallRecord:
    rpc: str
    started: float
    principal: str = "none"
    tenant: str = ""
    bytes_in: int = 0
    bytes_out: int = 0


def note_caller(who: Principal, request: object) -> None:
    """Record who the current call acts as (called by the auth interceptor once the key is resolved)."""
    record = _CALL.get()
    if record is None:
        return
    record.principal = "admin" if who is ADMIN else "tenant"
    record.tenant = getattr(request, "tenant", "") or ("" if who is ADMIN else str(who))


class EngineCollector:
    """Gauges and counters read from the database at scrape time: per collection vectors, tenants and bytes,
    jobs (index builds, compression training) by outcome with their seconds; open streams by RPC."""

    def __init__(self, db, gate) -> None:
        self._db = db
        self._gate = gate

    def collect(self):
        vectors = GaugeMetricFamily("grove_collection_vectors", "vectors stored", labels=["collection"])
        tenants = GaugeMetricFamily("grove_collection_tenants", "tenants with vectors", labels=["collection"])
        size = GaugeMetricFamily("grove_collection_bytes", "bytes held in memory", labels=["collection"])
        jobs = CounterMetricFamily(
            "grove_jobs", "finished jobs (index builds, compression training)", labels=["collection", "kind", "outcome"]
        )
        seconds = CounterMetricFamily(
            "grove_job_seconds", "seconds spent in finished jobs", labels=["collection", "kind"]
        )
        running = GaugeMetricFamily("grove_job_running", "1 while a job runs", labels=["collection", "kind"])
        if self._db.loaded and self._db.is_open:
            for info in self._db.list_collections():
                try:
                    col = self._db.get_collection(info.name)
                    stats = col.stats()
                except Exception:  # noqa: BLE001 - dropped meanwhile: skip it, the scrape goes on
                    continue
                vectors.add_metric([info.name], stats["vectors"])
                tenants.add_metric([info.name], stats["tenants"])
                size.add_metric([info.name], stats["total_bytes"])
                current = col.jobs.status()
                for kind, tally in col.jobs.tallies.items():
                    for outcome, n in tally.outcomes.items():
                        jobs.add_metric([info.name, kind, outcome], n)
                    seconds.add_metric([info.name, kind], tally.seconds)
                    running.add_metric([info.name, kind], int(current.running and current.kind == kind))
        dropped = CounterMetricFamily("grove_log_records_dropped", "log records dropped: the log sink fell behind")
        dropped.add_metric([], logs.dropped())
        streams = GaugeMetricFamily("grove_open_streams", "streaming calls open now", labels=["rpc"])
        for method, n in sorted(self._gate.open_by_method().items()):
            streams.add_metric([method], n)
        yield from (vectors, tenants, size, jobs, seconds, running, streams, dropped)


class Metrics:
    """The server's Prometheus registry (its own, so several servers in one process do not collide)."""

    _http: WSGIServer | None  # the /metrics server, once serve() ran

    def __init__(self, db, gate, *, tenant_labels: bool = False) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("grove_requests", "calls by RPC and status code", ["rpc", "code"], registry=r)
        self.latency = Histogram(
            "grove_request_duration_seconds", "call latency by RPC", ["rpc"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.bytes = Counter("grove_request_bytes", "message bytes by RPC", ["rpc", "direction"], registry=r)
        self.rejected = Counter(
            "grove_rejected",
            "calls refused for a limit (RESOURCE_EXHAUSTED: size, streams, answer)",
            ["rpc"],
            registry=r,
        )
        self.by_tenant = (
            Counter("grove_tenant_requests", "calls by RPC and tenant", ["rpc", "tenant"], registry=r)
            if tenant_labels
            else None
        )
        r.register(EngineCollector(db, gate))

    def record(self, call: CallRecord, code: str, seconds: float) -> None:
        self.requests.labels(call.rpc, code).inc()
        self.latency.labels(call.rpc).observe(seconds)
        if call.bytes_in:
            self.bytes.labels(call.rpc, "in").inc(call.bytes_in)
        if call.bytes_out:
            self.bytes.labels(call.rpc, "out").inc(call.bytes_out)
        if code == "RESOURCE_EXHAUSTED":
            self.rejected.labels(call.rpc).inc()
        if self.by_tenant is not None and call.tenant:
            self.by_tenant.labels(call.rpc, call.tenant).inc()

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` over HTTP on ``host:port`` (0: a free port) in a daemon thread; returns the port."""
        from prometheus_client import start_http_server

        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def close(self) -> None:
        """Stop serving ``/metrics`` (and free its port)."""
        http, self._http = getattr(self, "_http", None), None
        if http is not None:
            http.shutdown()
            http.server_close()


class Observer:
    """Opens and closes ``CallRecord``s; feeds ``metrics`` (optional) and the access log (``access_log``)."""

    def __init__(self, metrics: Metrics | None = None, *, access_log: bool = True) -> None:
        self.metrics = metrics
        self.access_log = access_log

    def begin(self, rpc: str) -> tuple[CallRecord, object]:
        record = CallRecord(rpc, time.perf_counter())
        return record, _CALL.set(record)

    def end(self, record: CallRecord, token: object, code: str) -> None:
        try:
            _CALL.reset(token)  # type: ignore[arg-type]
        except ValueError:
            _CALL.set(None)  # a stream resumed in another context: only this thread's value to clear
        seconds = time.perf_counter() - record.started
        if self.metrics is not None:
            self.metrics.record(record, code, seconds)
        if self.access_log and _access.isEnabledFor(logging.INFO):
            fields = {
                "rpc": record.rpc,
                "principal": record.principal,
                "tenant": record.tenant,
                "code": code,
                "ms": round(seconds * 1e3, 3),
                "bytes_in": record.bytes_in,
                "bytes_out": record.bytes_out,
            }
            _access.info("call", extra={"fields": fields})
