/* The Curator tree search (engine.kernels.tree.search, curator.md §2.6-2.7) in C, with the same semantics:
 *
 *   - a tenant of at most exact_max entries, or an untrained tree: every row scored from the rows (exact);
 *   - else the tail's scan codes, then either every code of a tenant of at most flat_max entries, or a large
 *     tenant's leaves in the order of their own priorities (leaf bounds and an ef of at least
 *     LEAF_ORDER_EF_PER_LEAF per leaf), or a best-first walk of its subtree, both stopping once ef scanned
 *     entries in a row left the candidate heap unchanged; then the best rerank candidates rescored from the rows.
 *
 * This file holds the control flow (heaps, the frontier, priority buckets, query preparation), which is the same
 * on every CPU; the loops that score codes and rows are tree_loops.h, compiled once per instruction set
 * (tree_scalar.c, tree_avx2.c, tree_avx512.c) and picked at each call from grove_get_isa(). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* engine.kernels.tree.LEAF_ORDER_EF_PER_LEAF and MAX_BUCKETS */
#define LEAF_ORDER_EF_PER_LEAF 0.25
#define MAX_BUCKETS 1024
/* entries scored by one call of a per-ISA loop before their scores meet the heap */
#define SCORE_BLOCK 256
/* buckets of at most this many leaves are insertion sorted, larger ones merge sorted (tree._sort_bucket) */
#define INSERTION_MAX 32

