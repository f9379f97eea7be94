"""Checks and normalisation of user input; every failure is an ``InvalidArgument`` that says how to fix it.

Public entry points call these before any kernel runs, so kernels can assume clean, C-ordered arrays.
"""

from __future__ import annotations

import numpy as np

from engine.errors import InvalidArgument, ResourceExhausted
from engine.types import METRICS

MAX_NAME_CHARS = 128
MAX_K = 10_000
MAX_BATCH = 1_000_000
#: the most (id, score) cells one call may compute or return: queries x k for a search, queries x candidates per
#: chunk for mining (about 50 MB of answer). A call beyond it is refused before any work, so one small request
#: cannot make the server allocate gigabytes.
MAX_RESULTS = 1 << 22
#: the largest search ``ef`` in force: a larger one is taken as this (the candidate lists an ``ef`` sizes stay small)
MAX_EF = 1 << 20
#: the largest magnitude of a stored or query value. Within it every score is finite in float32 for every metric
#: and dimension: an ``l2`` distance sums at most 65,536 squares of differences below 2e15, at most 2.6e35
#: (float32 ends at 3.4e38), and cosine norms are taken in float64.
MAX_ABS_VALUE = 1e15


def name(value: object, what: str) -> str:
    """A collection or tenant name: 1 to 128 printable characters."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} name must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidArgument(f"{what} name is empty; give a non-empty name")
    if len(value) > MAX_NAME_CHARS:
        raise InvalidArgument(f"{what} name has {len(value)} characters; the limit is {MAX_NAME_CHARS}")
    if not value.isprintable():
        raise InvalidArgument(f"{what} name {value!r} contains control characters; use printable characters only")
    return value


def metric(value: object) -> str:
    if value not in METRICS:
        raise InvalidArgument(f"metric must be one of {', '.join(METRICS)}; got {value!r}")
    return str(value)


def dim(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= int(value) <= 65_536:
        raise InvalidArgument(f"dim must be an integer from 1 to 65536, got {value!r}")
    return int(value)


def k(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidArgument(f"k must be an integer, got {value!r}")
    if not 1 <= int(value) <= MAX_K:
        raise InvalidArgument(f"k must be between 1 and {MAX_K}, got {value}")
    return int(value)


def ef(value: object) -> int:
    """The search ``ef`` (a positive integer), capped at ``MAX_EF``: larger explores no more than that."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgument(f"ef must be a positive integer, got {value!r}")
    return min(int(value), MAX_EF)


def results(rows: int, width: int, what: str) -> None:
    """Refuse (``ResourceExhausted``) a call whose ``rows x width`` result cells exceed ``MAX_RESULTS``."""
    if rows * width > MAX_RESULTS:
        raise ResourceExhausted(
            f"{what} asks for {rows} x {width} = {rows * width:,} results; one call returns at most {MAX_RESULTS:,}: "
            "send fewer queries per call or a smaller k"
        )


