"""Durability: a ``grove serve`` subprocess is SIGKILLed at random points while it ingests, then restarted.

Every batch goes to its own tenant, so a batch is visible whole or not at all: after each restart every
acknowledged batch is present with the right vectors and grants, and an in-flight batch is either
entirely there or entirely absent.
"""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest
from grove_client import Client

from bench.chaos import free_port, kill9, start_server

ADMIN_KEY = "durability-admin-key-0123456789"
BATCH = 40
DIM = 16
CYCLES = int(os.environ.get("GROVE_KILL_CYCLES", "20"))


def _batch(b: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.arange(b * BATCH, (b + 1) * BATCH, dtype=np.int64)
    vecs = np.random.default_rng(b).standard_normal((BATCH, DIM)).astype(np.float32)
    return ids, vecs


def _check(col, b: int, *, acked_upsert: bool, acked_grant: bool) -> tuple[bool, bool]:
    """Check batch b; return whether its upsert and its grant are present."""
    n_owner, n_grant = col.count(tenant=f"t{b}"), col.count(tenant=f"g{b}")
    assert n_owner in (0, BATCH), f"batch {b}: partial upsert visible ({n_owner} of {BATCH})"
    assert n_grant in (0, BATCH), f"batch {b}: partial grant visible ({n_grant} of {BATCH})"
    if acked_upsert:
        assert n_owner == BATCH, f"batch {b}: acknowledged upsert lost"
    if acked_grant:
        assert n_grant == BATCH, f"batch {b}: acknowledged grant lost"
    if n_owner:
        ids, vecs = _batch(b)
        res = col.search(vecs[[0, -1]], k=1, tenant=f"t{b}")
        assert res.ids[:, 0].tolist() == [ids[0], ids[-1]] and np.all(res.scores[:, 0] < 1e-5), f"batch {b}"
    return n_owner == BATCH, n_grant == BATCH


@pytest.mark.slow
def test_acknowledged_writes_survive_kill_minus_nine(tmp_path):
    rng = np.random.default_rng(2024)
    path, port = tmp_path / "store", free_port()
    acked: dict[int, list[bool]] = {}  # batch -> [upsert acked, grant acked]
    next_batch = 0
    for cycle in range(CYCLES):
        proc = start_server(path, port, ADMIN_KEY)
        client = Client(url=f"127.0.0.1:{port}", api_key=ADMIN_KEY)
        try:
            col = client.create_collection("d", dim=DIM, metric="l2") if cycle == 0 else client.get_collection("d")
            for b, (up, gr) in acked.items():  # everything written before the last kill
                present = _check(col, b, acked_upsert=up, acked_grant=gr)
                acked[b] = list(present)
            killer = threading.Timer(float(rng.uniform(0.02, 0.4)), os.killpg, (proc.pid, signal.SIGKILL))
            killer.start()
            try:
                while True:
                    ids, vecs = _batch(next_batch)
                    acked[next_batch] = [False, False]
                    col.upsert(ids, vecs, tenant=f"t{next_batch}")
                    acked[next_batch][0] = True
                    col.grant(ids, tenant=f"g{next_batch}")
                    acked[next_batch][1] = True
                    next_batch += 1
            except Exception:  # noqa: BLE001 - the server died under us: that is the point
                next_batch += 1
            killer.join()
        finally:
            client.close()
            kill9(proc)
    proc = start_server(path, port, ADMIN_KEY)
    try:
        with Client(url=f"127.0.0.1:{port}", api_key=ADMIN_KEY) as client:
            col = client.get_collection("d")
            for b, (up, gr) in acked.items():
                _check(col, b, acked_upsert=up, acked_grant=gr)
            assert sum(up for up, _ in acked.values()) >= CYCLES, "too few batches were acknowledged to test"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        proc.stderr.close()
