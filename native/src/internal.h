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

#endif
