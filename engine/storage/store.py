"""A thin wrapper over one RocksDB (rocksdict, raw bytes) with atomic, synced write batches.

Every ``write`` is one RocksDB write batch with ``sync=True``: the WAL is on disk before the call
returns, so an acknowledged write survives ``kill -9`` and power loss, and a batch is all-or-nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import rocksdict

from engine.errors import Internal, Unavailable


class Batch:
    """Puts and deletes collected for one atomic write."""

    def __init__(self) -> None:
        self._wb = rocksdict.WriteBatch(raw_mode=True)

    def put(self, key: bytes, value: bytes) -> None:
        self._wb.put(key, value)

    def delete(self, key: bytes) -> None:
        self._wb.delete(key)

    def delete_range(self, begin: bytes, end: bytes) -> None:
        self._wb.delete_range(begin, end)

    def __len__(self) -> int:
        return self._wb.len()


class Store:
    """One RocksDB directory. Thread-safe: RocksDB serialises writers and reads never block."""

    def __init__(self, path: str | Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        try:
            self._db = rocksdict.Rdict(str(path), opts)
        except Exception as exc:  # noqa: BLE001 - rocksdict raises plain Exception (locked or corrupt dir)
            raise Unavailable(f"cannot open the store at {path}: {exc}") from None
        sync = rocksdict.WriteOptions()
        sync.sync = True
        self._db.set_write_options(sync)
        self._closed = False

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """Values of many keys in one call (RocksDB multi-get)."""
        if not keys:
            return []
        wanted: list[str | int | float | bytes | bool] = list(keys)
        # a list of keys gets a list of values (rocksdict types get() for one key)
        return cast("list[bytes | None]", self._db.get(wanted))

    def write(self, batch: Batch) -> None:
        """Apply the batch atomically and durably (WAL synced) or raise ``Internal``."""
        if self._closed:
            raise Unavailable("the store is closed")
        try:
            self._db.write(batch._wb)
        except Exception as exc:  # noqa: BLE001 - rocksdict raises plain Exception
            raise Internal(f"storage write failed: {exc}") from None

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) whose key starts with ``prefix``, in key order."""
        # every key and value this store writes is bytes (rocksdict types them as any of its key types)
        items = cast("Iterator[tuple[bytes, bytes]]", self._db.items(from_key=prefix))
        for key, value in items:
            if not key.startswith(prefix):
                return
            yield key, value

    def approximate_bytes(self) -> int:
        return int(self._db.property_int_value("rocksdb.total-sst-files-size") or 0) + int(
            self._db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
        )

    def close(self) -> None:
        """Flush memtables and close; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._db.flush()
        finally:
            self._db.close()
