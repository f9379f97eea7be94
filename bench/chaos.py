"""Concurrency and crash harness: random concurrent clients against a real ``grove serve``, kill -9 at random
points, and after every restart a full check of what survived against a model of what was acknowledged.

Each cycle starts the server on the same store and runs ``--clients`` client threads over three collections for
a random time, then kills the server's process group with SIGKILL. The clients do:

* first writes of new tenants, racing: a large first write of a tenant into one collection while another thread
  writes the same new tenant into another collection (the registry race of issue 14);
* upserts (new ids and overwrites), grants between their tenants, revokes, deletes;
* failing batches (NaN, a zero vector under cosine, ids another tenant shares with the writer): refused whole;
* searches and counts, each result checked against the model (no id the tenant may not see).

Each client owns its tenants (no other client writes them), so its part of the model is exact once a call is
acknowledged; a call in flight at the kill is *uncertain* and may have landed or not, wholly. After the kill the
harness opens the store itself (``engine.db.Database``) and checks, for every collection and tenant: every
acknowledged vector present with its exact bytes, counts and visibility exactly as modelled (uncertain calls:
either outcome, then adopted), tenant numbers stable and never reused, and newcomer tenants seeing nothing.

    python bench/chaos.py --cycles 200 --clients 4               # the long run (figures in the closing note)
    python bench/chaos.py --cycles 200 --fuzz 100000              # and the gRPC fuzzer afterwards

``tests/test_chaos.py`` runs a few cycles in CI.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ADMIN_KEY = "chaos-admin-key-0123456789"
COLLECTIONS = (("ca", 8, "l2"), ("cb", 8, "ip"), ("cc", 8, "cosine"))
ID_POOL = 400
LARGE_IDS = 1 << 20  # where the ids of a race's large first write start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(path: Path, port: int, admin_key: str = ADMIN_KEY, *args: str) -> subprocess.Popen:
    """``grove serve`` in its own process group, once its port accepts connections."""
    cmd = [sys.executable, "-m", "engine", "serve", "--path", str(path), "--port", str(port), "--admin-key", admin_key]
    proc = subprocess.Popen(
        [*cmd, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, cwd=_ROOT
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            if proc.poll() is not None:
                with proc.stderr:
                    said = proc.stderr.read().decode(errors="replace")[-2000:]
                raise RuntimeError("server exited: " + said) from None
            time.sleep(0.05)
    kill9(proc)
    raise RuntimeError("server did not listen within 120 s")


def kill9(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


_ROOT = str(Path(__file__).resolve().parent.parent)


# ------------------------------------------------------------------------------------------------ the model
Key = tuple[str, str, int]  # (collection, owner, id): one vector


@dataclass
class Uncertain:
    """A write in flight at the kill: ``apply`` makes the model as if it landed; it touches only ``keys``."""

    what: str
    keys: list[Key]
    apply: object


class ClientModel:
    """What one client's acknowledged writes made of its tenants' vectors."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.data: dict[Key, np.ndarray] = {}  # the float32 row as written
        self.grants: dict[Key, set[str]] = {}  # who else sees each vector
        self.own: dict[tuple[str, str], set[int]] = {}  # (collection, owner) -> ids
        self.granted: dict[tuple[str, str], set[Key]] = {}  # (collection, tenant) -> vectors granted to it
        self.tenants: list[str] = []
        self.in_flight: list[Uncertain] = []
        self.lock = threading.Lock()

    def visible(self, col: str, tenant: str) -> set[int]:
        return self.own.get((col, tenant), set()) | {k[2] for k in self.granted.get((col, tenant), ())}

    def put(self, col: str, owner: str, ids, vecs) -> None:
        for i, v in zip(np.asarray(ids).tolist(), vecs):
            self.data[(col, owner, i)] = np.array(v, np.float32)
            self.grants.setdefault((col, owner, i), set())
            self.own.setdefault((col, owner), set()).add(i)

    def grant(self, key: Key, tenant: str) -> None:
        self.grants[key].add(tenant)
        self.granted.setdefault((key[0], tenant), set()).add(key)

    def revoke(self, key: Key, tenant: str) -> None:
        self.grants[key].discard(tenant)
        self.granted.get((key[0], tenant), set()).discard(key)

    def delete(self, key: Key) -> None:
        for t in self.grants.pop(key):
            self.granted[(key[0], t)].discard(key)
        del self.data[key]
        self.own[(key[0], key[1])].discard(key[2])

    def state(self, key: Key):
        return None if key not in self.data else (self.data[key].copy(), set(self.grants[key]))

    def restore(self, key: Key, state) -> None:
        if key in self.data:
            self.delete(key)
        if state is not None:
            self.put(key[0], key[1], [key[2]], [state[0]])
            for t in state[1]:
                self.grant(key, t)


