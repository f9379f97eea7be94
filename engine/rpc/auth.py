"""Server interceptor: ``x-api-key`` -> principal (admin or one tenant), enforced on every message of every call.

It also holds calls that arrive while the database is still loading until it is loaded (the health check says
NOT_SERVING meanwhile), and admits streaming calls through the ``StreamGate`` (caps per principal and in all,
idle timeout).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from contextvars import ContextVar

import grpc

from engine.errors import PermissionDenied, Unauthenticated, Unavailable
from engine.principal import ADMIN, Principal
from engine.rpc.guard import behaviour_of, rebuild
from engine.rpc.observe import note_caller
from engine.rpc.streams import StreamGate

ADMIN_ONLY = frozenset(
    {
        "CreateCollection",
        "DropCollection",
        "CreateTenantKey",
        "Stats",
        "BuildIndex",
        "TrainCompression",
        "GetJob",
        "Configure",
    }
)
#: how long a call that arrives while the store loads waits for it (at most its own deadline) before UNAVAILABLE
LOAD_WAIT_SECONDS = 300.0
_PRINCIPAL: ContextVar[Principal] = ContextVar("grove_principal")


def principal() -> Principal:
    """Who the current call acts as: ``ADMIN`` for the admin key, else the tenant name of a tenant key."""
    try:
        return _PRINCIPAL.get()
    except LookupError:
        raise Unauthenticated("no principal for this call: the auth interceptor is not installed") from None


def _check(who: Principal, request: object) -> object:
    named = getattr(request, "tenant", "")
    if who is not ADMIN and named and named != who:
        raise PermissionDenied(f"this API key acts only as tenant {who!r}, not as {named!r}")
    note_caller(who, request)
    return request


class AuthInterceptor(grpc.ServerInterceptor):
    """Resolves the key with ``db.authenticate`` in the handler's thread; runs inside ``GuardInterceptor``."""

    def __init__(self, db, gate: StreamGate | None = None, prefix: str = "/grove.v1.Grove/") -> None:
        self._db = db
        self._gate = gate or StreamGate()
        self._prefix = prefix

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self._prefix):
            return handler  # health and reflection stay open, as probes and grpcurl expect
        key = next((v for k, v in handler_call_details.invocation_metadata or () if k == "x-api-key"), None)
        name = method[len(self._prefix) :]
        admin_only = name in ADMIN_ONLY
        streaming = handler.request_streaming or handler.response_streaming
        inner, db, gate = behaviour_of(handler), self._db, self._gate

        def enter(arg, context) -> tuple[Principal, object]:
            if not db.loaded:  # calls wait for the load (within their deadline) rather than fail
                remaining = context.time_remaining()
                if not db.wait_loaded(LOAD_WAIT_SECONDS if remaining is None else min(remaining, LOAD_WAIT_SECONDS)):
                    raise Unavailable("the server is still loading its store; retry shortly")
            who = db.authenticate(key)
            note_caller(who, None)
            if admin_only and who is not ADMIN:
                raise PermissionDenied(f"{method} needs the admin key; a tenant key cannot call it")
            if handler.request_streaming:
                return who, (_check(who, request) for request in arg)
            return who, _check(who, arg)

        def admitted(who: Principal, context):
            if not streaming:
                return nullcontext()
            return gate.admit(who, name, context.cancel, reapable=handler.request_streaming)

        def call(arg, context):
            who, arg = enter(arg, context)
            token = _PRINCIPAL.set(who)
            try:
                with admitted(who, context) as stream:
                    return inner(arg if stream is None else stream.relay(arg), context)
            finally:
                _PRINCIPAL.reset(token)

        def stream(arg, context) -> Iterator[object]:
            who, arg = enter(arg, context)
            token = _PRINCIPAL.set(who)
            try:
                with admitted(who, context) as open_stream:
                    if open_stream is None:
                        yield from inner(arg, context)
                    else:
                        if handler.request_streaming:
                            arg = open_stream.relay(arg)
                        yield from open_stream.relay(inner(arg, context))
            finally:
                _PRINCIPAL.reset(token)

        return rebuild(handler, call, stream, deserializer=handler.request_deserializer)
