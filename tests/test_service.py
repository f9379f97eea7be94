"""The gRPC service over a real server in-process on port 0: status codes, auth, health, reflection, streams.

Every bad input is sent over the wire (raw stub or raw bytes where the SDK would not send it) and must come
back with its exact status code; after each, a valid call still works and the stored data is intact.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.errors import (
    AlreadyExists,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from engine.rpc.pb import grove_pb2 as pb
from engine.rpc.pb import grove_pb2_grpc
from tests.conftest import GROVE_ADMIN_KEY, start_grove_server

DIM = 4
SC = grpc.StatusCode


def _matrix(arr) -> pb.Matrix:
    arr = np.ascontiguousarray(arr, "<f4")
    return pb.Matrix(data=arr.tobytes(), rows=arr.shape[0], dim=arr.shape[1])


@pytest.fixture
def setup(grove_server):
    """A collection "docs" (dim 4, l2) holding ids 0-9 of tenant alpha and 10-19 of tenant beta; a raw stub."""
    rng = np.random.default_rng(7)
    client = grove_server.client()
    col = client.create_collection("docs", dim=DIM, metric="l2")
    vecs = rng.standard_normal((20, DIM)).astype(np.float32)
    col.upsert(np.arange(10), vecs[:10], tenant="alpha")
    col.upsert(np.arange(10, 20), vecs[10:], tenant="beta")
    channel = grpc.insecure_channel(grove_server.url)
    stub = grove_pb2_grpc.GroveStub(channel)
    yield grove_server, client, col, stub, channel, vecs
    channel.close()
    client.close()


def _code(call, request, key: str | None = GROVE_ADMIN_KEY) -> grpc.StatusCode:
    metadata = (("x-api-key", key),) if key is not None else ()
    try:
        call(request, metadata=metadata, timeout=30)
    except grpc.RpcError as err:
        assert err.details(), "every error carries a message"
        return err.code()
    return SC.OK


def _intact(col, vecs) -> None:
    """The fixture's data is all there and a valid call works."""
    assert col.count(tenant="alpha") == 10 and col.count(tenant="beta") == 10
    res = col.search(vecs[3], k=1, tenant="alpha")
    assert res.ids.tolist() == [[3]] and res.scores[0, 0] == pytest.approx(0.0, abs=1e-3)


