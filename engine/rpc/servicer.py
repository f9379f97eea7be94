"""The Grove gRPC servicer: convert -> ``Database``/``Collection`` call as the caller's principal -> convert.

No logic lives here: validation and access control are the engine's, status codes the guard interceptor's,
the principal the auth interceptor's (read through ``auth.principal()``).
"""

from __future__ import annotations

from engine.errors import ResourceExhausted
from engine.jobs import JobStatus, raise_failure
from engine.rpc import convert
from engine.rpc.auth import principal
from engine.rpc.ingest import StreamBatch
from engine.rpc.pb import grove_pb2 as pb
from engine.rpc.pb import grove_pb2_grpc
from engine.rpc.sessions import DynamicStream

DEFAULT_MAX_STREAM_BYTES = 1 << 30
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
#: bytes of one (id, score) cell of an answer: int64 id + float32 score
_CELL_BYTES = 12


class GroveServicer(grove_pb2_grpc.GroveServicer):
    """Serves ``grove.v1.Grove`` from one ``engine.db.Database``."""

    def __init__(
        self,
        db,
        *,
        max_stream_bytes: int = DEFAULT_MAX_STREAM_BYTES,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._db = db
        self._max_stream_bytes = max_stream_bytes
        self._max_message_bytes = max_message_bytes

    def _answer_fits(self, rows: int, width: int, what: str) -> None:
        """Refuse, before any work, an answer of ``rows x width`` cells that could not be sent in one message."""
        need = rows * width * _CELL_BYTES
        if need > self._max_message_bytes:
            raise ResourceExhausted(
                f"{what} would answer {rows} x {width} results ({need:,} bytes), beyond the server's message limit "
                f"of {self._max_message_bytes:,} bytes; send fewer queries per call or ask for fewer results"
            )

    # ------------------------------------------------------------------------------------- collections
    def CreateCollection(self, request, context):
        info = convert.info_from_pb(request.info)
        col = self._db.create_collection(info.name, dim=info.dim, metric=info.metric, compression=info.compression)
        return convert.info_to_pb(col.info)

    def GetCollection(self, request, context):
        return convert.info_to_pb(self._db.get_collection(request.name).info)

    def ListCollections(self, request, context):
        return pb.ListCollectionsResponse(collections=[convert.info_to_pb(i) for i in self._db.list_collections()])

    def DropCollection(self, request, context):
        self._db.drop_collection(request.name)
        return pb.DropCollectionResponse()

    # ------------------------------------------------------------------------------------- writes
    def Upsert(self, request, context):
        col = self._db.get_collection(request.collection)
        ids, vectors = convert.ids_from_pb(request.ids), convert.matrix_from_pb(request.vectors)
        return pb.UpsertResponse(count=col.upsert(ids, vectors, tenant=request.tenant, principal=principal()))

    def UpsertStream(self, request_iterator, context):
        batch = StreamBatch(self._db, max_bytes=self._max_stream_bytes)
        for r in request_iterator:
            batch.add(
                r.collection, r.tenant, convert.ids_from_pb(r.ids), convert.matrix_from_pb(r.vectors), r.ByteSize()
            )
        ids, vectors = batch.finish()
        count = batch.collection.upsert(ids, vectors, tenant=batch.tenant, principal=principal())
        return pb.UpsertResponse(count=count)

    def Grant(self, request, context):
        col = self._db.get_collection(request.collection)
        owner = request.owner or None
        count = col.grant(convert.ids_from_pb(request.ids), tenant=request.tenant, owner=owner, principal=principal())
        return pb.GrantResponse(count=count)

    def Revoke(self, request, context):
        col = self._db.get_collection(request.collection)
        count = col.revoke(convert.ids_from_pb(request.ids), tenant=request.tenant, principal=principal())
        return pb.RevokeResponse(count=count)

    def Delete(self, request, context):
        col = self._db.get_collection(request.collection)
        count = col.delete(convert.ids_from_pb(request.ids), tenant=request.tenant, principal=principal())
        return pb.DeleteResponse(count=count)

    # ------------------------------------------------------------------------------------- reads
    def Search(self, request, context):
        col = self._db.get_collection(request.collection)
        prf_depth = request.prf.depth if request.HasField("prf") else 0
        self._answer_fits(request.queries.rows, max(request.k, prf_depth), "this search")
        res = col.search(
            convert.matrix_from_pb(request.queries),
            k=request.k,
            tenant=request.tenant,
            ef=request.ef if request.HasField("ef") else None,
            prf=convert.prf_from_pb(request),
            principal=principal(),
        )
        return convert.search_answer(res)  # serialised here: a large answer is held at most twice

    def Count(self, request, context):
        col = self._db.get_collection(request.collection)
        return pb.CountResponse(count=col.count(tenant=request.tenant, principal=principal()))

    def Stats(self, request, context):
        return convert.stats_to_pb(self._db.get_collection(request.collection).stats())

    # ------------------------------------------------------------------------------------- keys
    def CreateTenantKey(self, request, context):
        return pb.CreateTenantKeyResponse(api_key=self._db.create_tenant_key(request.tenant))

    # ------------------------------------------------------------------------------------- index and compression
    def BuildIndex(self, request, context):
        col = self._db.get_collection(request.collection)
        return convert.job_to_pb(_followed(col, col.build_index(background=True), request.background))

    def TrainCompression(self, request, context):
        col = self._db.get_collection(request.collection)
        sample = convert.optional_matrix_from_pb(request, "query_sample")
        return convert.job_to_pb(_followed(col, col.train_compression(sample, background=True), request.background))

    def GetJob(self, request, context):
        return convert.job_to_pb(self._db.get_collection(request.collection).jobs.status(request.id))

    def Configure(self, request, context):
        col = self._db.get_collection(request.collection)
        return convert.summary_to_pb(col.configure(**convert.settings_from_pb(request)))

    # ------------------------------------------------------------------------------------- training hooks
    def MineHardNegatives(self, request, context):
        col = self._db.get_collection(request.collection)
        options = convert.mining_options_from_pb(request)
        rows = min(request.queries.rows, options.get("chunk_size", 1024))
        width = int(options.get("num_negatives") or 3) + int(options.get("random_negatives") or 0)
        self._answer_fits(rows, width + 1, "one mining chunk")
        chunks = col.mine_hard_negatives_stream(
            convert.matrix_from_pb(request.queries),
            convert.id_lists_from_pb(request.positives),
            tenant=request.tenant,
            principal=principal(),
            **options,
        )
        for first_row, total_rows, part in chunks:  # one chunk mined, one message sent
            yield convert.mined_to_pb(first_row, total_rows, part)

    def DynamicNegatives(self, request_iterator, context):
        stream = DynamicStream(self._db, principal())
        for r in request_iterator:
            outcome = stream.step(r.collection, r.tenant, *convert.dynamic_request_from_pb(r))
            yield convert.dynamic_response_to_pb(stream.session, outcome)


def _followed(col, started: JobStatus, background: bool) -> JobStatus:
    """The job as started (``background``), else as it ended: a failed job is its error's status."""
    if background:
        return started
    col.jobs.wait()
    final = col.jobs.status(started.id)
    raise_failure(final)
    return final
