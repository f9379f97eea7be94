"""numba kernels of the Curator index's build and upkeep: route rows down the clustering tree (greedy or beam
descent) and the refined build's steps (Lloyd sums, size-weighted inner means, capacity-bounded grouping), keep
node statistics, encode the 4-bit scan codes, update a tenant's leaf-ordered list; and what the search kernels
share with them (the entry encoding, the metric and row kinds, the prefetch intrinsic). The tenant-scoped search
itself is in ``engine.kernels.tree_numba`` (numba) and ``native/src/tree_search.c`` (C).

Loops only; ``engine.index.curator`` validates and shapes the input. Every kernel releases the GIL.

Encoding shared with ``engine.index.curator``: a tenant's list holds int64 *entries*
``(leaf_rank << 32) | code_slot``, sorted, so that the entries below any tree node form one contiguous range
(leaves are numbered depth first); ``slot_row`` maps a code slot to its table row. A deleted entry keeps its
leaf rank and has the slot field ``DEAD`` (a tombstone) until the list is compacted.

Node priority (lower is better) is the v2 variance-boosted squared L2 distance between the projected query
``q'`` and the node's projected centroid ``c'``, minus ``||q'||^2``, which is the same for every node
(curator.md §2.7):

.. math:: p(q, c) = \\lVert c' \\rVert^2 - 2\\,q' \\cdot c' - \\beta\\,\\overline{\\lVert v - c \\rVert^2}

The kernels receive ``bias = ||c'||^2 - beta * var`` precomputed per node.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

# numba options, forwarded to njit as keywords
_FLAGS: dict[str, Any] = dict(nogil=True, fastmath=True, cache=True)
_PAR: dict[str, Any] = dict(nogil=True, fastmath=True, cache=True, parallel=True)
IP, L2 = 0, 1
#: what a table's rows hold (``rows_kind`` of the search kernels): float32 vectors, or LVQ-8, LVQ-4x8 or LVQ-4 codes
ROWS_F32, ROWS_LVQ8, ROWS_LVQ4X8, ROWS_LVQ4 = 0, 1, 2, 3
ROW_BITS = 32
ROW_MASK = (1 << ROW_BITS) - 1
DEAD = ROW_MASK  # row field of a tombstone


# ---------------------------------------------------------------------------------------------- helpers
@intrinsic
def _prefetch(typingctx, arr, row, col):
    """Hint the CPU to load the cache line holding ``arr[row, col]`` (LLVM ``prefetch``, read, keep in cache)."""
    sig = types.void(arr, row, col)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        idx = [context.cast(builder, args[i], signature.args[i], types.intp) for i in (1, 2)]
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, idx, wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


def _is_bytes(codes):
    """Whether ``codes`` holds bytes (uint8): a compile-time constant in njit code."""
    return codes.dtype == np.uint8


@overload(_is_bytes)
def _is_bytes_impl(codes):
    value = codes.dtype == types.uint8
    return lambda codes: value


@njit(inline="always", **_FLAGS)
def _dotv(a, i, v):
    """``a[i] . v`` without materialising the row view (a view passed to a call costs reference counting)."""
    s = np.float32(0.0)
    for t in range(v.shape[0]):
        s += a[i, t] * v[t]
    return s


@njit(inline="always", **_FLAGS)
def _sq2(a, i, b, j):
    """``|a[i] - b[j]|^2``."""
    s = np.float32(0.0)
    for t in range(a.shape[1]):
        d = a[i, t] - b[j, t]
        s += d * d
    return s


@njit(**_FLAGS)
def _lower_bound(a, lo, hi, x):
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


# ---------------------------------------------------------------------------------------------- updates
@njit(**_FLAGS)
def _route_one(data, r, cent, child_start, child_count):
    """The GCT leaf (node id) reached by greedy nearest-centroid descent of ``data[r]`` from the root."""
    node = 0
    while child_count[node] > 0:
        c0 = child_start[node]
        best = c0
        best_d = _sq2(cent, c0, data, r)
        for c in range(c0 + 1, c0 + child_count[node]):
            d = _sq2(cent, c, data, r)
            if d < best_d:
                best_d = d
                best = c
        node = best
    return node


@njit(**_FLAGS)
def route_rows(data, rows, cent, child_start, child_count, out_leaf_node):
    """``out_leaf_node[i]`` = the leaf node that ``data[rows[i]]`` routes to."""
    for i in range(rows.shape[0]):
        out_leaf_node[i] = _route_one(data, rows[i], cent, child_start, child_count)


@njit(**_PAR)
def route_rows_parallel(data, rows, cent, child_start, child_count, out_leaf_node):
    """The same, rows split over threads (bulk loads)."""
    for i in prange(rows.shape[0]):
        out_leaf_node[i] = _route_one(data, rows[i], cent, child_start, child_count)


@njit(**_FLAGS)
def _beam_one(data, r, cent, child_start, child_count, bn, nn, nd):
    """The nearest leaf (node id) to ``data[r]`` found by a beam descent of width ``bn.shape[0]``.

    Each step scores every child of the beam's nodes by squared L2 distance to its centroid; a child leaf is
    a candidate answer (the nearest one seen wins), the ``width`` nearest inner children form the next beam.
    A beam at least as wide as the tree's leaf count never drops a node, so the answer is the exact nearest
    leaf. ``bn`` (the beam's nodes) and ``nn``/``nd`` (the next beam's nodes and distances, kept sorted) are
    scratch arrays of the beam's width.
    """
    width = bn.shape[0]
    if child_count[0] == 0:
        return 0
    bn[0] = 0
    nb = 1
    best = -1
    best_d = np.float32(np.inf)
    while nb > 0:
        m = 0
        for i in range(nb):
            c0 = child_start[bn[i]]
            for c in range(c0, c0 + child_count[bn[i]]):
                d = _sq2(cent, c, data, r)
                if child_count[c] == 0:
                    if d < best_d:
                        best_d = d
                        best = c
                elif m < width or d < nd[m - 1]:
                    j = m if m < width else width - 1
                    while j > 0 and nd[j - 1] > d:
                        nd[j] = nd[j - 1]
                        nn[j] = nn[j - 1]
                        j -= 1
                    nd[j] = d
                    nn[j] = c
                    if m < width:
                        m += 1
        for i in range(m):
            bn[i] = nn[i]
        nb = m
    return best


@njit(**_FLAGS)
def beam_route_rows(data, rows, cent, child_start, child_count, width, out_leaf_node):
    """``out_leaf_node[i]`` = the leaf that a beam descent of ``width`` finds for ``data[rows[i]]``."""
    bn = np.empty(width, np.int32)
    nn = np.empty(width, np.int32)
    nd = np.empty(width, np.float32)
    for i in range(rows.shape[0]):
        out_leaf_node[i] = _beam_one(data, rows[i], cent, child_start, child_count, bn, nn, nd)


@njit(**_PAR)
def beam_route_rows_parallel(data, rows, cent, child_start, child_count, width, out_leaf_node):
    """The same, rows split over threads in blocks (bulk loads, training)."""
    n = rows.shape[0]
    block = 256
    for b in prange((n + block - 1) // block):
        bn = np.empty(width, np.int32)
        nn = np.empty(width, np.int32)
        nd = np.empty(width, np.float32)
        for i in range(b * block, min(n, (b + 1) * block)):
            out_leaf_node[i] = _beam_one(data, rows[i], cent, child_start, child_count, bn, nn, nd)


@njit(**_FLAGS)
def leaf_sums(data, rows, nodes, sums, counts):
    """Add ``data[rows[i]]`` to ``sums[nodes[i]]`` (float64) and count it in ``counts[nodes[i]]``: the sums of a
    Lloyd step."""
    for i in range(rows.shape[0]):
        n = nodes[i]
        r = rows[i]
        counts[n] += 1
        for t in range(data.shape[1]):
            sums[n, t] += data[r, t]


@njit(**_FLAGS)
def inner_means(cent, child_start, child_count, weight):
    """Each inner node's centroid and weight become the weight-weighted mean and the sum of its children's,
    bottom up (children have larger ids than their parent); a node whose children weigh 0 keeps its centroid."""
    d = cent.shape[1]
    acc = np.empty(d, np.float64)
    for node in range(cent.shape[0] - 1, -1, -1):
        cn = child_count[node]
        if cn == 0:
            continue
        acc[:] = 0.0
        tot = 0.0
        for c in range(child_start[node], child_start[node] + cn):
            w = weight[c]
            tot += w
            for t in range(d):
                acc[t] += w * cent[c, t]
        weight[node] = tot
        if tot > 0.0:
            for t in range(d):
                cent[node, t] = np.float32(acc[t] / tot)


@njit(**_FLAGS)
def capacity_assign(order, cand, room, out):
    """Greedy assignment of items to groups with ``room[g]`` places each, nearest pairs first.

    ``cand[i]`` are item ``i``'s candidate groups (its nearest few) and ``order`` the flat indices of ``cand``
    by increasing distance: each pair in turn assigns its item (``out[i]``, -1 while free) if the item is free
    and the group has room, which the assignment takes. Items whose candidates all filled stay -1
    (``assign_leftovers``). Returns how many are left.
    """
    t = cand.shape[1]
    out[:] = -1
    for f in order:
        i = f // t
        g = cand[i, f % t]
        if out[i] < 0 and room[g] > 0:
            out[i] = g
            room[g] -= 1
    left = 0
    for i in range(out.shape[0]):
        left += out[i] < 0
    return left


@njit(**_FLAGS)
def assign_leftovers(items, dist, room, out):
    """Each of ``items`` in turn takes the nearest group with room by ``dist[j]`` (its distances to every
    group); the caller guarantees enough room in all."""
    for j in range(items.shape[0]):
        best = -1
        for g in range(dist.shape[1]):
            if room[g] > 0 and (best < 0 or dist[j, g] < dist[j, best]):
                best = g
        out[items[j]] = best
        room[best] -= 1


@njit(**_FLAGS)
def path_stats(data, rows, leaf_nodes, parent, cent, sqsum, count, sign, pnorm, boost, bias):
    """Add (``sign`` = 1) or take away (-1) each row's squared distance to every centroid on its root path.

    ``sqsum[n] / count[n]`` is the mean squared distance of the node's rows to its centroid (v2's
    "variance"); ``count`` at a leaf is its population. ``bias[n] = pnorm[n] - boost * variance`` is refreshed
    on the touched nodes.
    """
    for i in range(rows.shape[0]):
        r = rows[i]
        n = leaf_nodes[i]
        while n >= 0:
            sqsum[n] += sign * np.float64(_sq2(cent, n, data, r))
            count[n] += sign
            var = sqsum[n] / count[n] if count[n] > 0 else 0.0
            if var < 0.0:
                var = 0.0
            bias[n] = np.float32(pnorm[n] - boost * var)
            n = parent[n]


@njit(**_FLAGS)
def encode(data, rows, slots, proj, poff, inv_scale, codes, ynorm):
    """4-bit scan codes of ``data[rows]`` (see ``engine.index.curator._Codec``).

    With ``y = P x - P mu`` (``p`` principal coordinates, ``h = p / 2``), ``u_j = clip(round(y_j / scale_j +
    7.5), 0, 15)``; byte ``t`` of ``codes[r]`` holds ``u_t`` in its low and ``u_{h+t}`` in its high nibble.
    ``ynorm[r] = |scale * (u - 7.5)|^2`` (the decoded code's squared norm, used by ``l2``). Row ``rows[i]`` is
    written to code slot ``slots[i]``.
    """
    h = codes.shape[1]
    for i in range(rows.shape[0]):
        r = slots[i]
        x = data[rows[i]]
        yn = np.float32(0.0)
        for t in range(h):
            lo = _nibble(_dotv(proj, t, x) - poff[t], inv_scale[t])
            hi = _nibble(_dotv(proj, h + t, x) - poff[h + t], inv_scale[h + t])
            codes[r, t] = np.uint8(lo + 16 * hi)
            a = (np.float32(lo) - np.float32(7.5)) / inv_scale[t]
            b = (np.float32(hi) - np.float32(7.5)) / inv_scale[h + t]
            yn += a * a + b * b
        ynorm[r] = yn


@njit(inline="always", **_FLAGS)
def _nibble(y, inv_scale):
    v = np.rint(y * inv_scale + np.float32(7.5))
    if v < 0.0:
        v = 0.0
    elif v > 15.0:
        v = 15.0
    return np.int64(v)


@njit(**_FLAGS)
def entries_of(rank, slot, rows, out):
    """``out[i]`` = the entry ``(rank << 32) | slot`` of ``rows[i]``, or -1 for a row the index has not placed."""
    for i in range(rows.shape[0]):
        r = rows[i]
        if r < 0 or r >= rank.shape[0] or rank[r] < 0:
            out[i] = -1
        else:
            out[i] = (np.int64(rank[r]) << ROW_BITS) | np.int64(slot[r])


@njit(**_FLAGS)
def remove_entries(main, tail, nt, entries, found):
    """Drop each of ``entries`` from a tenant list: swap-remove from the unsorted ``tail[:nt]``, else tombstone
    in the sorted ``main``; ``found[i]`` says whether it was there. Returns (entries tombstoned, new ``nt``)."""
    killed = 0
    n = main.shape[0]
    for i in range(entries.shape[0]):
        e = entries[i]
        if e < 0:
            continue
        for j in range(nt):
            if tail[j] == e:
                nt -= 1
                tail[j] = tail[nt]
                found[i] = True
                break
        if found[i]:
            continue
        leaf = e >> ROW_BITS
        row = e & ROW_MASK
        lo = _lower_bound(main, 0, n, leaf << ROW_BITS)
        hi = _lower_bound(main, lo, n, (leaf + 1) << ROW_BITS)
        for j in range(lo, hi):
            if (main[j] & ROW_MASK) == row:
                main[j] = (leaf << ROW_BITS) | DEAD
                found[i] = True
                killed += 1
                break
    return killed, nt


@njit(**_FLAGS)
def acquire(refs, rows, fresh):
    """One more tenant sees each of ``rows``; rows nobody saw before go to ``fresh``. Returns how many."""
    m = 0
    for i in range(rows.shape[0]):
        r = rows[i]
        if refs[r] == 0:
            fresh[m] = r
            m += 1
        refs[r] += 1
    return m


@njit(**_FLAGS)
def release(refs, rows, found, freed):
    """One tenant fewer sees each found row; rows nobody sees any more go to ``freed``. Returns how many."""
    m = 0
    for i in range(rows.shape[0]):
        if found[i]:
            r = rows[i]
            refs[r] -= 1
            if refs[r] == 0:
                freed[m] = r
                m += 1
    return m
