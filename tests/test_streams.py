"""The stream gate: caps per principal and in all, slots freed when a stream ends, idle client streams reaped."""

from __future__ import annotations

import threading
import time

import pytest

from engine.errors import ResourceExhausted
from engine.principal import ADMIN
from engine.rpc.streams import StreamGate


def test_streams_beyond_a_principals_cap_or_the_total_are_refused_and_slots_come_back():
    gate = StreamGate(per_principal=2, total=3, idle_seconds=60)
    with gate.admit("acme", "UpsertStream", lambda: None), gate.admit("acme", "UpsertStream", lambda: None):
        with pytest.raises(ResourceExhausted, match="tenant 'acme' already holds 2"):
            with gate.admit("acme", "UpsertStream", lambda: None):
                pass
        with gate.admit(ADMIN, "DynamicNegatives", lambda: None):
            with pytest.raises(ResourceExhausted, match="limit of 3 open streams"):
                with gate.admit("beta", "UpsertStream", lambda: None):
                    pass
        assert gate.open_count() == 2 and gate.open_count("acme") == 2
    assert gate.open_count() == 0
    with gate.admit("acme", "UpsertStream", lambda: None):
        assert gate.open_count("acme") == 1


def test_an_idle_client_stream_is_cancelled_a_busy_server_stream_is_not():
    gate = StreamGate(per_principal=4, total=4, idle_seconds=0.2)
    cancelled = {"upsert": threading.Event(), "mining": threading.Event()}
    with gate.admit("acme", "UpsertStream", cancelled["upsert"].set):
        with gate.admit("acme", "MineHardNegatives", cancelled["mining"].set, reapable=False):
            assert cancelled["upsert"].wait(5)
            time.sleep(0.5)
            assert not cancelled["mining"].is_set()


def test_activity_keeps_a_stream_alive():
    gate = StreamGate(per_principal=1, total=1, idle_seconds=0.3)
    cancelled = threading.Event()
    with gate.admit("acme", "UpsertStream", cancelled.set) as stream:
        for _ in stream.relay(iter(range(10))):
            time.sleep(0.1)  # a message every 0.1 s: never idle for 0.3 s
        assert not cancelled.is_set()
