"""Building the gRPC server (``create_server``) apart from running it (``serve``), so tests start one on port 0.

The server carries the Grove servicer behind two interceptors (``GuardInterceptor`` outside, mapping every
failure to a status; ``AuthInterceptor`` inside, resolving the API key and admitting streams), plus the standard
health service (``grpc.health.v1``) and server reflection, so Kubernetes probes and ``grpcurl`` work unchanged.

The port is bound exclusively (no ``SO_REUSEPORT``: a second server on a taken port fails instead of silently
sharing it). Worker threads: ``max_workers`` for unary calls plus one per stream slot (``StreamGate``), so
streams held open can never take the threads unary calls need.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from engine.errors import Unavailable
from engine.rpc.auth import AuthInterceptor
from engine.rpc.guard import GuardInterceptor
from engine.rpc.observe import Metrics, Observer
from engine.rpc.pb import grove_pb2, grove_pb2_grpc
from engine.rpc.servicer import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_STREAM_BYTES, GroveServicer
from engine.rpc.streams import (
    DEFAULT_STREAM_IDLE_SECONDS,
    DEFAULT_STREAMS_PER_PRINCIPAL,
    DEFAULT_STREAMS_TOTAL,
    StreamGate,
)

SERVICE_NAME = grove_pb2.DESCRIPTOR.services_by_name["Grove"].full_name  # "grove.v1.Grove"
_log = logging.getLogger("grove.server")


def _default_workers() -> int:
    # searches release the GIL in the kernels, so more threads than cores keeps the cores busy while others parse
    return min(32, 4 * (os.cpu_count() or 1))


def create_server(
    db,
    address: str = "127.0.0.1:0",
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_stream_bytes: int = DEFAULT_MAX_STREAM_BYTES,
    max_workers: int | None = None,
    max_streams: int = DEFAULT_STREAMS_TOTAL,
    max_streams_per_key: int = DEFAULT_STREAMS_PER_PRINCIPAL,
    stream_idle_seconds: float = DEFAULT_STREAM_IDLE_SECONDS,
    tls: tuple[str | Path, str | Path] | None = None,
    health_servicer: health.HealthServicer | None = None,
    observer: Observer | None = None,
    gate: StreamGate | None = None,
) -> tuple[grpc.Server, int]:
    """A gRPC server (not started) serving ``db``, and the port it is bound to.

    Parameters
    ----------
    db : the open ``engine.db.Database``; the caller closes it after ``server.stop``.
    address : ``host:port``; port 0 picks a free port (returned).
    max_message_bytes : largest message received or sent (default 64 MiB); larger -> RESOURCE_EXHAUSTED.
    max_stream_bytes : largest total of one ``UpsertStream`` (default 1 GiB); larger -> RESOURCE_EXHAUSTED.
    max_workers : threads serving unary calls (default ``min(32, 4 x cores)``).
    max_streams : streaming calls open at once, in all; each has a thread of its own beside ``max_workers``.
    max_streams_per_key : streaming calls one principal (a tenant, or the admin) may hold open at once.
    stream_idle_seconds : a client-streaming call with no message in or out for this long is cancelled.
    tls : ``(cert_file, key_file)`` PEM paths to serve TLS; None serves plaintext.
    health_servicer : the health service to register (``serve`` passes its own to flip it). It says SERVING
        once ``db`` is loaded, NOT_SERVING before (``mark_serving`` flips it).
    observer : what records each call (metrics, access log); default: nothing.
    gate : the stream admission to use (``serve`` shares it with the metrics); default: one from the limits.

    Returns
    -------
    (server, port)
    """
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    if gate is None:
        gate = StreamGate(per_principal=max_streams_per_key, total=max_streams, idle_seconds=stream_idle_seconds)
    threads = (max_workers or _default_workers()) + gate.total
    server = grpc.server(
        ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grove-rpc"),
        interceptors=[GuardInterceptor(observer=observer), AuthInterceptor(db, gate)],
        options=options,
    )
    servicer = GroveServicer(db, max_stream_bytes=max_stream_bytes, max_message_bytes=max_message_bytes)
    grove_pb2_grpc.add_GroveServicer_to_server(servicer, server)
    health_servicer = health_servicer or health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    mark_serving(health_servicer, db.loaded)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            cert, key = (Path(p).read_bytes() for p in tls)
            port = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
    except RuntimeError as exc:
        raise Unavailable(f"cannot listen on {address}: {exc}; is the port in use?") from None
    if port == 0:
        raise Unavailable(f"cannot listen on {address}; is the port in use?")
    return server, port


#: allocations at least this large are mapped on their own and given back to the OS when freed (glibc)
MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def return_large_frees_to_the_os() -> bool:
    """Fix glibc's mmap threshold, so that a large answer's buffers leave RSS once freed.

    By default glibc raises the threshold to the size of the largest mapped block freed so far (up to 32 MiB);
    after one large answer every later buffer of that size comes from the heap and is kept, so the server's RSS
    holds the peak of its largest request for good. A fixed threshold keeps RSS near what is live. Returns
    whether it applied (glibc only).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def mark_serving(health_servicer: health.HealthServicer, serving: bool) -> None:
    """Set the health of the server and of the Grove service: SERVING, or NOT_SERVING (loading, stopping)."""
    state = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, state)


