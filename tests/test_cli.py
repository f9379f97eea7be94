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
        url = _url(out[-1])
        with Client(url=url, api_key=keys[0]) as client:
            col = client.create_collection("docs", dim=3, metric="l2")
            col.upsert([1, 2], np.eye(3, dtype=np.float32)[:2], tenant="acme")
    finally:
        assert server.stop() == 0
    server = _Serve("--path", str(tmp_path / "data"), env=env)
    try:
        out = server.until("grove: serving on")
        assert not any("generated admin key" in line for line in out), out
        url = _url(out[-1])
        with Client(url=url, api_key=keys[0]) as client:
            assert client.get_collection("docs").count(tenant="acme") == 2
    finally:
        assert server.stop() == 0
    refused = _Serve("--path", str(tmp_path / "data"), "--admin-key", "a-brand-new-admin-key-0123", env=env)
    assert "--rotate-admin-key" in "\n".join(refused.until("<never>"))  # another key than the store's: refused
    assert refused.wait() == 2
    server = _Serve("--path", str(tmp_path / "data"), env=env)
    try:
        with Client(url=_url(server.until("grove: serving on")[-1]), api_key=keys[0]) as old:
            assert [c.name for c in old.list_collections()] == ["docs"]  # the stored key still works
    finally:
        assert server.stop() == 0
    args = ("--admin-key", "a-brand-new-admin-key-0123", "--rotate-admin-key")
    server = _Serve("--path", str(tmp_path / "data"), *args, env=env)
    try:
        out = server.until("grove: serving on")
        assert any("admin key rotated" in line for line in out), out
        url = _url(out[-1])
        with Client(url=url, api_key=keys[0]) as old, pytest.raises(Unauthenticated):
            old.list_collections()
        with Client(url=url, api_key="a-brand-new-admin-key-0123") as new:
            assert [c.name for c in new.list_collections()] == ["docs"]
    finally:
        assert server.stop() == 0


def _url(serving_line: str) -> str:
    """The address of ``grove: serving on HOST:PORT (TLS state)``."""
    return serving_line.split("serving on ", 1)[1].split()[0]


def test_serve_refuses_a_path_that_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("not a store")
    server = _Serve("--path", str(tmp_path / "afile"), "--admin-key", "an-admin-key-0123456789")
    out = "\n".join(server.until("<never>"))
    assert server.wait() == 2
    assert "is a file" in out and "Traceback" not in out


def test_a_second_server_on_a_taken_port_exits_before_making_a_key(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k != "GROVE_ADMIN_KEY"}
    first = _Serve("--path", str(tmp_path / "one"), "--admin-key", "an-admin-key-0123456789")
    try:
        port = _url(first.until("grove: serving on")[-1]).rsplit(":", 1)[1]
        cmd = [sys.executable, "-m", "engine", "serve", "--path", str(tmp_path / "two"), "--port", port]
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        assert second.returncode != 0 and "in use" in second.stderr, second
        assert "generated admin key" not in second.stdout
        assert not (tmp_path / "two").exists()  # the failed start made no store, and no key
    finally:
        assert first.stop() == 0


def test_a_port_held_by_any_process_is_a_clear_error_before_anything_is_made(tmp_path):
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        cmd = [sys.executable, "-m", "engine", "serve", "--path", str(tmp_path / "s"), "--port", port]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "in use" in out.stderr and "Traceback" not in out.stderr, out
    assert "generated admin key" not in out.stdout and not (tmp_path / "s").exists()


def test_serve_refuses_a_short_admin_key(tmp_path):
    server = _Serve("--path", str(tmp_path / "data"), "--admin-key", "short")
    assert "at least 16 characters" in "\n".join(server.until("<never>"))
    assert server.wait() == 2


def test_demo_runs():
    out = subprocess.run([sys.executable, "-m", "engine", "demo"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "PermissionDenied" in out.stdout and "embedded, as beta" in out.stdout


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    out = subprocess.run([sys.executable, "-m", "engine", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"grove {version('grove')}"
