"""Trust under concurrency, crashes and hostile callers: each test reproduces a failure of an earlier Grove.

No acknowledged write is lost or handed to another tenant, a tenant key learns nothing of ids it cannot see,
every accepted value scores finitely, one request cannot make the server allocate without bound, one key's
streams cannot starve other callers, and the engine fails closed when a caller forgets who it acts for.
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from engine.db import Database
from engine.errors import Internal, InvalidArgument, PermissionDenied, ResourceExhausted
from engine.principal import ADMIN
from engine.storage import keys
from engine.tenants import TenantRegistry
from tests.conftest import start_grove_server


# ------------------------------------------------------------------------------------------- tenant registry
def _fail_writes_of(db: Database, thread: threading.Thread, *, entered=None, release=None) -> None:
    """Make the data batches ``thread`` writes fail (a full disk, say); its tenant number reservations pass.
    With ``entered``/``release``, the failing write first signals and waits (the first write is in flight)."""
    original = db._store.write

    def write(batch):
        if threading.current_thread() is thread and len(batch) > 1:
            if entered is not None:
                entered.set()
                release.wait(30)
            raise Internal("injected: the disk is full")
        return original(batch)

    db._store.write = write


def test_a_tenants_first_write_racing_its_failing_first_write_elsewhere_is_kept(tmp_path):
    """Issue 14.1: the failing first write must not take the concurrent, acknowledged one down with it."""
    db = Database(tmp_path / "db")
    ca = db.create_collection("ca", dim=1, metric="l2")
    cb = db.create_collection("cb", dim=4, metric="l2")
    release, entered = threading.Event(), threading.Event()
    failed: list[Exception] = []

    def first_write_that_fails() -> None:
        try:
            ca.upsert([0, 1], np.ones((2, 1), np.float32), tenant="victim", principal=ADMIN)
        except Exception as exc:  # noqa: BLE001 - the test checks which
            failed.append(exc)

    a = threading.Thread(target=first_write_that_fails)
    _fail_writes_of(db, a, entered=entered, release=release)
    a.start()
    assert entered.wait(10)
    b_done = threading.Event()
    b = threading.Thread(
        target=lambda: (
            cb.upsert([7], np.full((1, 4), 7.0, np.float32), tenant="victim", principal=ADMIN),
            b_done.set(),
        )
    )
    b.start()
    b_done.wait(0.5)  # today's design makes it wait for the first write; the old one acknowledged it at once
    release.set()
    a.join(10)
    b.join(10)
    assert b_done.is_set() and len(failed) == 1 and isinstance(failed[0], Internal)
    assert cb.count(tenant="victim", principal=ADMIN) == 1
    numbers = db.tenants.names()
    db.close()

    db = Database(tmp_path / "db")  # after a restart: the write is there, and no newcomer inherits it
    cb = db.get_collection("cb")
    assert cb.count(tenant="victim", principal=ADMIN) == 1
    db.get_collection("ca").upsert([5], np.ones((1, 1), np.float32), tenant="newcomer", principal=ADMIN)
    assert cb.count(tenant="newcomer", principal=ADMIN) == 0
    after = db.tenants.names()
    assert {n: after[n] for n in numbers} == numbers
    assert len(set(after.values())) == len(after)
    db.close()


def test_a_failed_first_write_leaves_no_trace_and_its_number_is_never_reused(tmp_path):
    db = Database(tmp_path / "db")
    col = db.create_collection("c", dim=2)
    col.upsert([0], np.ones((1, 2), np.float32), tenant="a", principal=ADMIN)
    with pytest.raises(InvalidArgument):
        col.upsert([0], np.full((1, 2), np.nan, np.float32), tenant="ghost", principal=ADMIN)
    with pytest.raises(Internal):
        _fail_writes_of(db, threading.current_thread())
        col.upsert([0], np.ones((1, 2), np.float32), tenant="ghost", principal=ADMIN)
    del db._store.write  # the store's own method again
    assert db.tenants.find("ghost") is None
    assert db._store.get(keys.tenant("ghost")) is None
    col.upsert([1], np.ones((1, 2), np.float32), tenant="b", principal=ADMIN)
    used = db.tenants.names()
    db.close()

    # a claim whose batch never commits (the process dies first): its number is not handed out again
    store_db = Database(tmp_path / "db", load=False)
    registry = TenantRegistry(store_db._store)
    claim = registry._claim("dies-mid-batch")
    assert claim.number not in used.values()
    store_db.close()
    db = Database(tmp_path / "db")
    col = db.get_collection("c")
    col.upsert([2], np.ones((1, 2), np.float32), tenant="later", principal=ADMIN)
    assert db.tenants.find("later") > claim.number
    assert db.tenants.find("dies-mid-batch") is None
    db.close()


def test_concurrent_first_writes_of_many_tenants_get_distinct_numbers(tmp_path):
    db = Database(tmp_path / "db")
    cols = [db.create_collection(f"c{i}", dim=2) for i in range(3)]
    errors: list[Exception] = []

    def writer(w: int) -> None:
        try:
            for t in range(20):
                col = cols[(w + t) % 3]
                col.upsert([w * 1000 + t], np.ones((1, 2), np.float32), tenant=f"t{t}", principal=ADMIN)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    names = db.tenants.names()
    assert len(names) == 20 and len(set(names.values())) == 20
    for t in range(20):
        assert sum(c.count(tenant=f"t{t}", principal=ADMIN) for c in cols) == 6
    db.close()


# ------------------------------------------------------------------------------------------- id namespaces
def test_a_tenant_writing_another_tenants_id_learns_nothing_and_changes_nothing(grove_server):
    """Issue 14.2: ids are per owner, so a collision is not an answer a tenant key can observe."""
    with grove_server.client() as admin:
        col = admin.create_collection("docs", dim=4, metric="ip")
        col.upsert([100, 101], np.ones((2, 4), np.float32), tenant="beta")
        key = admin.create_tenant_key("acme")
        with grove_server.client(key) as acme:
            mine = acme.get_collection("docs")
            assert mine.upsert([100, 101, 102], np.full((3, 4), -1.0, np.float32), tenant="acme") == 3
            res = mine.search(np.ones((1, 4), np.float32), k=5, tenant="acme")
            assert sorted(res.ids[0][res.ids[0] >= 0].tolist()) == [100, 101, 102]
            assert np.allclose(res.scores[0][:3], -4.0)
            assert mine.delete([100], tenant="acme") == 1
        res = col.search(np.ones((1, 4), np.float32), k=5, tenant="beta")
        assert res.ids[0].tolist()[:2] == [100, 101] and np.allclose(res.scores[0][:2], 4.0)
        assert col.count(tenant="beta") == 2 and col.count(tenant="acme") == 2


def test_ids_stay_unique_among_what_one_tenant_sees(any_client):
    from engine.errors import AlreadyExists, FailedPrecondition

    col = any_client.create_collection("docs", dim=2, metric="ip")
    col.upsert([1, 2], np.ones((2, 2), np.float32), tenant="a")
    col.upsert([1], np.ones((1, 2), np.float32), tenant="b")
    with pytest.raises(FailedPrecondition, match="several owners"):
        col.grant([1], tenant="c")  # the admin names vectors by id: ambiguous here
    col.grant([2], tenant="b")
    with pytest.raises(AlreadyExists, match="shares"):
        col.upsert([2], np.ones((1, 2), np.float32), tenant="b")  # b sees a's 2 already
    assert col.grant([2], tenant="b") == 0  # already visible
    assert col.count(tenant="b") == 2
    assert col.revoke([2], tenant="b") == 1 and col.count(tenant="b") == 1


def test_owner_namespaces_survive_a_restart_and_an_index_checkpoint(tmp_path):
    db = Database(tmp_path / "db")
    col = db.create_collection("docs", dim=4, metric="l2")
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((300, 4)).astype(np.float32), rng.standard_normal((300, 4)).astype(np.float32)
    col.upsert(np.arange(300), a, tenant="a", principal=ADMIN)
    col.upsert(np.arange(300), b, tenant="b", principal=ADMIN)
    col.build_index()
    for reopen in range(2):
        db.close()
        db = Database(tmp_path / "db")
        col = db.get_collection("docs")
        for tenant, data in (("a", a), ("b", b)):
            res = col.search(data[:5], k=1, tenant=tenant, principal=ADMIN)
            assert res.ids[:, 0].tolist() == [0, 1, 2, 3, 4] and np.allclose(res.scores[:, 0], 0, atol=1e-3), reopen
    db.close()


# ------------------------------------------------------------------------------------------- input values
def test_negative_ids_are_refused(any_client):
    col = any_client.create_collection("v", dim=4, metric="ip")
    for ids in ([-1, 5], [-7]):
        with pytest.raises(InvalidArgument, match="non-negative"):
            col.upsert(ids, np.ones((len(ids), 4), np.float32), tenant="t")
    assert col.count(tenant="t") == 0
    col.upsert([5], np.ones((1, 4), np.float32), tenant="t")
    with pytest.raises(InvalidArgument, match="non-negative"):
        col.delete([-1], tenant="t")


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_every_accepted_value_scores_finitely(any_client, metric):
    col = any_client.create_collection("v", dim=8, metric=metric)
    big = 1e15
    rows = np.array([[big] * 8, [-big] * 8, [big, -big] * 4, [1e-30] * 8], np.float32)
    col.upsert(np.arange(4), rows, tenant="h")
    for q in (rows[2:3], np.full((1, 8), -big, np.float32), np.full((1, 8), 1e-25, np.float32)):
        res = col.search(q, k=4, tenant="h")
        assert (res.ids >= 0).all() and np.isfinite(res.scores).all(), (q, res)


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_values_beyond_the_range_are_refused(any_client, metric):
    col = any_client.create_collection("v", dim=4, metric=metric)
    col.upsert([1, 2], np.eye(2, 4, dtype=np.float32) + 0.1, tenant="h")
    for huge in (np.array([[-3e38, 3e38, 3e38, 3e38]], np.float32), np.full((1, 4), 1e20, np.float32)):
        with pytest.raises(InvalidArgument, match="beyond"):
            col.search(huge, k=2, tenant="h")
        with pytest.raises(InvalidArgument, match="beyond"):
            col.upsert([3], huge, tenant="h")
    assert col.count(tenant="h") == 2


def test_a_zero_query_under_cosine_is_refused(any_client):
    col = any_client.create_collection("v", dim=4, metric="cosine")
    col.upsert([1], np.ones((1, 4), np.float32), tenant="h")
    with pytest.raises(InvalidArgument, match="zero vector"):
        col.search(np.zeros((1, 4), np.float32), k=1, tenant="h")
    res = col.search(np.full((1, 4), 1e-20, np.float32), k=1, tenant="h")  # tiny, but a direction
    assert res.ids[0, 0] == 1 and abs(res.scores[0, 0] - 1.0) < 1e-5


# ------------------------------------------------------------------------------------------- bounded work
def test_a_search_whose_answer_is_too_large_is_refused_before_any_work(any_client):
    col = any_client.create_collection("v", dim=8, metric="ip")
    col.upsert(np.arange(100), np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32), tenant="a")
    with pytest.raises(ResourceExhausted, match="at most|message limit"):
        col.search(np.ones((5000, 8), np.float32), k=10_000, tenant="a")


def test_the_server_refuses_an_answer_beyond_its_message_limit(tmp_path):
    server = start_grove_server(tmp_path / "s", max_message_bytes=1 << 20)
    try:
        with server.client() as client:
            col = client.create_collection("v", dim=8, metric="ip")
            col.upsert(np.arange(10), np.ones((10, 8), np.float32), tenant="a")
            with pytest.raises(ResourceExhausted, match="message limit"):
                col.search(np.ones((200, 8), np.float32), k=1000, tenant="a")
            assert col.search(np.ones((2, 8), np.float32), k=3, tenant="a").ids.shape == (2, 3)
    finally:
        server.stop()


def test_a_huge_ef_is_capped_not_allocated(any_client):
    col = any_client.create_collection("v", dim=8, metric="ip")
    col.upsert(np.arange(50), np.random.default_rng(1).standard_normal((50, 8)).astype(np.float32), tenant="a")
    res = col.search(np.ones((1, 8), np.float32), k=5, tenant="a", ef=2**31)
    assert (res.ids >= 0).all()


def test_mining_chunks_beyond_the_result_limit_are_refused(any_client):
    col = any_client.create_collection("v", dim=8, metric="ip")
    col.upsert(np.arange(50), np.random.default_rng(2).standard_normal((50, 8)).astype(np.float32), tenant="a")
    queries = np.ones((5000, 8), np.float32)
    with pytest.raises(ResourceExhausted):
        col.mine_hard_negatives(queries, [0] * 5000, tenant="a", chunk_size=5000, range_max=1000, num_negatives=5)


# ------------------------------------------------------------------------------------------- fair service
def _idle_upsert_stream(stub, key: str, hold: threading.Event):
    from engine.rpc.pb import grove_pb2 as pb

    def messages():
        m = pb.Matrix(data=np.ones((1, 4), "<f4").tobytes(), rows=1, dim=4)
        yield pb.UpsertRequest(collection="docs", tenant="acme", ids=[800_000], vectors=m)
        hold.wait(30)

    return stub.UpsertStream.future(messages(), metadata=(("x-api-key", key),), timeout=40)


def test_a_tenant_holding_its_stream_cap_leaves_other_callers_served(tmp_path):
    from engine.rpc.pb import grove_pb2_grpc as pbg

    server = start_grove_server(tmp_path / "s", max_streams=4, max_streams_per_key=2)
    hold = threading.Event()
    channel = grpc.insecure_channel(server.url)
    try:
        admin = server.client()
        col = admin.create_collection("docs", dim=4, metric="ip")
        col.upsert([1], np.ones((1, 4), np.float32), tenant="beta")
        key = admin.create_tenant_key("acme")
        stub = pbg.GroveStub(channel)
        calls = [_idle_upsert_stream(stub, key, hold) for _ in range(12)]
        refused = 0
        for call in calls:
            try:
                call.result(timeout=5)
            except grpc.FutureTimeoutError:
                pass  # admitted and idle
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                refused += 1
        assert refused == 10
        assert col.count(tenant="beta") == 1  # the admin is answered while acme holds its streams
        with server.client(key) as acme:
            assert acme.get_collection("docs").count(tenant="acme") == 0
        admin.close()
    finally:
        hold.set()
        channel.close()
        server.stop()


def test_an_idle_stream_is_cancelled_and_frees_its_slot(tmp_path):
    from engine.rpc.pb import grove_pb2_grpc as pbg

    server = start_grove_server(tmp_path / "s", max_streams=2, max_streams_per_key=1, stream_idle_seconds=0.5)
    hold = threading.Event()
    channel = grpc.insecure_channel(server.url)
    try:
        with server.client() as admin:
            admin.create_collection("docs", dim=4, metric="ip")
            key = admin.create_tenant_key("acme")
        stub = pbg.GroveStub(channel)
        first = _idle_upsert_stream(stub, key, hold)
        with pytest.raises(grpc.RpcError) as info:
            first.result(timeout=20)
        assert info.value.code() == grpc.StatusCode.CANCELLED
        for _ in range(50):  # its slot is freed once the server's handler has unwound (just after the client knows)
            second = _idle_upsert_stream(stub, key, threading.Event())
            with pytest.raises(grpc.RpcError) as info:
                second.result(timeout=20)
            if info.value.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                break
            time.sleep(0.1)
        assert info.value.code() == grpc.StatusCode.CANCELLED  # admitted, then cancelled for idling in its turn
    finally:
        hold.set()
        channel.close()
        server.stop()


# ------------------------------------------------------------------------------------------- start-up
def test_a_second_server_on_a_taken_port_fails_and_changes_nothing(tmp_path):
    from engine.errors import Unavailable
    from engine.rpc.server import create_server

    first = start_grove_server(tmp_path / "one")
    other = Database(tmp_path / "two", load=False)
    try:
        with pytest.raises(Unavailable, match="in use"):
            create_server(other, f"127.0.0.1:{first.port}")
        assert not other.has_admin_key()
    finally:
        other.close()
        first.stop()


def test_calls_wait_for_the_load_and_health_says_not_serving_meanwhile(tmp_path):
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from engine.rpc.server import create_server, mark_serving
    from tests.conftest import GROVE_ADMIN_KEY

    db = Database(tmp_path / "db")
    db.create_collection("docs", dim=2).upsert([1], np.ones((1, 2), np.float32), tenant="a", principal=ADMIN)
    db.set_admin_key(GROVE_ADMIN_KEY)
    db.close()
    db = Database(tmp_path / "db", load=False)
    health_servicer = health.HealthServicer()
    server, port = create_server(db, "127.0.0.1:0", health_servicer=health_servicer)
    server.start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        probe = health_pb2_grpc.HealthStub(channel)
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert probe.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == not_serving
        from grove_client import Client

        with Client(url=f"127.0.0.1:{port}", api_key=GROVE_ADMIN_KEY) as client:
            answer: list[int] = []
            waiting = threading.Thread(target=lambda: answer.append(client.get_collection("docs").count(tenant="a")))
            waiting.start()
            waiting.join(0.5)
            assert waiting.is_alive()  # held until the store is loaded, not refused
            db.load()
            mark_serving(health_servicer, True)
            waiting.join(10)
            assert answer == [1]
        assert probe.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status != not_serving
        channel.close()
    finally:
        server.stop(None).wait()
        db.close()


def test_a_stale_index_is_rebuilt_in_the_background_and_a_failed_build_is_visible(tmp_path, monkeypatch):
    from engine.index import curator

    db = Database(tmp_path / "db")
    col = db.create_collection("docs", dim=8)
    rng = np.random.default_rng(3)
    col.upsert(np.arange(3000), rng.standard_normal((3000, 8)).astype(np.float32), tenant="a", principal=ADMIN)
    col.build_index()
    db.close()
    db = Database(tmp_path / "db", load=False)
    db._store.write(_deleting(keys.index_state(col.no, "~clean")))  # as after a crash: the checkpoint is stale
    db.close()

    def broken_build(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(curator.CuratorIndex, "build", broken_build)
    db = Database(tmp_path / "db")  # opens without waiting for the rebuild
    col = db.get_collection("docs")
    q = rng.standard_normal((2, 8)).astype(np.float32)
    res = col.search(q, k=5, tenant="a", principal=ADMIN)  # served (exactly) meanwhile
    assert (res.ids >= 0).all()
    col.jobs.wait(30)
    stats = col.stats()
    assert stats["build_failures"] == 1 and "disk on fire" in stats["build"]["error"]
    assert col.count(tenant="a", principal=ADMIN) == 3000
    db.close()


def _deleting(key: bytes):
    from engine.storage.store import Batch

    batch = Batch()
    batch.delete(key)
    return batch


# ------------------------------------------------------------------------------------------- fail closed
def test_the_engine_refuses_a_call_that_does_not_say_who_it_acts_for(tmp_path):
    db = Database(tmp_path / "db")
    col = db.create_collection("docs", dim=2)
    with pytest.raises(TypeError, match="principal"):
        col.upsert([1], np.ones((1, 2), np.float32), tenant="a")
    with pytest.raises(TypeError, match="principal"):
        col.search(np.ones((1, 2), np.float32), k=1, tenant="a")
    for nobody in (None, "", 0):
        with pytest.raises(PermissionDenied):
            col.upsert([1], np.ones((1, 2), np.float32), tenant="a", principal=nobody)
    with pytest.raises(PermissionDenied):
        col.count(tenant="a", principal="b")
    assert col.count(tenant="a", principal="a") == 0
    db.close()
