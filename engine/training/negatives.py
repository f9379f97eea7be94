"""Static hard-negative mining (STAR), index-agnostic, with sentence-transformers' parameter names.

The caller supplies the search: ``search_fn(queries, depth)`` returns the ``depth`` best ids of the
vectors the caller may see, so a tenant-scoped ``search_fn`` makes every negative tenant-scoped by
construction; ``score_fn(queries, ids)`` scores given ids (the positives, and random negatives);
``random_pool`` holds the ids random negatives are drawn from (the tenant's visible ids).

Semantics follow ``sentence_transformers.util.mine_hard_negatives`` (see ``shared/papers/hard-negatives.md``
section 3.1). For query :math:`q` with positives :math:`P` and lowest positive score
:math:`s^- = \\min_{p \\in P} s(q, p)`, the candidates are the search results that are not positives, ranked
by score; candidate :math:`c` of rank :math:`r` (0-based, positives not counted) qualifies when

.. math::

    \\text{range\\_min} \\le r < \\text{range\\_max}, \\quad
    s(q, c) \\le s^- - \\text{absolute\\_margin}, \\quad
    s(q, c) \\le s^- (1 - \\text{relative\\_margin}), \\quad
    \\text{min\\_score} \\le s(q, c) \\le \\text{max\\_score}

(each bound only when it is set). ``sampling="top"`` keeps the best ``num_negatives`` qualified
candidates; ``"random"`` a uniform sample of them (returned in rank order). STAR (Zhan et al., SIGIR 2021,
section 5.1) adds ``random_negatives`` uniform draws from ``random_pool`` for stability; they obey the
margin and ``max_score`` rules too (a random document scoring that close to the positive is a likely
false negative), but neither the rank window nor ``min_score``.

Scores are similarities, higher is more similar (inner product or cosine). For an ``l2`` collection
pass ``-distance`` from both functions; margins are then in distance units.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import InvalidArgument, NotFound
from engine.training import _select

#: ``search_fn(queries float32 [m, d], depth) -> (ids int64 [m, w], scores float32 [m, w])``, best first, -1 padding
SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
#: ``score_fn(queries float32 [m, d], ids int64 [m, p]) -> scores float32 [m, p]``; entries where ids == -1 are
#: ignored; NaN marks an id the caller cannot see (a positive scored NaN is excluded but sets no margin)
ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

SAMPLING = ("top", "random")
#: the deepest candidate window one call may ask for
MAX_RANGE = 10_000
#: random-negative draws: extra rounds for rows still short after the first, and draws per extra round
_RANDOM_ROUNDS = 8
_RANDOM_DRAWS = 256
_STREAM_HARD, _STREAM_RANDOM = 1, 2

_REASONS = ("absolute_margin", "relative_margin", "max_score", "min_score")
#: stats that describe the call rather than count something; ``concat`` keeps them instead of summing
_SETTINGS = ("depth", "num_negatives", "random_negatives", "range_min", "range_max")


@dataclass(frozen=True)
class MinedNegatives:
    """Mined negatives, one row per query.

    Attributes
    ----------
    ids : int64 ``[m, num_negatives + random_negatives]``: the hard negatives best first, then the random
        ones; -1 where too few qualified.
    scores : float32, same shape: each negative's score; -inf where the id is -1.
    positive_scores : float32 ``[m]``: the lowest score among each query's visible positives (the margin
        reference).
    stats : counts, like sentence-transformers reports: ``queries``, ``candidates`` (non-positive results
        within ``range_max``), ``skipped_positives`` (positives found among the results, always excluded),
        ``positives_not_visible`` (positives ``score_fn`` scored NaN), ``skipped_range_min``,
        ``skipped_<rule>`` for each score rule (a candidate counts under the first rule it breaks, in the
        order absolute_margin, relative_margin, max_score, min_score), ``qualified``,
        ``rows_short`` (queries with fewer than ``num_negatives`` hard negatives), ``missing`` (hard slots
        left at -1), ``random_skipped_score``, ``random_rows_short``, ``random_missing``; and the settings
        ``depth``, ``num_negatives``, ``random_negatives``, ``range_min``, ``range_max``.
    recall : the approximate search's measured recall against exact search on a query sample
        (``measure_recall``) when mining ran on an ANN index; None for exact mining.
    """

    ids: np.ndarray
    scores: np.ndarray
    positive_scores: np.ndarray
    stats: dict
    recall: float | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def counts(self) -> np.ndarray:
        """int32 ``[m]``: how many real negatives (hard and random) each row holds."""
        return (self.ids >= 0).sum(axis=1).astype(np.int32)

    @classmethod
    def concat(cls, parts: Sequence[MinedNegatives]) -> MinedNegatives:
        """Join chunks of one job (mined with consecutive ``row_offset``) into one result; counts add up."""
        if not parts:
            raise InvalidArgument("concat needs at least one MinedNegatives")
        stats = {}
        for key, value in parts[0].stats.items():
            if key == "depth":
                stats[key] = max(p.stats[key] for p in parts)
            else:
                stats[key] = value if key in _SETTINGS else sum(p.stats[key] for p in parts)
        measured = [(p.recall, len(p)) for p in parts if p.recall is not None]
        recall = None
        if measured:
            recall = sum(r * n for r, n in measured) / max(sum(n for _, n in measured), 1)
        return cls(
            np.concatenate([p.ids for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.positive_scores for p in parts]),
            stats,
            recall,
        )

    def summary(self) -> str:
        """The statistics in sentence-transformers' words, one line each."""
        st = self.stats
        m = len(self)
        cand = max(st["candidates"], 1)
        lines = [
            f"mined {st['num_negatives']} hard + {st['random_negatives']} random negatives for {m} queries "
            f"from ranks {st['range_min']}..{st['range_max'] - 1} (search depth {st['depth']})",
            f"excluded {st['skipped_positives']} positives found among the results",
        ]
        for reason in ("range_min", *_REASONS):
            n = st[f"skipped_{reason}"]
            if n:
                lines.append(f"skipped {n} potential negatives ({100 * n / cand:.2f}%) due to {reason}")
        if st["rows_short"]:
            lines.append(
                f"could not find enough negatives for {st['rows_short']} queries ({100 * st['rows_short'] / m:.2f}%)"
            )
        if st["random_rows_short"]:
            lines.append(f"could not draw enough random negatives for {st['random_rows_short']} queries")
        if self.recall is not None:
            lines.append(f"approximate search: measured recall {self.recall:.4f} against exact search")
        return "\n".join(lines)


