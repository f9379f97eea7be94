"""Array helpers shared by the training modules: positives as a padded matrix, masks, seeded keys.

Private: the public modules validate their input and then call these, which only compute.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from engine import validate
from engine.errors import InvalidArgument

PAD = -1
#: rows per block where a mask is built by broadcasting ``[rows, width, positives]``
_BLOCK = 4096

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_ROW = np.uint64(0xD6E8FEB86659FD93)
_STREAM = np.uint64(0xA0761D6478BD642F)


def int_option(value: object, what: str, *, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < low:
        raise InvalidArgument(f"{what} must be an integer >= {low}, got {value!r}")
    return int(value)


def float_option(value: object, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidArgument(f"{what} must be a number or None, got {value!r}")
    out = float(value)
    if not np.isfinite(out):
        raise InvalidArgument(f"{what} must be finite, got {value!r}")
    return out


def number_option(value: object, what: str) -> float:
    """A finite number, where None has no meaning."""
    out = float_option(value, what)
    if out is None:
        raise InvalidArgument(f"{what} must be a finite number, got None")
    return out


def queries_matrix(queries: object, what: str = "queries") -> np.ndarray:
    """``[m, d]`` C-ordered float32 of finite values (one 1-D vector is a batch of one)."""
    arr = validate.matrix(queries, what)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidArgument(f"{what} must be a non-empty 2-D array [m, dim], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise InvalidArgument(f"{what} contain NaN or infinity (first in row {bad})")
    return np.ascontiguousarray(arr)


def search_result(out: object, m: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A search function's ``(ids, scores)``, checked: int64 and float32 ``[m, w]``, at least one column."""
    if not isinstance(out, tuple) or len(out) != 2:
        raise InvalidArgument(f"{what} must return (ids, scores), got {type(out).__name__}")
    ids = np.asarray(out[0])
    scores = np.asarray(out[1], dtype=np.float32)
    if ids.ndim != 2 or ids.shape[0] != m or ids.shape != scores.shape:
        raise InvalidArgument(
            f"{what} must return ids and scores of shape [{m}, width]; got {ids.shape} and {scores.shape}"
        )
    if ids.size and ids.dtype.kind not in "iu":
        raise InvalidArgument(f"{what} must return integer ids, got dtype {ids.dtype}")
    if ids.shape[1] == 0:
        return np.full((m, 1), PAD, np.int64), np.full((m, 1), -np.inf, np.float32)
    ids = ids.astype(np.int64, copy=False)
    return ids, np.where(ids != PAD, scores, -np.inf).astype(np.float32)


def as_ids(value: object, what: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.size and arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise InvalidArgument(f"{what} must be integer ids, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def positives_matrix(positives: object, m: int | None = None) -> np.ndarray:
    """Positives as int64 ``[m, p]`` padded with -1: from one id per row, a 2-D array, or a list of id lists.

    Every row needs at least one id; -1 is the padding id, so it cannot be a positive.
    """
    if isinstance(positives, np.ndarray) and positives.ndim in (1, 2) and positives.dtype != object:
        mat = as_ids(positives, "positives")
        mat = mat.reshape(-1, 1) if mat.ndim == 1 else mat
    else:
        if isinstance(positives, (str, bytes)) or not isinstance(positives, Sequence):
            raise InvalidArgument(
                f"positives must be one id per query or a list of id lists, got {type(positives).__name__}"
            )
        rows = [np.atleast_1d(as_ids(p, "positives")) for p in positives]
        if any(r.ndim != 1 for r in rows):
            raise InvalidArgument("each entry of positives must be one id or a flat list of ids")
        width = max((r.size for r in rows), default=0)
        mat = np.full((len(rows), max(width, 1)), PAD, np.int64)
        for i, r in enumerate(rows):
            mat[i, : r.size] = r
    if (mat == PAD).any():  # padding last in every row, so a row's ids are its first columns
        mat = np.take_along_axis(mat, np.argsort(mat == PAD, axis=1, kind="stable"), axis=1)
    if m is not None and mat.shape[0] != m:
        raise InvalidArgument(f"got {mat.shape[0]} rows of positives for {m} queries; give one entry per query")
    empty = ~(mat != PAD).any(axis=1)
    if empty.any():
        raise InvalidArgument(
            f"{int(empty.sum())} queries have no positive (first: row {int(np.flatnonzero(empty)[0])}); "
            "every query needs at least one positive id (-1 is padding, not an id)"
        )
    return np.ascontiguousarray(mat)


def positives_lookup(positives: object) -> tuple[dict[int, int], np.ndarray]:
    """Positives keyed by query id: a mapping ``{query_id: id or ids}`` or a sequence (query id = index).

    Returns (query id -> row, int64 ``[n, p]`` padded matrix).
    """
    if isinstance(positives, Mapping):
        keys = list(positives.keys())
        mat = positives_matrix([positives[k] for k in keys])
        return {int(k): i for i, k in enumerate(keys)}, mat
    mat = positives_matrix(positives)
    return {i: i for i in range(mat.shape[0])}, mat


def is_member(cand: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """``out[i, j]`` = ``cand[i, j]`` is one of the ids of ``sets[i]`` (padding never matches)."""
    out = np.zeros(cand.shape, bool)
    if sets.shape[1] == 0 or cand.shape[1] == 0:
        return out
    for b in range(0, cand.shape[0], _BLOCK):
        c = cand[b : b + _BLOCK]
        out[b : b + _BLOCK] = (c[:, :, None] == sets[b : b + _BLOCK, None, :]).any(axis=2)
    return out & (cand != PAD)


def repeats_earlier(cand: np.ndarray) -> np.ndarray:
    """``out[i, j]`` = ``cand[i, j]`` already appears in ``cand[i, :j]``."""
    w = cand.shape[1]
    out = np.zeros(cand.shape, bool)
    if w < 2:
        return out
    earlier = np.tril(np.ones((w, w), bool), k=-1)
    for b in range(0, cand.shape[0], _BLOCK):
        c = cand[b : b + _BLOCK]
        out[b : b + _BLOCK] = ((c[:, :, None] == c[:, None, :]) & earlier).any(axis=2)
    return out


def first_n(keep: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns of the first ``n`` True entries of each row, in column order, and which of them are real."""
    if n == 0:
        return np.zeros((keep.shape[0], 0), np.int64), np.zeros((keep.shape[0], 0), bool)
    if keep.shape[1] < n:
        keep = np.concatenate([keep, np.zeros((keep.shape[0], n - keep.shape[1]), bool)], axis=1)
    cols = np.argsort(~keep, axis=1, kind="stable")[:, :n]
    return cols, np.take_along_axis(keep, cols, axis=1)


def uniform_keys(seed: int, rows: np.ndarray, cols: np.ndarray, stream: int) -> np.ndarray:
    """Seeded uniform floats in [0, 1) for each (row, col): ``[len(rows), len(cols)]``.

    A counter-based hash (splitmix64 of seed, row, stream and column), so a row's keys depend on its
    global row number only: a job mined in chunks gets the same draws as one call.
    """
    r = rows.astype(np.uint64)[:, None] * _ROW
    c = cols.astype(np.uint64)[None, :]
    s = np.full(1, seed, np.uint64) * _GOLDEN + np.full(1, stream, np.uint64) * _STREAM
    z: np.ndarray = (r + c * _GOLDEN) ^ s
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
