"""The native Curator tree search (``grove_tree_search``) against the numba one (``engine.kernels.tree_numba.search``).

For Curator indexes built on seeded clustered data in every kind of collection (float32 rows with PCA scan codes
of each width; LVQ-8, LVQ-4 and LVQ-4x8 rows and primaries; LeanVec projections with LVQ-8, LVQ-4 and float32
primaries over LVQ or float32 rows; metrics ip, l2 and cosine) and tenants sized so that every path runs (exact,
flat, leaf order, the best-first walk with and without leaf bounds, tail entries and tombstones), the native
search, at every instruction set this CPU has, agrees with the numba search: the same ids for at least 99% of the
result positions, the same scores within float32 rounding, and where the path is exact both equal a numpy brute
force over the rows the tenant sees (scored as the rows hold them: float32, or decoded codes).

numba compiles its tree search once per session for byte codes and once for float32 codes (tens of seconds
without a warm cache): it is run one query at a time (its serial kernel), and the indexes are built once per
module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from engine import kernels
from engine.index.curator import TAIL_CAP, CuratorIndex
from engine.index.table import VectorTable
from engine.kernels import metrics, native
from engine.kernels import tree_numba as ktree
from engine.quant.codec import build_codec
from engine.types import LVQ, LeanVec

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason=f"native: {native.ERROR}")

SEED = 20240917
N = 3000
K = 10
#: a deep tree of small leaves, so a few thousand vectors give every path
PARAMS = dict(fanout=8, max_leaf_size=16, max_sl_size=32, exact_max=64, flat_max=400, candidates=32, rerank=16)
#: ef values: below a quarter of the leaf count (the walk, for a tenant with bounds too), above it (leaf order)
EFS = (16, 96, 600)


@dataclass(frozen=True)
class Kind:
    """One kind of collection: its dimension and compression (None: float32 rows, PCA scan codes of up to 256
    coordinates, 4 bits each)."""

    dim: int
    compression: LVQ | LeanVec | None


KINDS = {
    "f32 pca-12B": Kind(24, None),  # 4-bit PCA codes of 12 bytes: the float nibble loop
    "f32 pca-48B": Kind(96, None),
    "f32 pca-128B": Kind(256, None),  # 128-byte PCA codes: the integer (FAST_WIDTH) path
    "lvq8": Kind(128, LVQ(bits=8)),  # LVQ-8 rows and 128-byte LVQ-8 primaries: the integer 8-bit path
    "lvq4": Kind(40, LVQ(bits=4)),
    "lvq4x8": Kind(48, LVQ(bits=4, residual_bits=8)),
    "leanvec-ood lvq8/lvq8": Kind(96, LeanVec(dim=32, kind="ood", primary="lvq8", secondary="lvq8")),
    "leanvec-id lvq4/float32": Kind(64, LeanVec(dim=24, kind="id", primary="lvq4", secondary="float32")),
    "leanvec-ood float32/lvq4x8": Kind(48, LeanVec(dim=16, kind="ood", primary="float32", secondary="lvq4x8")),
    "leanvec-id lvq8-128/lvq4": Kind(300, LeanVec(dim=128, kind="id", primary="lvq8", secondary="lvq4")),
}
#: every kind with one metric, the float32 kind with all three (CI time: each index costs a build)
CASES = [(name, "ip") for name in KINDS] + [
    ("f32 pca-48B", "l2"),
    ("f32 pca-48B", "cosine"),
    ("f32 pca-128B", "l2"),
    ("lvq8", "l2"),
    ("lvq4", "l2"),
    ("lvq4x8", "l2"),
    ("leanvec-ood lvq8/lvq8", "l2"),
    ("leanvec-ood float32/lvq4x8", "cosine"),
    ("leanvec-id lvq4/float32", "l2"),
]


def clustered(rng: np.random.Generator, n: int, d: int, centers: np.ndarray) -> np.ndarray:
    """Points around ``centers`` with a decaying spectrum (so projections keep most of them)."""
    spectrum = (1.0 / np.arange(1, d + 1) ** 0.5).astype(np.float32)
    return (centers[rng.integers(0, centers.shape[0], n)] + rng.standard_normal((n, d)) * spectrum).astype(np.float32)


@dataclass
class Built:
    """An index over a table, the rows each tenant sees, queries prepared for the metric, and the numba search's
    answers by (tenant, ef) once computed (they do not depend on the native instruction set)."""

    index: CuratorIndex
    table: VectorTable
    metric: str
    sees: dict[int, np.ndarray]
    queries: np.ndarray
    numba: dict | None = None


def build(name: str, metric: str) -> Built:
    """Tenants: 0 sees everything (leaf bounds), 1 every third row (more than flat_max, no bounds: the walk by
    binary search), 2 a few hundred (flat), 3 a few dozen (exact); then new rows into the tails of 0, 1 and 3,
    and deletions that leave tombstones in 0, 1 and 3 (and take two entries out of 1's tail)."""
    kind = KINDS[name]
    rng = np.random.default_rng(SEED + len(name) + 7 * len(metric))
    d = kind.dim
    centers = rng.standard_normal((40, d)).astype(np.float32) * 2 / np.arange(1, d + 1) ** 0.5
    prepared = metrics.prepare(metric, clustered(rng, N + 40, d, centers))
    near = clustered(rng, 24, d, centers) + 0.2 * rng.standard_normal((24, d)).astype(np.float32)
    queries = np.ascontiguousarray(metrics.prepare(metric, near), np.float32)
    table = VectorTable(d, capacity=N + 64)
    slots = table.allocate(N)
    table.put(slots, np.arange(N), prepared[:N], 0)
    if kind.compression is not None:
        codec = build_codec(kind.compression, prepared[:N], queries, metric=metric)
        table = table.compressed(codec, lambda rows: prepared[rows])
    sees = {0: slots, 1: slots[::3], 2: rng.choice(slots, 300, replace=False), 3: slots[-40:]}
    index = CuratorIndex.build(table, metric, sees, **PARAMS)
    fresh = table.allocate(12)
    table.put(fresh, np.arange(N, N + 12), prepared[N : N + 12], 0)
    for t in (0, 1, 3):
        index.add(t, fresh)
    gone = {0: slots[5:200:7], 1: np.concatenate([slots[::3][10:60:5], fresh[:2]]), 3: slots[-40::9]}
    for t, rows in gone.items():
        index.remove(t, rows)
    sees = {t: np.setdiff1d(np.union1d(r, fresh if t != 2 else []), gone.get(t, [])) for t, r in sees.items()}
    return Built(index, table, metric, {t: r.astype(np.int64) for t, r in sees.items()}, queries)


class Indexes(dict):
    """Every case's index by (kind, metric), built on first use."""

    def __missing__(self, key: tuple[str, str]) -> Built:
        self[key] = build(*key)
        return self[key]


@pytest.fixture(scope="module")
def built() -> Indexes:
    return Indexes()


def path_of(index: CuratorIndex, tenant: int, ef: int) -> str:
    """Which path ``engine.kernels.tree_numba._search_one`` takes for this tenant and ef."""
    lst = index._lists[tenant]
    n = lst.main.shape[0]
    if n + lst.nt <= index.exact_max or not index.trained:
        return "exact"
    if n <= index.flat_max:
        return "flat"
    bounds = index._leaf_bounds(lst.main)
    if bounds.size and ef >= ktree.LEAF_ORDER_EF_PER_LEAF * (bounds.size - 1):
        return "leaf order"
    return "walk (bounds)" if bounds.size else "walk"


def search_with(backend: str, index: CuratorIndex, queries: np.ndarray, tenant: int, ef: int, k: int = K):
    """The index's search on ``backend``: native as one batch (split over threads), numba one query at a time."""
    before = kernels.backend()
    kernels.select(backend)
    try:
        if backend == "native":
            return index.search(queries, k, tenant, ef=ef)
        parts = [index.search(queries[i : i + 1], k, tenant, ef=ef) for i in range(queries.shape[0])]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    finally:
        kernels.select(before if before in ("numba", "native") else None)


def brute_force(b: Built, tenant: int) -> np.ndarray:
    """Surrogate scores float64 ``[m, rows]`` of the queries against the rows ``tenant`` sees, read from the rows
    as the table holds them (float32, or decoded codes; coded l2 as ``2 <q, x~> - |x|^2 - |q|^2``)."""
    rows = b.sees[tenant]
    x = b.table.vectors(rows).astype(np.float64)
    q = b.queries.astype(np.float64)
    if metrics.KERNEL_METRIC[b.metric] == "ip":
        return q @ x.T
    store = b.table.store
    if getattr(store, "dense", True):
        return -((q[:, None, :] - x[None]) ** 2).sum(axis=2)
    return 2 * q @ x.T - store.sqnorms(rows)[None].astype(np.float64) - (q * q).sum(axis=1)[:, None]


def assert_agree(got, want, tol: float, what: str) -> None:
    """At least 99% of the positions hold the same id (a swap of near ties costs two), and every id both hold is
    scored the same within ``tol``; padding in the same places."""
    (gs, gr), (ws, wr) = got, want
    assert gr.shape == wr.shape
    np.testing.assert_array_equal(gr < 0, wr < 0, err_msg=f"{what}: padding differs")
    same = (gr == wr).mean()
    assert same >= 0.99, f"{what}: only {same:.3f} of the positions hold the same id"
    for i in range(gr.shape[0]):
        common, a, c = np.intersect1d(gr[i], wr[i], return_indices=True)
        live = common >= 0
        np.testing.assert_allclose(gs[i][a[live]], ws[i][c[live]], rtol=1e-5, atol=tol, err_msg=what)
        assert np.all(np.diff(gs[i][gr[i] >= 0]) <= 0), f"{what}: not best first"


def assert_exact(got, scores: np.ndarray, rows: np.ndarray, tol: float, what: str) -> None:
    """The top-k of the brute-force ``scores`` over ``rows``, identical up to ties at the k-th score."""
    gs, gr = got
    k = gs.shape[1]
    for i in range(gs.shape[0]):
        n = min(k, rows.shape[0])
        order = np.argsort(-scores[i], kind="stable")[:n]
        np.testing.assert_allclose(gs[i][:n], scores[i][order], rtol=1e-5, atol=tol, err_msg=what)
        assert (gr[i][n:] == -1).all() and np.isneginf(gs[i][n:]).all(), f"{what}: bad padding"
        kth = scores[i][order[-1]]
        sure = set(rows[order][scores[i][order] > kth + tol].tolist())  # above the k-th score by more than a tie
        assert sure <= set(gr[i][:n].tolist()), f"{what}: misses {sure - set(gr[i][:n].tolist())}"
        allowed = set(rows[scores[i] >= kth - tol].tolist())
        assert set(gr[i][:n].tolist()) <= allowed, f"{what}: returned rows outside the exact top-{k}"


@pytest.fixture(params=native.ISAS)
def isa(request):
    """Each instruction set level (skipped above what this CPU has); restores the level in use after."""
    level = request.param
    if native.ISAS.index(level) > native.ISAS.index(native.cpu_isa()):
        pytest.skip(f"native-{level}: this CPU supports up to {native.cpu_isa()}")
    before = native.isa()
    native.set_isa(level)
    yield level
    native.set_isa(before)


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize(("name", "metric"), CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_native_agrees_with_numba_on_every_path(built, isa, name, metric):
    b = built[(name, metric)]
    scale = float(np.abs(brute_force(b, 0)).max()) + 1.0
    tol = 2e-5 * scale
    if b.numba is None:
        b.numba = {(t, ef): search_with("numba", b.index, b.queries, t, ef) for t in b.sees for ef in EFS}
    paths = set()
    for tenant in b.sees:
        for ef in EFS:
            path = path_of(b.index, tenant, ef)
            paths.add(path)
            what = f"{name} {metric} {isa} tenant {tenant} ef {ef} ({path})"
            got = search_with("native", b.index, b.queries, tenant, ef)
            assert_agree(got, b.numba[(tenant, ef)], tol, what)
            if path == "exact":
                assert_exact(got, brute_force(b, tenant), b.sees[tenant], tol, what)
                assert_exact(b.numba[(tenant, ef)], brute_force(b, tenant), b.sees[tenant], tol, what)
    assert paths == {"exact", "flat", "leaf order", "walk (bounds)", "walk"}, paths


def test_the_cases_hold_tails_and_tombstones(built):
    b = built[("f32 pca-48B", "ip")]
    lists = b.index._lists
    assert all(lists[t].nt > 0 for t in (0, 1, 3)) and all(lists[t].nt <= TAIL_CAP for t in lists)
    dead = [int(((lists[t].main & np.int64(ktree.ROW_MASK)) == ktree.DEAD).sum()) for t in (0, 1)]
    assert min(dead) > 0, "no tombstones to skip"


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_a_wide_search_is_exact_on_every_isa(built, isa, metric):
    """With the candidate list and the rescoring covering the tenant, walk and leaf order both return the exact
    top-k of the rows (float32 rows: the brute force itself)."""
    b = built[("f32 pca-48B", metric)]
    idx = b.index
    saved = idx.candidates, idx.rerank
    idx.candidates, idx.rerank = 100_000, 100_000
    try:
        for tenant in (0, 1):
            got = search_with("native", idx, b.queries, tenant, 10**6)
            assert_exact(got, brute_force(b, tenant), b.sees[tenant], 1e-3, f"{metric} tenant {tenant}")
    finally:
        idx.candidates, idx.rerank = saved


@pytest.mark.parametrize("tenant", [3, 2])
def test_more_results_than_entries_are_padded(built, isa, tenant):
    """A k beyond what the tenant sees is padded with (-inf, -1) after its hits (exact path); a deep k over the
    codes (flat path) widens the candidate list and the rescoring to hold it: the same hits on both backends."""
    b = built[("lvq4", "ip")]
    k = b.sees[tenant].shape[0] + 5 if tenant == 3 else 80
    got = search_with("native", b.index, b.queries, tenant, 64, k)
    assert_agree(got, search_with("numba", b.index, b.queries, tenant, 64, k), 1e-4, f"tenant {tenant} k {k}")
    if tenant == 3:
        assert (got[1][:, -5:] == -1).all() and (got[1][:, :-5] >= 0).all()
        assert_exact(got, brute_force(b, tenant), b.sees[tenant], 1e-4, f"tenant {tenant} k {k}")


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_ties_go_to_the_smaller_row(isa, metric):
    """Every vector stored four times: equal scores everywhere (codes, candidates, rows). Both backends break
    each tie the same way, to the smaller code slot among candidates and the smaller row in the results."""
    rng = np.random.default_rng(SEED + 1)
    d = 32
    centers = rng.standard_normal((20, d)).astype(np.float32) * 2
    x = np.repeat(clustered(rng, 600, d, centers), 4, axis=0)
    prepared = metrics.prepare(metric, x)
    table = VectorTable(d, capacity=x.shape[0])
    slots = table.allocate(x.shape[0])
    table.put(slots, np.arange(x.shape[0]), prepared, 0)
    sees = {0: slots, 1: slots[:200], 2: slots[-48:]}
    index = CuratorIndex.build(table, metric, sees, **PARAMS)
    q = np.ascontiguousarray(metrics.prepare(metric, clustered(rng, 16, d, centers)), np.float32)
    for tenant in sees:
        for ef in EFS:
            got = search_with("native", index, q, tenant, ef)
            want = search_with("numba", index, q, tenant, ef)
            np.testing.assert_array_equal(got[1], want[1], err_msg=f"tenant {tenant} ef {ef}")
            for s, r in zip(*got):
                tied = np.flatnonzero(np.diff(s) == 0)
                assert np.all(r[tied] < r[tied + 1]), f"tenant {tenant} ef {ef}: a tie not broken to the smaller row"


def test_the_library_reads_arrays_that_replaced_grown_ones():
    """The native views of an index's arrays are kept by array identity: after inserts grow the table's rows, the
    code slots and a tenant's list (new arrays), searches read the new arrays, and the old views are gone with the
    old arrays."""
    rng = np.random.default_rng(SEED + 2)
    d = 16
    centers = rng.standard_normal((10, d)).astype(np.float32) * 2
    table = VectorTable(d, capacity=1200)
    slots = table.allocate(1200)
    table.put(slots, np.arange(1200), clustered(rng, 1200, d, centers), 0)
    index = CuratorIndex.build(table, "ip", {0: slots, 1: slots[:30]}, **PARAMS)
    q = clustered(rng, 8, d, centers)
    search_with("native", index, q, 1, 16)
    old = len(native._index_views)
    fresh = table.allocate(2000)  # past the capacity: the rows, slots and scan codes are reallocated
    table.put(fresh, np.arange(1200, 3200), clustered(rng, 2000, d, centers), 0)
    index.add(1, fresh[:20])
    index.add(0, fresh)
    b = Built(index, table, "ip", {0: np.concatenate([slots, fresh]), 1: np.concatenate([slots[:30], fresh[:20]])}, q)
    got = search_with("native", index, q, 1, 16)
    assert_exact(got, brute_force(b, 1), b.sees[1], 1e-4, "after growth")
    assert_agree(search_with("native", index, q, 0, 96), search_with("numba", index, q, 0, 96), 1e-4, "after growth")
    del b
    import gc

    gc.collect()
    assert len(native._index_views) <= old, "views of arrays that are gone were kept"


def test_untrained_index_is_exact():
    """An untrained tree (one leaf) is searched exactly from the rows, on both backends alike."""
    rng = np.random.default_rng(SEED)
    table = VectorTable(20, capacity=300)
    slots = table.allocate(250)
    table.put(slots, np.arange(250), rng.standard_normal((250, 20)).astype(np.float32), 0)
    idx = CuratorIndex(table, "ip", **PARAMS)
    idx.add(0, slots)
    assert not idx.trained
    q = rng.standard_normal((5, 20)).astype(np.float32)
    got = search_with("native", idx, q, 0, 16)
    b = Built(idx, table, "ip", {0: slots.astype(np.int64)}, q)
    assert_exact(got, brute_force(b, 0), b.sees[0], 1e-4, "untrained")
    assert_agree(got, search_with("numba", idx, q, 0, 16), 1e-4, "untrained")


def test_backend_choice_reaches_the_tree_search(built, monkeypatch):
    """``select("numba")`` sends the Curator search to the numba kernels, the native backend to the library, and
    a native build, warm-up and search never call (so never compile) the numba tree search."""
    b = built[("f32 pca-48B", "ip")]
    calls = []

    def spy(name):
        real = getattr(ktree, name)

        def wrapped(*args):
            calls.append(name)
            return real(*args)

        return wrapped

    monkeypatch.setattr(ktree, "search", spy("search"))
    monkeypatch.setattr(ktree, "search_parallel", spy("search_parallel"))
    before = kernels.backend()
    try:
        kernels.select("native")
        assert kernels.tree_backend() == "native"
        b.index.warm()
        b.index.search(b.queries, K, 0)
        b.index.search(b.queries[:1], K, 1)
        assert calls == []
        kernels.select("numba")
        assert kernels.tree_backend() == "numba"
        b.index.search(b.queries[:1], K, 0)
        assert calls == ["search"]
    finally:
        kernels.select(before if before in ("numba", "native") else None)


def test_batches_split_over_threads_equal_single_queries(built):
    """The native batch, split by queries over the thread pool, answers each query as a search of it alone."""
    b = built[("lvq4x8", "ip")]
    old = kernels.threads()
    kernels.set_threads(3)
    try:
        batch = search_with("native", b.index, b.queries, 0, 96)
        for i in range(b.queries.shape[0]):
            one = search_with("native", b.index, b.queries[i : i + 1], 0, 96)
            np.testing.assert_array_equal(one[1][0], batch[1][i])
            np.testing.assert_array_equal(one[0][0], batch[0][i])
    finally:
        kernels.set_threads(old)


def test_the_library_refuses_what_it_cannot_search(built):
    """An absurd parameter set is refused by the library itself (its check), not silently searched."""
    b = built[("f32 pca-48B", "ip")]
    with pytest.raises(ValueError, match="invalid argument"):
        native.tree_search(b.queries, b.table.store.kernel_args, b.table.store.rows_kind, b.index._slot_row,
                           b.index._sc, b.index.scan.kernel_args,
                           kernels.TreeArrays(b.index._topo, b.index._pcent, b.index._bias, b.index._leaves),
                           kernels.TenantEntries(b.index._lists[0].main, b.index._lists[0].tail, 0,
                                                 np.zeros(0, np.int32)),
                           kernels.TreeSearchParams(0, 16, 32, 16, 32, 64, 400, ktree.IP),
                           np.empty((24, 0), np.float32), np.empty((24, 0), np.int64))  # fmt: skip
