"""Protobuf messages <-> numpy arrays and ``engine.types`` values, both directions, for server and client.

The only hand-written module besides ``servicer.py`` and the SDK's remote backend that touches pb types.
Matrices cross as raw little-endian float32 bytes: ``np.frombuffer`` on the way in (no per-element work, no
copy beyond the one protobuf makes), one ``tobytes`` on the way out.

Conversion does not validate what the engine validates (empty batches, NaN, dimensions, k's range): those
travel as they are and the server answers with the engine's own error. It raises ``InvalidArgument`` only
for values the wire cannot carry (a negative ``k``, a 3-D array, non-integer ids), with the engine's message,
so the embedded and the remote client fail alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import SupportsFloat

import numpy as np

from engine import validate
from engine.errors import GroveError, InvalidArgument
from engine.jobs import DONE, IDLE, JobStatus
from engine.rpc.pb import grove_pb2 as pb
from engine.training import _select
from engine.training.dynamic import DynamicBatch
from engine.training.negatives import SAMPLING, MinedNegatives
from engine.types import LVQ, PRF, CollectionInfo, Compression, LeanVec, SearchResult

_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1
_F32 = np.dtype("<f4")
_I32 = np.dtype("<i4")
_I64 = np.dtype("<i8")

_METRIC_TO_PB = {"l2": pb.METRIC_L2, "ip": pb.METRIC_IP, "cosine": pb.METRIC_COSINE}
_METRIC_FROM_PB: dict[int, str] = {v: k for k, v in _METRIC_TO_PB.items()}
_ENCODING_TO_PB = {"float32": pb.ENCODING_FLOAT32, "lvq8": pb.ENCODING_LVQ8, "lvq4": pb.ENCODING_LVQ4}
_ENCODING_TO_PB["lvq4x8"] = pb.ENCODING_LVQ4X8
_ENCODING_FROM_PB = {v: k for k, v in _ENCODING_TO_PB.items()}
_KIND_TO_PB = {"id": pb.LEAN_VEC_KIND_ID, "ood": pb.LEAN_VEC_KIND_OOD}
_KIND_FROM_PB = {v: k for k, v in _KIND_TO_PB.items()}


def _enum_name(enum: object, value: int) -> str:
    """A readable name for an enum value the engine will refuse (so its message shows what arrived)."""
    try:
        return enum.Name(value).lower()  # type: ignore[attr-defined]
    except ValueError:
        return str(value)


# --------------------------------------------------------------------------------------------- scalars
def u32(value: object, check) -> int:
    """``value`` as a uint32 for the wire; anything else goes to the engine's validator ``check``, which raises.

    Parameters
    ----------
    value : the user's value (``k``, ``dim``).
    check : the engine validator for that value (``validate.k``, ``validate.dim``); called only when
        ``value`` is not a non-negative int below 2**32, so out-of-range values fail with the engine's message.
    """
    if type(value) is int and 0 <= value <= _U32_MAX:
        return value
    if isinstance(value, np.integer) and 0 <= value <= _U32_MAX:
        return int(value)
    check(value)
    raise InvalidArgument(f"{value!r} does not fit in an unsigned 32-bit integer")


def ef_to_pb(ef: object) -> int | None:
    """The search ``ef`` for the wire (None: unset), capped as the engine caps it (``validate.ef``)."""
    return None if ef is None else validate.ef(ef)


def metric_to_pb(metric: object) -> pb.Metric:
    code = _METRIC_TO_PB.get(metric) if isinstance(metric, str) else None
    if code is None:
        validate.metric(metric)  # raises the engine's message
    return code  # type: ignore[return-value]


def metric_from_pb(value: int) -> str:
    """The metric name; an unknown or unset value becomes a name the engine refuses with its own message."""
    return _METRIC_FROM_PB.get(value) or _enum_name(pb.Metric, value)


# --------------------------------------------------------------------------------------------- compression
def compression_to_pb(compression: Compression, info: pb.CollectionInfo) -> None:
    """Set the compression oneof of ``info`` (left unset for None)."""
    if compression is None:
        return
    if isinstance(compression, LVQ):
        info.lvq.bits = compression.bits
        info.lvq.residual_bits = compression.residual_bits
    elif isinstance(compression, LeanVec):
        lv = info.leanvec
        lv.dim = compression.dim
        lv.kind = _KIND_TO_PB[compression.kind]
        lv.primary = _ENCODING_TO_PB[compression.primary]
        lv.secondary = _ENCODING_TO_PB[compression.secondary]
    else:
        raise InvalidArgument(f"compression must be LVQ(...), LeanVec(...) or None, got {compression!r}")


def compression_from_pb(info: pb.CollectionInfo) -> Compression:
    """The engine value of the compression oneof; ``LVQ``/``LeanVec`` validate their fields themselves."""
    which = info.WhichOneof("compression")
    if which is None:
        return None
    if which == "lvq":
        return LVQ(bits=info.lvq.bits, residual_bits=info.lvq.residual_bits)
    lv = info.leanvec
    return LeanVec(
        dim=lv.dim,
        kind=_KIND_FROM_PB.get(lv.kind) or _enum_name(pb.LeanVecKind, lv.kind),  # type: ignore[arg-type]
        primary=_ENCODING_FROM_PB.get(lv.primary) or _enum_name(pb.Encoding, lv.primary),
        secondary=_ENCODING_FROM_PB.get(lv.secondary) or _enum_name(pb.Encoding, lv.secondary),
    )


# --------------------------------------------------------------------------------------------- collections
def info_to_pb(info: CollectionInfo, out: pb.CollectionInfo | None = None) -> pb.CollectionInfo:
    """``CollectionInfo`` -> pb (filled into ``out`` when given)."""
    msg = pb.CollectionInfo() if out is None else out
    msg.name = info.name
    msg.dim = u32(info.dim, validate.dim)
    msg.metric = metric_to_pb(info.metric)
    compression_to_pb(info.compression, msg)
    return msg


def info_from_pb(msg: pb.CollectionInfo) -> CollectionInfo:
    return CollectionInfo(msg.name, msg.dim, metric_from_pb(msg.metric), compression_from_pb(msg))


# --------------------------------------------------------------------------------------------- arrays
def ids_to_wire(value: object) -> list[int]:
    """Vector ids as a list of Python ints for a ``repeated int64`` field.

    Integer 1-D arrays (and empty lists) pass as they are, so the server judges emptiness and duplicates;
    anything else goes through the engine's ``validate.ids`` (floats that are whole numbers, uint64 range).
    """
    arr = np.asarray(value)
    if arr.ndim == 1 and (arr.dtype.kind == "i" or arr.size == 0):
        return arr.tolist()
    return validate.ids(arr, unique=False, allow_padding=True).tolist()


def ids_from_pb(field) -> np.ndarray:
    """A ``repeated int64`` field as an int64 array (one C-level copy)."""
    return np.array(field, np.int64)


def as_matrix(value: object, what: str = "vectors") -> np.ndarray:
    """``value`` as a C-ordered little-endian float32 ``[n, dim]`` array (a 1-D vector is a batch of one).

    Only the shape is checked here; NaN, emptiness and dimension are the server's to judge.
    """
    return validate.matrix(value, what).astype(_F32, copy=False)


def matrix_to_pb(arr: np.ndarray, out: pb.Matrix) -> None:
    """Fill ``out`` from an array made by ``as_matrix`` (C order is made here, by ``tobytes``)."""
    out.data = arr.tobytes()
    out.rows, out.dim = arr.shape


def matrix_from_pb(msg: pb.Matrix) -> np.ndarray:
    """A read-only float32 ``[rows, dim]`` view of the message's bytes; ``InvalidArgument`` on a size mismatch."""
    data = msg.data
    rows, dim = msg.rows, msg.dim
    if len(data) != rows * dim * 4:
        raise InvalidArgument(
            f"Matrix.data has {len(data)} bytes but rows={rows} x dim={dim} float32 needs {rows * dim * 4}; "
            "send rows * dim little-endian float32 values, row-major"
        )
    return np.frombuffer(data, _F32).reshape(rows, dim)