def serve(
    db,
    address: str = "127.0.0.1:50051",
    *,
    grace: float = 10.0,
    before_start: Callable[[], None] | None = None,
    metrics_port: int | None = None,
    metrics_host: str | None = None,
    metrics_tenant_labels: bool = False,
    access_log: bool = False,
    warm: Callable[[], object] | None = None,
    max_streams: int = DEFAULT_STREAMS_TOTAL,
    max_streams_per_key: int = DEFAULT_STREAMS_PER_PRINCIPAL,
    stream_idle_seconds: float = DEFAULT_STREAM_IDLE_SECONDS,
    **options,
) -> None:
    """Serve ``db`` until SIGTERM or SIGINT, then shut down gracefully and close (flush) the database.

    Start-up: the port is bound first (a taken port raises ``Unavailable`` before anything else happens), then
    ``before_start`` runs (the CLI makes and prints a new admin key there), the server starts listening with its
    health NOT_SERVING, and ``db.load()`` reads the collections; calls that arrive meanwhile wait for it. Health
    then says SERVING. Shutdown: health turns NOT_SERVING (load balancers stop routing), new calls are refused,
    calls in flight get ``grace`` seconds to finish, then ``db.close()`` flushes RocksDB. Call from the main
    thread. ``options`` are those of ``create_server``. Prints ``grove: serving on HOST:PORT`` once listening.

    With ``metrics_port``, Prometheus metrics are served at ``http://METRICS_HOST:METRICS_PORT/metrics``
    (``metrics_host`` defaults to the gRPC host); ``access_log`` logs one line per call (``grove.access``).
    ``warm`` runs in a thread once listening (the CLI loads or compiles the kernels there), beside the load.
    """
    return_large_frees_to_the_os()
    health_servicer = health.HealthServicer()
    gate = StreamGate(per_principal=max_streams_per_key, total=max_streams, idle_seconds=stream_idle_seconds)
    metrics = Metrics(db, gate, tenant_labels=metrics_tenant_labels) if metrics_port is not None else None
    observer = Observer(metrics, access_log=access_log)
    server, port = create_server(db, address, health_servicer=health_servicer, observer=observer, gate=gate, **options)
    host = address.rsplit(":", 1)[0]
    if metrics is not None and metrics_port is not None:
        try:
            metrics_port = metrics.serve(metrics_host or host.strip("[]"), metrics_port)
        except OSError as exc:
            server.stop(None)
            raise Unavailable(f"cannot serve metrics on port {metrics_port}: {exc.strerror or exc}") from None
    if before_start is not None:
        before_start()
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    server.start()
    tls = "TLS" if options.get("tls") else "plaintext, no TLS"
    print(f"grove: serving on {host}:{port} ({tls})", flush=True)
    if metrics is not None:
        print(f"grove: metrics on http://{metrics_host or host}:{metrics_port}/metrics", flush=True)
    warming = None
    if warm is not None:
        warming = threading.Thread(target=warm, name="grove-warm", daemon=True)
        warming.start()
    try:
        t0 = time.perf_counter()
        db.load()
        if warming is not None:
            warming.join()
        mark_serving(health_servicer, True)
        print(
            f"grove: ready ({len(db.list_collections())} collections loaded in {time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
        _log.info("grove: shutting down (grace %.1f s)", grace)
        health_servicer.enter_graceful_shutdown()
        server.stop(grace).wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        db.close()
        if metrics is not None:
            metrics.close()
    print("grove: stopped", flush=True)