static const grove_tree_ops *tree_ops(void) {
#if GROVE_X86
    switch (grove_get_isa()) {
    case GROVE_ISA_AVX512VNNI:
    case GROVE_ISA_AVX512: return &grove_tree_ops_avx512;
    case GROVE_ISA_AVX2: return &grove_tree_ops_avx2;
    default: break;
    }
#endif
    return &grove_tree_ops_scalar;
}

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* ---- workspace: one allocation per call, carved into 64-byte aligned arrays (not cleared: every array is
 * written before it is read; the loops read nothing past an array's end) ------------------------------------- */
typedef struct {
    char *base; /* NULL while sizing */
    size_t used;
} arena_t;

static void *take(arena_t *a, int64_t count, size_t item) {
    const size_t bytes = ((size_t)count * item + 63) & ~(size_t)63;
    void *p = a->base ? a->base + a->used : NULL;
    a->used += bytes;
    return p;
}

typedef struct {
    float *qlo, *qhi;          /* the query's halves [h1] (LVQ-4 rows) */
    float *qn, *w, *wlo, *whi; /* the query in code space [p], its code weights [p] and their halves [h] */
    int16_t *qi, *qq, *qnode;  /* int16 code weights [2h], the query [d] and qn[:pn] for int8 dot products */
    int32_t *acc;              /* int8 dot products [max(p, leaves)] */
    float *hs, *ks;            /* candidate heap [cap] (code slots), result heap [k] (table rows) */
    int64_t *hr, *kr;
    float *fs;                 /* the walk's frontier [nodes]: priority, node, entry range */
    int32_t *fn;
    int64_t *flo, *fhi;
    float *pri;                /* leaf order [leaves]: priority, leaf rank, order, scratch; bucket starts */
    int64_t *rk, *perm, *tmp, *starts;
    float *scores;             /* [SCORE_BLOCK] */
} workspace_t;

/* a search of one tenant: its inputs, the ISA's loops, the workspace */
typedef struct {
    const grove_tree_ops *ops;
    const grove_tree_rows *rows;
    const grove_scan_codes *sc;
    const grove_tree *tree;
    const grove_tenant_list *list;
    const grove_search_params *par;
    int64_t cap; /* candidate heap capacity, max(cands, k) */
    int64_t r2;  /* candidates rescored, max(min(rerank, cap), k) */
    workspace_t ws;
    void *mem;
} search_t;

static void carve(search_t *st, arena_t *a) {
    const int64_t d = st->rows->dim, h1 = (d + 1) / 2, p = st->sc->p, h = (p + 1) / 2;
    const int64_t nn = st->tree->n_nodes, leaves = st->tree->n_leaves, pn = st->tree->pn;
    workspace_t *w = &st->ws;
    w->qlo = take(a, h1, sizeof(float));
    w->qhi = take(a, h1, sizeof(float));
    w->qn = take(a, p, sizeof(float));
    w->w = take(a, p, sizeof(float));
    w->wlo = take(a, h, sizeof(float));
    w->whi = take(a, h, sizeof(float));
    w->qi = take(a, 2 * h, sizeof(int16_t));
    w->qq = take(a, d, sizeof(int16_t));
    w->qnode = take(a, pn, sizeof(int16_t));
    w->acc = take(a, max64(p, leaves), sizeof(int32_t));
    w->hs = take(a, st->cap, sizeof(float));
    w->hr = take(a, st->cap, sizeof(int64_t));
    w->ks = take(a, st->par->k, sizeof(float));
    w->kr = take(a, st->par->k, sizeof(int64_t));
    w->fs = take(a, nn, sizeof(float));
    w->fn = take(a, nn, sizeof(int32_t));
    w->flo = take(a, nn, sizeof(int64_t));
    w->fhi = take(a, nn, sizeof(int64_t));
    w->pri = take(a, leaves, sizeof(float));
    w->rk = take(a, leaves, sizeof(int64_t));
    w->perm = take(a, leaves, sizeof(int64_t));
    w->tmp = take(a, leaves, sizeof(int64_t));
    w->starts = take(a, MAX_BUCKETS + 1, sizeof(int64_t));
    w->scores = take(a, SCORE_BLOCK, sizeof(float));
}

static int alloc_workspace(search_t *st) {
    arena_t a = {NULL, 0};
    carve(st, &a);
    st->mem = malloc(a.used + 64);
    if (!st->mem) return GROVE_ENOMEM;
    a.base = (char *)(((uintptr_t)st->mem + 63) & ~(uintptr_t)63);
    a.used = 0;
    carve(st, &a);
    return GROVE_OK;
}

/* ---- the top heaps: the worst item at the root; on equal scores the larger row is worse (tree._hpush, ...) -- */
typedef struct {
    float *s;
    int64_t *r;
    int64_t size;
    int64_t cap;
} topheap_t;

static inline int beats(const topheap_t *h, float s, int64_t r) {
    return h->size < h->cap || s > h->s[0] || (s == h->s[0] && r < h->r[0]);
}

/* put (s, r) at the root in place of the root, and sift it down (tree._sift_root) */
static void sift_root(float *hs, int64_t *hr, int64_t size, float s, int64_t r) {
    int64_t i = 0;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= size) break;
        if (c + 1 < size && (hs[c + 1] < hs[c] || (hs[c + 1] == hs[c] && hr[c + 1] > hr[c]))) c++;
        if (!(hs[c] < s || (hs[c] == s && hr[c] > r))) break;
        hs[i] = hs[c];
        hr[i] = hr[c];
        i = c;
    }
    hs[i] = s;
    hr[i] = r;
}

/* offer (s, r), which beats() the heap */
static void push(topheap_t *h, float s, int64_t r) {
    if (h->size == h->cap) {
        sift_root(h->s, h->r, h->size, s, r);
        return;
    }
    int64_t i = h->size++;
    while (i > 0) {
        const int64_t p = (i - 1) >> 1;
        if (h->s[p] < s || (h->s[p] == s && h->r[p] > r)) break;
        h->s[i] = h->s[p];
        h->r[i] = h->r[p];
        i = p;
    }
    h->s[i] = s;
    h->r[i] = r;
}

static void pop_worst(topheap_t *h) {
    h->size--;
    if (h->size > 0) sift_root(h->s, h->r, h->size, h->s[h->size], h->r[h->size]);
}

/* best first into out (k slots), padded with (-inf, -1); empties the heap (tree._write) */
static void write_best_first(topheap_t *h, int64_t k, float *out_s, int64_t *out_r) {
    for (int64_t j = h->size; j < k; j++) {
        out_s[j] = -INFINITY;
        out_r[j] = -1;
    }
    while (h->size > 0) {
        out_s[h->size - 1] = h->s[0];
        out_r[h->size - 1] = h->r[0];
        pop_worst(h);
    }
}

