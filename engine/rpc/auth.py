"""Server interceptor: ``x-api-key`` -> principal (admin or one tenant), enforced on every message of every call."""

from __future__ import annotations

from collections.abc import Iterator
from contextvars import ContextVar

import grpc

from engine.errors import PermissionDenied, Unauthenticated
from engine.rpc.guard import behaviour_of, rebuild

ADMIN = None  # the admin principal, as in engine.db
ADMIN_ONLY = frozenset(
    {"CreateCollection", "DropCollection", "CreateTenantKey", "Stats", "BuildIndex", "TrainCompression", "Configure"}
)
_PRINCIPAL: ContextVar[str | None] = ContextVar("grove_principal")


def principal() -> str | None:
    """Who the current call acts as: ``None`` for the admin key, else the tenant name of a tenant key."""
    try:
        return _PRINCIPAL.get()
    except LookupError:
        raise Unauthenticated("no principal for this call: the auth interceptor is not installed") from None


def _check(who: str | None, request: object) -> object:
    named = getattr(request, "tenant", "")
    if who is not ADMIN and named and named != who:
        raise PermissionDenied(f"this API key acts only as tenant {who!r}, not as {named!r}")
    return request


class AuthInterceptor(grpc.ServerInterceptor):
    """Resolves the key with ``db.authenticate`` in the handler's thread; runs inside ``GuardInterceptor``."""

    def __init__(self, db, prefix: str = "/grove.v1.Grove/") -> None:
        self._db = db
        self._prefix = prefix

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self._prefix):
            return handler  # health and reflection stay open, as probes and grpcurl expect
        key = next((v for k, v in handler_call_details.invocation_metadata or () if k == "x-api-key"), None)
        admin_only = method[len(self._prefix) :] in ADMIN_ONLY
        inner, db = behaviour_of(handler), self._db

        def enter(arg) -> tuple[str | None, object]:
            who = db.authenticate(key)
            if admin_only and who is not ADMIN:
                raise PermissionDenied(f"{method} needs the admin key; a tenant key cannot call it")
            if handler.request_streaming:
                return who, (_check(who, request) for request in arg)
            return who, _check(who, arg)

        def call(arg, context):
            who, arg = enter(arg)
            token = _PRINCIPAL.set(who)
            try:
                return inner(arg, context)
            finally:
                _PRINCIPAL.reset(token)

        def stream(arg, context) -> Iterator[object]:
            who, arg = enter(arg)
            token = _PRINCIPAL.set(who)
            try:
                yield from inner(arg, context)
            finally:
                _PRINCIPAL.reset(token)

        return rebuild(handler, call, stream, deserializer=handler.request_deserializer)
