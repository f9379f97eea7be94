"""``grove serve`` as a subprocess: admin key handling, the listening line, graceful SIGTERM; ``grove demo``."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from grove_client import Client

from engine.errors import Unauthenticated


class _Serve:
    """``python -m engine serve --port 0 ...`` with its stdout read line by line on a thread."""

    def __init__(self, *args: str, env: dict | None = None) -> None:
        cmd = [sys.executable, "-m", "engine", "serve", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.put(line.rstrip("\n"))
        self.lines.put("<eof>")

    def wait(self) -> int:
        code = self.proc.wait(timeout=60)
        self._pump_thread.join(timeout=60)
        return code

    def until(self, prefix: str, timeout: float = 60) -> list[str]:
        seen = []
        while True:
            line = self.lines.get(timeout=timeout)
            seen.append(line)
            if line.startswith(prefix) or line == "<eof>":
                return seen

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rest = self.until("grove: stopped")
        assert rest[-1] == "grove: stopped", rest
        return self.wait()


def test_serve_generates_the_admin_key_once_and_stops_gracefully(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k != "GROVE_ADMIN_KEY"}
    server = _Serve("--path", str(tmp_path / "data"), env=env)
    try:
        out = server.until("grove: serving on")
        assert out[-1].startswith("grove: serving on 127.0.0.1:"), out
        keys = [line.rsplit(" ", 1)[1] for line in out if "generated admin key" in line]
        assert len(keys) == 1, out
        url = out[-1].rsplit(" ", 1)[1]
        with Client(url=url, api_key=keys[0]) as client:
            col = client.create_collection("docs", dim=3, metric="l2")
            col.upsert([1, 2], np.eye(3, dtype=np.float32)[:2], tenant="acme")
    finally:
        assert server.stop() == 0
    server = _Serve("--path", str(tmp_path / "data"), env=env)
    try:
        out = server.until("grove: serving on")
        assert not any("generated admin key" in line for line in out), out
        url = out[-1].rsplit(" ", 1)[1]
        with Client(url=url, api_key=keys[0]) as client:
            assert client.get_collection("docs").count(tenant="acme") == 2
    finally:
        assert server.stop() == 0
    server = _Serve("--path", str(tmp_path / "data"), "--admin-key", "a-brand-new-admin-key-0123", env=env)
    try:
        url = server.until("grove: serving on")[-1].rsplit(" ", 1)[1]
        with Client(url=url, api_key=keys[0]) as old, pytest.raises(Unauthenticated):
            old.list_collections()
        with Client(url=url, api_key="a-brand-new-admin-key-0123") as new:
            assert [c.name for c in new.list_collections()] == ["docs"]
    finally:
        assert server.stop() == 0


def test_serve_refuses_a_short_admin_key(tmp_path):
    server = _Serve("--path", str(tmp_path / "data"), "--admin-key", "short")
    assert "at least 16 characters" in "\n".join(server.until("<never>"))
    assert server.wait() == 2


def test_demo_runs():
    out = subprocess.run([sys.executable, "-m", "engine", "demo"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "PermissionDenied" in out.stdout and "embedded, as beta" in out.stdout
