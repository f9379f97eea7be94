"""The remote backend: one gRPC channel and stub to a ``grove serve``, with the API key sent on every call.

Failed calls raise the same ``engine.errors`` classes the embedded engine raises (mapped back from the gRPC
status by ``engine.rpc.status``). Per-call work is kept small: the stub's bound methods and the metadata
tuple are made once, matrices cross as raw bytes.
"""

from __future__ import annotations

import os
import queue
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

from engine import config, validate
from engine.errors import DeadlineExceeded, FailedPrecondition, GroveError, InvalidArgument, Unavailable
from engine.jobs import JobStatus
from engine.rpc import convert, status
from engine.rpc.pb import grove_pb2 as pb
from engine.rpc.pb import grove_pb2_grpc
from engine.training import DynamicBatch, MinedNegatives
from engine.types import PRF, CollectionInfo, Compression, SearchResult
from grove_client.backend import Backend, Closed, NegativesSession

API_KEY_ENV = config.BY_KEY["client.api_key"].env  # GROVE_API_KEY, read when a client is made
#: upserts up to this size go as one unary call, larger ones as an UpsertStream of chunks of this size
CHUNK_BYTES = 4 << 20
_ID_BYTES = 10  # a packed int64 varint takes at most 10 bytes
_HEADROOM = 64 << 10  # names, tags and lengths around the payload


def _refuse(exc: Exception, *names: tuple[object, str]) -> InvalidArgument:
    """The error for a request protobuf could not build: the engine's, for a name that is not a str."""
    if isinstance(exc, GroveError):
        return exc  # type: ignore[return-value]
    for value, what in names:
        validate.name(value, what)  # raises for a non-str or a name with control characters
    return InvalidArgument(f"the request cannot be encoded: {exc}; names must be valid Unicode text")


#: URL schemes a client accepts, and whether each means TLS
SCHEMES = {"grove": False, "grpc": False, "http": False, "groves": True, "grpcs": True, "https": True}
#: gRPC's own target forms (``unix:/path``, ``dns:///host:port``, ...): passed to gRPC as they are, plaintext
_GRPC_TARGETS = ("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:", "vsock:")


def server_address(url: str) -> tuple[str, bool]:
    """``(host:port, tls)`` of ``url``: ``host:port`` alone is plaintext; a scheme of ``SCHEMES`` says whether
    it is TLS (``https://`` and ``grpcs://`` are; ``http://`` is not). A trailing ``/`` is dropped; a path, an
    unknown scheme or a missing port is ``InvalidArgument``. gRPC's own targets (``unix:/path``) pass as they are.
    """
    if not isinstance(url, str) or not url:
        raise InvalidArgument(f"url must be 'host:port', optionally with a scheme, got {url!r}")
    if url.startswith(_GRPC_TARGETS):
        return url, False
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    elif scheme.lower() not in SCHEMES:
        raise InvalidArgument(f"unknown URL scheme {scheme!r} in {url!r}; use one of {', '.join(SCHEMES)}")
    address = rest.rstrip("/")
    host, colon, port = address.rpartition(":")
    if "/" in address or not colon or not host or not port.isdigit():
        raise InvalidArgument(f"url {url!r} must name host:port (and nothing after it), e.g. 'localhost:50051'")
    return address, SCHEMES.get(scheme.lower(), False)


