"""Every Grove setting in one place: its name, ``GROVE_*`` variable, default, and where its value came from.

A value comes from, in rising precedence: the default, the TOML file (``grove serve --config grove.toml``, or
``$GROVE_CONFIG``), the environment (``GROVE_*``), the command line. ``load`` reads all of them once and returns
a frozen ``Config``; ``grove config`` prints ``Config.table()``. Nothing is read at import time: ``current()``
reads the environment on first use (an embedded program honours ``GROVE_*`` with no CLI), ``grove serve`` puts
its own in force with ``use``, and the modules that need a setting (kernels, index build) ask ``current()``
when they first need it. This module imports nothing from Grove at import time (the kernels read it).

The TOML file has one table per section, with the setting names of ``SETTINGS`` as keys::

    [serve]
    port = 50051
    metrics_port = 9090

    [engine]
    threads = 2
"""

from __future__ import annotations

import os
import threading
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_ENV = "GROVE_CONFIG"


def _bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = str(text).strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {text!r}")
        return value

    parse.__doc__ = " | ".join(options)
    return parse


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"expected an integer >= 1, got {text!r}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"expected a port number 0..65535, got {text!r}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"expected seconds > 0, got {text!r}")
    return value


@dataclass(frozen=True)
class Setting:
    """One setting: ``key`` is ``section.name`` (its place in the TOML file), ``env`` its variable, ``flag`` its
    ``grove serve`` option (None: not on the command line), ``parse`` turns a string (or a TOML value) into
    the value; ``secret`` values are never printed."""

    key: str
    env: str
    default: Any
    parse: Callable[[str], Any]
    help: str
    flag: str | None = None
    secret: bool = False

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(".", 1)[1]


