"""The gRPC fuzzer in short (``bench/fuzz.py`` sends 100k+ requests): random and byte-mutated messages to every
RPC with every kind of key; each gets a proper status (never INTERNAL, UNKNOWN or a hang) and the server stays up.
"""

from __future__ import annotations

import os

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.fuzz import Fuzzer, seed_server
from tests.conftest import GROVE_ADMIN_KEY

REQUESTS = int(os.environ.get("GROVE_FUZZ_REQUESTS", "1500"))


def test_every_fuzzed_request_gets_a_proper_status(grove_server):
    tenant_key = seed_server(grove_server.url, GROVE_ADMIN_KEY)
    fuzzer = Fuzzer(grove_server.url, GROVE_ADMIN_KEY, tenant_key)
    try:
        report = fuzzer.run(REQUESTS, seed=3)
    finally:
        fuzzer.close()
    assert report.sent >= REQUESTS * 0.9
    assert report.failures == [], report.failures[:10]
    assert len(report.codes) >= 4, report.line()  # not one answer for everything: the requests reach the engine
    with grpc.insecure_channel(grove_server.url) as channel:
        probe = health_pb2_grpc.HealthStub(channel)
        assert probe.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