def search_answer(res: SearchResult) -> bytes:
    """The serialised ``SearchResponse`` of ``res``, its arrays copied once, straight into the answer's bytes.

    Building the message first would hold a large answer three times (the arrays, a temporary of each, the
    message) and then serialise it into a fourth copy; written here as the wire format's length-delimited fields
    (tag, varint length, raw little-endian bytes) beside the small fields serialised by protobuf, the peak is
    the arrays and the answer: twice its size. ``tests/test_service.py`` checks it parses as the message.
    """
    m, k = res.ids.shape
    head = pb.SearchResponse(rows=m, k=k).SerializeToString()
    ids = np.ascontiguousarray(res.ids, _I64)
    scores = np.ascontiguousarray(res.scores, _F32)
    return b"".join([head, *_length_delimited(_SEARCH_IDS, ids), *_length_delimited(_SEARCH_SCORES, scores)])


_SEARCH_IDS = pb.SearchResponse.DESCRIPTOR.fields_by_name["ids"].number
_SEARCH_SCORES = pb.SearchResponse.DESCRIPTOR.fields_by_name["scores"].number


def _length_delimited(field_number: int, arr: np.ndarray) -> tuple[bytes, memoryview]:
    """A bytes field on the wire: its key (field number, wire type 2), the length as a varint, then the data."""
    # an ndarray is a buffer; numpy's stubs declare __buffer__ for Python >= 3.12 only
    data = memoryview(arr.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
    return _varint(field_number << 3 | 2) + _varint(data.nbytes), data


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def search_result_from_pb(msg: pb.SearchResponse) -> SearchResult:
    """A ``SearchResult`` of writable native arrays, like the embedded engine returns."""
    shape = (msg.rows, msg.k)
    ids = np.frombuffer(msg.ids, _I64).astype(np.int64).reshape(shape)
    scores = np.frombuffer(msg.scores, _F32).astype(np.float32).reshape(shape)
    return SearchResult(ids, scores)


# --------------------------------------------------------------------------------------------- stats and jobs
def stats_to_pb(stats: dict) -> pb.StatsResponse:
    """Stats -> ``StatsResponse``: numbers and texts by name; ``stats["build"]`` (a job's dict) as ``build``."""
    msg = pb.StatsResponse()
    for key, value in stats.items():
        if key == "build":
            job_to_pb(JobStatus(**value), msg.build)
        elif isinstance(value, str):
            msg.texts[key] = value
        elif isinstance(value, (bool, int, np.integer)):
            msg.ints[key] = int(value)
        else:
            msg.floats[key] = float(value)
    return msg


def stats_from_pb(msg: pb.StatsResponse) -> dict:
    """The stats dict, keys sorted (protobuf maps keep no order); ``build`` as the engine's dict."""
    out: dict = dict(msg.ints)
    out.update(msg.floats)
    out.update(msg.texts)
    out["build"] = job_from_pb(msg.build).as_dict()
    return dict(sorted(out.items()))


def job_to_pb(job: JobStatus, out: pb.Job | None = None) -> pb.Job:
    msg = pb.Job() if out is None else out
    msg.id, msg.kind, msg.state, msg.progress, msg.phase = job.id, job.kind, job.state, job.progress, job.phase
    msg.started, msg.finished = job.started or 0.0, job.finished or 0.0
    msg.error, msg.error_code, msg.automatic = job.error or "", job.error_code or "", job.automatic
    if job.result is not None:
        summary_to_pb(job.result, msg.result)
    return msg


def job_from_pb(msg: pb.Job) -> JobStatus:
    return JobStatus(
        id=msg.id,
        kind=msg.kind,
        state=msg.state or IDLE,
        progress=msg.progress,
        phase=msg.phase,
        started=msg.started or None,
        finished=msg.finished or None,
        error=msg.error or None,
        error_code=msg.error_code or None,
        result=summary_from_pb(msg.result) if msg.state == DONE else None,
        automatic=msg.automatic,
    )


# --------------------------------------------------------------------------------------------- summaries
def summary_to_pb(numbers: Mapping[str, SupportsFloat], out: pb.Summary | None = None) -> pb.Summary:
    """Named numbers -> ``Summary``: ints (and bools) to ``ints``, everything else to ``floats``."""
    msg = pb.Summary() if out is None else out
    for key, value in numbers.items():
        if isinstance(value, (bool, int, np.integer)):
            msg.ints[key] = int(value)
        else:
            msg.floats[key] = float(value)
    return msg


def summary_from_pb(msg: pb.Summary) -> dict:
    """The named numbers, keys sorted (protobuf maps keep no order); ints stay ints."""
    out: dict = dict(msg.ints)
    out.update(msg.floats)
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------------------------- search options
def prf_to_pb(prf: object, request: pb.SearchRequest) -> None:
    """Set ``request.prf`` from a ``PRF`` (left unset for None); anything else is refused as the engine does."""
    if prf is None:
        return
    if not isinstance(prf, PRF):
        raise InvalidArgument(f"prf must be a PRF(depth=..., alpha=..., beta=...) value, got {prf!r}")
    request.prf.depth = prf.depth
    request.prf.alpha = float(prf.alpha)
    request.prf.beta = float(prf.beta)


def prf_from_pb(request: pb.SearchRequest) -> PRF | None:
    """The request's ``PRF`` (which validates depth, alpha and beta), or None when unset."""
    if not request.HasField("prf"):
        return None
    return PRF(depth=request.prf.depth, alpha=request.prf.alpha, beta=request.prf.beta)


def optional_matrix_from_pb(request: object, field: str) -> np.ndarray | None:
    """``matrix_from_pb`` of a message field, or None when the field is unset."""
    return matrix_from_pb(getattr(request, field)) if request.HasField(field) else None  # type: ignore[attr-defined]


def uint_to_wire(value: object, check: Callable[[object], object], *, bits: int = 32) -> int:
    """``value`` as an unsigned int of ``bits`` for the wire; else the engine's ``check`` raises its message."""
    top = _U32_MAX if bits == 32 else _U64_MAX
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value <= top:
        return int(value)
    check(value)
    raise InvalidArgument(f"{value!r} does not fit in an unsigned {bits}-bit integer")


# --------------------------------------------------------------------------------------------- settings
#: collection settings: name -> bits of its unsigned wire field
SETTINGS = {"query_reservoir": 32, "auto_index_rows": 64, "refined_tree": 32}


def settings_to_pb(settings: Mapping[str, object], out: pb.ConfigureRequest) -> None:
    """Set the given collection settings (None: leave as it is) on a ``ConfigureRequest``."""
    for name, value in settings.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgument(f"{name} must be a non-negative integer, got {value!r}")
        if value >= 1 << SETTINGS[name]:
            raise InvalidArgument(f"{name} must be below 2**{SETTINGS[name]}, got {value}")
        setattr(out, name, value)


def settings_from_pb(request: pb.ConfigureRequest) -> dict:
    """The engine keyword arguments of a ``ConfigureRequest``: each setting, None where unset."""
    return {name: getattr(request, name) if request.HasField(name) else None for name in SETTINGS}


# --------------------------------------------------------------------------------------------- id lists
def id_lists_to_pb(value: object, out: pb.IdLists, what: str = "positives") -> int:
    """Fill ``out`` with one id list per row of ``value``; returns the number of rows.

    ``value``: one id per row (1-D), an int ``[m, p]`` array (-1 padding travels as it is), or a sequence of
    ids or id lists. Ids are checked as the engine checks them (whole floats pass); emptiness, padding and
    the row count are the server's to judge.
    """
    if isinstance(value, np.ndarray) and value.ndim in (1, 2) and value.dtype != object:
        mat = _select.as_ids(value, what)
        rows, width = mat.shape[0], (mat.shape[1] if mat.ndim == 2 else 1)
        out.ids.extend(mat.reshape(-1).tolist())
        out.offsets.extend(range(0, rows * width + 1, width) if width else [0] * (rows + 1))
        return rows
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        _select.positives_matrix(value)  # raises the engine's message
        raise InvalidArgument(f"{what} must be one id per row or a list of id lists, got {type(value).__name__}")
    lists = [np.atleast_1d(_select.as_ids(entry, what)) for entry in value]
    if any(a.ndim != 1 for a in lists):
        _select.positives_matrix(lists)  # raises the engine's message
    offsets = np.zeros(len(lists) + 1, np.int64)
    np.cumsum([a.size for a in lists], out=offsets[1:])
    if lists:
        out.ids.extend(np.concatenate(lists).tolist())
    out.offsets.extend(offsets.tolist())
    return len(lists)


def id_lists_from_pb(msg: pb.IdLists, what: str = "positives") -> list[np.ndarray] | np.ndarray:
    """The id lists: an int64 ``[rows, n]`` array when every list holds n >= 1 ids (what the engine makes of
    them anyway, without a per-row loop), else a list of int64 arrays; ``InvalidArgument`` when the offsets
    do not frame the ids."""
    ids = np.array(msg.ids, np.int64)
    offsets = np.array(msg.offsets, np.uint64)
    if offsets.size == 0 and ids.size == 0:
        return []
    if offsets.size == 0 or offsets[0] != 0 or offsets[-1] != ids.size or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise InvalidArgument(
            f"{what}.offsets must start at 0, never decrease and end at len({what}.ids) = {ids.size}; "
            f"got {offsets.size} offsets (first {offsets[:3].tolist()}, last {offsets[-1:].tolist()})"
        )
    sizes = np.diff(offsets.astype(np.int64))
    if sizes.size and sizes[0] > 0 and np.all(sizes == sizes[0]):
        return ids.reshape(sizes.size, int(sizes[0]))
    return np.split(ids, offsets[1:-1].astype(np.int64))


# --------------------------------------------------------------------------------------------- mining
#: mining options: name -> (kind, nullable); an unset non-nullable option takes the engine's default
MINING_OPTIONS: dict[str, tuple[str, bool]] = {
    "num_negatives": ("u32", False),
    "range_min": ("u32", False),
    "range_max": ("u32", True),
    "absolute_margin": ("float", True),
    "relative_margin": ("float", True),
    "max_score": ("float", True),
    "min_score": ("float", True),
    "sampling": ("str", False),
    "random_negatives": ("u32", False),
    "seed": ("u64", False),
    "exact": ("bool", False),
    "ef": ("ef", True),
    "chunk_size": ("chunk", False),
}


def _chunk_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _U32_MAX:
        raise InvalidArgument(f"chunk_size must be a positive integer, got {value!r}")
    return value


def _mining_value(name: str, kind: str, value: object) -> object:
    if kind == "u32":
        return uint_to_wire(value, lambda v: _select.int_option(v, name, low=int(name == "range_max")))
    if kind == "u64":
        return uint_to_wire(value, lambda v: _select.int_option(v, name), bits=64)
    if kind == "float":
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            return float(value)
        _select.float_option(value, name)  # raises the engine's message
        raise InvalidArgument(f"{name} must be a number or None, got {value!r}")
    if kind == "str":
        if isinstance(value, str):
            return value
        raise InvalidArgument(f"sampling must be one of {', '.join(SAMPLING)}; got {value!r}")
    if kind == "bool":
        return bool(value)
    if kind == "ef":  # carried as given (the engine judges it), clamped like the search's ef
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0:
            return min(int(value), _U32_MAX)
        return ef_to_pb(value)  # raises the search's message
    return _chunk_size(value)


def mining_to_pb(
    queries: np.ndarray, positives: object, options: Mapping[str, object], out: pb.MineHardNegativesRequest
) -> None:
    """Fill a ``MineHardNegativesRequest`` (naming collection and tenant already) with the job.

    ``queries`` comes from ``as_matrix``; ``options`` holds any of ``MINING_OPTIONS`` (None: unset, where nullable).
    """
    unknown = sorted(set(options) - set(MINING_OPTIONS))
    if unknown:
        raise InvalidArgument(f"unknown mining options {unknown}; the options are {', '.join(MINING_OPTIONS)}")
    matrix_to_pb(queries, out.queries)
    id_lists_to_pb(positives, out.positives)
    for name, value in options.items():
        kind, nullable = MINING_OPTIONS[name]
        if value is None and nullable:
            continue
        setattr(out, name, _mining_value(name, kind, value))


def mining_options_from_pb(request: pb.MineHardNegativesRequest) -> dict:
    """The engine keyword arguments of a request: set options, and None for unset nullable ones."""
    out: dict = {}
    for name, (_kind, nullable) in MINING_OPTIONS.items():
        if request.HasField(name):
            out[name] = getattr(request, name)
        elif nullable:
            out[name] = None
    return out


def mined_to_pb(first_row: int, total_rows: int, part: MinedNegatives) -> pb.MineHardNegativesResponse:
    rows, width = part.ids.shape
    msg = pb.MineHardNegativesResponse(
        first_row=first_row,
        total_rows=total_rows,
        rows=rows,
        width=width,
        ids=part.ids.astype(_I64, copy=False).tobytes(),
        scores=part.scores.astype(_F32, copy=False).tobytes(),
        positive_scores=part.positive_scores.astype(_F32, copy=False).tobytes(),
    )
    summary_to_pb(part.stats, msg.stats)
    if part.recall is not None:
        msg.recall = part.recall
    return msg


def mined_from_pb(msg: pb.MineHardNegativesResponse) -> tuple[int, int, MinedNegatives]:
    """``(first_row, total_rows, MinedNegatives)`` of one chunk, with writable native arrays."""
    shape = (msg.rows, msg.width)
    part = MinedNegatives(
        np.frombuffer(msg.ids, _I64).astype(np.int64).reshape(shape),
        np.frombuffer(msg.scores, _F32).astype(np.float32).reshape(shape),
        np.frombuffer(msg.positive_scores, _F32).astype(np.float32),
        summary_from_pb(msg.stats),
        msg.recall if msg.HasField("recall") else None,
    )
    return msg.first_row, msg.total_rows, part


# --------------------------------------------------------------------------------------------- dynamic negatives
def query_positives_to_pb(positives: object, out: pb.DynamicNegativesOpen) -> None:
    """ADORE positives (``{query_id: id or ids}``, or a sequence indexed by query id) -> query ids + id lists."""
    if not isinstance(positives, Mapping):
        out.query_ids.extend(range(id_lists_to_pb(positives, out.positives)))
        return
    try:
        qids = [int(q) for q in positives]
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"the keys of positives must be integer query ids: {exc}") from None
    id_lists_to_pb(list(positives.values()), out.positives)
    out.query_ids.extend(qids)


