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

from engine import apikeys, config

_log = logging.getLogger("grove.cli")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("grove")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _add_setting_flags(p: argparse.ArgumentParser) -> None:
    """One option per setting that has a flag (``engine.config.SETTINGS``); unset options stay None, so the
    file and the environment keep their say."""
    p.add_argument("--config", default=None, help=f"TOML settings file (else ${config.CONFIG_ENV})")
    for s in config.SETTINGS:
        if s.flag is None:
            continue
        default = "unset" if s.default is None else s.default
        text = f"{s.help} (${s.env}; default {default})"
        if s.parse is config.BOOL:
            p.add_argument(s.flag, dest=s.key, default=None, action=argparse.BooleanOptionalAction, help=text)
        else:
            p.add_argument(s.flag, dest=s.key, default=None, help=text)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="grove", description="Grove: a multi-tenant vector search engine.")
    ap.add_argument("--version", action="version", version=f"grove {_version()}")
    sub = ap.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a store over gRPC until SIGTERM/SIGINT")
    _add_setting_flags(serve)
    serve.add_argument(
        "--rotate-admin-key",
        action="store_true",
        help="replace the store's admin key with --admin-key (without it, a different key is refused)",
    )
    _add_setting_flags(
        sub.add_parser("config", help="print every setting: its variable, effective value and where it came from")
    )
    sub.add_parser("warm", help="load (or, after an install, compile) the search kernels now, and say how long")
    _add_setting_flags(
        sub.add_parser("health", help="exit 0 if the server at --host/--port answers SERVING (container probes)")
    )
    sub.add_parser("demo", help="a one-minute tour: in-process server, two tenants, searches (embedded and remote)")
    return ap


def _settings(a: argparse.Namespace) -> config.Config:
    flags = {s.key: getattr(a, s.key, None) for s in config.SETTINGS if s.flag is not None}
    return config.load(a.config, flags=flags)


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
    from engine import logs

    cfg = _settings(a)
    c = cfg.section("serve")
    logs.setup(c["log_level"], c["log_format"])
    try:
        return _serve_with(a, cfg)
    finally:
        logs.stop()  # what is queued is written before the process ends


def _serve_with(a: argparse.Namespace, cfg: config.Config) -> int:
    from engine import warmup
    from engine.db import Database
    from engine.errors import GroveError

    config.use(cfg)
    c = cfg.section("serve")
    if (c["tls_cert"] is None) != (c["tls_key"] is None):
        print("grove: --tls-cert and --tls-key go together; give both or neither", file=sys.stderr)
        return 2
    if os.path.exists(c["path"]) and not os.path.isdir(c["path"]):
        print(
            f"grove: --path {c['path']} is a file; give a directory for the store (created if missing)", file=sys.stderr
        )
        return 2
    taken = port_taken(c["host"], c["port"])
    if taken:  # before the store is opened (or made): a failed start leaves nothing behind
        print(f"grove: cannot listen on {c['host']}:{c['port']}: {taken}; is the port in use?", file=sys.stderr)
        return 1
    given = c["admin_key"]
    try:
        db = Database(c["path"], load=False)  # the store only: fast whatever its size; collections load once listening
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

    tls = (c["tls_cert"], c["tls_key"]) if c["tls_cert"] else None
    if tls is None and c["host"] not in ("127.0.0.1", "localhost", "::1"):
        print(f"grove: WARNING: serving on {c['host']} without TLS: API keys cross the network in clear", flush=True)
    try:
        serve(
            db,
            f"{c['host']}:{c['port']}",
            grace=c["grace"],
            before_start=keys_once_bound,
            max_message_bytes=c["max_message_mb"] << 20,
            max_stream_bytes=c["max_stream_mb"] << 20,
            max_workers=c["workers"],
            max_streams=c["max_streams"],
            max_streams_per_key=c["max_streams_per_key"],
            stream_idle_seconds=c["stream_idle_s"],
            tls=tls,
            metrics_port=c["metrics_port"],
            metrics_host=c["metrics_host"],
            metrics_tenant_labels=c["metrics_tenant_labels"],
            access_log=c["access_log"],
            warm=warmup.warm if c["warm"] else None,
        )
    except GroveError as exc:
        db.close()
        print(f"grove: {exc}", file=sys.stderr)
        return 1
    return 0


def _config(a: argparse.Namespace) -> int:
    cfg = _settings(a)
    print(cfg.format_table())
    return 0


def _health(a: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    c = _settings(a).section("serve")
    host = "127.0.0.1" if c["host"] in ("0.0.0.0", "::", "") else c["host"]
    target = f"{host}:{c['port']}"
    if c["tls_cert"]:
        with open(c["tls_cert"], "rb") as fh:
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=fh.read()))
    else:
        channel = grpc.insecure_channel(target)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.RpcError as exc:
        print(f"grove: {target}: {exc.code().name}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    state = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"grove: {target}: {state}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _warm(a: argparse.Namespace) -> int:
    from engine import logs, warmup

    logs.setup()
    try:
        config.current()
        warmup.warm()
    finally:
        logs.stop()
    return 0


def _demo(a: argparse.Namespace) -> int:
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
    commands = {"serve": _serve, "config": _config, "warm": _warm, "health": _health, "demo": _demo}
    try:
        return commands[a.command](a)
    except config.ConfigError as exc:  # a bad setting, from the file, the environment or a flag
        print(f"grove: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
