"""API keys: random tokens shown once, stored only as their SHA-256 digest.

Keys are 32 random bytes, so a fast unsalted digest is safe to store; comparison is by digest lookup.
"""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "grove_"


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