SETTINGS: tuple[Setting, ...] = (
    # ------------------------------------------------------------------ the server (grove serve)
    Setting("serve.path", "GROVE_PATH", "./grove-data", str, "store directory (created if missing)", "--path"),
    Setting("serve.host", "GROVE_HOST", "127.0.0.1", str, "interface to listen on", "--host"),
    Setting("serve.port", "GROVE_PORT", 50051, _port, "gRPC port (0 picks a free one)", "--port"),
    Setting(
        "serve.admin_key",
        "GROVE_ADMIN_KEY",
        None,
        str,
        "admin API key (>= 16 characters; else the stored one, or a new one printed once)",
        "--admin-key",
        secret=True,
    ),
    Setting(
        "serve.tls_cert", "GROVE_TLS_CERT", None, str, "PEM certificate file; serve TLS (with tls_key)", "--tls-cert"
    ),
    Setting("serve.tls_key", "GROVE_TLS_KEY", None, str, "PEM private key file (with tls_cert)", "--tls-key"),
    Setting(
        "serve.max_message_mb",
        "GROVE_MAX_MESSAGE_MB",
        64,
        _positive_int,
        "largest gRPC message, MiB",
        "--max-message-mb",
    ),
    Setting(
        "serve.max_stream_mb",
        "GROVE_MAX_STREAM_MB",
        1024,
        _positive_int,
        "largest upsert stream, MiB",
        "--max-stream-mb",
    ),
    Setting(
        "serve.workers",
        "GROVE_WORKERS",
        None,
        _positive_int,
        "threads serving unary calls (unset: min(32, 4 x cores))",
        "--workers",
    ),
    Setting(
        "serve.max_streams", "GROVE_MAX_STREAMS", 16, _positive_int, "streams open at once, in all", "--max-streams"
    ),
    Setting(
        "serve.max_streams_per_key",
        "GROVE_MAX_STREAMS_PER_KEY",
        4,
        _positive_int,
        "streams one principal (a tenant, or the admin) may hold open at once",
        "--max-streams-per-key",
    ),
    Setting(
        "serve.stream_idle_s",
        "GROVE_STREAM_IDLE_S",
        60.0,
        _seconds,
        "seconds a client stream may go without a message before it is cancelled",
        "--stream-idle-s",
    ),
    Setting("serve.grace", "GROVE_GRACE", 10.0, _seconds, "seconds in-flight calls get at shutdown", "--grace"),
    Setting(
        "serve.metrics_port",
        "GROVE_METRICS_PORT",
        None,
        _port,
        "serve Prometheus metrics at http://HOST:PORT/metrics (unset: no metrics endpoint)",
        "--metrics-port",
    ),
    Setting(
        "serve.metrics_host",
        "GROVE_METRICS_HOST",
        None,
        str,
        "interface of the metrics endpoint (unset: the gRPC host)",
        "--metrics-host",
    ),
    Setting(
        "serve.metrics_tenant_labels",
        "GROVE_METRICS_TENANT_LABELS",
        False,
        _bool,
        "label request metrics with tenant names too (one series per tenant: mind the cardinality)",
        "--metrics-tenant-labels",
    ),
    Setting(
        "serve.log_level",
        "GROVE_LOG_LEVEL",
        "info",
        _choice("debug", "info", "warning", "error"),
        "log level",
        "--log-level",
    ),
    Setting(
        "serve.log_format",
        "GROVE_LOG_FORMAT",
        "text",
        _choice("text", "json"),
        "log lines as text or as one JSON object each",
        "--log-format",
    ),
    Setting(
        "serve.access_log",
        "GROVE_ACCESS_LOG",
        False,
        _bool,
        "one log line per call (RPC, principal kind, tenant, status, duration, bytes; never a key or a vector)",
        "--access-log",
    ),
    Setting(
        "serve.warm",
        "GROVE_WARM",
        True,
        _bool,
        "load (or compile, on a fresh install) the search kernels at start, before the first query needs them",
        "--warm",
    ),
    # ------------------------------------------------------------------ the engine (server and embedded)
    Setting(
        "engine.kernels",
        "GROVE_KERNELS",
        "auto",
        _choice("auto", "numpy", "numba", "native", "cuda"),
        "kernel backend (auto: native if built, else numba; big batches on a CUDA device)",
    ),
    Setting("engine.threads", "GROVE_THREADS", None, _positive_int, "threads per batch search (unset: all cores)"),
    Setting(
        "engine.isa",
        "GROVE_ISA",
        "auto",
        _choice("auto", "scalar", "avx2", "avx512", "avx512vnni"),
        "highest instruction set of the native kernels (auto: the best this CPU has)",
    ),
    Setting("engine.native_lib", "GROVE_NATIVE_LIB", None, str, "path of the native kernel library to load"),
    Setting(
        "engine.tree_build",
        "GROVE_TREE_BUILD",
        "auto",
        _choice("auto", "refined", "topdown"),
        "how index trees are built unless a collection says (auto: refined when one tenant holds most rows)",
    ),
    Setting(
        "engine.gpu_precision",
        "GROVE_GPU_PRECISION",
        "auto",
        _choice("auto", "fp16", "tf32", "fp32"),
        "GPU batch-search product precision (auto: fp16 with CuPy, else fp32), rescored in fp32",
    ),
    Setting("engine.gpu_select", "GROVE_GPU_SELECT", "filter", _choice("filter", "rounds"), "GPU top-k selection"),
    Setting("engine.gpu_rescore", "GROVE_GPU_RESCORE", True, _bool, "rescore low-precision GPU candidates in fp32"),
    # ------------------------------------------------------------------ the Python SDK
    Setting(
        "client.api_key",
        "GROVE_API_KEY",
        None,
        str,
        "the SDK's API key when Client(api_key=) is not given",
        secret=True,
    ),
)
BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
#: the parser of on/off settings (the CLI gives them ``--x/--no-x`` options)
BOOL = _bool


class ConfigError(ValueError):
    """A setting's value (from the file, the environment or a flag) is not valid; the message names it."""