/* ---- the frontier of the walk: a min-heap of nodes by priority, with their entry ranges (tree._fpush) ------- */
typedef struct {
    float *s;
    int32_t *node;
    int64_t *lo;
    int64_t *hi;
    int64_t size;
} frontier_t;

static inline void fput(frontier_t *f, int64_t i, float s, int32_t node, int64_t lo, int64_t hi) {
    f->s[i] = s;
    f->node[i] = node;
    f->lo[i] = lo;
    f->hi[i] = hi;
}

static inline void fmove(frontier_t *f, int64_t to, int64_t from) {
    fput(f, to, f->s[from], f->node[from], f->lo[from], f->hi[from]);
}

static void fpush(frontier_t *f, float s, int32_t node, int64_t lo, int64_t hi) {
    int64_t i = f->size++;
    while (i > 0) {
        const int64_t p = (i - 1) >> 1;
        if (f->s[p] <= s) break;
        fmove(f, i, p);
        i = p;
    }
    fput(f, i, s, node, lo, hi);
}

/* remove the root (the caller read it first) */
static void fpop(frontier_t *f) {
    const int64_t size = --f->size;
    if (size == 0) return;
    const float s = f->s[size];
    const int32_t node = f->node[size];
    const int64_t lo = f->lo[size], hi = f->hi[size];
    int64_t i = 0;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= size) break;
        if (c + 1 < size && f->s[c + 1] < f->s[c]) c++;
        if (f->s[c] >= s) break;
        fmove(f, i, c);
        i = c;
    }
    fput(f, i, s, node, lo, hi);
}