def _score(score_fn: ScoreFn, queries: np.ndarray, ids: np.ndarray, what: str, *, nan_ok: bool = False) -> np.ndarray:
    scores = np.asarray(score_fn(queries, ids), dtype=np.float32)
    if scores.shape != ids.shape:
        raise InvalidArgument(f"score_fn must return scores of shape {ids.shape} for {what}, got {scores.shape}")
    bad = (ids != _select.PAD) & ~np.isfinite(scores)
    if nan_ok:
        bad &= ~np.isnan(scores)
    if bad.any():
        raise InvalidArgument(f"score_fn gave no finite score for {what} ids {ids[bad][:5].tolist()}")
    return scores


def mine_hard_negatives(
    search_fn: SearchFn,
    score_fn: ScoreFn,
    queries: np.ndarray,
    positives: object,
    *,
    num_negatives: int = 3,
    range_min: int = 0,
    range_max: int | None = 100,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    sampling: str = "top",
    random_negatives: int = 0,
    random_pool: np.ndarray | None = None,
    seed: int = 0,
    row_offset: int = 0,
) -> MinedNegatives:
    """Mine hard negatives for each query from the results of ``search_fn`` (see the module docstring).

    Parameters
    ----------
    search_fn : ``(queries, depth) -> (ids, scores)``, best first, padded with -1; it defines what may be
        returned, so it must be scoped to what the caller may see.
    score_fn : ``(queries, ids [m, p]) -> scores [m, p]`` for given ids (padding -1 entries are ignored). It
        may raise for ids the caller cannot see, or return NaN for them: such a positive is still excluded
        but sets no margin (``stats["positives_not_visible"]``); a query with no visible positive is an error.
    queries : float32 ``[m, d]``, prepared as the index expects (unit rows for cosine).
    positives : one id per query (``[m]``), an int ``[m, p]`` array padded with -1, or a list of id lists.
        All are excluded; the margin uses the lowest positive score.
    num_negatives : hard negatives per query.
    range_min, range_max : rank window ``[range_min, range_max)`` among the non-positive candidates.
        ``range_max=None`` takes sentence-transformers' default: ``range_min + num_negatives + max positives``,
        times ten for the negatives when a score rule is set.
    absolute_margin : keep a negative only if ``score <= lowest positive score - absolute_margin``.
    relative_margin : keep it only if ``score <= lowest positive score * (1 - relative_margin)``.
    max_score, min_score : absolute bounds on a negative's score.
    sampling : ``"top"`` (the best qualified) or ``"random"`` (a uniform sample of the qualified).
    random_negatives : extra uniform negatives per query from ``random_pool`` (STAR).
    random_pool : int64 ids random negatives are drawn from; required when ``random_negatives > 0``.
    seed : the seed of every random choice; the same inputs and seed give the same result.
    row_offset : the number of this batch's first query within a larger job: draws depend on
        ``row_offset + row``, so a job mined in chunks equals one call over all of it.

    Returns
    -------
    MinedNegatives
    """
    q = _select.queries_matrix(queries)
    m = q.shape[0]
    pos = _select.positives_matrix(positives, m)
    n_hard = _select.int_option(num_negatives, "num_negatives")
    n_rand = _select.int_option(random_negatives, "random_negatives")
    if n_hard + n_rand == 0:
        raise InvalidArgument("num_negatives + random_negatives is 0; ask for at least one negative")
    lo = _select.int_option(range_min, "range_min")
    abs_m = _select.float_option(absolute_margin, "absolute_margin")
    rel_m = _select.float_option(relative_margin, "relative_margin")
    max_s = _select.float_option(max_score, "max_score")
    min_s = _select.float_option(min_score, "min_score")
    n_pos = int((pos != _select.PAD).sum(axis=1).max())
    if range_max is None:
        ruled = abs_m is not None or rel_m is not None or max_s is not None or min_s is not None
        range_max = lo + n_hard * (10 if ruled else 1) + n_pos
    hi = _select.int_option(range_max, "range_max", low=1)
    if hi <= lo:
        raise InvalidArgument(f"range_max ({hi}) must be larger than range_min ({lo})")
    if hi > MAX_RANGE:
        raise InvalidArgument(f"range_max is at most {MAX_RANGE}, got {hi}; mine in several passes of rank windows")
    if sampling not in SAMPLING:
        raise InvalidArgument(f"sampling must be one of {', '.join(SAMPLING)}; got {sampling!r}")
    seed = _select.int_option(seed, "seed")
    row_offset = _select.int_option(row_offset, "row_offset")
    pool = None
    if n_rand:
        if random_pool is None:
            raise InvalidArgument("random_negatives > 0 needs random_pool: the ids the caller may see")
        pool = np.unique(_select.as_ids(random_pool, "random_pool").reshape(-1))
        pool = pool[pool != _select.PAD]
    global_rows = np.arange(row_offset, row_offset + m, dtype=np.int64)

    pos_scores = _score(score_fn, q, pos, "positive", nan_ok=True)
    scored = (pos != _select.PAD) & ~np.isnan(pos_scores)
    unseen = ~scored.any(axis=1)
    if unseen.any():
        raise NotFound(
            f"{int(unseen.sum())} queries have no positive among the vectors this caller can see (first: row "
            f"{int(np.flatnonzero(unseen)[0])}); give each query at least one visible positive"
        )
    lowest = np.where(scored, pos_scores, np.inf).min(axis=1).astype(np.float32)
    rules = _Rules(lowest, abs_m, rel_m, max_s, min_s)

    depth = hi + n_pos
    cand, cand_s = _select.search_result(search_fn(q, depth), m, "search_fn")
    real = cand != _select.PAD
    positive = _select.is_member(cand, pos)
    other = real & ~positive
    rank = np.cumsum(other, axis=1) - 1
    window = other & (rank < hi)
    below = window & (rank < lo)
    keep = window & ~below
    stats = {
        "queries": m,
        "depth": depth,
        "num_negatives": n_hard,
        "random_negatives": n_rand,
        "range_min": lo,
        "range_max": hi,
        "candidates": int(window.sum()),
        "skipped_positives": int(positive.sum()),
        "positives_not_visible": int(((pos != _select.PAD) & ~scored).sum()),
        "skipped_range_min": int(below.sum()),
    }
    keep, skipped = rules.apply(cand_s, keep, upper_only=False)
    stats.update({f"skipped_{r}": skipped[r] for r in _REASONS})
    stats["qualified"] = int(keep.sum())
    if sampling == "random" and n_hard:
        keys = _select.uniform_keys(seed, global_rows, np.arange(cand.shape[1]), _STREAM_HARD)
        keys[~keep] = 2.0
        if keys.shape[1] > n_hard:
            kth = np.partition(keys, n_hard - 1, axis=1)[:, n_hard - 1 : n_hard]
            keep &= keys <= kth
    cols, ok = _select.first_n(keep, n_hard)
    cols = np.minimum(cols, cand.shape[1] - 1)
    hard_ids = np.where(ok, np.take_along_axis(cand, cols, axis=1), _select.PAD)
    hard_s = np.where(ok, np.take_along_axis(cand_s, cols, axis=1), -np.inf).astype(np.float32)
    filled = ok.sum(axis=1)
    stats["rows_short"] = int((filled < n_hard).sum())
    stats["missing"] = int(n_hard * m - filled.sum())

    rand_ids = np.full((m, n_rand), _select.PAD, np.int64)
    rand_s = np.full((m, n_rand), -np.inf, np.float32)
    rand_stats = {"random_skipped_score": 0, "random_rows_short": 0, "random_missing": 0}
    if n_rand:
        exclude = np.concatenate([pos, hard_ids], axis=1)
        rand_stats = _draw_random(score_fn, q, pool, exclude, rules, n_rand, seed, global_rows, rand_ids, rand_s)
    stats.update(rand_stats)
    return MinedNegatives(
        np.ascontiguousarray(np.concatenate([hard_ids, rand_ids], axis=1)),
        np.ascontiguousarray(np.concatenate([hard_s, rand_s], axis=1)),
        lowest,
        stats,
    )