def query_positives_from_pb(msg: pb.DynamicNegativesOpen) -> dict[int, np.ndarray]:
    """``{query_id: ids}`` of an opening message; query ids must be unique, one per id list."""
    lists = id_lists_from_pb(msg.positives)
    qids = list(msg.query_ids)
    if len(qids) != len(lists):
        raise InvalidArgument(f"got {len(qids)} query ids for {len(lists)} lists of positives; give one per list")
    if len(set(qids)) != len(qids):
        raise InvalidArgument("query ids of the positives must be unique")
    return dict(zip(qids, lists))


def dynamic_open_to_pb(positives: object, k: object, out: pb.DynamicNegativesRequest) -> None:
    """Fill the opening message of a session (``out`` names collection and tenant already)."""
    out.open.k = uint_to_wire(k, lambda v: _select.int_option(v, "k", low=1))
    query_positives_to_pb(positives, out.open)


def dynamic_batch_request_to_pb(query_ids: object, embeddings: object) -> pb.DynamicNegativesRequest:
    """One batch message; embeddings and query ids get the engine session's own first checks, in its order."""
    request = pb.DynamicNegativesRequest()
    q = _select.queries_matrix(embeddings, "embeddings")
    request.batch.query_ids.extend(
        _select.as_ids(np.atleast_1d(np.asarray(query_ids)), "query_ids").reshape(-1).tolist()
    )
    matrix_to_pb(q, request.batch.embeddings)
    return request


