"""One client stream of upserts assembled into ONE all-or-nothing batch: checked per message, committed once.

The servicer feeds each message's arrays to ``StreamBatch.add`` as it arrives, so a bad chunk fails the
stream at once (and nothing was written); ``finish`` hands the concatenated batch to ``Collection.upsert``,
which re-checks the whole (duplicates across chunks) and writes it in one synced RocksDB batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from engine import validate
from engine.errors import InvalidArgument, ResourceExhausted

if TYPE_CHECKING:
    from engine.db import Collection


class StreamBatch:
    """Buffers the chunks of one ``UpsertStream``.

    Parameters
    ----------
    db : the ``engine.db.Database`` the stream writes to.
    max_bytes : cap on the stream's total message bytes; beyond it ``ResourceExhausted``.
    """

    def __init__(self, db, *, max_bytes: int) -> None:
        self._db = db
        self._max_bytes = max_bytes
        self._bytes = 0
        self._rows = 0
        self._ids: list[np.ndarray] = []
        self._vectors: list[np.ndarray] = []
        self.collection: Collection | None = None
        self.tenant = ""

    def add(self, collection: str, tenant: str, ids: np.ndarray, vectors: np.ndarray, nbytes: int) -> None:
        """Check one message (names, ids, vectors, sizes) and keep its arrays."""
        n = len(self._ids) + 1
        self._bytes += nbytes
        if self._bytes > self._max_bytes:
            raise ResourceExhausted(
                f"the upsert stream exceeds the server's limit of {self._max_bytes} bytes at message {n}; "
                "split the ingest into several streams"
            )
        if self.collection is None:
            self.collection = self._db.get_collection(collection)
            self.tenant = validate.name(tenant, "tenant")
        elif collection not in ("", self.collection.name) or tenant not in ("", self.tenant):
            raise InvalidArgument(
                f"message {n} of the upsert stream names collection {collection!r} / tenant {tenant!r}, but the "
                f"stream began with {self.collection.name!r} / {self.tenant!r}; one stream is one batch for one "
                "collection and tenant (leave both empty after the first message)"
            )
        ids = validate.ids(ids)
        vectors = validate.vectors(vectors, self.collection.dim, metric=self.collection.metric)
        validate.same_length(ids, vectors)
        self._rows += ids.size
        if self._rows > validate.MAX_BATCH:
            raise ResourceExhausted(f"a batch holds at most {validate.MAX_BATCH} rows; split the stream")
        self._ids.append(ids)
        self._vectors.append(vectors)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole batch: (ids, vectors) of every message, in order."""
        if self.collection is None:
            raise InvalidArgument("the upsert stream carried no messages; send at least one UpsertRequest")
        if len(self._ids) == 1:
            return self._ids[0], self._vectors[0]
        return np.concatenate(self._ids), np.concatenate(self._vectors)
