"""Operating Grove: one config (file < environment < flags), logs and the access log, Prometheus metrics, and
long work (index builds, compression training) as jobs that can be followed, in both SDK modes."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from engine import config, logs
from engine.errors import FailedPrecondition, Internal, InvalidArgument
from engine.index.curator import CuratorIndex
from engine.rpc.observe import Metrics, Observer
from engine.rpc.streams import StreamGate
from tests.conftest import GROVE_ADMIN_KEY, start_grove_server

DIM = 8


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ============================================================================ one config
def test_a_setting_comes_from_the_default_then_the_file_then_the_environment_then_a_flag(tmp_path):
    toml = tmp_path / "grove.toml"
    toml.write_text('[serve]\nport = 7000\nhost = "0.0.0.0"\nlog_format = "json"\n[engine]\nthreads = 3\n')
    env = {"GROVE_PORT": "7001", "GROVE_THREADS": "2"}
    cfg = config.load(toml, env=env, flags={"serve.port": "7002"})
    assert (cfg["serve.port"], cfg.sources["serve.port"]) == (7002, "flag")
    assert (cfg["engine.threads"], cfg.sources["engine.threads"]) == (2, "environment")
    assert (cfg["serve.host"], cfg.sources["serve.host"]) == ("0.0.0.0", "file")
    assert (cfg["serve.grace"], cfg.sources["serve.grace"]) == (10.0, "default")
    assert config.load(env={"GROVE_CONFIG": str(toml)})["serve.port"] == 7000  # the file named by the environment


def test_every_variable_is_listed_once_and_every_setting_has_a_grove_variable():
    names = [s.env for s in config.SETTINGS]
    assert len(set(names)) == len(names) and all(n.startswith("GROVE_") for n in names)
    keys = {"GROVE_KERNELS", "GROVE_THREADS", "GROVE_ISA", "GROVE_TREE_BUILD", "GROVE_GPU_PRECISION", "GROVE_ADMIN_KEY"}
    assert keys <= set(names)


@pytest.mark.parametrize(
    ("env", "file", "match"),
    [
        ({"GROVE_PORT": "seventy"}, None, r"serve.port \(\$GROVE_PORT\)"),
        ({"GROVE_KERNELS": "fortran"}, None, "expected one of auto, numpy"),
        ({"GROVE_ACCESS_LOG": "maybe"}, None, "true or false"),
        ({}, "[serve]\nport = true\n", "serve.port"),
        ({}, "[serve]\nprot = 1\n", "unknown setting 'serve.prot'"),
        ({}, "port = 1\n", "must be a table"),
        ({}, "[serve\n", "not valid TOML"),
    ],
)
def test_a_bad_value_is_refused_naming_the_setting_and_where_it_came_from(tmp_path, env, file, match):
    path = None
    if file is not None:
        path = tmp_path / "bad.toml"
        path.write_text(file)
    with pytest.raises(config.ConfigError, match=match):
        config.load(path, env=env)


def test_grove_config_prints_each_setting_its_variable_value_and_source_and_never_a_secret(tmp_path):
    grove = Path(sys.executable).parent / "grove"
    env = {**os.environ, "GROVE_THREADS": "2", "GROVE_ADMIN_KEY": "a-secret-admin-key-0123456789"}
    out = subprocess.run([str(grove), "config", "--port", "6001"], capture_output=True, text=True, env=env, check=True)
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:] if line.strip()}
    assert rows["serve.port"][1:] == ["GROVE_PORT", "6001", "flag"]
    assert rows["engine.threads"][1:] == ["GROVE_THREADS", "2", "environment"]
    assert rows["serve.grace"][1:] == ["GROVE_GRACE", "10.0", "default"]
    assert rows["serve.admin_key"][2] == "(set)" and "a-secret-admin-key" not in out.stdout
    assert set(rows) == {s.key for s in config.SETTINGS}


def test_settings_are_read_when_first_needed_not_at_import(grove_env):
    grove_env("GROVE_TREE_BUILD", "topdown")
    assert config.current()["engine.tree_build"] == "topdown"
    grove_env("GROVE_TREE_BUILD", None)
    assert config.current()["engine.tree_build"] == "auto"
    code = "import os, engine.db, engine.kernels, engine.rpc.server; os.environ['GROVE_TREE_BUILD']='refined'; " \
        "from engine import config; print(config.current()['engine.tree_build'])"  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "refined"


# ============================================================================ logs
def _record(logger: str, msg: str, **fields) -> logging.LogRecord:
    record = logging.LogRecord(logger, logging.INFO, __file__, 1, msg, None, None)
    record.fields = fields
    return record


def test_json_logs_are_one_object_per_line_with_the_fields_beside_the_message():
    line = logs.JsonFormatter().format(_record("grove.access", "call", rpc="Search", code="OK", ms=0.5))
    obj = json.loads(line)
    assert obj["logger"] == "grove.access" and obj["msg"] == "call" and obj["level"] == "info"
    assert (obj["rpc"], obj["code"], obj["ms"]) == ("Search", "OK", 0.5) and "\n" not in line
    text = logs.TextFormatter().format(_record("grove.access", "call", rpc="Search", tenant="a b"))
    assert text.endswith('grove.access call rpc=Search tenant="a b"')


def test_each_call_leaves_one_access_log_line_with_who_what_and_how_it_ended_but_no_key_or_vector(tmp_path):
    stream = io.StringIO()
    logs.setup("info", "json", stream)
    srv = start_grove_server(tmp_path / "s", observer=Observer(access_log=True))
    try:
        admin = srv.client()
        col = admin.create_collection("docs", dim=DIM, metric="l2")
        x = _vectors(50)
        col.upsert(np.arange(50), x, tenant="acme")
        key = admin.create_tenant_key("acme")
        tenant = srv.client(api_key=key)
        tenant.get_collection("docs").search(x[:1], k=3, tenant="acme")
        with pytest.raises(InvalidArgument):
            tenant.get_collection("docs").search(x[:1, :4], k=3, tenant="acme")
    finally:
        srv.stop()
        logs.stop()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    calls = [r for r in lines if r["logger"] == "grove.access"]
    searches = [r for r in calls if r["rpc"] == "Search"]
    assert [r["code"] for r in searches] == ["OK", "INVALID_ARGUMENT"]
    assert all(r["principal"] == "tenant" and r["tenant"] == "acme" for r in searches)
    assert searches[0]["bytes_in"] > DIM * 4 and searches[0]["bytes_out"] > 0 and searches[0]["ms"] > 0
    upsert = next(r for r in calls if r["rpc"] == "Upsert")
    assert upsert["principal"] == "admin" and upsert["tenant"] == "acme" and upsert["code"] == "OK"
    raw = stream.getvalue()
    assert GROVE_ADMIN_KEY not in raw and key not in raw
    assert x[0].tobytes().hex()[:16] not in raw and str(float(x[0, 0]))[:8] not in raw


def test_a_log_sink_that_does_not_keep_up_drops_records_instead_of_blocking_the_server():
    class StuckStream(io.StringIO):
        """A pipe nobody reads: every write waits."""

        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()

        def write(self, text: str) -> int:
            self.release.wait(30)
            return super().write(text)

    stuck = StuckStream()
    log = logs.setup("info", "text", stuck)
    before = logs.dropped()
    t0 = time.perf_counter()
    for i in range(logs.QUEUE_RECORDS + 500):
        log.info("record %d", i)
    assert time.perf_counter() - t0 < 10 and logs.dropped() - before >= 499
    stuck.release.set()
    logs.stop()
    assert "record 0" in stuck.getvalue()


# ============================================================================ metrics
def _scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def _metric(body: str, name: str, **labels) -> float | None:
    """The value of the sample ``name{labels...}`` (labels matched as a subset), or None."""
    for line in body.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return None


@pytest.mark.parametrize("tenant_labels", [False, True])
def test_metrics_count_calls_by_rpc_and_code_and_show_collections_jobs_and_streams(tmp_path, tenant_labels):
    from engine.db import Database
    from engine.rpc.server import create_server

    db = Database(tmp_path / "s")
    db.set_admin_key(GROVE_ADMIN_KEY)
    gate = StreamGate()
    metrics = Metrics(db, gate, tenant_labels=tenant_labels)
    server, port = create_server(db, observer=Observer(metrics, access_log=False), gate=gate, max_workers=4)
    server.start()
    http_port = metrics.serve("127.0.0.1", 0)
    try:
        from grove_client import Client

        with Client(url=f"127.0.0.1:{port}", api_key=GROVE_ADMIN_KEY) as admin:
            col = admin.create_collection("docs", dim=DIM, metric="l2")
            col.upsert(np.arange(300), _vectors(300), tenant="acme")
            for _ in range(5):
                col.search(_vectors(1), k=3, tenant="acme")
            with pytest.raises(InvalidArgument):
                col.search(_vectors(1)[:, :3], k=3, tenant="acme")
            col.build_index()
        body = _scrape(http_port)
    finally:
        server.stop(None).wait()
        db.close()
        metrics.close()
    assert _metric(body, "grove_requests_total", rpc="Search", code="OK") == 5
    assert _metric(body, "grove_requests_total", rpc="Search", code="INVALID_ARGUMENT") == 1
    assert _metric(body, "grove_request_duration_seconds_count", rpc="Search") == 6
    assert _metric(body, "grove_request_bytes_total", rpc="Upsert", direction="in") > 300 * DIM * 4
    assert _metric(body, "grove_collection_vectors", collection="docs") == 300
    assert _metric(body, "grove_collection_tenants", collection="docs") == 1
    assert _metric(body, "grove_collection_bytes", collection="docs") > 300 * DIM * 4
    assert _metric(body, "grove_jobs_total", collection="docs", kind="build_index", outcome="done") == 1
    assert _metric(body, "grove_job_seconds_total", collection="docs", kind="build_index") > 0
    assert ('tenant="acme"' in body) == tenant_labels  # tenant names only when asked for (cardinality)


# ============================================================================ jobs
@pytest.fixture
def slow_builds(monkeypatch):
    """Index builds that take at least ``gate`` to open (set it to let them finish); they report progress."""
    gate = threading.Event()
    real = CuratorIndex.build.__func__

    def slow(cls, *args, progress=None, **kw):
        if progress is not None:
            progress(0.25, "waiting for the test")
        gate.wait(30)
        return real(cls, *args, progress=progress, **kw)

    monkeypatch.setattr(CuratorIndex, "build", classmethod(slow))
    yield gate
    gate.set()


def test_a_background_build_is_a_job_that_stats_follow_and_a_second_request_is_refused(any_client, slow_builds):
    col = any_client.create_collection("docs", dim=DIM, metric="l2")
    col.upsert(np.arange(500), _vectors(500), tenant="acme")
    assert col.stats()["build"]["state"] == "idle"
    job = col.build_index(background=True)
    assert job.state == "running" and job.kind == "build_index" and job.id == 1 and job.started <= time.time()
    deadline = time.time() + 10
    while col.stats()["build"]["phase"] != "waiting for the test" and time.time() < deadline:
        time.sleep(0.01)
    running = col.stats()["build"]
    assert running["state"] == "running" and 0.2 < running["progress"] < 0.3
    with pytest.raises(FailedPrecondition, match=r"running build_index \(running, 2\d%"):
        col.build_index()
    with pytest.raises(FailedPrecondition, match="build_index"):
        col.build_index(background=True)
    slow_builds.set()
    done = col.job(job.id)
    while done.running:
        time.sleep(0.01)
        done = col.job(job.id)
    assert done.state == "done" and done.progress == 1.0 and done.finished >= done.started
    assert done.result["vectors"] == 500 and col.stats()["build"]["state"] == "done"
    assert col.build_index()["vectors"] == 500  # the next one runs


def test_a_failed_job_says_why_in_stats_and_a_foreground_build_raises_its_error(any_client, monkeypatch):
    col = any_client.create_collection("docs", dim=DIM, metric="l2")
    col.upsert(np.arange(500), _vectors(500), tenant="acme")

    def broken(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(CuratorIndex, "build", broken)
    with pytest.raises(Internal, match="disk on fire"):
        col.build_index()
    build = col.stats()["build"]
    assert build["state"] == "failed" and build["error"] == "OSError: disk on fire"
    assert build["error_code"] == "INTERNAL" and col.stats()["build_failures"] == 1


def test_a_remote_foreground_build_outlives_the_call_deadline_by_following_its_job(grove_server, slow_builds):
    col = grove_server.client(timeout=1.0).create_collection("docs", dim=DIM, metric="l2")
    col.upsert(np.arange(500), _vectors(500), tenant="acme")
    threading.Timer(2.5, slow_builds.set).start()  # the build takes longer than any one call may
    t0 = time.perf_counter()
    summary = col.build_index()
    assert time.perf_counter() - t0 > 2.0 and summary["vectors"] == 500 and summary["trained"] == 1


def test_compression_training_is_a_job_too(any_client):
    from grove_client import LVQ

    col = any_client.create_collection("lvq", dim=DIM, metric="l2", compression=LVQ(bits=8))
    with pytest.raises(FailedPrecondition, match="empty"):  # refused before any job starts
        col.train_compression(background=True)
    col.upsert(np.arange(300), _vectors(300), tenant="acme")
    job = col.train_compression(background=True)
    assert job.kind == "train_compression"
    while col.job(job.id).running:
        time.sleep(0.01)
    assert col.job(job.id).state == "done" and col.stats()["compressed"] == 1


def test_a_terminal_shows_a_progress_bar_for_a_foreground_build(embedded_client, capsys):
    col = embedded_client.create_collection("docs", dim=DIM, metric="l2")
    col.upsert(np.arange(500), _vectors(500), tenant="acme")
    col.build_index(progress=True)
    err = capsys.readouterr().err
    assert "build_index" in err and "100%" in err


# ============================================================================ the server, as an operator starts it
def test_grove_serve_logs_json_serves_metrics_and_says_when_the_kernels_are_ready(tmp_path):
    port, mport = _free_port(), _free_port()
    grove = Path(sys.executable).parent / "grove"
    proc = subprocess.Popen(
        [str(grove), "serve", "--path", str(tmp_path / "s"), "--port", str(port), "--admin-key", GROVE_ADMIN_KEY,
         "--metrics-port", str(mport), "--log-format", "json", "--access-log"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        from grove_client import Client

        deadline = time.time() + 120
        while True:
            try:
                with Client(url=f"127.0.0.1:{port}", api_key=GROVE_ADMIN_KEY) as c:
                    c.list_collections()
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        body = _scrape(mport)
        assert _metric(body, "grove_requests_total", rpc="ListCollections", code="OK") >= 1
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(r["logger"] == "grove.warm" and r["msg"].startswith("kernels ready") for r in records)
    assert any(r["logger"] == "grove.access" and r["rpc"] == "ListCollections" for r in records)
    assert f"metrics on http://127.0.0.1:{mport}/metrics" in out and GROVE_ADMIN_KEY not in out + err