class RemoteBackend(Backend):
    """Talks to a Grove server at ``url`` (``host:port``; ``grpcs://`` or ``tls=`` for TLS).

    Parameters
    ----------
    url : ``host:port``, optionally with a scheme (``server_address``): TLS for ``grpcs://``, ``groves://`` and
        ``https://``, plaintext for ``grpc://``, ``grove://`` and ``http://``.
    api_key : sent as ``x-api-key``; default ``$GROVE_API_KEY``.
    timeout : seconds per call (None: no deadline); a call past it raises ``Unavailable``.
    tls : False for plaintext; True for TLS with the system's roots; a PEM file path for a private CA.
    """

    def __init__(
        self, url: str, api_key: str | None = None, *, timeout: float | None = None, tls: bool | str | Path = False
    ) -> None:
        url, secure = server_address(url)
        tls = tls or secure
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        if tls:
            roots = None if tls is True else Path(tls).read_bytes()
            channel = grpc.secure_channel(url, grpc.ssl_channel_credentials(root_certificates=roots), options=options)
        else:
            channel = grpc.insecure_channel(url, options=options)
        self._channel = channel
        self._stub = grove_pb2_grpc.GroveStub(channel)
        api_key = api_key or os.environ.get(API_KEY_ENV)
        self._metadata = (("x-api-key", api_key),) if api_key else ()
        self._timeout = timeout
        self.url = url

    def _call(self, method, request):
        try:
            return method(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise status.from_rpc_error(err) from None

    # ------------------------------------------------------------------------------------- collections
    def create_collection(self, name: str, dim: int, metric: str, compression: Compression) -> CollectionInfo:
        try:
            request = pb.CreateCollectionRequest()
            convert.info_to_pb(CollectionInfo(name, dim, metric, compression), request.info)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise _refuse(exc, (name, "collection")) from None
        return convert.info_from_pb(self._call(self._stub.CreateCollection, request))

    def get_collection(self, name: str) -> CollectionInfo:
        return convert.info_from_pb(self._call(self._stub.GetCollection, self._request(pb.GetCollectionRequest, name)))

    def list_collections(self) -> list[CollectionInfo]:
        reply = self._call(self._stub.ListCollections, pb.ListCollectionsRequest())
        return [convert.info_from_pb(i) for i in reply.collections]

    def drop_collection(self, name: str) -> None:
        self._call(self._stub.DropCollection, self._request(pb.DropCollectionRequest, name))

    def create_tenant_key(self, tenant: str) -> str:
        try:
            if type(tenant) is not str:  # protobuf would take None for "unset"
                raise TypeError(tenant)
            request = pb.CreateTenantKeyRequest(tenant=tenant)
        except (TypeError, ValueError) as exc:
            raise _refuse(exc, (tenant, "tenant")) from None
        return self._call(self._stub.CreateTenantKey, request).api_key

    @staticmethod
    def _request(cls, name: str, field: str = "name"):
        try:
            if type(name) is not str:  # protobuf would take None for "unset"
                raise TypeError(name)
            return cls(**{field: name})
        except (TypeError, ValueError) as exc:
            raise _refuse(exc, (name, "collection")) from None

    @staticmethod
    def _scoped(cls, collection: str, tenant: str, **fields):
        """A request naming a collection and a tenant; a name the wire cannot carry raises the engine's error."""
        try:
            if type(collection) is not str or type(tenant) is not str:  # protobuf would take None for "unset"
                raise TypeError(f"{collection!r} / {tenant!r}")
            return cls(collection=collection, tenant=tenant, **fields)
        except (TypeError, ValueError) as exc:
            raise _refuse(exc, (collection, "collection"), (tenant, "tenant")) from None

    # ------------------------------------------------------------------------------------- writes
    def upsert(self, collection: str, ids, vectors, tenant: str) -> int:
        wire_ids = convert.ids_to_wire(ids)
        arr = convert.as_matrix(vectors)
        if arr.nbytes + _ID_BYTES * len(wire_ids) + _HEADROOM <= CHUNK_BYTES:
            request = self._scoped(pb.UpsertRequest, collection, tenant, ids=wire_ids)
            convert.matrix_to_pb(arr, request.vectors)
            return self._call(self._stub.Upsert, request).count
        if len(wire_ids) != arr.shape[0]:
            raise InvalidArgument(f"got {len(wire_ids)} ids but {arr.shape[0]} vectors; give one id per vector")
        first = self._scoped(pb.UpsertRequest, collection, tenant)
        return self._call(self._stub.UpsertStream, self._chunks(first, wire_ids, arr)).count

    @staticmethod
    def _chunks(first: pb.UpsertRequest, ids: list[int], arr: np.ndarray) -> Iterator[pb.UpsertRequest]:
        """The stream of one batch: ``first`` names collection and tenant, every message <= ``CHUNK_BYTES``."""
        rows = max(1, (CHUNK_BYTES - _HEADROOM) // (arr.shape[1] * 4 + _ID_BYTES))
        for start in range(0, arr.shape[0], rows):
            msg = first if start == 0 else pb.UpsertRequest()
            msg.ids.extend(ids[start : start + rows])
            convert.matrix_to_pb(arr[start : start + rows], msg.vectors)
            yield msg

    def grant(self, collection: str, ids, tenant: str, owner: str | None) -> int:
        owner = None if owner is None else validate.name(owner, "owner")  # the wire's "" means none
        request = self._scoped(pb.GrantRequest, collection, tenant, ids=convert.ids_to_wire(ids), owner=owner or "")
        return self._call(self._stub.Grant, request).count

    def revoke(self, collection: str, ids, tenant: str) -> int:
        request = self._scoped(pb.RevokeRequest, collection, tenant, ids=convert.ids_to_wire(ids))
        return self._call(self._stub.Revoke, request).count

    def delete(self, collection: str, ids, tenant: str) -> int:
        request = self._scoped(pb.DeleteRequest, collection, tenant, ids=convert.ids_to_wire(ids))
        return self._call(self._stub.Delete, request).count

    # ------------------------------------------------------------------------------------- reads
    def search(self, collection: str, queries, k: int, tenant: str, ef: int | None, prf: PRF | None) -> SearchResult:
        arr = convert.as_matrix(queries, "queries")
        request = self._scoped(pb.SearchRequest, collection, tenant, k=convert.u32(k, validate.k))
        if ef is not None:
            request.ef = convert.ef_to_pb(ef)
        convert.prf_to_pb(prf, request)
        convert.matrix_to_pb(arr, request.queries)
        return convert.search_result_from_pb(self._call(self._stub.Search, request))

    def count(self, collection: str, tenant: str) -> int:
        return self._call(self._stub.Count, self._scoped(pb.CountRequest, collection, tenant)).count

    def stats(self, collection: str) -> dict:
        try:
            if type(collection) is not str:  # protobuf would take None for "unset"
                raise TypeError(collection)
            request = pb.StatsRequest(collection=collection)
        except (TypeError, ValueError) as exc:
            raise _refuse(exc, (collection, "collection")) from None
        return convert.stats_from_pb(self._call(self._stub.Stats, request))

    # ------------------------------------------------------------------------------------- index and compression
    def start_job(self, collection: str, kind: str, query_sample=None) -> JobStatus:
        if kind == "build_index":
            request = self._request(pb.BuildIndexRequest, collection, field="collection")
            request.background = True
            return convert.job_from_pb(self._call(self._stub.BuildIndex, request))
        request = self._request(pb.TrainCompressionRequest, collection, field="collection")
        request.background = True
        if query_sample is not None:
            convert.matrix_to_pb(convert.as_matrix(query_sample, "query_sample"), request.query_sample)
        return convert.job_from_pb(self._call(self._stub.TrainCompression, request))

    def job(self, collection: str, job_id: int) -> JobStatus:
        request = self._request(pb.GetJobRequest, collection, field="collection")
        request.id = int(job_id)
        return convert.job_from_pb(self._call(self._stub.GetJob, request))

    def configure(self, collection: str, settings: dict) -> dict:
        request = self._request(pb.ConfigureRequest, collection, field="collection")
        convert.settings_to_pb(settings, request)
        return convert.summary_from_pb(self._call(self._stub.Configure, request))

    # ------------------------------------------------------------------------------------- training hooks
    def mine_hard_negatives_stream(
        self, collection: str, queries, positives, tenant: str, options: dict
    ) -> Iterator[tuple[int, int, MinedNegatives]]:
        request = self._scoped(pb.MineHardNegativesRequest, collection, tenant)
        convert.mining_to_pb(convert.as_matrix(queries, "queries"), positives, options, request)
        try:
            call = self._stub.MineHardNegatives(request, metadata=self._metadata)
        except grpc.RpcError as err:
            raise status.from_rpc_error(err) from None
        try:
            while True:
                reply = _next_reply(call, self._timeout)
                if reply is None:
                    return
                yield convert.mined_from_pb(reply)
        finally:
            call.cancel()  # a no-op once the stream has ended; stops the server's work when the caller stops early

    def dynamic_negatives(self, collection: str, positives, tenant: str, k: int) -> NegativesSession:
        first = self._scoped(pb.DynamicNegativesRequest, collection, tenant)
        convert.dynamic_open_to_pb(positives, k, first)
        return _RemoteSession(self._stub.DynamicNegatives, first, self._metadata, self._timeout)

    def close(self) -> None:
        channel, self._stub = self._channel, Closed()
        channel.close()


def _next_reply(call, timeout: float | None):
    """The next message of a streamed reply (None at its end), waiting at most ``timeout`` seconds for it.

    A stream's deadline would bound the whole job or session; here ``timeout`` bounds each message instead:
    past it the call is cancelled and ``DeadlineExceeded`` raised.
    """
    timer, fired = None, threading.Event()
    if timeout is not None:

        def expire() -> None:
            fired.set()
            call.cancel()

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
    try:
        return next(call)
    except StopIteration:
        return None
    except grpc.RpcError as err:
        if fired.is_set():
            raise DeadlineExceeded(f"no reply from the server within {timeout} s; the stream was cancelled") from None
        raise status.from_rpc_error(err) from None
    finally:
        if timer is not None:
            timer.cancel()


_END = object()  # ends the request stream of a session


def _end_session(requests: queue.SimpleQueue, call) -> None:
    requests.put(_END)
    call.cancel()


class _RemoteSession(NegativesSession):
    """One open ``DynamicNegatives`` stream: a queue feeds the requests, replies are read in lockstep.

    gRPC consumes the request iterator on its own thread; ``negatives`` puts one batch on the queue and waits
    for its one reply, under a lock so that threads sharing a session cannot interleave.
    """

    def __init__(self, method, first: pb.DynamicNegativesRequest, metadata, timeout: float | None) -> None:
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._requests.put(first)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._failed: GroveError | None = None
        try:
            self._call = method(iter(self._requests.get, _END), metadata=metadata)
        except grpc.RpcError as err:
            raise status.from_rpc_error(err) from None
        self._finalizer = weakref.finalize(self, _end_session, self._requests, self._call)
        try:
            self._read()
        except GroveError:
            self._finalizer()
            raise

    def _read(self) -> pb.DynamicNegativesResponse:
        if self._failed is not None:
            raise self._failed
        try:
            reply = _next_reply(self._call, self._timeout)
            if reply is None:
                raise Unavailable("the server ended the dynamic-negatives stream; open a new session")
        except GroveError as exc:
            self._failed = exc
            raise
        self._reply = reply
        self.k = reply.k
        if reply.HasField("error"):
            code = grpc.StatusCode[reply.error.code] if reply.error.code in grpc.StatusCode.__members__ else None
            raise status.from_status(code, reply.error.message)
        return reply

    def negatives(self, query_ids, embeddings) -> DynamicBatch:
        request = convert.dynamic_batch_request_to_pb(query_ids, embeddings)
        with self._lock:
            if not self._finalizer.alive:
                raise FailedPrecondition("this dynamic-negatives session is closed; open a new one")
            self._requests.put(request)
            return convert.dynamic_batch_from_pb(self._read())

    @property
    def stats(self) -> dict:
        return convert.summary_from_pb(self._reply.stats)

    @property
    def mrr(self) -> float:
        return self._reply.mrr

    def close(self) -> None:
        """Half-close the stream and wait for the server to end it (errors at this point are ignored)."""
        with self._lock:
            if not self._finalizer.alive:
                return
            self._requests.put(_END)
            if self._failed is None:
                try:
                    for _ in self._call:  # the server ends the stream once it has read the half-close
                        pass
                except grpc.RpcError:
                    pass
            self._finalizer()
