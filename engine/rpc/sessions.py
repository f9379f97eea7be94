"""One ``DynamicNegatives`` stream: the first message opens an engine session, every later one is a batch.

The servicer decodes each message and hands it to ``DynamicStream.step``. A malformed stream (no opening
message, a second one, a change of collection or tenant) ends the call with the error's status; a refused
batch (wrong dimension, NaN, an unknown query id) is answered in-band with the error and the session stays
open, as an embedded session stays usable after it raised.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.errors import GroveError, InvalidArgument
from engine.principal import Principal


class DynamicStream:
    """The server side of one stream, acting as ``principal`` (the caller's, from the auth interceptor).

    Parameters
    ----------
    db : the ``engine.db.Database`` served.
    principal : ``ADMIN`` or the tenant of the caller's key (``engine.principal``).
    """

    def __init__(self, db, principal: Principal) -> None:
        self._db = db
        self._principal = principal
        self._messages = 0
        self.collection = ""
        self.tenant = ""
        self.session = None

    def step(self, collection: str, tenant: str, kind: str | None, decode: Callable[[], tuple]):
        """Handle one message: returns None after opening, else the batch's ``DynamicBatch`` or its refusal."""
        self._messages += 1
        n = self._messages
        if self.session is None:
            if kind != "open":
                raise InvalidArgument(
                    f"message {n} of the DynamicNegatives stream carries {kind or 'no body'}; the first message "
                    "must open the session (collection, tenant, open)"
                )
            positives, k = decode()
            col = self._db.get_collection(collection)
            options = {} if k is None else {"k": k}
            self.session = col.dynamic_negatives(positives, tenant=tenant, principal=self._principal, **options)
            self.collection, self.tenant = collection, tenant
            return None
        if kind != "batch":
            raise InvalidArgument(
                f"message {n} of the DynamicNegatives stream carries {kind or 'no body'}; after the opening "
                "message every message carries one batch"
            )
        if collection not in ("", self.collection) or tenant not in ("", self.tenant):
            raise InvalidArgument(
                f"message {n} of the DynamicNegatives stream names collection {collection!r} / tenant {tenant!r}, "
                f"but the session is on {self.collection!r} / {self.tenant!r}; leave both empty after the first message"
            )
        try:
            query_ids, embeddings = decode()
            return self.session.negatives(query_ids, embeddings)
        except GroveError as exc:
            return exc
