/* Portable C primitives of the tree search (tree_loops.h): the fallback on every CPU, and the plainest statement
 * of what each one computes. */
#include "internal.h"

#define TT
#define TREE_OPS grove_tree_ops_scalar
#define TREE_ISA GROVE_ISA_SCALAR

/* LANES independent partial sums (summed at the end) keep each loop free of a single long dependency chain and
 * let the compiler vectorise it for whatever the baseline ISA is (SSE2, NEON) without reassociating float sums */
#define LANES 16

static inline float lanes_sum(const float *acc) {
    float s = 0.0f;
    for (int l = 0; l < LANES; l++) s += acc[l];
    return s;
}

static inline float k_dot_f32(const float *a, const float *b, int64_t d) {
    float acc[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= d; j += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += a[j + l] * b[j + l];
    for (; j < d; j++) acc[0] += a[j] * b[j];
    return lanes_sum(acc);
}

static inline float k_l2_f32(const float *a, const float *b, int64_t d) {
    float acc[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= d; j += LANES)
        for (int l = 0; l < LANES; l++) {
            const float t = a[j + l] - b[j + l];
            acc[l] += t * t;
        }
    for (; j < d; j++) {
        const float t = a[j] - b[j];
        acc[0] += t * t;
    }
    return lanes_sum(acc);
}

static inline float k_dot_u8(const float *w, const uint8_t *c, int64_t d) {
    float acc[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= d; j += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += w[j + l] * (float)c[j + l];
    for (; j < d; j++) acc[0] += w[j] * (float)c[j];
    return lanes_sum(acc);
}

static inline float k_dot_nib(const float *wlo, const float *whi, const uint8_t *c, int64_t h) {
    float lo[LANES] = {0}, hi[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= h; j += LANES)
        for (int l = 0; l < LANES; l++) {
            lo[l] += wlo[j + l] * (float)(c[j + l] & 15);
            hi[l] += whi[j + l] * (float)(c[j + l] >> 4);
        }
    for (; j < h; j++) {
        lo[0] += wlo[j] * (float)(c[j] & 15);
        hi[0] += whi[j] * (float)(c[j] >> 4);
    }
    return lanes_sum(lo) + lanes_sum(hi);
}

static inline int32_t k_idot_u8(const int16_t *q, const uint8_t *c, int64_t d) {
    int32_t s = 0;
    for (int64_t j = 0; j < d; j++) s += (int32_t)q[j] * (int32_t)c[j];
    return s;
}

static inline int32_t k_idot_nib(const int16_t *qlo, const int16_t *qhi, const uint8_t *c, int64_t h) {
    int32_t s = 0;
    for (int64_t j = 0; j < h; j++) s += (int32_t)qlo[j] * (int32_t)(c[j] & 15) + (int32_t)qhi[j] * (int32_t)(c[j] >> 4);
    return s;
}

static inline int32_t k_idot_i8(const int16_t *q, const int8_t *a, int64_t d) {
    int32_t s = 0;
    for (int64_t j = 0; j < d; j++) s += (int32_t)q[j] * (int32_t)a[j];
    return s;
}

#include "tree_loops.h"