def _bad_requests(vecs):
    good_q = _matrix(vecs[:1])
    nan = vecs[:2].copy()
    nan[1, 2] = np.nan
    inf = vecs[:1].copy()
    inf[0, 0] = np.inf
    short = pb.Matrix(data=vecs[:1].tobytes()[:-4], rows=1, dim=DIM)

    def search(**kw):
        fields = dict(collection="docs", tenant="alpha", queries=good_q, k=3)
        fields.update(kw)
        return "Search", pb.SearchRequest(**fields)

    def upsert(ids, arr, **kw):
        return "Upsert", pb.UpsertRequest(collection="docs", tenant="alpha", ids=ids, vectors=arr, **kw)

    def create(name="new", dim=DIM, metric=pb.METRIC_IP, **kw):
        return "CreateCollection", pb.CreateCollectionRequest(
            info=pb.CollectionInfo(name=name, dim=dim, metric=metric, **kw)
        )

    return {
        "query wrong dimension": (search(queries=_matrix(vecs[:1, :3])), SC.INVALID_ARGUMENT),
        "upsert wrong dimension": (upsert([50], _matrix(np.ones((1, DIM + 1)))), SC.INVALID_ARGUMENT),
        "upsert NaN": (upsert([50, 51], _matrix(nan)), SC.INVALID_ARGUMENT),
        "upsert inf": (upsert([50], _matrix(inf)), SC.INVALID_ARGUMENT),
        "query NaN": (search(queries=_matrix(nan)), SC.INVALID_ARGUMENT),
        "empty upsert": (upsert([], pb.Matrix(rows=0, dim=DIM)), SC.INVALID_ARGUMENT),
        "empty grant": (("Grant", pb.GrantRequest(collection="docs", tenant="beta")), SC.INVALID_ARGUMENT),
        "empty query batch": (search(queries=pb.Matrix(rows=0, dim=DIM)), SC.INVALID_ARGUMENT),
        "k = 0": (search(k=0), SC.INVALID_ARGUMENT),
        "k too large": (search(k=10**6), SC.INVALID_ARGUMENT),
        "ef = 0": (search(ef=0), SC.INVALID_ARGUMENT),
        "duplicate ids": (upsert([50, 50], _matrix(vecs[:2])), SC.INVALID_ARGUMENT),
        "ids and rows differ": (upsert([50, 51, 52], _matrix(vecs[:2])), SC.INVALID_ARGUMENT),
        "data shorter than rows x dim": (search(queries=short), SC.INVALID_ARGUMENT),
        "unknown metric value": (create(metric=99), SC.INVALID_ARGUMENT),
        "unspecified metric": (create(metric=pb.METRIC_UNSPECIFIED), SC.INVALID_ARGUMENT),
        "dim 0": (create(dim=0), SC.INVALID_ARGUMENT),
        "bad LVQ bits": (create(lvq=pb.LVQ(bits=3)), SC.INVALID_ARGUMENT),
        "existing collection": (create(name="docs"), SC.ALREADY_EXISTS),
        "unknown collection": (search(collection="nope"), SC.NOT_FOUND),
        "unknown collection stats": (("Stats", pb.StatsRequest(collection="nope")), SC.NOT_FOUND),
        "drop unknown collection": (("DropCollection", pb.DropCollectionRequest(name="nope")), SC.NOT_FOUND),
        "empty collection name": (create(name=""), SC.INVALID_ARGUMENT),
        "too long collection name": (create(name="c" * 129), SC.INVALID_ARGUMENT),
        "control character in name": (create(name="a\nb"), SC.INVALID_ARGUMENT),
        "empty tenant": (search(tenant=""), SC.INVALID_ARGUMENT),
        "too long tenant": (search(tenant="t" * 129), SC.INVALID_ARGUMENT),
        "control character in tenant": (search(tenant="al\x00pha"), SC.INVALID_ARGUMENT),
        "tenant key for a control-character tenant": (
            ("CreateTenantKey", pb.CreateTenantKeyRequest(tenant="a\x07")),
            SC.INVALID_ARGUMENT,
        ),
        "grant of unknown ids": (("Grant", pb.GrantRequest(collection="docs", tenant="beta", ids=[999])), SC.NOT_FOUND),
        "revoke the owner": (
            ("Revoke", pb.RevokeRequest(collection="docs", tenant="alpha", ids=[1])),
            SC.FAILED_PRECONDITION,
        ),
    }


BAD = sorted(_bad_requests(np.zeros((2, DIM), np.float32)))


@pytest.mark.parametrize("case", BAD)
def test_bad_input_gets_its_status_and_the_server_keeps_serving(setup, case):
    _srv, _client, col, stub, _channel, vecs = setup
    (method, request), expected = _bad_requests(vecs)[case]
    assert _code(getattr(stub, method), request) == expected, case
    _intact(col, vecs)


def test_sdk_raises_the_engine_classes(setup):
    _srv, client, col, _stub, _channel, vecs = setup
    with pytest.raises(InvalidArgument, match="dim 3, the collection expects 4"):
        col.search(vecs[:1, :3], k=1, tenant="alpha")
    with pytest.raises(InvalidArgument, match="metric must be one of"):
        client.create_collection("m", dim=4, metric="hamming")
    with pytest.raises(NotFound):
        client.get_collection("nope")
    with pytest.raises(AlreadyExists):
        client.create_collection("docs", dim=4)
    with pytest.raises(InvalidArgument, match="k must be"):
        col.search(vecs[:1], k=-1, tenant="alpha")
    with pytest.raises(InvalidArgument, match="tenant name must be a string"):
        col.count(tenant=7)
    with pytest.raises(InvalidArgument, match="control characters"):
        col.count(tenant="\ud800")
    _intact(col, vecs)


