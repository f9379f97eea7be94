"""Congruence: the same calls against an embedded and a remote client give the same results and errors.

``compare`` runs one function against both clients and checks equal ids, close scores, equal values, or the
same exception class with the same message. Sequences of calls come from a seeded generator (the seed is in
the test id and in every failure message) over many tenants and all three metrics, valid calls and bad ones.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from engine.types import LVQ, CollectionInfo, LeanVec, SearchResult

TENANTS = [f"t{i}" for i in range(9)] + ["team:ops", "ünï"]
DIM = 6


def _outcome(fn: Callable, client) -> tuple[str, object]:
    try:
        return "ok", fn(client)
    except Exception as exc:  # noqa: BLE001 - the exception itself is what is compared
        return "error", exc


def _same(a: object, b: object, ctx: str) -> None:
    if isinstance(a, SearchResult):
        assert isinstance(b, SearchResult), ctx
        assert a.ids.dtype == b.ids.dtype == np.int64 and a.scores.dtype == b.scores.dtype == np.float32, ctx
        np.testing.assert_array_equal(a.ids, b.ids, err_msg=ctx)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6, err_msg=ctx)
        np.testing.assert_array_equal(a.counts, b.counts, err_msg=ctx)
    elif isinstance(a, CollectionInfo) or hasattr(a, "info"):
        assert getattr(a, "info", a) == getattr(b, "info", b), ctx
    elif isinstance(a, list):
        assert len(a) == len(b), ctx
        for x, y in zip(a, b):
            _same(x, y, ctx)
    else:
        assert a == b and type(a) is type(b), f"{ctx}: {a!r} != {b!r}"


def compare(fn: Callable, embedded, remote, ctx: str = "") -> tuple[str, object]:
    """Run ``fn(client)`` on both clients; assert the same result or the same error.

    Returns the embedded outcome: ``("ok", result)`` or ``("error", exception)``.
    """
    kind_e, out_e = _outcome(fn, embedded)
    kind_r, out_r = _outcome(fn, remote)
    assert kind_e == kind_r, f"{ctx}: embedded {kind_e} {out_e!r}, remote {kind_r} {out_r!r}"
    if kind_e == "error":
        assert type(out_e) is type(out_r), f"{ctx}: embedded raised {out_e!r}, remote {out_r!r}"
        assert str(out_e) == str(out_r), f"{ctx}: messages differ: {out_e} | {out_r}"
    else:
        _same(out_e, out_r, ctx)
    return kind_e, out_e


@pytest.fixture
def both(embedded_client, remote_client):
    return embedded_client, remote_client


def _bad_calls(rng: np.random.Generator, name: str, tenant: str, pool: int) -> dict[str, Callable]:
    """Edge-case calls, mostly refused, that both SDK modes must answer alike (same class and message)."""
    good = rng.standard_normal((2, DIM)).astype(np.float32)
    nan = good.copy()
    nan[1, 0] = np.nan
    return {
        "wrong dim": lambda c: c.get_collection(name).search(good[:, :3], k=3, tenant=tenant),
        "NaN": lambda c: c.get_collection(name).upsert([pool + 1, pool + 2], nan, tenant=tenant),
        "empty batch": lambda c: c.get_collection(name).upsert([], np.zeros((0, DIM), np.float32), tenant=tenant),
        "empty grant": lambda c: c.get_collection(name).grant([], tenant=tenant),
        "k=0": lambda c: c.get_collection(name).search(good, k=0, tenant=tenant),
        "k=-3": lambda c: c.get_collection(name).search(good, k=-3, tenant=tenant),
        "k=2.5": lambda c: c.get_collection(name).search(good, k=2.5, tenant=tenant),
        "ef=0": lambda c: c.get_collection(name).search(good, k=1, tenant=tenant, ef=0),
        "duplicate ids": lambda c: c.get_collection(name).upsert([pool + 1, pool + 1], good, tenant=tenant),
        "ids vs rows": lambda c: c.get_collection(name).upsert([pool + 1], good, tenant=tenant),
        "3-D queries": lambda c: c.get_collection(name).search(good[None], k=1, tenant=tenant),
        "string ids": lambda c: c.get_collection(name).grant(["a"], tenant=tenant),
        "float ids": lambda c: c.get_collection(name).grant([1.5], tenant=tenant),
        "unknown collection": lambda c: c.get_collection("no-such"),
        "empty tenant": lambda c: c.get_collection(name).count(tenant=""),
        "control tenant": lambda c: c.get_collection(name).count(tenant="a\tb"),
        "long tenant": lambda c: c.get_collection(name).search(good, k=1, tenant="x" * 129),
        "non-str tenant": lambda c: c.get_collection(name).count(tenant=3),
        "None tenant": lambda c: c.get_collection(name).search(good, k=1, tenant=None),
        "None k": lambda c: c.get_collection(name).search(good, k=None, tenant=tenant),
        "huge ef": lambda c: c.get_collection(name).search(good, k=1, tenant=tenant, ef=2**40).ids.shape,
        "float64 queries": lambda c: c.get_collection(name).search(good.astype(np.float64), k=2, tenant=tenant),
        "1-D query": lambda c: c.get_collection(name).search(good[0], k=2, tenant=tenant),
        "unknown ids": lambda c: c.get_collection(name).delete([pool + 50], tenant=tenant),
    }


def _random_call(rng: np.random.Generator, name: str, owned: dict[int, str], pool: int) -> tuple[str, Callable]:
    """One random call (valid or not) on collection ``name``; ``owned`` (id -> owner) is updated when it succeeds."""
    op = rng.choice(["upsert", "upsert", "grant", "revoke", "delete", "search", "search", "count", "stats", "bad"])
    tenant = str(rng.choice(TENANTS))
    ids = rng.choice(pool, size=int(rng.integers(1, 12)), replace=False).astype(np.int64)
    if op == "upsert":
        mine_or_free = np.array([i for i in ids if owned.get(int(i), tenant) == tenant], np.int64)
        ids = mine_or_free if mine_or_free.size and rng.random() < 0.9 else ids
        vecs = rng.standard_normal((ids.size, DIM)).astype(np.float32)

        def upsert(c):
            n = c.get_collection(name).upsert(ids, vecs, tenant=tenant)
            owned.update({int(i): tenant for i in ids})
            return n

        return f"upsert {ids.tolist()} as {tenant}", upsert
    if op in ("grant", "revoke", "delete"):
        if op != "grant" and rng.random() < 0.7:
            theirs = [i for i, o in owned.items() if (o == tenant) == (op == "delete")]
            if theirs:
                ids = np.array(rng.choice(theirs, size=min(len(theirs), 5), replace=False), np.int64)

        def write(c):
            n = getattr(c.get_collection(name), op)(ids, tenant=tenant)
            if op == "delete":
                for i in ids.tolist():
                    owned.pop(i, None)
            return n

        return f"{op} {ids.tolist()} as {tenant}", write
    if op == "search":
        q = rng.standard_normal((int(rng.integers(1, 4)), DIM)).astype(np.float32)
        k = int(rng.integers(1, 15))
        return f"search k={k} as {tenant}", lambda c: c.get_collection(name).search(q, k=k, tenant=tenant)
    if op == "count":
        return f"count as {tenant}", lambda c: c.get_collection(name).count(tenant=tenant)
    if op == "stats":
        return "stats", lambda c: c.get_collection(name).stats()
    bad_calls = _bad_calls(rng, name, tenant, pool)
    which = str(rng.choice(sorted(bad_calls)))
    return f"bad: {which} as {tenant}", bad_calls[which]


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_sequences_are_congruent(both, metric, seed):
    embedded, remote = both
    rng = np.random.default_rng(seed)
    name = f"c_{metric}"
    compare(lambda c: c.create_collection(name, dim=DIM, metric=metric), embedded, remote, f"seed={seed} create")
    owned: dict[int, str] = {}
    outcomes = {"ok": 0, "error": 0}
    for step in range(120):
        ctx, call = _random_call(rng, name, owned, pool=80)
        ctx = f"seed={seed} metric={metric} step={step}: {ctx}"
        outcomes[compare(call, embedded, remote, ctx)[0]] += 1
    assert outcomes["ok"] > 40 and outcomes["error"] > 10, outcomes  # the sequence exercises both paths
    for tenant in TENANTS:
        q = rng.standard_normal((2, DIM)).astype(np.float32)
        compare(lambda c, q=q, t=tenant: c.get_collection(name).search(q, k=100, tenant=t), embedded, remote, tenant)


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_every_edge_call_is_congruent(both, metric):
    embedded, remote = both
    compare(lambda c: c.create_collection("bad", dim=DIM, metric=metric), embedded, remote)
    rng = np.random.default_rng(42)
    vecs = rng.standard_normal((5, DIM)).astype(np.float32)
    compare(lambda c: c.get_collection("bad").upsert(np.arange(5), vecs, tenant="t0"), embedded, remote)
    for what, call in _bad_calls(rng, "bad", "t0", pool=5).items():
        compare(call, embedded, remote, f"metric={metric}: {what}")


def test_collections_and_keys_are_congruent(both):
    embedded, remote = both
    compare(lambda c: c.create_collection("a", dim=3, metric="l2", compression=LVQ(bits=8)), embedded, remote)
    lean = LeanVec(dim=2, kind="ood", primary="lvq4x8", secondary="float32")
    compare(lambda c: c.create_collection("b", dim=3, metric="ip", compression=lean), embedded, remote)
    for call in (
        lambda c: c.create_collection("a", dim=3),
        lambda c: c.create_collection("bad", dim=0),
        lambda c: c.create_collection("bad", dim=-4),
        lambda c: c.create_collection("bad", dim=2**40),
        lambda c: c.create_collection("bad", dim=True),
        lambda c: c.create_collection("bad", dim=3, metric="hamming"),
        lambda c: c.create_collection("bad", dim=3, metric=None),
        lambda c: c.create_collection("bad", dim=3, compression="lvq8"),
        lambda c: c.create_collection("", dim=3),
        lambda c: c.create_collection("x" * 200, dim=3),
        lambda c: c.create_collection("new\nline", dim=3),
        lambda c: c.create_collection(5, dim=3),
        lambda c: c.create_collection(None, dim=3),
        lambda c: c.get_collection(None),
        lambda c: c.create_tenant_key(None),
        lambda c: c.drop_collection(None),
        lambda c: c.get_collection("a"),
        lambda c: c.get_collection("zzz"),
        lambda c: c.list_collections(),
        lambda c: c.drop_collection("zzz"),
        lambda c: c.drop_collection("b"),
        lambda c: c.list_collections(),
        lambda c: c.get_collection("b"),
        lambda c: c.create_tenant_key(""),
        lambda c: c.create_tenant_key("a\x01"),
        lambda c: type(c.create_tenant_key("acme")),
    ):
        compare(call, embedded, remote)


def test_closed_clients_raise_the_same_error(both):
    embedded, remote = both
    for c in both:
        c.create_collection("x", dim=2)
        c.close()
    compare(lambda c: c.list_collections(), embedded, remote)


def test_grant_names_an_owner_the_same_way_in_both_modes(embedded_client, remote_client):
    import numpy as np

    from engine.errors import FailedPrecondition, InvalidArgument, NotFound

    outcomes = []
    for client in (embedded_client, remote_client):
        col = client.create_collection("owners", dim=2, metric="ip")
        col.upsert([1, 2], np.ones((2, 2), np.float32), tenant="a")
        col.upsert([1], np.ones((1, 2), np.float32), tenant="b")
        seen = [col.grant([1], tenant="c", owner="b"), col.grant([2], tenant="c")]
        for bad, error in (({"owner": ""}, InvalidArgument), ({"owner": "nobody"}, NotFound), ({}, FailedPrecondition)):
            try:
                col.grant([1], tenant="d", **bad)
            except error as exc:
                seen.append(type(exc).__name__)
        seen.append(col.count(tenant="c"))
        outcomes.append(seen)
    assert outcomes[0] == outcomes[1] == [1, 1, "InvalidArgument", "NotFound", "FailedPrecondition", 2]


@pytest.mark.parametrize(
    ("url", "address", "tls"),
    [
        ("localhost:50051", "localhost:50051", False),
        ("grove://10.0.0.7:50051", "10.0.0.7:50051", False),
        ("grpc://h:1/", "h:1", False),
        ("http://127.0.0.1:8080", "127.0.0.1:8080", False),
        ("https://grove.example.com:443", "grove.example.com:443", True),
        ("grpcs://[::1]:50051", "[::1]:50051", True),
        ("GROVES://h:9", "h:9", True),
        ("unix:/tmp/grove.sock", "unix:/tmp/grove.sock", False),
    ],
)
def test_a_client_url_names_host_port_and_its_scheme_says_whether_tls(url, address, tls):
    from grove_client.remote import server_address

    assert server_address(url) == (address, tls)


@pytest.mark.parametrize("url", ["localhost", "ftp://h:1", "http://h:1/v1/search", "h:port", ""])
def test_a_client_url_that_names_no_server_is_refused_with_the_rule(url):
    from grove_client import Client
    from grove_client.remote import server_address

    from engine.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="host:port|scheme"):
        server_address(url)
    if url:
        with pytest.raises(InvalidArgument):
            Client(url=url, api_key="k")


def test_an_http_url_reaches_a_plaintext_server(grove_server):
    from grove_client import Client

    with Client(url=f"http://{grove_server.url}/", api_key=grove_server.admin_key) as client:
        assert client.list_collections() == []
