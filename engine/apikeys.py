"""API keys: random tokens shown once, stored only as their SHA-256 digest.

Keys are 32 random bytes, so a fast unsalted digest is safe to store; comparison is by digest lookup.
"""

from __future__ import annotations

import hashlib
import secrets

from engine.errors import InvalidArgument

PREFIX = "grove_"


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


MIN_ADMIN_KEY_CHARS = 16


def check_admin_key(key: str) -> str:
    """``key`` if it may be the admin key (at least ``MIN_ADMIN_KEY_CHARS`` characters), else ``InvalidArgument``."""
    if len(key) < MIN_ADMIN_KEY_CHARS:
        raise InvalidArgument(f"the admin key must have at least {MIN_ADMIN_KEY_CHARS} characters")
    return key


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