static int64_t lower_bound(const int64_t *a, int64_t lo, int64_t hi, int64_t x) {
    while (lo < hi) {
        const int64_t mid = (lo + hi) >> 1;
        if (a[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* ---- query preparation -------------------------------------------------------------------------------------- */
/* v as int16 weights out ~ v * alpha for dot products with int8 rows; returns alpha, which maps max |v| to 32767
 * or less, so that sum |out_t| 127 stays below 2^31 (tree._int16_for_int8) */
static float int16_for_int8(const float *v, int64_t n, int16_t *out) {
    float vmax = 0.0f;
    for (int64_t t = 0; t < n; t++) vmax = fmaxf(vmax, fabsf(v[t]));
    const double bound = fmin(32767.0, 2147483647.0 / (127.0 * (double)max64(n, 1)));
    const float alpha = (float)(bound / (double)fmaxf(vmax, 1e-30f));
    for (int64_t t = 0; t < n; t++) out[t] = (int16_t)rintf(v[t] * alpha);
    return alpha;
}

/* sum_t q[t] (mean NULL) or sum_t q[t] * mean[t], over 16 independent partial sums (vectorisable as they are) */
static float lane_sum(const float *q, const float *mean, int64_t d) {
    float acc[16] = {0};
    int64_t t = 0;
    for (; t + 16 <= d; t += 16)
        for (int l = 0; l < 16; l++) acc[l] += mean ? q[t + l] * mean[t + l] : q[t + l];
    for (; t < d; t++) acc[0] += mean ? q[t] * mean[t] : q[t];
    float s = 0.0f;
    for (int l = 0; l < 16; l++) s += acc[l];
    return s;
}

/* tree._row_query: the query as the rows score it (q . mean, sum(q) and |q|^2 are read by LVQ rows only) */
static void prepare_rows_query(search_t *st, const float *q, grove_row_query *rq) {
    const grove_tree_rows *x = st->rows;
    workspace_t *w = &st->ws;
    const int64_t d = x->dim, h = (d + 1) / 2;
    const int lvq = x->kind != GROVE_ROWS_F32;
    if (x->kind == GROVE_ROWS_LVQ4 || x->kind == GROVE_ROWS_LVQ4X8)
        for (int64_t t = 0; t < h; t++) {
            w->qlo[t] = q[t];
            w->qhi[t] = h + t < d ? q[h + t] : 0.0f;
        }
    rq->l2 = st->par->metric == GROVE_L2;
    rq->q = q;
    rq->qlo = w->qlo;
    rq->qhi = w->qhi;
    rq->qmu = lvq ? lane_sum(q, x->mean, d) : 0.0f;
    rq->qsum = lvq ? lane_sum(q, NULL, d) : 0.0f;
    rq->qsq = lvq ? lane_sum(q, q, d) : 0.0f;
}

/* tree._query_codes: qn = pscale * (P q) - poff (P q from the int16 query against the int8 rows), the code
 * weights w = (qn + poff) * scale (ip) or 2 qn * scale (l2), their int16 form qi ~ w / iscale (the largest |w|
 * maps to 32767, or less where sum |qi| max|c| could pass 2^31 - 1) and sigma = sum(w) */
static void prepare_code_query(search_t *st, const float *q, grove_code_query *cq) {
    const grove_scan_codes *sc = st->sc;
    workspace_t *w = &st->ws;
    const int64_t p = sc->p, h = (p + 1) / 2, d = st->rows->dim;
    const int l2 = st->par->metric == GROVE_L2;
    if (sc->proj_rows > 0) {
        const float inv = 1.0f / int16_for_int8(q, d, w->qq);
        st->ops->int8_dots(w->qq, sc->proj, d, NULL, p, w->acc);
        for (int64_t j = 0; j < p; j++) w->qn[j] = (float)w->acc[j] * (sc->pscale[j] * inv) - sc->poff[j];
    } else {
        for (int64_t j = 0; j < p; j++) w->qn[j] = q[j] - sc->poff[j];
    }
    float sigma = 0.0f, wmax = 0.0f;
    for (int64_t j = 0; j < p; j++) {
        const float wj = l2 ? 2.0f * w->qn[j] : w->qn[j] + sc->poff[j];
        w->w[j] = wj * sc->scale[j];
        sigma += w->w[j];
        wmax = fmaxf(wmax, fabsf(w->w[j]));
    }
    if (sc->bits == 4)
        for (int64_t j = 0; j < h; j++) {
            w->wlo[j] = w->w[j];
            w->whi[j] = h + j < p ? w->w[h + j] : 0.0f;
        }
    const double cmax = sc->bits == 8 ? 255.0 : 15.0;
    const double alpha = fmin(32767.0, 2147483647.0 / (cmax * (double)max64(p, 1))) / (double)fmaxf(wmax, 1e-30f);
    for (int64_t j = 0; j < 2 * h; j++) w->qi[j] = j < p ? (int16_t)rint((double)w->w[j] * alpha) : 0;
    const int fast = !sc->is_float && sc->width == GROVE_FAST_WIDTH;
    if (sc->bits == 4)
        cq->path = fast ? GROVE_CODES_INT4 : GROVE_CODES_NIB;
    else
        cq->path = fast ? GROVE_CODES_INT8 : (sc->is_float ? GROVE_CODES_F32 : GROVE_CODES_U8);
    cq->l2 = l2;
    cq->w = w->w;
    cq->wlo = w->wlo;
    cq->whi = w->whi;
    cq->qi = w->qi;
    cq->iscale = (float)(1.0 / alpha);
    cq->sigma = sigma;
}

/* ---- scans into a heap ---------------------------------------------------------------------------------------- */
/* offer the live entries of lst[0:n], scored from the rows, keyed by table row (tree._scan_full) */
static void rows_into(search_t *st, const grove_row_query *rq, const int64_t *lst, int64_t n, topheap_t *top) {
    const int32_t *slot_row = st->sc->slot_row;
    float *buf = st->ws.scores;
    for (int64_t b = 0; b < n; b += SCORE_BLOCK) {
        const int64_t cnt = min64(SCORE_BLOCK, n - b);
        st->ops->row_scores(rq, st->rows, slot_row, lst + b, cnt, n - b, buf);
        for (int64_t j = 0; j < cnt; j++) {
            const int64_t slot = lst[b + j] & GROVE_ROW_MASK;
            if (slot == GROVE_DEAD) continue;
            const int64_t r = slot_row[slot];
            if (beats(top, buf[j], r)) push(top, buf[j], r);
        }
    }
}

static void prefetch_codes(const search_t *st, const int64_t *lst, int64_t lo, int64_t hi) {
    const grove_scan_codes *sc = st->sc;
    const int64_t bytes = (int64_t)sc->width * (sc->is_float ? 4 : 1);
    for (int64_t j = lo; j < min64(hi, lo + GROVE_PREFETCH_AHEAD); j++) {
        const int64_t slot = lst[j] & GROVE_ROW_MASK;
        if (slot == GROVE_DEAD) continue;
        const char *c = (const char *)sc->codes + slot * sc->stride;
        for (int64_t off = 0; off < bytes; off += 64) GROVE_PREFETCH(c + off);
        GROVE_PREFETCH(c + bytes - 1);
    }
}

/* live entries scanned since the last one that entered the heap, and whether any entered */
typedef struct {
    int64_t since;
    int entered;
} scan_outcome_t;

/* offer the live entries of lst[lo:hi], scored from their scan codes, keyed by code slot (tree._scan_codes) */
static scan_outcome_t codes_into(search_t *st, const grove_code_query *cq, const int64_t *lst, int64_t lo,
                                 int64_t hi, topheap_t *cand) {
    scan_outcome_t o = {0, 0};
    float *buf = st->ws.scores;
    prefetch_codes(st, lst, lo, hi);
    for (int64_t b = lo; b < hi; b += SCORE_BLOCK) {
        const int64_t cnt = min64(SCORE_BLOCK, hi - b);
        st->ops->code_scores(cq, st->sc, lst + b, cnt, hi - b, buf);
        for (int64_t j = 0; j < cnt; j++) {
            const int64_t slot = lst[b + j] & GROVE_ROW_MASK;
            if (slot == GROVE_DEAD) continue;
            o.since++;
            if (beats(cand, buf[j], slot)) {
                push(cand, buf[j], slot);
                o.since = 0;
                o.entered = 1;
            }
        }
    }
    return o;
}

/* ---- the leaf-order scan of a large tenant (tree._scan_leaf_order) --------------------------------------------- */
/* the node priority pbias[node] - 2 qn . c' of every leaf holding entries, in leaf-rank order, from the int8 leaf
 * centroids: pri[i] for leaf rk[i]; returns how many, with the lowest and highest (tree.leaf_priorities) */
static int64_t leaf_priorities(search_t *st, const float *qnode, float *lo_p, float *hi_p) {
    const grove_tree *t = st->tree;
    const int32_t *bounds = st->list->bounds;
    workspace_t *w = &st->ws;
    const int64_t leaves = st->list->n_bounds - 1;
    const float two = 2.0f / int16_for_int8(qnode, t->pn, w->qnode);
    int64_t m = 0;
    for (int64_t r = 0; r < leaves; r++)
        if (bounds[r + 1] > bounds[r]) w->rk[m++] = r;
    st->ops->int8_dots(w->qnode, t->leaf_cent, t->pn, w->rk, m, w->acc);
    float lo = 0.0f, hi = 0.0f;
    for (int64_t i = 0; i < m; i++) {
        const int64_t r = w->rk[i];
        const float p = t->pbias[t->leaf_node[r]] - two * t->leaf_scale[r] * (float)w->acc[i];
        w->pri[i] = p;
        lo = i == 0 ? p : fminf(lo, p);
        hi = i == 0 ? p : fmaxf(hi, p);
    }
    *lo_p = lo;
    *hi_p = hi;
    return m;
}

/* counting sort of pri[0:m] into nb uniform buckets over [lo_p, hi_p] (one per 4 items, at most MAX_BUCKETS):
 * bucket b is perm[starts[b]:starts[b + 1]], in index order until sorted, and every item of a bucket is at most
 * every item of the next. tmp (m) is scratch. Returns nb (tree.bucket_by_priority). */
static int64_t bucket_by_priority(const float *pri, int64_t m, float lo_p, float hi_p, int64_t *perm, int64_t *tmp,
                                  int64_t *starts) {
    const int64_t nb = max64(1, min64(m / 4, MAX_BUCKETS));
    const float span = hi_p - lo_p;
    /* a span too narrow to divide by puts every item in bucket 0: the bucket's sort then orders them */
    const float inv_width = span > 1e-30f ? (float)nb / span : 0.0f;
    memset(starts, 0, (size_t)(nb + 1) * sizeof(int64_t));
    for (int64_t i = 0; i < m; i++) {
        tmp[i] = min64((int64_t)((pri[i] - lo_p) * inv_width), nb - 1);
        starts[tmp[i] + 1]++;
    }
    for (int64_t b = 0; b < nb; b++) starts[b + 1] += starts[b];
    for (int64_t i = 0; i < m; i++) perm[starts[tmp[i]]++] = i; /* each cursor ends at its bucket's end ... */
    for (int64_t b = nb; b > 0; b--) starts[b] = starts[b - 1];  /* ... the next one's start: shift them back */
    starts[0] = 0;
    return nb;
}

/* perm[lo:hi] sorted by pri[perm[.]], stably: insertion sort for a few, else a bottom-up merge sort through tmp
 * (outlying priorities can crowd most leaves into a few buckets) */
static void sort_bucket(const float *pri, int64_t *perm, int64_t lo, int64_t hi, int64_t *tmp) {
    const int64_t n = hi - lo;
    int64_t *a = perm + lo;
    if (n <= INSERTION_MAX) {
        for (int64_t i = 1; i < n; i++) {
            const int64_t x = a[i];
            const float px = pri[x];
            int64_t j = i - 1;
            for (; j >= 0 && pri[a[j]] > px; j--) a[j + 1] = a[j];
            a[j + 1] = x;
        }
        return;
    }
    int64_t *src = a, *dst = tmp;
    for (int64_t width = 1; width < n; width *= 2) {
        for (int64_t l = 0; l < n; l += 2 * width) {
            const int64_t mid = min64(l + width, n), r = min64(l + 2 * width, n);
            int64_t i = l, j = mid, o = l;
            while (i < mid && j < r) dst[o++] = pri[src[j]] < pri[src[i]] ? src[j++] : src[i++];
            while (i < mid) dst[o++] = src[i++];
            while (j < r) dst[o++] = src[j++];
        }
        int64_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != a) memcpy(a, src, (size_t)n * sizeof(int64_t));
}

/* scan the tenant's leaves best first by their own priorities until the last ef scanned entries left the
 * candidates unchanged; each bucket is sorted only when the scan reaches it. Returns the entries scanned. */
static int64_t scan_leaf_order(search_t *st, const grove_code_query *cq, const float *qnode, topheap_t *cand) {
    workspace_t *w = &st->ws;
    const int64_t *main = st->list->main;
    const int32_t *bounds = st->list->bounds;
    float lo_p, hi_p;
    const int64_t m = leaf_priorities(st, qnode, &lo_p, &hi_p);
    if (m == 0) return 0;
    const int64_t nb = bucket_by_priority(w->pri, m, lo_p, hi_p, w->perm, w->tmp, w->starts);
    int64_t scanned = 0, misses = 0, pos = 0, ready = 0, b = 0; /* perm[:ready] is in its final order */
    for (;;) {
        while (pos + 1 >= ready && b < nb) { /* the next leaf's place is final too, for its prefetch */
            sort_bucket(w->pri, w->perm, w->starts[b], w->starts[b + 1], w->tmp);
            ready = w->starts[b + 1];
            b++;
        }
        if (pos >= ready) break;
        const int64_t r = w->rk[w->perm[pos]];
        if (pos + 1 < ready) {
            const int64_t nr = w->rk[w->perm[pos + 1]];
            prefetch_codes(st, main, bounds[nr], bounds[nr + 1]);
        }
        const scan_outcome_t o = codes_into(st, cq, main, bounds[r], bounds[r + 1], cand);
        scanned += bounds[r + 1] - bounds[r];
        misses = o.entered ? o.since : misses + o.since;
        pos++;
        if (misses >= st->par->ef) break;
    }
    return scanned;
}

/* ---- the best-first walk ------------------------------------------------------------------------------------ */
/* push the children of node (entries main[lo:hi]) that hold some of them, split where the leaf bounds say, or by
 * a binary search each without bounds */
static void expand(search_t *st, frontier_t *f, int32_t node, int64_t lo, int64_t hi, const float *qnode) {
    const grove_tree *t = st->tree;
    const grove_tenant_list *L = st->list;
    const int32_t c0 = t->child_start[node], c_end = c0 + t->child_count[node];
    int64_t start = lo;
    for (int32_t c = c0; c < c_end; c++) {
        int64_t stop = hi;
        if (c + 1 < c_end) {
            const int64_t next_leaf = t->leaf_lo[c + 1];
            if (L->n_bounds > 0) /* clamped: never past the node */
                stop = min64(max64((int64_t)L->bounds[next_leaf], start), hi);
            else
                stop = lower_bound(L->main, start, hi, next_leaf << GROVE_ROW_BITS);
        }
        if (stop > start) {
            const float dot = st->ops->dot(t->pcent + (int64_t)c * t->pn, qnode, t->pn);
            fpush(f, t->pbias[c] - 2.0f * dot, c, start, stop);
        }
        start = stop;
    }
}

/* best first over the tenant's subtree: a popped node of at most max_sl entries, or a leaf, is scanned; a larger
 * one expanded; stop at a scan once the last ef scanned entries left the candidates unchanged */
static int64_t walk(search_t *st, const grove_code_query *cq, const float *qnode, topheap_t *cand) {
    workspace_t *w = &st->ws;
    const int64_t *main = st->list->main;
    frontier_t f = {w->fs, w->fn, w->flo, w->fhi, 0};
    fpush(&f, 0.0f, 0, 0, st->list->n);
    int64_t scanned = 0, misses = 0;
    while (f.size > 0) {
        const int32_t node = f.node[0];
        const int64_t lo = f.lo[0], hi = f.hi[0];
        fpop(&f);
        if (hi - lo > st->par->max_sl && st->tree->child_count[node] > 0) {
            expand(st, &f, node, lo, hi, qnode);
            continue;
        }
        /* the next node popped is the frontier's best (a scan pushes nothing): start loading its codes */
        if (f.size > 0) prefetch_codes(st, main, f.lo[0], f.hi[0]);
        const scan_outcome_t o = codes_into(st, cq, main, lo, hi, cand);
        scanned += hi - lo;
        misses = o.entered ? o.since : misses + o.since;
        if (misses >= st->par->ef) break;
    }
    return scanned;
}

/* ---- one query ---------------------------------------------------------------------------------------------- */
static int64_t search_one(search_t *st, const float *q, float *out_s, int64_t *out_r) {
    const grove_tenant_list *L = st->list;
    const grove_search_params *par = st->par;
    workspace_t *w = &st->ws;
    grove_row_query rq;
    prepare_rows_query(st, q, &rq);
    topheap_t top = {w->ks, w->kr, 0, par->k};
    if (L->n + L->nt <= par->exact_max || st->tree->child_count[0] == 0) {
        rows_into(st, &rq, L->tail, L->nt, &top);
        rows_into(st, &rq, L->main, L->n, &top);
        write_best_first(&top, par->k, out_s, out_r);
        return L->n + L->nt;
    }
    grove_code_query cq;
    prepare_code_query(st, q, &cq);
    topheap_t cand = {w->hs, w->hr, 0, st->cap};
    codes_into(st, &cq, L->tail, 0, L->nt, &cand);
    int64_t scanned = L->nt;
    if (L->n <= par->flat_max) { /* a small tenant's codes are scanned whole (cheaper than walking the tree) */
        codes_into(st, &cq, L->main, 0, L->n, &cand);
        scanned += L->n;
    } else if (L->n_bounds > 0 && (double)par->ef >= LEAF_ORDER_EF_PER_LEAF * (double)(L->n_bounds - 1)) {
        scanned += scan_leaf_order(st, &cq, w->qn, &cand);
    } else {
        scanned += walk(st, &cq, w->qn, &cand);
    }
    while (cand.size > st->r2) pop_worst(&cand);
    /* the candidates' code slots, read as a list of entries, rescored from the rows */
    rows_into(st, &rq, cand.r, cand.size, &top);
    write_best_first(&top, par->k, out_s, out_r);
    return scanned;
}

/* ---- the entry point ---------------------------------------------------------------------------------------- */
static int check_rows(const grove_tree_rows *x, int metric) {
    if (x->dim < 1 || x->kind < GROVE_ROWS_F32 || x->kind > GROVE_ROWS_LVQ4) return GROVE_EINVAL;
    if (x->kind == GROVE_ROWS_F32) return x->data ? GROVE_OK : GROVE_EINVAL;
    if (!x->codes || !x->scale || !x->bias || !x->mean || (metric == GROVE_L2 && !x->sqnorm)) return GROVE_EINVAL;
    return x->kind != GROVE_ROWS_LVQ4X8 || x->residual ? GROVE_OK : GROVE_EINVAL;
}

static int check_codes(const grove_scan_codes *sc, int64_t dim, int metric) {
    if ((sc->bits != 4 && sc->bits != 8) || (sc->is_float && sc->bits != 8) || sc->p < 1 || !sc->codes)
        return GROVE_EINVAL;
    if (sc->width != (sc->bits == 8 ? sc->p : (sc->p + 1) / 2) || !sc->pscale || !sc->poff || !sc->scale)
        return GROVE_EINVAL;
    if ((sc->mul && !sc->add) || (metric == GROVE_L2 && !sc->sub)) return GROVE_EINVAL;
    if (sc->proj_rows != 0 && (sc->proj_rows != sc->p || !sc->proj)) return GROVE_EINVAL;
    return sc->proj_rows != 0 || sc->p <= dim ? GROVE_OK : GROVE_EINVAL;
}

static int check_tree(const grove_tree *t, const grove_tenant_list *L, int64_t p) {
    if (t->n_nodes < 1 || !t->child_count) return GROVE_EINVAL;
    if (t->child_count[0] == 0) return GROVE_OK; /* untrained: the search is exact and reads no more */
    if (!t->child_start || !t->leaf_lo || !t->pcent || !t->pbias || t->pn < 1 || t->pn > p) return GROVE_EINVAL;
    if (L->n_bounds > 0 && (L->n_bounds - 1 > t->n_leaves || !L->bounds || !t->leaf_cent || !t->leaf_scale ||
                            !t->leaf_node))
        return GROVE_EINVAL;
    return GROVE_OK;
}

static int check(const grove_tree_rows *rows, const grove_scan_codes *sc, const grove_tree *tree,
                 const grove_tenant_list *L, const grove_search_params *par) {
    if (!rows || !sc || !tree || !L || !par || par->k < 1 || par->cands < 1 || par->rerank < 1 || par->ef < 1)
        return GROVE_EINVAL;
    if ((par->metric != GROVE_IP && par->metric != GROVE_L2) || L->n < 0 || L->nt < 0 || L->n_bounds < 0)
        return GROVE_EINVAL;
    if ((L->n > 0 && !L->main) || (L->nt > 0 && !L->tail) || (L->n + L->nt > 0 && !sc->slot_row)) return GROVE_EINVAL;
    int rc = check_rows(rows, par->metric);
    if (rc == GROVE_OK) rc = check_tree(tree, L, sc->p);
    if (rc == GROVE_OK && tree->child_count[0] > 0 && L->n + L->nt > par->exact_max)
        rc = check_codes(sc, rows->dim, par->metric);
    return rc;
}

int64_t grove_tree_search(const grove_tree_rows *rows, const grove_scan_codes *codes, const grove_tree *tree,
                          const grove_tenant_list *list, const grove_search_params *params, const float *queries,
                          int64_t m, float *out_s, int64_t *out_r) {
    int rc = check(rows, codes, tree, list, params);
    if (rc) return rc;
    if (m < 0 || (m > 0 && (!queries || !out_s || !out_r))) return GROVE_EINVAL;
    search_t st = {0};
    st.ops = tree_ops();
    st.rows = rows;
    st.sc = codes;
    st.tree = tree;
    st.list = list;
    st.par = params;
    st.cap = max64(params->cands, params->k);
    st.r2 = max64(min64(params->rerank, st.cap), params->k);
    rc = alloc_workspace(&st);
    if (rc) return rc;
    int64_t total = 0;
    for (int64_t i = 0; i < m; i++)
        total += search_one(&st, queries + i * rows->dim, out_s + i * params->k, out_r + i * params->k);
    free(st.mem);
    return total;
}
