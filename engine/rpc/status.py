"""The one table between Grove's errors and gRPC status codes, used by the server and the remote client.

Each ``engine.errors`` class names its code (``.code``); this module turns that name into a
``grpc.StatusCode`` on the way out and a status code back into the same class on the way in, so embedded
and remote callers catch identical types.
"""

from __future__ import annotations

import grpc

from engine.errors import ALL_ERRORS, GroveError, Internal, InvalidArgument, Unavailable

#: GroveError class -> the status it travels as
TO_STATUS: dict[type[GroveError], grpc.StatusCode] = {cls: grpc.StatusCode[cls.code] for cls in ALL_ERRORS}

#: status -> the GroveError class raised by the remote client. Codes Grove never sends on purpose map to
#: their nearest class: transport failures and deadlines to ``Unavailable`` (retry later), the rest to ``Internal``.
FROM_STATUS: dict[grpc.StatusCode, type[GroveError]] = {
    grpc.StatusCode.CANCELLED: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
    grpc.StatusCode.ABORTED: Unavailable,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.UNKNOWN: Internal,
    grpc.StatusCode.UNIMPLEMENTED: Internal,
    grpc.StatusCode.DATA_LOSS: Internal,
    **{code: cls for cls, code in TO_STATUS.items()},
}


def to_status(exc: GroveError) -> grpc.StatusCode:
    """The status code ``exc`` travels as (its nearest listed base class, for subclasses)."""
    for cls in type(exc).__mro__:
        code = TO_STATUS.get(cls)  # type: ignore[arg-type]
        if code is not None:
            return code
    return grpc.StatusCode[getattr(exc, "code", "INTERNAL")]


def from_status(code: grpc.StatusCode | None, details: str | None) -> GroveError:
    """The Grove exception for a failed call: the same class the engine raised, with the server's message."""
    cls = FROM_STATUS.get(code, Internal) if code is not None else Internal
    message = details or (code.name if code is not None else "the call failed without a status")
    if cls not in TO_STATUS or TO_STATUS[cls] is not code:
        message = f"{code.name if code is not None else 'UNKNOWN'}: {message}"
    return cls(message)


def from_rpc_error(err: grpc.RpcError) -> GroveError:
    """Map an ``RpcError`` from a stub call to its Grove exception."""
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    return from_status(code, details)