def dynamic_request_from_pb(request: pb.DynamicNegativesRequest) -> tuple[str | None, Callable[[], tuple]]:
    """``(kind, decode)``: kind ``"open"`` or ``"batch"`` (None: neither); ``decode()`` gives the engine's
    arguments, ``(positives, k or None)`` or ``(query_ids, embeddings)``, raising where the wire is malformed."""
    kind = request.WhichOneof("body")
    if kind == "open":
        body = request.open
        return kind, lambda: (query_positives_from_pb(body), body.k if body.HasField("k") else None)
    if kind == "batch":
        batch = request.batch
        return kind, lambda: (ids_from_pb(batch.query_ids), matrix_from_pb(batch.embeddings))
    return None, tuple


def dynamic_response_to_pb(session, outcome: DynamicBatch | GroveError | None) -> pb.DynamicNegativesResponse:
    """The reply to one message: the session's state plus ``outcome`` (a batch, a refusal, or None at open)."""
    msg = pb.DynamicNegativesResponse(k=session.k, mrr=session.mrr)
    summary_to_pb(session.stats, msg.stats)
    if isinstance(outcome, GroveError):
        msg.error.code = outcome.code
        msg.error.message = str(outcome)
    elif outcome is not None:
        b = outcome
        msg.rows = b.ids.shape[0]
        msg.positives = b.positive_ids.shape[1]
        msg.query_ids = b.query_ids.astype(_I64, copy=False).tobytes()
        msg.ids = b.ids.astype(_I64, copy=False).tobytes()
        msg.scores = b.scores.astype(_F32, copy=False).tobytes()
        msg.positive_ids = b.positive_ids.astype(_I64, copy=False).tobytes()
        msg.positive_ranks = b.positive_ranks.astype(_I32, copy=False).tobytes()
        msg.positive_scores = b.positive_scores.astype(_F32, copy=False).tobytes()
    return msg


def dynamic_batch_from_pb(msg: pb.DynamicNegativesResponse) -> DynamicBatch:
    """The ``DynamicBatch`` of a reply to a batch (writable native arrays, like the engine's)."""
    b, k, p = msg.rows, msg.k, msg.positives

    def arr(data: bytes, dtype: np.dtype, native: type, shape: tuple) -> np.ndarray:
        return np.frombuffer(data, dtype).astype(native).reshape(shape)

    return DynamicBatch(
        arr(msg.query_ids, _I64, np.int64, (b,)),
        arr(msg.ids, _I64, np.int64, (b, k)),
        arr(msg.scores, _F32, np.float32, (b, k)),
        arr(msg.positive_ids, _I64, np.int64, (b, p)),
        arr(msg.positive_ranks, _I32, np.int32, (b, p)),
        arr(msg.positive_scores, _F32, np.float32, (b, p)),
    )