@dataclass
class Stats:
    calls: Counter = field(default_factory=Counter)
    checks: int = 0  # individual facts verified: result ids, counts, vector bytes and grants, tenant numbers
    refused_as_expected: int = 0
    violations: list[str] = field(default_factory=list)
    lost: int = 0
    leaks: int = 0
    reused_numbers: int = 0
    cycles: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: set while a race's small first write is acknowledged and its large one is still in flight: the moment a
    #: kill would orphan the small write if the tenant's number were published before its record was durable
    race_window: threading.Event = field(default_factory=threading.Event)

    def check(self, ok: bool, kind: str, text: str) -> None:
        with self.lock:
            self.checks += 1
            if ok:
                return
            if kind == "lost":
                self.lost += 1
            elif kind == "leak":
                self.leaks += 1
            elif kind == "reused":
                self.reused_numbers += 1
            if len(self.violations) < 50:
                self.violations.append(f"{kind}: {text}")


class ServerGone(Exception):
    """The server was killed under a call: this client's cycle is over."""


# ------------------------------------------------------------------------------------------------ clients
class ChaosClient(threading.Thread):
    """One client thread over its own tenants, until ``stop`` is set or the server dies."""

    def __init__(self, url: str, model: ClientModel, stats: Stats, stop: threading.Event, seed: int, big_rows: int):
        super().__init__(daemon=True, name=f"chaos-{model.name}")
        self.url, self.model, self.stats, self.stop_event = url, model, stats, stop
        self.rng = np.random.default_rng(seed)
        self.big_rows = big_rows

    def run(self) -> None:
        from grove_client import Client

        try:
            with Client(url=self.url, api_key=ADMIN_KEY, timeout=60) as client:
                cols = {name: client.get_collection(name) for name, _, _ in COLLECTIONS}
                self.clear_large_writes(cols)
                while not self.stop_event.is_set():
                    self.step(cols)
        except Exception:  # noqa: BLE001 - the server was killed under us: the cycle is over
            return

    def clear_large_writes(self, cols) -> None:
        """Delete what a race's large first write left when the kill came before its clean-up (the store and the
        model stay small over hundreds of cycles)."""
        m = self.model
        for (col_name, owner), ids in list(m.own.items()):
            large = np.array(sorted(i for i in ids if i >= LARGE_IDS), np.int64)
            if large.size:
                keys = [(col_name, owner, i) for i in large.tolist()]
                send = lambda c=cols[col_name], o=owner, x=large: c.delete(x, tenant=o)  # noqa: E731
                self.write("clear", keys, send, lambda k=keys: [m.delete(key) for key in k])

    def write(self, what: str, keys: list[Key], send, apply) -> None:
        """Send a write; apply it to the model once acknowledged. Cut by the kill, it stays uncertain."""
        from engine.errors import DeadlineExceeded, GroveError, Unavailable

        pending = Uncertain(what, keys, apply)
        self.model.in_flight.append(pending)
        try:
            send()
        except (Unavailable, DeadlineExceeded) as exc:
            raise ServerGone from exc
        except GroveError as exc:
            self.model.in_flight.remove(pending)
            self.stats.check(False, "refused", f"{what}: {type(exc).__name__}: {exc}")
            return
        self.model.in_flight.remove(pending)
        apply()

    def step(self, cols) -> None:
        from engine.errors import DeadlineExceeded, Unavailable

        rng, m = self.rng, self.model
        if not m.tenants or rng.random() < 0.02:
            m.tenants.append(f"{m.name}-{len(m.tenants)}-{int(rng.integers(1 << 30))}")
            if rng.random() < 0.3:
                self.stats.calls["race"] += 1
                self.race(m.tenants[-1])
                return
        tenant = m.tenants[int(rng.integers(len(m.tenants)))]
        col_name, dim, metric = COLLECTIONS[int(rng.integers(len(COLLECTIONS)))]
        col = cols[col_name]
        op = str(rng.choice(["upsert", "upsert", "grant", "revoke", "delete", "search", "search", "count", "bad"]))
        self.stats.calls[op] += 1
        try:
            getattr(self, "op_" + op)(col, col_name, dim, metric, tenant)
        except (Unavailable, DeadlineExceeded) as exc:
            raise ServerGone from exc

    # each op_*: (collection handle, its name, dim, metric, tenant)
    def op_upsert(self, col, col_name, dim, metric, tenant) -> None:
        m = self.model
        shared = {k[2] for k in m.granted.get((col_name, tenant), ())}
        ids = np.array(sorted(set(self.rng.integers(0, ID_POOL, int(self.rng.integers(1, 20))).tolist()) - shared))
        if not ids.size:
            return
        vecs = self.rng.standard_normal((ids.size, dim)).astype(np.float32)
        keys = [(col_name, tenant, i) for i in ids.tolist()]
        put = lambda: m.put(col_name, tenant, ids, vecs)  # noqa: E731
        self.write("upsert", keys, lambda: col.upsert(ids, vecs, tenant=tenant), put)

    def op_grant(self, col, col_name, dim, metric, tenant) -> None:
        m = self.model
        seen = m.visible(col_name, tenant)
        owners = [t for t in m.tenants if t != tenant and m.own.get((col_name, t))]
        if not owners:
            return
        owner = owners[int(self.rng.integers(len(owners)))]
        mine = sorted(m.own[(col_name, owner)] - seen)
        if not mine:
            return
        ids = np.array(self.rng.choice(mine, min(len(mine), 4), replace=False), np.int64)
        keys = [(col_name, owner, i) for i in ids.tolist()]
        send = lambda: col.grant(ids, tenant=tenant, owner=owner)  # noqa: E731
        self.write("grant", keys, send, lambda: [m.grant(k, tenant) for k in keys])

    def op_revoke(self, col, col_name, dim, metric, tenant) -> None:
        m = self.model
        granted = sorted(m.granted.get((col_name, tenant), ()))
        if not granted:
            return
        key = granted[int(self.rng.integers(len(granted)))]
        ids = np.array([key[2]], np.int64)
        self.write("revoke", [key], lambda: col.revoke(ids, tenant=tenant), lambda: m.revoke(key, tenant))

    def op_delete(self, col, col_name, dim, metric, tenant) -> None:
        m = self.model
        mine = sorted(m.own.get((col_name, tenant), ()))
        if not mine:
            return
        ids = np.array(self.rng.choice(mine, min(len(mine), 3), replace=False), np.int64)
        keys = [(col_name, tenant, i) for i in ids.tolist()]
        self.write("delete", keys, lambda: col.delete(ids, tenant=tenant), lambda: [m.delete(k) for k in keys])

    def op_count(self, col, col_name, dim, metric, tenant) -> None:
        n, want = col.count(tenant=tenant), len(self.model.visible(col_name, tenant))
        self.stats.check(n == want, "leak" if n > want else "lost", f"count {col_name}/{tenant}: {n}, want {want}")

    def op_search(self, col, col_name, dim, metric, tenant) -> None:
        res = col.search(self.rng.standard_normal((1, dim)).astype(np.float32), k=10, tenant=tenant)
        seen = self.model.visible(col_name, tenant)
        got = [int(i) for i in res.ids[0] if i >= 0]
        for i in got:
            self.stats.check(i in seen, "leak", f"search {col_name}/{tenant} returned id {i}")
        self.stats.check(len(got) == min(10, len(seen)), "lost", f"search {col_name}/{tenant}: {len(got)} hits")

    def op_bad(self, col, col_name, dim, metric, tenant) -> None:
        """A batch the server must refuse whole: nothing of it may land."""
        from engine.errors import AlreadyExists, InvalidArgument

        rng = self.rng
        ids = np.arange(ID_POOL, ID_POOL + 5) + int(rng.integers(1 << 20))
        vecs = rng.standard_normal((5, dim)).astype(np.float32)
        shared = sorted(self.model.granted.get((col_name, tenant), ()))
        if shared and rng.random() < 0.5:
            ids[-1], expected = shared[0][2], AlreadyExists
        elif metric == "cosine" and rng.random() < 0.5:
            vecs[-1], expected = 0.0, InvalidArgument
        else:
            vecs[-1, 0], expected = np.nan, InvalidArgument
        try:
            col.upsert(ids, vecs, tenant=tenant)
            self.stats.check(False, "accepted", f"a bad batch was accepted in {col_name}/{tenant}")
        except expected:
            with self.stats.lock:
                self.stats.refused_as_expected += 1

    def race(self, tenant: str) -> None:
        """First writes of one new tenant into two collections at once: a large one and a one-row one; then the
        large one is deleted again (so the store stays small over hundreds of cycles)."""
        from grove_client import Client

        m, rng = self.model, self.rng
        (big_col, big_dim, _), (small_col, small_dim, _) = COLLECTIONS[0], COLLECTIONS[1]
        big_ids = np.arange(LARGE_IDS, LARGE_IDS + self.big_rows)
        big = rng.standard_normal((self.big_rows, big_dim)).astype(np.float32)
        small_ids = np.array([int(rng.integers(ID_POOL))], np.int64)
        small = rng.standard_normal((1, small_dim)).astype(np.float32)
        big_keys = [(big_col, tenant, i) for i in big_ids.tolist()]
        done = threading.Event()

        def big_write() -> None:
            try:
                with Client(url=self.url, api_key=ADMIN_KEY, timeout=60) as c:
                    big_handle = c.get_collection(big_col)
                    self.write(
                        "race-big",
                        big_keys,
                        lambda: big_handle.upsert(big_ids, big, tenant=tenant),
                        lambda: m.put(big_col, tenant, big_ids, big),
                    )
                done.set()
            except Exception:  # noqa: BLE001 - killed mid-write: it stays uncertain
                pass

        th = threading.Thread(target=big_write, daemon=True)
        th.start()
        time.sleep(float(rng.uniform(0, 0.05)))
        with Client(url=self.url, api_key=ADMIN_KEY, timeout=60) as c:
            small_handle = c.get_collection(small_col)
            keys = [(small_col, tenant, int(small_ids[0]))]
            try:
                self.write(
                    "race-small",
                    keys,
                    lambda: small_handle.upsert(small_ids, small, tenant=tenant),
                    lambda: m.put(small_col, tenant, small_ids, small),
                )
                if not done.is_set():
                    self.stats.race_window.set()
                    self.stats.calls["race window"] += 1
            finally:
                th.join()
        if not done.is_set():
            raise ServerGone
        with Client(url=self.url, api_key=ADMIN_KEY, timeout=60) as c:
            big_handle = c.get_collection(big_col)
            self.write(
                "race-cleanup",
                big_keys,
                lambda: big_handle.delete(big_ids, tenant=tenant),
                lambda: [m.delete(k) for k in big_keys],
            )


