"""The README says what is true: its code blocks run as written (against a real ``grove serve`` on the port the
README names, then embedded), it holds exactly two set-up commands, and its settings table is ``SETTINGS``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import config
from engine.cli import port_taken
from tests.conftest import GROVE_ADMIN_KEY

README = Path(__file__).resolve().parent.parent / "README.md"
#: where the README's remote example connects
README_PORT = 50051


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_the_readme_holds_exactly_two_set_up_commands_install_and_serve_then_install_and_test():
    commands = _blocks("bash")
    assert commands == ["pip install . && grove serve\n", 'pip install ".[test]" && python -m pytest\n']
    ci = (README.parent / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == commands[1].strip()


def test_the_readme_settings_table_lists_every_setting_with_its_variable_and_default():
    rows = re.findall(
        r"^\| `([a-z_.]+)`(?: \(`(--[a-z-]+)`\))? \| `(GROVE_[A-Z_]+)` \| ([^|]+) \|", README.read_text(), re.M
    )
    assert [r[0] for r in rows] == [s.key for s in config.SETTINGS]
    for (key, flag, env, default), s in zip(rows, config.SETTINGS):
        assert (flag or None, env) == (s.flag, s.env), key
        shown = "(unset)" if s.default is None else str(s.default)
        assert default.strip() == shown, key


@pytest.mark.slow
def test_the_readme_code_blocks_run_as_written_against_a_server_and_embedded(tmp_path, monkeypatch):
    """Every ```python block, in order, in one namespace: the first ones against ``grove serve`` on port 50051
    (with the admin key in ``$GROVE_API_KEY``, as the README says), the rest embedded, as they are written."""
    taken = port_taken("127.0.0.1", README_PORT)
    assert taken is None, f"the README's example needs port {README_PORT} free for a server: {taken}"
    grove = Path(sys.executable).parent / "grove"
    server = subprocess.Popen(
        [str(grove), "serve", "--path", str(tmp_path / "server"), "--admin-key", GROVE_ADMIN_KEY, "--no-access-log"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_serving(server)
        monkeypatch.setenv("GROVE_API_KEY", GROVE_ADMIN_KEY)
        monkeypatch.chdir(tmp_path)
        namespace: dict = {"__name__": "__readme__"}
        for i, block in enumerate(_blocks("python")):
            try:
                exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)  # noqa: S102
            except Exception as exc:
                raise AssertionError(f"README python block {i + 1} fails as written: {exc!r}\n{block}") from exc
        assert namespace["client"].mode == "embedded" and (tmp_path / "triplets.jsonl").exists()
        namespace["client"].close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.communicate(timeout=60)


def _wait_serving(server: subprocess.Popen, timeout: float = 120) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.time() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{README_PORT}") as channel:
        probe = health_pb2_grpc.HealthStub(channel)
        while time.time() < deadline and server.poll() is None:
            try:
                if (
                    probe.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise AssertionError(
        f"grove serve did not start serving: {server.stdout.read() if server.poll() is not None else ''}"
    )