@dataclass(frozen=True)
class Config:
    """Effective settings: ``values[key]`` and ``sources[key]`` (``default``, ``file``, ``environment`` or
    ``flag``); ``file`` is the TOML file read, if any."""

    values: Mapping[str, Any]
    sources: Mapping[str, str]
    file: Path | None = None

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def section(self, name: str) -> dict[str, Any]:
        """The values of one section by setting name (``cfg.section("serve")["port"]``)."""
        return {s.name: self.values[s.key] for s in SETTINGS if s.section == name}

    def table(self) -> list[tuple[str, str, str, str]]:
        """``(key, variable, effective value, source)`` per setting; secrets shown as ``(set)``."""
        rows = []
        for s in SETTINGS:
            value = self.values[s.key]
            shown = "(set)" if s.secret and value is not None else ("(unset)" if value is None else str(value))
            rows.append((s.key, s.env, shown, self.sources[s.key]))
        return rows

    def format_table(self) -> str:
        """``table()`` as aligned text, a header first (what ``grove config`` prints)."""
        rows = [("setting", "variable", "value", "source"), *self.table()]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        if self.file is not None:
            lines.append(f"(file: {self.file})")
        return "\n".join(lines)


def _parse(setting: Setting, raw: Any, where: str) -> Any:
    """``raw`` (a string, or a TOML value) as the setting's value; ``where`` names its source in errors."""
    if raw is None:
        return None
    if isinstance(raw, (dict, list)) or (isinstance(raw, bool) and setting.parse is not _bool):
        raise ConfigError(f"{setting.key} ({where}): expected {_expects(setting)}, got {raw!r}")
    try:
        return setting.parse(raw if isinstance(raw, str) else str(raw))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{setting.key} ({where}): {exc}") from None


def _expects(setting: Setting) -> str:
    if setting.parse.__doc__ and setting.parse.__module__ == __name__ and "|" in setting.parse.__doc__:
        return setting.parse.__doc__
    return {_bool: "true or false", str: "a string"}.get(setting.parse, "a number")


def read_file(path: str | Path) -> dict[str, Any]:
    """The TOML file's settings by key (``section.name``); unknown sections or names are errors."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for section, table in doc.items():
        if not isinstance(table, dict):
            raise ConfigError(f"config file {p}: {section!r} must be a table such as [serve] or [engine]")
        for name, value in table.items():
            key = f"{section}.{name}"
            if key not in BY_KEY:
                known = ", ".join(s.key for s in SETTINGS)
                raise ConfigError(f"config file {p}: unknown setting {key!r}; known: {known}")
            out[key] = value
    return out


def load(
    file: str | Path | None = None, *, env: Mapping[str, str] | None = None, flags: Mapping[str, Any] | None = None
) -> Config:
    """Effective settings from the defaults, ``file`` (else ``$GROVE_CONFIG``), ``env`` (default ``os.environ``)
    and ``flags`` (by key; a None flag value means "not given"). Raises ``ConfigError`` naming a bad value."""
    env = os.environ if env is None else env
    file = file or env.get(CONFIG_ENV) or None
    from_file = read_file(file) if file else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for s in SETTINGS:
        values[s.key], sources[s.key] = s.default, "default"
        if s.key in from_file:
            values[s.key], sources[s.key] = _parse(s, from_file[s.key], f"file {file}"), "file"
        if env.get(s.env, "") != "":
            values[s.key], sources[s.key] = _parse(s, env[s.env], f"${s.env}"), "environment"
        given = (flags or {}).get(s.key)
        if given is not None:
            values[s.key], sources[s.key] = _parse(s, given, s.flag or "flag"), "flag"
    return Config(values, sources, Path(file) if file else None)


_current: Config | None = None
_lock = threading.Lock()


def current() -> Config:
    """The settings in force: those ``use``-d, else the environment's (and ``$GROVE_CONFIG``'s), read on the
    first call and kept. Modules read their settings from here when they first need them, never at import."""
    global _current
    with _lock:
        if _current is None:
            _current = load()
        return _current


def use(cfg: Config) -> None:
    """Put ``cfg`` in force (``grove serve`` does, with its file and flags) and re-apply the settings that
    modules hold once read: the kernel backend, threads and instruction set."""
    global _current
    with _lock:
        _current = cfg
    from engine import kernels

    kernels.reconfigure()


def reset() -> None:
    """Forget the settings in force, so the next ``current()`` reads the environment again (tests)."""
    global _current
    with _lock:
        _current = None
    from engine import kernels

    kernels.reconfigure()


def engine_setting(name: str) -> Any:
    """One engine setting in force, ``"auto"`` read as None (``engine_setting("kernels")``)."""
    value = current()[f"engine.{name}"]
    return None if value == "auto" else value