# ------------------------------------------------------------------------------------------------ checking
def verify_store(path: Path, models: list[ClientModel], stats: Stats, numbers_seen: dict[str, int]) -> None:
    """Open the killed server's store and check it against the models (adopting in-flight writes' outcomes)."""
    from engine.db import Database
    from engine.principal import ADMIN
    from engine.storage import keys

    db = Database(path)
    try:
        names = db.tenants.names()
        for name, no in names.items():  # numbers are stable, and never name two tenants
            before = numbers_seen.get(name)
            stats.check(before in (None, no), "reused", f"tenant {name} was number {before}, now {no}")
        by_number: dict[int, str] = {}
        for name, no in {**numbers_seen, **names}.items():
            other = by_number.setdefault(no, name)
            stats.check(other == name, "reused", f"number {no} names {other} and {name}")
        numbers_seen.update(names)
        stored: dict[Key, bytes] = {}
        granted: dict[Key, set[str]] = {}
        for col_name, _, _ in COLLECTIONS:
            col = db.get_collection(col_name)
            for key, value in db._store.scan(keys.collection_prefix(keys.VECTOR, col.no)):
                owner, i = keys.read_vector(key)
                stored[(col_name, db.tenants.name_of(owner), i)] = value
            for key, _ in db._store.scan(keys.collection_prefix(keys.GRANT, col.no)):
                owner, i, t = keys.read_grant(key)
                granted.setdefault((col_name, db.tenants.name_of(owner), i), set()).add(db.tenants.name_of(t))
        for m in models:
            _settle(m, stored, granted, stats)
            for key, data in m.data.items():
                raw = stored.get(key)
                stats.check(raw is not None, "lost", f"acknowledged vector {key} is missing")
                if raw is not None:
                    stats.check(raw == data.astype("<f4").tobytes(), "lost", f"vector {key}: other bytes")
                    stats.check(granted.get(key, set()) == m.grants[key], "leak", f"vector {key}: grants differ")
            for col_name, _, _ in COLLECTIONS:
                col = db.get_collection(col_name)
                for tenant in m.tenants:
                    n, want = col.count(tenant=tenant, principal=ADMIN), len(m.visible(col_name, tenant))
                    stats.check(n == want, "leak" if n > want else "lost", f"{col_name}/{tenant}: {n}, want {want}")
        modelled = {k for m in models for k in m.data}
        for key in stored:
            stats.check(key in modelled, "leak", f"vector {key} is stored but was never acknowledged nor in flight")
        for col_name, dim, _ in COLLECTIONS:  # a newcomer sees nothing
            col = db.get_collection(col_name)
            res = col.search(np.ones((1, dim), np.float32), k=5, tenant=f"newcomer-{stats.cycles}", principal=ADMIN)
            stats.check(not (res.ids >= 0).any(), "leak", f"a newcomer saw {res.ids[res.ids >= 0].tolist()}")
    finally:
        db.close()


