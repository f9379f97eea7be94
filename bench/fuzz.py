"""A gRPC fuzzer for Grove: random and mutated requests to every RPC; the server must answer each with a proper
status (never INTERNAL or UNKNOWN, never a hang) and stay up.

Requests are drawn by Hypothesis from the proto descriptors (``message_strategy``): every field of every
request type, with values biased toward what reaches deep code (known collection and tenant names, matrices whose
bytes match their shape, NaN, infinities, huge and negative numbers), plus raw byte mutations of valid messages
(flipped bytes, truncation, junk). Each request goes out with one of: the admin key, a tenant key, a wrong key,
no key.

    python bench/fuzz.py --requests 100000            # against its own `grove serve` subprocess
    python bench/fuzz.py --url 127.0.0.1:50051 --admin-key ...   # against a running server

``tests/test_fuzz.py`` runs it briefly in CI against an in-process server.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from engine.rpc.pb import grove_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Grove"]
COLLECTIONS = ("docs", "cos", "l2x", "nope", "")
TENANTS = ("acme", "beta", "gamma", "", "x" * 200)
#: status codes that mean the server failed, not the request
BAD_CODES = frozenset({"INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED"})
_INTS = st.one_of(
    st.integers(0, 16), st.integers(-(2**63), 2**63 - 1), st.sampled_from([-1, 2**31, 2**32 - 1, 10_000, 100_000])
)
_FLOATS = st.one_of(
    st.floats(-10, 10), st.sampled_from([float("nan"), float("inf"), -float("inf"), 3e38, -3e38, 1e20, 0.0, -0.0])
)


def _matrix() -> st.SearchStrategy[pb.Matrix]:
    """A ``Matrix`` whose bytes usually match its shape (so it reaches validation), sometimes not."""

    def build(rows: int, dim: int, fill: str, broken: bool, seed: int) -> pb.Matrix:
        n = rows * dim
        if fill == "normal":
            values = np.random.default_rng(seed).standard_normal(n, dtype=np.float32)
        else:
            values = np.full(n, {"nan": np.nan, "huge": 3e38, "zero": 0.0}[fill], np.float32)
        data = values.astype("<f4", copy=False).tobytes()
        if broken:
            data = data[: max(0, len(data) - 3)] + b"\x01"
        return pb.Matrix(data=data, rows=rows, dim=dim)

    shapes = st.one_of(
        st.tuples(st.integers(0, 6), st.sampled_from([1, 4, 8, 16])),
        st.tuples(st.integers(0, 3), st.integers(0, 70_000)),
        st.tuples(st.sampled_from([5000, 100_000]), st.sampled_from([1, 8])),  # many queries: bounded work
    )
    return st.builds(
        lambda shape, fill, broken, seed: build(*shape, fill, broken, seed),
        shapes,
        st.sampled_from(["normal", "normal", "nan", "huge", "zero"]),
        st.integers(0, 4).map(lambda x: x == 0),  # one in five: bytes that do not match the shape
        st.integers(0, 2**32 - 1),
    )


def _scalar(f: FieldDescriptor) -> st.SearchStrategy:
    t = f.type
    if t == FieldDescriptor.TYPE_STRING:
        pool = COLLECTIONS if "collection" in f.name or f.name == "name" else TENANTS
        return st.one_of(st.sampled_from(pool), st.text(max_size=40))
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return _FLOATS
    if t == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in f.enum_type.values] + [99])
    unsigned = t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED32)
    bits = 32 if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_SINT32) else 64
    lo, hi = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return _INTS.map(lambda v: min(max(v, lo), hi))


def message_strategy(desc: Descriptor, depth: int = 0) -> st.SearchStrategy:
    """Messages of type ``desc`` with any subset of their fields set to biased random values."""
    if desc.full_name == "grove.v1.Matrix":
        return _matrix()
    cls = message_factory.GetMessageClass(desc)
    fields = []
    for f in desc.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if f.message_type.GetOptions().map_entry:
                continue
            if depth > 2:
                continue
            value = message_strategy(f.message_type, depth + 1)
        else:
            value = _scalar(f)
        if f.is_repeated:
            value = st.lists(value, max_size=8)
        fields.append((f, value))

    def build(chosen: dict) -> object:
        msg = cls()
        for name, v in chosen.items():
            f = desc.fields_by_name[name]
            if f.is_repeated and f.type == FieldDescriptor.TYPE_MESSAGE:
                for item in v:
                    getattr(msg, name).add().CopyFrom(item)
            elif f.is_repeated:
                getattr(msg, name).extend(v)
            elif f.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(msg, name).CopyFrom(v)
            else:
                setattr(msg, name, v)
        return msg

    return st.fixed_dictionaries({}, optional={f.name: value for f, value in fields}).map(build)


def _mutate(raw: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0 and raw:
        b = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if kind == 1:
        return raw[: rng.randrange(len(raw) + 1)]
    if kind == 2:
        return raw + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))


@dataclass
class FuzzReport:
    sent: int = 0
    codes: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        top = ", ".join(f"{c} {n}" for c, n in self.codes.most_common())
        return f"fuzz: {self.sent} requests, {len(self.failures)} bad answers; statuses: {top}"


class Fuzzer:
    """Sends requests to one server and records every status."""

    def __init__(self, url: str, admin_key: str, tenant_key: str, *, timeout: float = 30.0) -> None:
        self._channel = grpc.insecure_channel(
            url, options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        )
        self._keys = [admin_key, admin_key, tenant_key, tenant_key, "grove_wrong", None]
        self._timeout = timeout
        self.report = FuzzReport()
        self._rng = random.Random(0)

    def close(self) -> None:
        self._channel.close()

    def send(self, method, raws: list[bytes]) -> str:
        """Send the serialized request(s) to ``method`` and return the status name."""
        path = f"/{SERVICE.full_name}/{method.name}"
        key = self._rng.choice(self._keys)
        md = () if key is None else (("x-api-key", key),)
        stream_in, stream_out = method.client_streaming, method.server_streaming
        kind = {
            (False, False): self._channel.unary_unary,
            (True, False): self._channel.stream_unary,
            (False, True): self._channel.unary_stream,
            (True, True): self._channel.stream_stream,
        }[(stream_in, stream_out)]
        call = kind(path, request_serializer=None, response_deserializer=None)
        arg = iter(raws) if stream_in else raws[0]
        try:
            out = call(arg, metadata=md, timeout=self._timeout)
            if stream_out:
                for _ in out:
                    pass
            code, details = "OK", ""
        except grpc.RpcError as exc:
            code, details = exc.code().name, exc.details() or ""
        self.report.sent += 1
        self.report.codes[code] += 1
        if code in BAD_CODES:
            self.report.failures.append(f"{method.name}: {code} {details[:200]}")
        return code

    def run(self, requests: int, *, seed: int = 0) -> FuzzReport:
        """About ``requests`` requests over every RPC: Hypothesis-drawn messages, a quarter of them byte-mutated."""
        methods = list(SERVICE.methods)
        self._rng.seed(seed)
        for method in methods:
            self._fuzz(method, max(1, requests // len(methods)), seed)
        return self.report

    def _fuzz(self, method, examples: int, seed: int) -> None:
        @hypothesis_seed(seed)
        @settings(
            max_examples=examples,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(st.lists(message_strategy(method.input_type), min_size=1, max_size=3), st.integers(0, 2**31))
        def one(messages, salt):
            raws = [m.SerializeToString() for m in messages]
            if salt % 4 == 0:
                raws = [_mutate(r, random.Random(salt)) for r in raws]
            self.send(method, raws if method.client_streaming else raws[:1])

        one()


def seed_server(url: str, admin_key: str) -> str:
    """Collections and data the fuzzer's names refer to; returns a tenant key for ``acme``."""
    from grove_client import Client

    with Client(url=url, api_key=admin_key) as client:
        rng = np.random.default_rng(0)
        for name, dim, metric in (("docs", 8, "ip"), ("cos", 4, "cosine"), ("l2x", 16, "l2")):
            col = client.create_collection(name, dim=dim, metric=metric)
            for first, tenant in ((0, "acme"), (1000, "beta")):
                ids = np.arange(first, first + 200)
                col.upsert(ids, rng.standard_normal((200, dim)).astype(np.float32), tenant=tenant)
            col.grant(np.arange(1000, 1010), tenant="gamma")
        return client.create_tenant_key("acme")


def _serve(path: Path, port: int, admin_key: str) -> subprocess.Popen:
    from bench.chaos import start_server

    return start_server(path, port, admin_key)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--url", default=None, help="fuzz a running server (default: start one on a temporary store)")
    ap.add_argument("--admin-key", default="fuzz-admin-key-0123456789")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from bench.chaos import free_port

    proc = None
    with tempfile.TemporaryDirectory(prefix="grove-fuzz-") as tmp:
        url = a.url
        if url is None:
            port = free_port()
            proc = _serve(Path(tmp) / "store", port, a.admin_key)
            url = f"127.0.0.1:{port}"
        try:
            tenant_key = seed_server(url, a.admin_key)
            fuzzer = Fuzzer(url, a.admin_key, tenant_key)
            t0 = time.perf_counter()
            report = fuzzer.run(a.requests, seed=a.seed)
            fuzzer.close()
            alive = proc is None or proc.poll() is None
            print(report.line())
            print(f"fuzz: {time.perf_counter() - t0:.0f} s; server {'alive' if alive else 'DEAD'}")
            for line in report.failures[:20]:
                print("  " + line)
            return 0 if alive and not report.failures else 1
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
