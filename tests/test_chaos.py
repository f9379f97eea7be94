"""The crash harness in short (``bench/chaos.py`` runs it for hundreds of cycles): concurrent clients against a
real ``grove serve``, kill -9 at random moments and inside the tenant-registry race's window, and after every
restart each acknowledged write present with its exact bytes and grants, nothing else visible, no tenant number
changed or reused."""

from __future__ import annotations

import os

import pytest

from bench.chaos import run

CYCLES = int(os.environ.get("GROVE_CHAOS_CYCLES", "6"))


@pytest.mark.slow
def test_no_acknowledged_write_is_lost_or_leaked_across_kill_minus_nine(tmp_path):
    stats = run(tmp_path / "store", cycles=CYCLES, clients=3, seconds=(0.3, 1.5), big_rows=20_000, seed=1, log=print)
    assert stats.cycles == CYCLES
    assert stats.calls["upsert"] > 0 and stats.checks > 1000 and stats.refused_as_expected > 0
    assert stats.violations == []