def mine_in_chunks(
    search_fn: SearchFn,
    score_fn: ScoreFn,
    queries: np.ndarray,
    positives: object,
    *,
    chunk_size: int = 1024,
    **options: Any,
) -> Iterator[tuple[int, MinedNegatives]]:
    """``mine_hard_negatives`` over consecutive chunks of the queries: yields ``(first row, chunk result)``.

    For large jobs and the server-streaming RPC: each chunk is mined (and may be sent) as soon as it is
    ready, and ``search_fn`` is called once per chunk, so a caller can hold its read lock per chunk. Row
    draws use the global row number, so ``MinedNegatives.concat`` of the chunks equals one call over all
    queries (scores may differ in the last bit where the search's BLAS rounds other batch sizes
    differently). Arguments are checked on the first chunk.
    """
    q = _select.queries_matrix(queries)
    pos = _select.positives_matrix(positives, q.shape[0])
    size = _select.int_option(chunk_size, "chunk_size", low=1)
    offset = _select.int_option(options.pop("row_offset", 0), "row_offset")
    for s in range(0, q.shape[0], size):
        part = mine_hard_negatives(
            search_fn, score_fn, q[s : s + size], pos[s : s + size], row_offset=offset + s, **options
        )
        yield s, part


class _Rules:
    """The score rules of one call, against each query's lowest positive score."""

    def __init__(self, lowest, abs_m, rel_m, max_s, min_s) -> None:
        low = lowest.astype(np.float64)[:, None]
        self.bounds = {
            "absolute_margin": None if abs_m is None else low - abs_m,
            "relative_margin": None if rel_m is None else low * (1.0 - rel_m),
            "max_score": max_s,
        }
        self.min_s = min_s

    def apply(self, scores: np.ndarray, keep: np.ndarray, *, upper_only: bool, rows=None):
        """``keep`` minus the candidates some rule rejects, and how many each rule rejected first."""
        s = scores.astype(np.float64)
        keep = keep.copy()
        skipped = dict.fromkeys(_REASONS, 0)
        for reason, bound in self.bounds.items():
            if bound is None:
                continue
            if rows is not None and np.ndim(bound):
                bound = bound[rows]
            bad = keep & (s > bound)
            skipped[reason] = int(bad.sum())
            keep &= ~bad
        if self.min_s is not None and not upper_only:
            bad = keep & (s < self.min_s)
            skipped["min_score"] = int(bad.sum())
            keep &= ~bad
        return keep, skipped


