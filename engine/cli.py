"""The ``grove`` command: ``grove serve`` runs the gRPC server on a store; ``grove demo`` shows both SDK modes.

Heavy imports (grpc, numba) happen inside the subcommands, so ``grove --help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence

from engine import apikeys
from engine.rpc.streams import DEFAULT_STREAM_IDLE_SECONDS, DEFAULT_STREAMS_PER_PRINCIPAL, DEFAULT_STREAMS_TOTAL

ADMIN_KEY_ENV = "GROVE_ADMIN_KEY"
_log = logging.getLogger("grove.cli")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("grove")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="grove", description="Grove: a multi-tenant vector search engine.")
    ap.add_argument("--version", action="version", version=f"grove {_version()}")
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve a store over gRPC until SIGTERM/SIGINT")
    s.add_argument("--path", default="./grove-data", help="store directory (created if missing; default ./grove-data)")
    s.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=50051, help="port (default 50051; 0 picks a free one)")
    s.add_argument(
        "--admin-key",
        default=None,
        help=f"admin API key (>= 16 characters; else ${ADMIN_KEY_ENV}; else the stored one, or a new one printed once)",
    )
    s.add_argument(
        "--rotate-admin-key",
        action="store_true",
        help="replace the store's admin key with --admin-key (without it, a different key is refused)",
    )
    s.add_argument("--tls-cert", default=None, help="PEM certificate file; serve TLS (with --tls-key)")
    s.add_argument("--tls-key", default=None, help="PEM private key file (with --tls-cert)")
    s.add_argument("--max-message-mb", type=int, default=64, help="largest gRPC message in MiB (default 64)")
    s.add_argument("--max-stream-mb", type=int, default=1024, help="largest upsert stream in MiB (default 1024)")
    s.add_argument("--workers", type=int, default=None, help="threads serving unary calls (default min(32, 4 x cores))")
    s.add_argument(
        "--max-streams", type=int, default=DEFAULT_STREAMS_TOTAL, help="streams open at once, each on its own thread"
    )
    s.add_argument(
        "--max-streams-per-key",
        type=int,
        default=DEFAULT_STREAMS_PER_PRINCIPAL,
        help="streams one principal (a tenant, or the admin) may hold open at once",
    )
    s.add_argument(
        "--stream-idle-s",
        type=float,
        default=DEFAULT_STREAM_IDLE_SECONDS,
        help="seconds a stream may go without a message before it is cancelled",
    )
    s.add_argument("--grace", type=float, default=10.0, help="seconds in-flight calls get at shutdown (default 10)")
    sub.add_parser("demo", help="a one-minute tour: in-process server, two tenants, searches (embedded and remote)")
    return ap


class AdminKeyConflict(Exception):
    """``--admin-key`` names another key than the store's: refused unless rotation is asked for."""


def check_admin_key(db, given: str | None, *, rotate: bool = False) -> None:
    """Refuse (``AdminKeyConflict``) a key that differs from the stored one, unless ``rotate``; changes nothing."""
    if given and db.has_admin_key() and not db.is_admin_key(given) and not rotate:
        raise AdminKeyConflict(
            "--admin-key differs from this store's admin key; the stored key stays in force. To replace it, "
            "pass --rotate-admin-key as well (the old key stops working at once)"
        )


def ensure_admin_key(db, given: str | None, *, rotate: bool = False) -> str | None:
    """Make the store's admin key ``given`` (first start, or ``rotate``), or keep the stored one; with none given
    and none stored, make a new one. Returns the key when it was generated here (to be shown once), else None.
    """
    check_admin_key(db, given, rotate=rotate)
    if given:
        if not db.has_admin_key():
            db.set_admin_key(given)
        elif not db.is_admin_key(given):
            db.set_admin_key(given)
            _log.warning("grove: the admin key was rotated (--rotate-admin-key); the old key no longer works")
            print("grove: admin key rotated; the old key no longer works", flush=True)
        return None
    if db.has_admin_key():
        return None
    key = apikeys.new_key()
    db.set_admin_key(key)
    return key


