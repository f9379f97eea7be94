"""Mined negatives as sentence-transformers-ready rows, and JSONL writing.

The formats are sentence-transformers' ``output_format`` values (``shared/papers/hard-negatives.md`` 3.1):

* ``"triplet"``: ``{anchor, positive, negative}``, one row per (positive, negative) of each query;
* ``"n-tuple"``: ``{anchor, positive, negative_1 .. negative_n}``, one row per positive; queries with fewer
  than n negatives are left out, as sentence-transformers does, since every row needs every column;
* ``"labeled-pair"``: ``{anchor, passage, label}`` with label 1 for each positive and 0 for each negative;
* ``"labeled-list"``: ``{anchor, docs, labels}``: the positives then the negatives, labels 1 then 0.

Texts come from the caller: query texts in query order, and passage texts by id (a mapping, a sequence
indexed by id, or a function).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from engine.errors import InvalidArgument
from engine.training import _select
from engine.training.negatives import MinedNegatives

FORMATS = ("triplet", "n-tuple", "labeled-pair", "labeled-list")

Texts = Mapping[int, str] | Sequence[str] | Callable[[int], str]


def _lookup(texts: Texts) -> Callable[[int], str]:
    if callable(texts) and not isinstance(texts, (Mapping, Sequence)):
        return texts
    if isinstance(texts, (Mapping, Sequence)) and not isinstance(texts, (str, bytes)):

        def get(i: int) -> str:
            try:
                return texts[i]
            except (KeyError, IndexError):
                raise InvalidArgument(f"no passage text for id {i}") from None

        return get
    raise InvalidArgument(f"texts must be a mapping, a sequence or a function of the id, got {type(texts).__name__}")


def training_rows(
    mined: MinedNegatives,
    query_texts: Sequence[str],
    positives: object,
    texts: Texts,
    *,
    output_format: str = "triplet",
    anchor: str = "anchor",
    positive: str = "positive",
) -> Iterator[dict]:
    """The rows of ``output_format`` for every query of ``mined`` (see the module docstring).

    ``positives`` is what was mined with (one id per query, or id lists); ``anchor`` and ``positive``
    name those columns (sentence-transformers keeps the input dataset's column names). Negatives are
    the real ids of ``mined.ids`` in order (hard, then random); -1 entries are skipped.
    """
    if output_format not in FORMATS:
        raise InvalidArgument(f"output_format must be one of {', '.join(FORMATS)}; got {output_format!r}")
    m = len(mined)
    if len(query_texts) != m:
        raise InvalidArgument(f"got {len(query_texts)} query texts for {m} mined rows; give one per query")
    pos = _select.positives_matrix(positives, m)
    text = _lookup(texts)
    width = mined.ids.shape[1]
    for i in range(m):
        a = query_texts[i]
        ps = [text(int(p)) for p in pos[i] if p != _select.PAD]
        ns = [text(int(n)) for n in mined.ids[i] if n != _select.PAD]
        if output_format == "triplet":
            for p in ps:
                for n in ns:
                    yield {anchor: a, positive: p, "negative": n}
        elif output_format == "n-tuple":
            if len(ns) < width:
                continue
            for p in ps:
                row = {anchor: a, positive: p}
                row.update({f"negative_{j + 1}": n for j, n in enumerate(ns)})
                yield row
        elif output_format == "labeled-pair":
            for p in ps:
                yield {anchor: a, "passage": p, "label": 1}
            for n in ns:
                yield {anchor: a, "passage": n, "label": 0}
        else:
            yield {anchor: a, "docs": ps + ns, "labels": [1] * len(ps) + [0] * len(ns)}


def write_jsonl(target: str | os.PathLike | io.TextIOBase, rows: Iterable[dict]) -> int:
    """Write ``rows`` as JSON lines (UTF-8, not ASCII-escaped) to a path or an open text file; returns how
    many. A path is overwritten; pass an open file to append chunk after chunk of a streamed job."""
    if isinstance(target, (str, os.PathLike)):
        with open(target, "w", encoding="utf-8") as fh:
            return write_jsonl(fh, rows)
    n = 0
    for row in rows:
        target.write(json.dumps(row, ensure_ascii=False, default=_plain))
        target.write("\n")
        n += 1
    return n


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
