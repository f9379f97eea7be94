"""Grove's one error vocabulary, shared by the engine, the service and both SDK modes.

Each class names the gRPC status code it travels as (``code``, a ``grpc.StatusCode`` member name).
The server turns an exception into that status in one place (``engine.rpc.status``) and the remote
client turns the status back into the same class, so embedded and remote callers catch identical types.
This module is a leaf: it imports nothing from Grove and nothing from grpc.
"""

from __future__ import annotations

__all__ = [
    "GroveError",
    "InvalidArgument",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "Unauthenticated",
    "ResourceExhausted",
    "FailedPrecondition",
    "Unavailable",
    "DeadlineExceeded",
    "Internal",
]


class GroveError(Exception):
    """Base of every error Grove raises on purpose."""

    code = "INTERNAL"


class InvalidArgument(GroveError, ValueError):
    """The request is wrong whatever the state: bad shape, dtype, NaN, k < 1, duplicate ids, bad name."""

    code = "INVALID_ARGUMENT"


class NotFound(GroveError, LookupError):
    """Unknown collection, or vector ids the caller cannot see (whether or not they exist)."""

    code = "NOT_FOUND"


class AlreadyExists(GroveError):
    """A collection of that name exists, or a vector id is taken by a vector the caller does not own."""

    code = "ALREADY_EXISTS"


class PermissionDenied(GroveError):
    """The caller is identified but may not do this (another tenant's data, an admin-only call)."""

    code = "PERMISSION_DENIED"


class Unauthenticated(GroveError):
    """No API key, or one the server does not know."""

    code = "UNAUTHENTICATED"


class ResourceExhausted(GroveError):
    """The request is larger than the configured limits."""

    code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(GroveError):
    """The request is valid but the current state forbids it (e.g. revoking the owner's own access)."""

    code = "FAILED_PRECONDITION"


class Unavailable(GroveError):
    """The server is shutting down or the database is closed."""

    code = "UNAVAILABLE"


class DeadlineExceeded(GroveError, TimeoutError):
    """The call ran past the deadline the client set (a write may still have been applied: retry is safe)."""

    code = "DEADLINE_EXCEEDED"


class Internal(GroveError):
    """A bug or a storage failure; the message says which."""

    code = "INTERNAL"


ALL_ERRORS: tuple[type[GroveError], ...] = (
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    Unauthenticated,
    ResourceExhausted,
    FailedPrecondition,
    Unavailable,
    DeadlineExceeded,
    Internal,
)