def port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now (by a plain socket, as the server will), or None when it can.

    ``SO_REUSEADDR`` is set as the server sets it, so a port left in TIME_WAIT by a stopped server is free;
    a port with any listener on it, gRPC or not, is not. Port 0 (pick one) is always free.
    """
    if port == 0:
        return None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _serve(a: argparse.Namespace) -> int:
    from engine.db import Database
    from engine.errors import GroveError

    if (a.tls_cert is None) != (a.tls_key is None):
        print("grove: --tls-cert and --tls-key go together; give both or neither", file=sys.stderr)
        return 2
    if os.path.exists(a.path) and not os.path.isdir(a.path):
        print(f"grove: --path {a.path} is a file; give a directory for the store (created if missing)", file=sys.stderr)
        return 2
    taken = port_taken(a.host, a.port)
    if taken:  # before the store is opened (or made): a failed start leaves nothing behind
        print(f"grove: cannot listen on {a.host}:{a.port}: {taken}; is the port in use?", file=sys.stderr)
        return 1
    given = a.admin_key or os.environ.get(ADMIN_KEY_ENV)
    try:
        db = Database(a.path, load=False)  # the store only: fast whatever its size; collections load once listening
    except GroveError as exc:
        print(f"grove: {exc}", file=sys.stderr)
        return 1
    try:
        check_admin_key(db, given, rotate=a.rotate_admin_key)
        if given:
            apikeys.check_admin_key(given)
    except (AdminKeyConflict, GroveError) as exc:
        db.close()
        print(f"grove: {exc}", file=sys.stderr)
        return 2
    from engine.rpc.server import serve

    def keys_once_bound() -> None:  # only once the port is ours: a failed start changes nothing
        generated = ensure_admin_key(db, given, rotate=a.rotate_admin_key)
        if generated:
            print(f"grove: generated admin key (shown once, stored hashed): {generated}", flush=True)

    tls = (a.tls_cert, a.tls_key) if a.tls_cert else None
    if tls is None and a.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"grove: WARNING: serving on {a.host} without TLS: API keys cross the network in clear", flush=True)
    try:
        serve(
            db,
            f"{a.host}:{a.port}",
            grace=a.grace,
            before_start=keys_once_bound,
            max_message_bytes=a.max_message_mb << 20,
            max_stream_bytes=a.max_stream_mb << 20,
            max_workers=a.workers,
            max_streams=a.max_streams,
            max_streams_per_key=a.max_streams_per_key,
            stream_idle_seconds=a.stream_idle_s,
            tls=tls,
        )
    except GroveError as exc:
        db.close()
        print(f"grove: {exc}", file=sys.stderr)
        return 1
    return 0


def _demo() -> int:
    import tempfile

    import numpy as np
    from grove_client import Client

    from engine.db import Database
    from engine.rpc.server import create_server

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="grove-demo-") as tmp:
        db = Database(tmp)
        admin_key = ensure_admin_key(db, None)
        server, port = create_server(db)
        server.start()
        url = f"127.0.0.1:{port}"
        print(f"grove demo: in-process server on {url}, store in {tmp}")
        try:
            with Client(url=url, api_key=admin_key) as admin:
                col = admin.create_collection("docs", dim=8, metric="cosine")
                col.upsert(np.arange(0, 5), rng.standard_normal((5, 8)).astype(np.float32), tenant="acme")
                col.upsert(np.arange(5, 10), rng.standard_normal((5, 8)).astype(np.float32), tenant="beta")
                col.grant([5], tenant="acme")
                print(f"collections: {[c.name for c in admin.list_collections()]}; stats: {col.stats()}")
                acme_key = admin.create_tenant_key("acme")
            query = rng.standard_normal((1, 8)).astype(np.float32)
            with Client(url=url, api_key=acme_key) as acme:
                res = acme.get_collection("docs").search(query, k=4, tenant="acme")
                scores = [round(float(s), 3) for s in res.scores[0]]
                print(f"acme (tenant key) sees ids {res.ids[0].tolist()} scores {scores}")
                try:
                    acme.get_collection("docs").search(query, k=4, tenant="beta")
                except Exception as exc:  # noqa: BLE001 - shown to the user, whatever it is
                    print(f"acme searching as beta: {type(exc).__name__}: {exc}")
        finally:
            server.stop(None).wait()
            db.close()
        with Client(path=tmp) as local:
            res = local.get_collection("docs").search(query, k=4, tenant="beta")
            print(f"embedded, as beta: ids {res.ids[0].tolist()} (counts {res.counts.tolist()})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.command == "serve":
        return _serve(a)
    return _demo()


if __name__ == "__main__":
    sys.exit(main())