def _draw_random(score_fn, q, pool, exclude, rules, n, seed, global_rows, out_ids, out_s) -> dict:
    """Fill ``out_ids``/``out_s`` with up to ``n`` distinct uniform draws per row from ``pool``.

    Draws skip excluded ids (positives, the hard negatives), repeats and ids breaking an upper score rule.
    Rows still short after the first round draw again, up to ``_RANDOM_ROUNDS`` times.
    """
    m = q.shape[0]
    have = np.zeros(m, np.int64)
    skipped = 0
    todo = np.arange(m) if pool.size else np.zeros(0, np.int64)
    first = 2 * n + exclude.shape[1] + 8
    start = 0
    for round_no in range(_RANDOM_ROUNDS + 1):
        if todo.size == 0:
            break
        width = first if round_no == 0 else _RANDOM_DRAWS
        u = _select.uniform_keys(seed, global_rows[todo], np.arange(start, start + width), _STREAM_RANDOM)
        start += width
        draw = pool[np.minimum((u * pool.size).astype(np.int64), pool.size - 1)]
        taken = np.concatenate([exclude[todo], out_ids[todo]], axis=1)
        ok = ~_select.is_member(draw, taken) & ~_select.repeats_earlier(draw)
        ids_in = np.where(ok, draw, _select.PAD)
        scores = _score(score_fn, q[todo], ids_in, "random negative")
        passed, by_rule = rules.apply(scores, ok, upper_only=True, rows=todo)
        skipped += sum(by_rule.values())
        need = n - have[todo]
        cols, real = _select.first_n(passed, n)
        real &= np.arange(n)[None, :] < need[:, None]
        for j in range(n):
            sel = real[:, j]
            if not sel.any():
                continue
            rows = todo[sel]
            slot = have[rows]
            out_ids[rows, slot] = draw[sel, cols[sel, j]]
            out_s[rows, slot] = scores[sel, cols[sel, j]]
            have[rows] += 1
        todo = todo[have[todo] < n]
    short = have < n
    return {
        "random_skipped_score": int(skipped),
        "random_rows_short": int(short.sum()),
        "random_missing": int((n - have).sum()),
    }


def measure_recall(
    search_fn_ann: SearchFn,
    search_fn_exact: SearchFn,
    sample_queries: np.ndarray,
    depth: int,
    *,
    max_queries: int | None = 256,
    seed: int = 0,
) -> float:
    """Mean recall of the approximate search's top-``depth`` ids against the exact ones on a query sample.

    ``max_queries`` caps the sample (a seeded subset of ``sample_queries``); rows where the exact
    search returns nothing are left out. Report it with mining done at ``exact=False``.
    """
    q = _select.queries_matrix(sample_queries, "sample_queries")
    depth = _select.int_option(depth, "depth", low=1)
    if max_queries is not None and q.shape[0] > max_queries:
        pick = np.sort(np.random.default_rng(seed).choice(q.shape[0], max_queries, replace=False))
        q = q[pick]
    approx, _ = _select.search_result(search_fn_ann(q, depth), q.shape[0], "search_fn_ann")
    exact, _ = _select.search_result(search_fn_exact(q, depth), q.shape[0], "search_fn_exact")
    found = _select.is_member(exact, approx)
    want = (exact != _select.PAD).sum(axis=1)
    rows = want > 0
    if not rows.any():
        return 1.0
    return float(np.mean(found.sum(axis=1)[rows] / want[rows]))