def _settle(m: ClientModel, stored: dict[Key, bytes], granted: dict[Key, set[str]], stats: Stats) -> None:
    """Adopt the outcome of each of ``m``'s writes in flight at the kill: it landed wholly, or not at all."""
    pending, m.in_flight = m.in_flight, []
    for p in pending:
        before = {k: m.state(k) for k in p.keys}
        p.apply()
        after = {k: m.state(k) for k in p.keys}

        def matches(states) -> bool:
            for k, want in states.items():
                raw = stored.get(k)
                if want is None:
                    if raw is not None:
                        return False
                elif raw != want[0].astype("<f4").tobytes() or granted.get(k, set()) != want[1]:
                    return False
            return True

        if matches(after):
            continue
        for k, state in before.items():
            m.restore(k, state)
        stats.check(matches(before), "partial", f"{p.what} of {m.name} landed in part")


# ------------------------------------------------------------------------------------------------ driver
def run(
    path: Path,
    *,
    cycles: int,
    clients: int,
    seconds: tuple[float, float],
    big_rows: int,
    seed: int,
    window_kills: float = 0.5,
    log=print,
) -> Stats:
    """``cycles`` kill -9 cycles of ``clients`` threads, each ``seconds`` long (a share ``window_kills`` of them
    cut short by a kill inside a race's window, when one comes); returns what was run and found."""
    from grove_client import Client

    rng = random.Random(seed)
    stats = Stats()
    models = [ClientModel(f"c{i}") for i in range(clients)]
    numbers_seen: dict[str, int] = {}
    port = free_port()
    proc = start_server(path, port)
    url = f"127.0.0.1:{port}"
    with Client(url=url, api_key=ADMIN_KEY, timeout=120) as admin:
        for name, dim, metric in COLLECTIONS:
            admin.create_collection(name, dim=dim, metric=metric)
    for cycle in range(cycles):
        stats.cycles = cycle + 1
        stop = threading.Event()
        threads = [
            ChaosClient(url, m, stats, stop, seed * 1000 + cycle * 16 + i, big_rows) for i, m in enumerate(models)
        ]
        for t in threads:
            t.start()
        stats.race_window.clear()
        if rng.random() >= window_kills:  # a random moment
            time.sleep(rng.uniform(*seconds))
        else:  # inside a race's window, when one comes
            stats.race_window.wait(rng.uniform(*seconds))
        kill9(proc)
        stop.set()
        for t in threads:
            t.join(60)
        verify_store(path, models, stats, numbers_seen)
        proc = start_server(path, port)
        if (cycle + 1) % 10 == 0 or cycle + 1 == cycles:
            log(
                f"cycle {cycle + 1}: {sum(stats.calls.values())} calls, {stats.checks} checks, lost {stats.lost}, "
                f"leaks {stats.leaks}, reused numbers {stats.reused_numbers}, other {len(stats.violations)}"
            )
    kill9(proc)
    return stats