def test_malformed_protobuf_is_invalid_argument(setup):
    srv, _client, col, _stub, channel, vecs = setup
    for method in ("Search", "Upsert", "CreateCollection"):
        raw = channel.unary_unary(f"/grove.v1.Grove/{method}", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\x0a\x05ab", metadata=(("x-api-key", srv.admin_key),), timeout=30)  # truncated field 1
        assert err.value.code() == SC.INVALID_ARGUMENT, method
        assert "not a valid protobuf message" in err.value.details()
    stream = channel.stream_unary("/grove.v1.Grove/UpsertStream", request_serializer=None, response_deserializer=None)
    first = pb.UpsertRequest(collection="docs", tenant="alpha", ids=[70], vectors=_matrix(vecs[:1]))
    with pytest.raises(grpc.RpcError) as err:
        stream(iter([first.SerializeToString(), b"\x0a\x05ab"]), metadata=(("x-api-key", srv.admin_key),), timeout=30)
    assert err.value.code() == SC.INVALID_ARGUMENT
    _intact(col, vecs)
    assert col.search(vecs[0], k=1, tenant="alpha").ids[0, 0] != 70


def test_missing_or_wrong_key_is_unauthenticated(setup):
    srv, _client, col, stub, _channel, vecs = setup
    request = pb.CountRequest(collection="docs", tenant="alpha")
    assert _code(stub.Count, request, key=None) == SC.UNAUTHENTICATED
    assert _code(stub.Count, request, key="wrong-key-0123456789") == SC.UNAUTHENTICATED
    assert _code(stub.ListCollections, pb.ListCollectionsRequest(), key="") == SC.UNAUTHENTICATED
    with pytest.raises(Unauthenticated):
        srv.client(api_key="nope-nope-nope-nope").get_collection("docs")
    with srv.client(api_key=None) as anonymous, pytest.raises(Unauthenticated):
        anonymous.list_collections()
    _intact(col, vecs)


def test_unexpected_error_is_internal_and_the_server_keeps_serving(setup, monkeypatch, caplog):
    srv, client, col, _stub, _channel, vecs = setup

    def broken():
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(srv.db, "list_collections", broken)
    with caplog.at_level("ERROR", logger="grove.rpc"), pytest.raises(Internal, match="ZeroDivisionError"):
        client.list_collections()
    assert "boom" in caplog.text
    monkeypatch.undo()
    assert [c.name for c in client.list_collections()] == ["docs"]
    _intact(col, vecs)


def test_oversized_request_is_resource_exhausted(tmp_path):
    srv = start_grove_server(tmp_path / "small", max_message_bytes=64 << 10)
    try:
        with srv.client() as client:
            col = client.create_collection("docs", dim=64, metric="ip")
            rng = np.random.default_rng(3)
            big = rng.standard_normal((512, 64)).astype(np.float32)  # 128 KiB
            with pytest.raises(ResourceExhausted):
                col.upsert(np.arange(512), big, tenant="alpha")
            with pytest.raises(ResourceExhausted):
                col.search(big, k=1, tenant="alpha")
            col.upsert(np.arange(10), big[:10], tenant="alpha")
            assert col.count(tenant="alpha") == 10
            assert col.search(big[4], k=1, tenant="alpha").ids[0, 0] == 4
    finally:
        srv.stop()


def test_health_is_serving_and_reflection_lists_the_service(grove_server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(grove_server.url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "grove.v1.Grove"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=30)
        assert err.value.code() == SC.NOT_FOUND
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert "grove.v1.Grove" in services and "grpc.health.v1.Health" in services
        method_names = {
            m.name
            for m in ProtoReflectionDescriptorDatabase(channel)
            .FindFileContainingSymbol("grove.v1.Grove")
            .service[0]
            .method
        }
        assert {"Search", "UpsertStream", "CreateTenantKey"} <= method_names


# ------------------------------------------------------------------------------------------------ auth
@pytest.fixture
def tenants(setup):
    srv, client, col, stub, channel, vecs = setup
    alpha_key = client.create_tenant_key("alpha")
    alpha = srv.client(api_key=alpha_key)
    yield alpha, alpha.get_collection("docs"), alpha_key, setup
    alpha.close()


def test_tenant_key_acts_only_as_its_tenant(tenants):
    _alpha, acol, _key, (_srv, _client, col, _stub, _channel, vecs) = tenants
    res = acol.search(vecs[12], k=20, tenant="alpha")
    assert set(res.ids[0][res.ids[0] >= 0].tolist()) == set(range(10))
    assert acol.count(tenant="alpha") == 10
    as_beta = [
        lambda: acol.search(vecs[:1], k=1, tenant="beta"),
        lambda: acol.count(tenant="beta"),
        lambda: acol.upsert([60], vecs[:1], tenant="beta"),
        lambda: acol.grant([1], tenant="beta"),
        lambda: acol.revoke([1], tenant="beta"),
        lambda: acol.delete([11], tenant="beta"),
    ]
    for call in as_beta:
        with pytest.raises(PermissionDenied, match="acts only as tenant 'alpha'"):
            call()
    _intact(col, vecs)


def test_tenant_key_cannot_see_or_touch_other_tenants_ids(tenants):
    _alpha, acol, _key, (_srv, _client, col, _stub, _channel, vecs) = tenants
    for call in (
        lambda: acol.delete([11], tenant="alpha"),  # beta's id
        lambda: acol.delete([999], tenant="alpha"),  # nobody's id: the same answer
        lambda: acol.grant([11], tenant="alpha"),
        lambda: acol.revoke([11], tenant="alpha"),
    ):
        with pytest.raises(NotFound):
            call()
    _intact(col, vecs)


def test_tenant_key_cannot_call_admin_rpcs(tenants):
    alpha, _acol, _key, (_srv, _client, col, _stub, _channel, vecs) = tenants
    for call in (
        lambda: alpha.create_collection("mine", dim=4),
        lambda: alpha.drop_collection("docs"),
        lambda: alpha.create_tenant_key("alpha"),
    ):
        with pytest.raises(PermissionDenied, match="needs the admin key"):
            call()
    assert [c.name for c in alpha.list_collections()] == ["docs"]
    _intact(col, vecs)


def test_tenant_key_is_checked_on_every_stream_message(tenants):
    _alpha, _acol, key, (_srv, _client, col, stub, _channel, vecs) = tenants
    stream = [
        pb.UpsertRequest(collection="docs", tenant="alpha", ids=[80], vectors=_matrix(vecs[:1])),
        pb.UpsertRequest(tenant="beta", ids=[81], vectors=_matrix(vecs[1:2])),
    ]
    assert _code(stub.UpsertStream, iter(stream), key=key) == SC.PERMISSION_DENIED
    assert col.count(tenant="alpha") == 10
    stream[1].tenant = ""
    assert _code(stub.UpsertStream, iter(stream), key=key) == SC.OK
    assert col.count(tenant="alpha") == 12


# ------------------------------------------------------------------------------------------------ streams
def test_upsert_stream_is_all_or_nothing(setup):
    _srv, _client, col, stub, _channel, vecs = setup
    rng = np.random.default_rng(11)
    chunks = [rng.standard_normal((5, DIM)).astype(np.float32) for _ in range(4)]
    bad = chunks[2].copy()
    bad[3, 1] = np.nan

    def stream(parts, ids_of=lambda i: range(100 + 5 * i, 105 + 5 * i)):
        for i, part in enumerate(parts):
            head = dict(collection="docs", tenant="alpha") if i == 0 else {}
            yield pb.UpsertRequest(ids=list(ids_of(i)), vectors=_matrix(part), **head)

    assert _code(stub.UpsertStream, stream([chunks[0], chunks[1], bad, chunks[3]])) == SC.INVALID_ARGUMENT
    assert _code(stub.UpsertStream, stream(chunks, ids_of=lambda i: range(100, 105))) == SC.INVALID_ARGUMENT
    wrong_dim = [chunks[0], np.ones((2, DIM + 1), np.float32)]
    assert (
        _code(stub.UpsertStream, stream(wrong_dim, ids_of=lambda i: range(100 + 5 * i, 100 + 5 * i + 2 + 3 * (i == 0))))
        == SC.INVALID_ARGUMENT
    )
    switch = list(stream(chunks[:2]))
    switch[1].collection = "other"
    assert _code(stub.UpsertStream, iter(switch)) == SC.INVALID_ARGUMENT
    assert _code(stub.UpsertStream, iter([])) == SC.INVALID_ARGUMENT
    first_unknown = list(stream(chunks[:1]))
    first_unknown[0].collection = "nope"
    assert _code(stub.UpsertStream, iter(first_unknown)) == SC.NOT_FOUND
    _intact(col, vecs)
    assert _code(stub.UpsertStream, stream(chunks)) == SC.OK
    assert col.count(tenant="alpha") == 30
    res = col.search(chunks[2][3], k=1, tenant="alpha")
    assert res.ids[0, 0] == 113


def test_upsert_stream_byte_cap_is_resource_exhausted(tmp_path):
    srv = start_grove_server(tmp_path / "cap", max_stream_bytes=100 << 10)
    try:
        with srv.client() as client, grpc.insecure_channel(srv.url) as channel:
            client.create_collection("docs", dim=256, metric="ip")
            stub = grove_pb2_grpc.GroveStub(channel)
            rng = np.random.default_rng(5)

            def stream(n_chunks):
                for i in range(n_chunks):
                    head = dict(collection="docs", tenant="alpha") if i == 0 else {}
                    part = rng.standard_normal((20, 256)).astype(np.float32)  # 20 KiB
                    yield pb.UpsertRequest(ids=list(range(20 * i, 20 * i + 20)), vectors=_matrix(part), **head)

            assert _code(stub.UpsertStream, stream(8)) == SC.RESOURCE_EXHAUSTED
            assert client.get_collection("docs").count(tenant="alpha") == 0
            assert _code(stub.UpsertStream, stream(4)) == SC.OK
            assert client.get_collection("docs").count(tenant="alpha") == 80
    finally:
        srv.stop()


def test_sdk_streams_large_upserts_in_chunks(remote_client, monkeypatch):
    import grove_client.remote as remote

    monkeypatch.setattr(remote, "CHUNK_BYTES", 80 << 10)  # so a small batch takes the stream path
    col = remote_client.create_collection("big", dim=32, metric="cosine")
    rng = np.random.default_rng(9)
    vecs = rng.standard_normal((3000, 32)).astype(np.float32)  # ~384 KiB: several chunks
    assert col.upsert(np.arange(3000), vecs, tenant="alpha") == 3000
    assert col.count(tenant="alpha") == 3000
    assert col.search(vecs[2999], k=1, tenant="alpha").ids[0, 0] == 2999
    dup = np.arange(3000, 6000)
    dup[-1] = 3000  # a duplicate in the last chunk: nothing of the batch is stored
    with pytest.raises(InvalidArgument, match="duplicate ids"):
        col.upsert(dup, vecs, tenant="alpha")
    assert col.count(tenant="alpha") == 3000
    with pytest.raises(InvalidArgument, match="one id per vector"):
        col.upsert(np.arange(10), vecs, tenant="alpha")


def test_remote_only_client_does_not_import_numba(grove_server):
    import subprocess
    import sys

    code = (
        "import sys; from grove_client import Client; "
        f"c = Client(url='{grove_server.url}', api_key='{GROVE_ADMIN_KEY}'); c.list_collections(); c.close(); "
        "print(sorted(m for m in ('numba', 'rocksdict', 'engine.db') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_tls(tmp_path):
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed; it makes the test's self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)]
        + ["-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    srv = start_grove_server(tmp_path / "tls", tls=(cert, key))
    try:
        with srv.client(tls=cert) as client:
            col = client.create_collection("docs", dim=2, metric="ip")
            col.upsert([1], np.ones((1, 2), np.float32), tenant="acme")
            assert col.search(np.ones(2, np.float32), k=1, tenant="acme").ids.tolist() == [[1]]
        with srv.client(timeout=5) as plaintext, pytest.raises(Unavailable):
            plaintext.list_collections()
    finally:
        srv.stop()


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 1000), (50, 300)])
def test_the_search_answer_written_by_hand_is_the_message_protobuf_writes(shape):
    from engine.rpc import convert
    from engine.types import SearchResult

    rng = np.random.default_rng(sum(shape))
    ids = rng.integers(-1, 2**62, shape)
    scores = rng.standard_normal((shape[0], shape[1] * 2)).astype(np.float32)[:, ::2]  # not contiguous
    raw = convert.search_answer(SearchResult(ids, scores))
    message = pb.SearchResponse(rows=shape[0], k=shape[1], ids=ids.astype("<i8").tobytes())
    message.scores = np.ascontiguousarray(scores, "<f4").tobytes()
    assert raw == message.SerializeToString()
    back = convert.search_result_from_pb(pb.SearchResponse.FromString(raw))
    np.testing.assert_array_equal(back.ids, ids)
    np.testing.assert_array_equal(back.scores, scores)
