/* Shared between dispatch.c and the per-ISA kernel files; not part of the ABI. */
#ifndef GROVE_INTERNAL_H
#define GROVE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "grove_kernels.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define GROVE_X86 1
#else
#define GROVE_X86 0
#endif

/* Prepared queries are zero padded to a multiple of this many elements plus this many more, and have this many
 * zeros in front, so a SIMD load that starts within GROVE_PAD elements of the query stays inside the buffer. */
#define GROVE_PAD 64
/* rows scored per block before their scores are offered to the heaps (the scan path) */
#define GROVE_BLOCK 256

/* One query prepared for one data set and metric (dispatch.c fills it in).
 * q: the query, or q - mean for LVQ with GROVE_L2; [dpad] zero padded (GROVE_PAD).
 * qa, qb: q[0:h] and q[h:dim] (h = ceil(dim/2)), each zero padded to hpad, for split-half nibbles.
 * q8, qa8, qb8 (VNNI only): q ~= qscale * (128 * hi + lo) with hi, lo int8 ([0] = hi, [1] = lo), same layouts.
 * qmu = <q, mean>, qsum = sum(q), for LVQ with GROVE_IP. */
typedef struct grove_query {
    const float *q;
    const float *qa;
    const float *qb;
    const int8_t *q8[2];
    const int8_t *qa8[2];
    const int8_t *qb8[2];
    float qscale;
    float qmu;
    float qsum;
} grove_query;

typedef struct grove_ops {
    int isa;
    int vnni; /* whether score() reads the int8 query parts for LVQ with GROVE_IP */
    int mr;   /* queries per tile */
    int nr;   /* rows per tile (a panel) */
    /* out[i] = surrogate score of row (rows ? rows[i] : start + i), for i < n */
    void (*score)(const grove_query *q, const grove_data *x, int metric, const int64_t *rows, int64_t start,
                  int64_t n, float *out);
    /* out[r][j] = sum_p qp[p][r] * panel[p][j] for r < mr, j < nr (qp: [d][mr], panel: [d][nr]) */
    void (*tile)(const float *qp, const float *panel, int64_t d, float *out);
} grove_ops;

static inline const uint8_t *grove_row(const grove_data *x, int64_t r) {
    return (const uint8_t *)x->codes + r * x->stride;
}

extern const grove_ops grove_ops_scalar;
#if GROVE_X86
extern const grove_ops grove_ops_avx2;
extern const grove_ops grove_ops_avx512;
extern const grove_ops grove_ops_avx512vnni;
#endif

/* ---- the tree search's inner loops (tree_search.c drives them; tree_loops.h holds them once for every ISA) -- */
/* scan-code entries prefetched ahead of the one being scored (engine.kernels.tree.PREFETCH_AHEAD) */
#define GROVE_PREFETCH_AHEAD 16
/* byte codes this wide are scored in integers (engine.kernels.tree.FAST_WIDTH) */
#define GROVE_FAST_WIDTH 128
#define GROVE_ROW_MASK 0xFFFFFFFFLL
/* a hint to load the cache line holding p (read, keep in all levels); nothing where the compiler has no builtin */
#if defined(__GNUC__) || defined(__clang__)
#define GROVE_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define GROVE_PREFETCH(p) ((void)(p))
#endif

/* how code_scores computes <w, c> */
enum grove_code_path {
    GROVE_CODES_INT4 = 0, /* 4-bit codes, FAST_WIDTH bytes: iscale * sum qi_t (c_t & 15) + qi_{h+t} (c_t >> 4) */
    GROVE_CODES_INT8 = 1, /* 8-bit codes, FAST_WIDTH bytes: iscale * sum qi_t c_t */
    GROVE_CODES_NIB = 2,  /* 4-bit codes: sum w_t (c_t & 15) + w_{h+t} (c_t >> 4) in float */
    GROVE_CODES_U8 = 3,   /* 8-bit codes: sum w_t c_t in float */
    GROVE_CODES_F32 = 4   /* float32 codes */
};

/* A query in scan-code space (tree_search.c fills it in). w: the weights [p]; wlo = w[0:h], whi = w[h:p]
 * (zero padded to h) for 4-bit codes; qi: int16 weights ~ w / iscale ([2h]: the low then the high halves for
 * 4-bit codes); sigma = sum(w). */
typedef struct grove_code_query {
    int path;
    int l2;
    const float *w;
    const float *wlo;
    const float *whi;
    const int16_t *qi;
    float iscale;
    float sigma;
} grove_code_query;

/* A query as the rows score it: q [dim]; qlo = q[0:h], qhi = q[h:dim] zero padded to h (LVQ-4 rows);
 * qmu = q . mean, qsum = sum(q), qsq = |q|^2 (LVQ rows). */
typedef struct grove_row_query {
    int l2;
    const float *q;
    const float *qlo;
    const float *qhi;
    float qmu;
    float qsum;
    float qsq;
} grove_row_query;

typedef struct grove_tree_ops {
    int isa;
    /* out[j] = the score of the code of entry lst[j], for the live entries among j < n (a DEAD one's out[j] is
     * left as it was); entries up to lst[avail - 1] (avail >= n) may be prefetched */
    void (*code_scores)(const grove_code_query *cq, const grove_scan_codes *sc, const int64_t *lst, int64_t n,
                        int64_t avail, float *out);
    /* the same from the rows: the surrogate score of table row slot_row[slot of lst[j]] */
    void (*row_scores)(const grove_row_query *rq, const grove_tree_rows *x, const int32_t *slot_row,
                       const int64_t *lst, int64_t n, int64_t avail, float *out);
    /* out[i] = sum_t q[t] * a[r][t] (t < d, in int32) for r = which[i] (which NULL: r = i), i < n; a: int8 [*][d] */
    void (*int8_dots)(const int16_t *q, const int8_t *a, int64_t d, const int64_t *which, int64_t n, int32_t *out);
    /* sum_t a[t] * b[t], t < d */
    float (*dot)(const float *a, const float *b, int64_t d);
} grove_tree_ops;

extern const grove_tree_ops grove_tree_ops_scalar;
#if GROVE_X86
extern const grove_tree_ops grove_tree_ops_avx2;
extern const grove_tree_ops grove_tree_ops_avx512;
#endif

#endif
