"""Shared fixtures. Service and SDK fixtures (a real gRPC server in-process on port 0, clients of both modes)
are the ``grove_*`` / ``*_client`` ones below; add other areas' fixtures in their own clearly named section.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# ============================================================================ service and SDK fixtures
GROVE_ADMIN_KEY = "test-admin-key-0123456789abcdef"


@dataclass
class GroveServer:
    """An in-process Grove server on a free port, over its own store."""

    db: object
    server: object
    port: int
    path: Path
    admin_key: str = GROVE_ADMIN_KEY

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, api_key: str | None = GROVE_ADMIN_KEY, **kw):
        from grove_client import Client

        return Client(url=self.url, api_key=api_key, **kw)

    def stop(self) -> None:
        self.server.stop(None).wait()
        self.db.close()


def start_grove_server(path: Path, **options) -> GroveServer:
    """Open a store at ``path``, set the admin key, start ``create_server(db, "127.0.0.1:0", **options)``."""
    from engine.db import Database
    from engine.rpc.server import create_server

    db = Database(path)
    db.set_admin_key(GROVE_ADMIN_KEY)
    server, port = create_server(db, "127.0.0.1:0", max_workers=4, **options)
    server.start()
    return GroveServer(db, server, port, Path(path))


@pytest.fixture
def grove_server(tmp_path: Path) -> Iterator[GroveServer]:
    """A started server with default options; its admin key is ``GROVE_ADMIN_KEY``."""
    srv = start_grove_server(tmp_path / "grove-server")
    yield srv
    srv.stop()


@pytest.fixture
def remote_client(grove_server: GroveServer):
    """A remote SDK client with the admin key, on ``grove_server``."""
    client = grove_server.client()
    yield client
    client.close()


@pytest.fixture
def embedded_client(tmp_path: Path):
    """An embedded SDK client on its own store."""
    from grove_client import Client

    client = Client(path=tmp_path / "grove-embedded")
    yield client
    client.close()


@pytest.fixture(params=["embedded", "remote"])
def any_client(request: pytest.FixtureRequest):
    """Each SDK mode in turn (admin rights in both)."""
    return request.getfixturevalue(f"{request.param}_client")


@pytest.fixture
def grove_env(monkeypatch: pytest.MonkeyPatch):
    """``grove_env("GROVE_X", value)`` sets (or, with None, unsets) a setting's variable for this test and has
    Grove read its settings again, as a process started with that environment would."""
    from engine import config

    def set_variable(name: str, value: str | None) -> None:
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
        config.reset()

    yield set_variable
    config.reset()