def main() -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--min-seconds", type=float, default=0.5, help="shortest run between two kills")
    ap.add_argument("--max-seconds", type=float, default=3.0, help="longest run between two kills")
    ap.add_argument("--big-rows", type=int, default=20_000, help="rows of the large first write of a race")
    ap.add_argument("--window-kills", type=float, default=0.5, help="share of kills aimed at a race's window")
    ap.add_argument("--fuzz", type=int, default=0, help="then send this many fuzzed requests (bench/fuzz.py)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="grove-chaos-") as tmp:
        stats = run(
            Path(tmp) / "store",
            cycles=a.cycles,
            clients=a.clients,
            seconds=(a.min_seconds, a.max_seconds),
            big_rows=a.big_rows,
            seed=a.seed,
            window_kills=a.window_kills,
        )
    print(
        f"chaos: {stats.cycles} kill -9 cycles, {sum(stats.calls.values())} client operations "
        f"({dict(stats.calls)}), {stats.checks} checks, {stats.refused_as_expected} bad batches refused whole; "
        f"acknowledged writes lost {stats.lost}, leaks {stats.leaks}, reused tenant numbers {stats.reused_numbers}; "
        f"{time.perf_counter() - t0:.0f} s"
    )
    for v in stats.violations[:20]:
        print("  " + v)
    ok = not stats.violations
    if a.fuzz:
        from bench import fuzz

        sys.argv = [sys.argv[0], "--requests", str(a.fuzz)]
        ok = fuzz.main() == 0 and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, _ROOT)
    sys.exit(main())
