"""The key schema of Grove's RocksDB, in one place.

Every key starts with one tag byte; numbers are big-endian so that keys of one collection sort together,
then by owner and id. Vector ids are int64 stored with the sign bit flipped (order-preserving). A vector is
named by its owner tenant and its id: each owner has an id namespace of its own. ``FORMAT`` is the layout's
version, stored in every store (``format_key``); a store of another version is refused, not misread.

=====================  ==========================================  =====================================
key                    layout                                      value
=====================  ==========================================  =====================================
counter                ``N`` + name                                u64 (``format``: the layout's version)
collection             ``C`` + name (utf-8)                        JSON: id, dim, metric, compression
tenant                 ``T`` + name (utf-8)                        u32 tenant number
api key                ``K`` + sha256(key)                         ``T`` + tenant name (utf-8)
admin key              ``A``                                       sha256(admin key)
vector                 ``V`` + col u32 + owner u32 + id            float32 row (as given)
grant                  ``G`` + col u32 + owner u32 + id + tenant   empty
index state            ``I`` + col u32 + name                      opaque bytes owned by the index
codec                  ``P`` + col u32 + name                      one ``.npy`` array of the learned codec
=====================  ==========================================  =====================================
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np

COUNTER, COLLECTION, TENANT, API_KEY, ADMIN, VECTOR, GRANT, INDEX = (b"N", b"C", b"T", b"K", b"A", b"V", b"G", b"I")
CODEC = b"P"
FORMAT = 2  # 1: vector keys without the owner (ids unique per collection)
_SIGN = 1 << 63
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def u32(n: int) -> bytes:
    return _U32.pack(n)


def read_u32(b: bytes, at: int = 0) -> int:
    return _U32.unpack_from(b, at)[0]


def u64(n: int) -> bytes:
    return _U64.pack(n)


def read_u64(b: bytes, at: int = 0) -> int:
    return _U64.unpack_from(b, at)[0]


def vid(i: int) -> bytes:
    """An int64 vector id as 8 order-preserving bytes."""
    return _U64.pack((i + _SIGN) & 0xFFFF_FFFF_FFFF_FFFF)


def read_vid(b: bytes, at: int) -> int:
    return _U64.unpack_from(b, at)[0] - _SIGN


def vids(ids: np.ndarray) -> np.ndarray:
    """Many ids at once: an ``[n, 8]`` uint8 array of their key bytes."""
    return (ids.astype(np.int64).view(np.uint64) ^ np.uint64(_SIGN)).astype(">u8").view(np.uint8).reshape(-1, 8)


def counter(name: str) -> bytes:
    return COUNTER + name.encode()


def collection(name: str) -> bytes:
    return COLLECTION + name.encode()


def tenant(name: str) -> bytes:
    return TENANT + name.encode()


def api_key(digest: bytes) -> bytes:
    return API_KEY + digest


def collection_prefix(tag: bytes, col: int) -> bytes:
    """The prefix of every key of ``tag`` in collection ``col``; ``col + 1``'s prefix bounds the range."""
    return tag + u32(col)


def format_key() -> bytes:
    return counter("format")


def vector(col: int, owner: int, i: int) -> bytes:
    return VECTOR + u32(col) + u32(owner) + vid(i)


def read_vector(key: bytes) -> tuple[int, int]:
    """``(owner, id)`` of a vector key."""
    return read_u32(key, 5), read_vid(key, 9)


def grant(col: int, owner: int, i: int, tenant_no: int) -> bytes:
    return GRANT + u32(col) + u32(owner) + vid(i) + u32(tenant_no)


def read_grant(key: bytes) -> tuple[int, int, int]:
    """``(owner, id, tenant)`` of a grant key."""
    return read_u32(key, 5), read_vid(key, 9), read_u32(key, 17)


def index_state(col: int, name: str) -> bytes:
    return INDEX + u32(col) + name.encode()


def codec(col: int, name: str) -> bytes:
    return CODEC + u32(col) + name.encode()


def vector_items(col: int, owner: int, ids: np.ndarray, rows: np.ndarray) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of each vector ``(owner, ids[j])`` with the float32 row ``rows[j]``: keys built in one numpy
    pass (twice as fast as one ``vector`` call each, on a batch of a million)."""
    n = ids.shape[0]
    key_len = 9 + 8
    packed = np.empty((n, key_len), np.uint8)
    packed[:, :9] = np.frombuffer(VECTOR + u32(col) + u32(owner), np.uint8)
    packed[:, 9:] = vids(ids)
    key_bytes = packed.tobytes()
    value_bytes = np.ascontiguousarray(rows, "<f4").tobytes()
    width = rows.shape[1] * 4
    for j in range(n):
        yield key_bytes[key_len * j : key_len * (j + 1)], value_bytes[width * j : width * (j + 1)]