def ids(value: object, *, unique: bool = True, allow_padding: bool = False) -> np.ndarray:
    """A non-empty 1-D int64 array of vector ids (0 to 2**63 - 1), without duplicates when ``unique``.

    Ids are never negative: -1 pads search results. ``allow_padding`` lets -1 (and other negatives) through
    where they mean "no id", as in a padded array of positives.
    """
    arr = np.asarray(value)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise InvalidArgument(f"ids must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise InvalidArgument("the batch is empty; pass at least one id")
    if arr.size > MAX_BATCH:
        raise ResourceExhausted(f"a batch holds at most {MAX_BATCH} ids, got {arr.size}; split it")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise InvalidArgument(f"ids must be integers (int64), got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise InvalidArgument("ids must fit in int64")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if not allow_padding and int(arr.min()) < 0:
        raise InvalidArgument(
            f"ids must be non-negative (-1 marks padding in results), got {arr[arr < 0][:5].tolist()}"
        )
    if unique and arr.size > 1:
        srt = np.sort(arr)
        dup = srt[1:][srt[1:] == srt[:-1]]
        if dup.size:
            raise InvalidArgument(f"duplicate ids in one batch: {dup[:5].tolist()}; each id may appear once")
    return arr


def matrix(value: object, what: str = "vectors") -> np.ndarray:
    """``value`` as a float32 ``[n, dim]`` array (a 1-D vector is a batch of one); only the shape is checked."""
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{what} must be a numeric array of float32: {exc}") from None
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise InvalidArgument(f"{what} must be 2-D [n, dim], got shape {arr.shape}")
    return arr


def vectors(value: object, expected_dim: int, *, what: str = "vectors", metric: str | None = None) -> np.ndarray:
    """A non-empty ``[n, dim]`` C-ordered float32 array of finite values within ``MAX_ABS_VALUE`` (a 1-D vector is
    a batch of one). With ``metric="cosine"`` every row must also have a direction (a non-zero norm)."""
    arr = matrix(value, what)
    if arr.shape[0] == 0:
        raise InvalidArgument(f"the batch of {what} is empty; pass at least one row")
    if arr.shape[0] > MAX_BATCH:
        raise ResourceExhausted(f"a batch holds at most {MAX_BATCH} rows, got {arr.shape[0]}; split it")
    if arr.shape[1] != expected_dim:
        raise InvalidArgument(f"{what} have dim {arr.shape[1]}, the collection expects {expected_dim}")
    if not _all_in_range(arr):
        finite = np.isfinite(arr).all(axis=1)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            raise InvalidArgument(f"{what} contain NaN or infinity (first in row {bad}); only finite values are stored")
        bad = int(np.flatnonzero((np.abs(arr) > MAX_ABS_VALUE).any(axis=1))[0])
        raise InvalidArgument(
            f"{what} contain values beyond +-{MAX_ABS_VALUE:g} (first in row {bad}); scale them down: within that "
            "range every score is finite"
        )
    if metric == "cosine":
        norms = row_norms(arr)
        if not (norms > 0).all():
            bad = int(np.flatnonzero(~(norms > 0))[0])
            raise InvalidArgument(
                f"{what} row {bad} is a zero vector: it has no direction under metric 'cosine'; drop it, or use "
                "'ip' or 'l2'"
            )
    return np.ascontiguousarray(arr)


_MAX_SQUARE = MAX_ABS_VALUE * MAX_ABS_VALUE


def row_norms(arr: np.ndarray) -> np.ndarray:
    """Euclidean norm of each row of float32 ``arr``, exact where float32 squares would overflow or underflow.

    Rows whose float32 norm is not finite or is tiny (below 1e-15: squares near float32's smallest) are
    recomputed in float64, so a direction is never lost to rounding; the bulk stays in float32.
    """
    with np.errstate(over="ignore", under="ignore"):
        norms = np.linalg.norm(arr, axis=1).astype(np.float64)
    redo = ~(np.isfinite(norms) & (norms >= 1e-15))
    if redo.any():
        norms[redo] = np.linalg.norm(arr[redo].astype(np.float64), axis=1)
    return norms


def _all_in_range(arr: np.ndarray) -> bool:
    """Whether every value of float32 ``arr`` is finite and within ``MAX_ABS_VALUE``, checked on every search and write.

    The sum of squares (one BLAS dot, ``vdot``, which flattens and raises no overflow warning) is at most
    ``MAX_ABS_VALUE**2`` only when every value is finite and in range; else (large values, or a sum that
    overflows) the elementwise check decides.
    """
    total = float(np.vdot(arr, arr))
    if total <= _MAX_SQUARE:  # False for NaN and inf as well
        return True
    return bool(np.isfinite(arr).all()) and float(np.abs(arr).max()) <= MAX_ABS_VALUE


def same_length(ids_arr: np.ndarray, vecs: np.ndarray) -> None:
    if ids_arr.shape[0] != vecs.shape[0]:
        raise InvalidArgument(f"got {ids_arr.shape[0]} ids but {vecs.shape[0]} vectors; give one id per vector")
