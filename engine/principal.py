"""Who a call acts as: ``ADMIN`` (the admin key, and the embedded SDK) or a tenant's name (a tenant API key).

Every engine method that reads or writes on someone's behalf takes ``principal`` as a required keyword, so a
caller that forgets it fails at once instead of running as the admin (fail closed). ``ADMIN`` is a singleton
of its own type, not ``None``: a missing value can never be mistaken for it.
"""

from __future__ import annotations

from typing import Final, TypeAlias

from engine.errors import PermissionDenied


class _Admin:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ADMIN"


ADMIN: Final = _Admin()
Principal: TypeAlias = _Admin | str


def acting(tenant: str, principal: Principal) -> str:
    """``tenant`` when ``principal`` may act as it (the admin, or that tenant's key); else ``PermissionDenied``."""
    if principal is ADMIN or (isinstance(principal, str) and principal == tenant):
        return tenant
    if not isinstance(principal, str):
        raise PermissionDenied(f"no valid principal for this call (got {principal!r}); refusing it")
    raise PermissionDenied(f"this API key acts only as tenant {principal!r}, not as {tenant!r}")


def tenant_of(principal: Principal) -> str | None:
    """The tenant a tenant key acts as; None for the admin."""
    if principal is ADMIN:
        return None
    if not isinstance(principal, str):
        raise PermissionDenied(f"no valid principal for this call (got {principal!r}); refusing it")
    return principal
