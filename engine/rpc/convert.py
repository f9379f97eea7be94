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

import numpy as np

from engine import validate
from engine.errors import InvalidArgument
from engine.rpc.pb import grove_pb2 as pb
from engine.types import LVQ, CollectionInfo, Compression, LeanVec, SearchResult

_U32_MAX = 2**32 - 1
_F32 = np.dtype("<f4")
_I64 = np.dtype("<i8")

_METRIC_TO_PB = {"l2": pb.METRIC_L2, "ip": pb.METRIC_IP, "cosine": pb.METRIC_COSINE}
_METRIC_FROM_PB = {v: k for k, v in _METRIC_TO_PB.items()}
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
    """The search ``ef`` for the wire (None: unset); values beyond uint32 are clamped (they explore everything)."""
    if ef is None:
        return None
    if isinstance(ef, bool) or not isinstance(ef, (int, np.integer)) or ef < 1:
        raise InvalidArgument(f"ef must be a positive integer, got {ef!r}")
    return min(int(ef), _U32_MAX)


def metric_to_pb(metric: object) -> int:
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
    return validate.ids(arr, unique=False).tolist()


def ids_from_pb(field) -> np.ndarray:
    """A ``repeated int64`` field as an int64 array (one C-level copy)."""
    return np.array(field, np.int64)


def as_matrix(value: object, what: str = "vectors") -> np.ndarray:
    """``value`` as a C-ordered little-endian float32 ``[n, dim]`` array (a 1-D vector is a batch of one).

    Only the shape is checked here; NaN, emptiness and dimension are the server's to judge.
    """
    try:
        arr = np.asarray(value, dtype=_F32)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{what} must be a numeric array of float32: {exc}") from None
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise InvalidArgument(f"{what} must be 2-D [n, dim], got shape {arr.shape}")
    return arr


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


def search_result_to_pb(res: SearchResult) -> pb.SearchResponse:
    m, k = res.ids.shape
    return pb.SearchResponse(
        rows=m,
        k=k,
        ids=res.ids.astype(_I64, copy=False).tobytes(),
        scores=res.scores.astype(_F32, copy=False).tobytes(),
    )


def search_result_from_pb(msg: pb.SearchResponse) -> SearchResult:
    """A ``SearchResult`` of writable native arrays, like the embedded engine returns."""
    shape = (msg.rows, msg.k)
    ids = np.frombuffer(msg.ids, _I64).astype(np.int64).reshape(shape)
    scores = np.frombuffer(msg.scores, _F32).astype(np.float32).reshape(shape)
    return SearchResult(ids, scores)


# --------------------------------------------------------------------------------------------- stats
def stats_to_pb(stats: dict) -> pb.StatsResponse:
    msg = pb.StatsResponse()
    for key, value in stats.items():
        if isinstance(value, (bool, int, np.integer)):
            msg.ints[key] = int(value)
        else:
            msg.floats[key] = float(value)
    return msg


def stats_from_pb(msg: pb.StatsResponse) -> dict:
    """The stats dict, keys sorted (protobuf maps keep no order)."""
    out: dict = dict(msg.ints)
    out.update(msg.floats)
    return dict(sorted(out.items()))
