/* The tree search's loops over a list of entries (engine.kernels.tree._scan_codes, _scan_rows and the int8 dot
 * products of the query projection and the leaf priorities), written once for every instruction set.
 *
 * Each tree_<isa>.c defines, then includes this file:
 *   TT                      the target attribute of its functions (empty for the portable build)
 *   TREE_OPS, TREE_ISA      the name of the grove_tree_ops it defines, and its grove_isa
 *   float   k_dot_f32(const float *a, const float *b, int64_t d)          sum a_t b_t
 *   float   k_l2_f32(const float *a, const float *b, int64_t d)           sum (a_t - b_t)^2
 *   float   k_dot_u8(const float *w, const uint8_t *c, int64_t d)         sum w_t c_t
 *   float   k_dot_nib(const float *wlo, const float *whi, const uint8_t *c, int64_t h)
 *                                                                         sum wlo_t (c_t & 15) + whi_t (c_t >> 4)
 *   int32_t k_idot_u8(const int16_t *q, const uint8_t *c, int64_t d)      sum q_t c_t
 *   int32_t k_idot_nib(const int16_t *qlo, const int16_t *qhi, const uint8_t *c, int64_t h)
 *   int32_t k_idot_i8(const int16_t *q, const int8_t *a, int64_t d)       sum q_t a_t
 * all static inline with TT, so that they are inlined into the loops below (the integer ones with the literal
 * width GROVE_FAST_WIDTH, which lets the compiler unroll them completely). The integer sums cannot overflow: the
 * callers scale the int16 weights so that sum |q_t| max|c| < 2^31. */
#ifndef TREE_OPS
#error "define TREE_OPS, TREE_ISA, TT and the k_* primitives before including tree_loops.h"
#endif

/* every cache line of bytes [p, p + bytes) */
TT static inline void prefetch_bytes(const void *p, int64_t bytes) {
    const char *c = (const char *)p;
    for (int64_t off = 0; off < bytes; off += 64) GROVE_PREFETCH(c + off);
    GROVE_PREFETCH(c + bytes - 1); /* rows rarely start on a line: the last one may be one more */
}

TT static inline float code_dot(const grove_code_query *cq, const void *code, int64_t w) {
    switch (cq->path) {
    case GROVE_CODES_INT4:
        return (float)k_idot_nib(cq->qi, cq->qi + GROVE_FAST_WIDTH, (const uint8_t *)code, GROVE_FAST_WIDTH) *
               cq->iscale;
    case GROVE_CODES_INT8: return (float)k_idot_u8(cq->qi, (const uint8_t *)code, GROVE_FAST_WIDTH) * cq->iscale;
    case GROVE_CODES_NIB: return k_dot_nib(cq->wlo, cq->whi, (const uint8_t *)code, w);
    case GROVE_CODES_U8: return k_dot_u8(cq->w, (const uint8_t *)code, w);
    default: return k_dot_f32(cq->w, (const float *)code, w);
    }
}

TT static void code_scores(const grove_code_query *cq, const grove_scan_codes *sc, const int64_t *lst, int64_t n,
                           int64_t avail, float *out) {
    const int64_t w = sc->width, bytes = w * (sc->is_float ? 4 : 1);
    const char *base = (const char *)sc->codes;
    for (int64_t j = 0; j < n; j++) {
        if (j + GROVE_PREFETCH_AHEAD < avail) {
            const int64_t ahead = lst[j + GROVE_PREFETCH_AHEAD] & GROVE_ROW_MASK;
            if (ahead != GROVE_DEAD) prefetch_bytes(base + ahead * sc->stride, bytes);
        }
        const int64_t slot = lst[j] & GROVE_ROW_MASK;
        if (slot == GROVE_DEAD) continue;
        float s = code_dot(cq, base + slot * sc->stride, w);
        if (sc->mul) s = s * sc->mul[slot] + sc->add[slot] * cq->sigma;
        if (cq->l2) s -= sc->sub[slot];
        out[j] = s;
    }
}

TT static inline void prefetch_row(const grove_tree_rows *x, int64_t r) {
    if (x->kind == GROVE_ROWS_F32) {
        prefetch_bytes((const char *)x->data + r * x->data_stride, 4 * (int64_t)x->dim);
        return;
    }
    const int64_t width = x->kind == GROVE_ROWS_LVQ8 ? x->dim : (x->dim + 1) / 2;
    prefetch_bytes(x->codes + r * x->codes_stride, width);
    if (x->kind == GROVE_ROWS_LVQ4X8) prefetch_bytes(x->residual + r * x->residual_stride, x->dim);
}

/* engine.kernels.tree._dense_score / _coded_score */
TT static inline float row_score(const grove_row_query *rq, const grove_tree_rows *x, int64_t r) {
    const int64_t d = x->dim;
    if (x->kind == GROVE_ROWS_F32) {
        const float *v = (const float *)((const char *)x->data + r * x->data_stride);
        return rq->l2 ? -k_l2_f32(rq->q, v, d) : k_dot_f32(rq->q, v, d);
    }
    const uint8_t *c = x->codes + r * x->codes_stride;
    const float delta = x->scale[r];
    float v;
    if (x->kind == GROVE_ROWS_LVQ8) {
        v = rq->qmu + x->bias[r] * rq->qsum + delta * k_dot_u8(rq->q, c, d);
    } else if (x->kind == GROVE_ROWS_LVQ4) {
        v = rq->qmu + x->bias[r] * rq->qsum + delta * k_dot_nib(rq->qlo, rq->qhi, c, (d + 1) / 2);
    } else { /* LVQ-4x8: the first level's bias is shifted by half a step, the second level adds scale/255 r */
        const float s = k_dot_nib(rq->qlo, rq->qhi, c, (d + 1) / 2);
        const float s2 = k_dot_u8(rq->q, x->residual + r * x->residual_stride, d);
        v = rq->qmu + (x->bias[r] - 0.5f * delta) * rq->qsum + delta * s + delta * (1.0f / 255.0f) * s2;
    }
    return rq->l2 ? 2.0f * v - x->sqnorm[r] - rq->qsq : v;
}

TT static void row_scores(const grove_row_query *rq, const grove_tree_rows *x, const int32_t *slot_row,
                          const int64_t *lst, int64_t n, int64_t avail, float *out) {
    for (int64_t j = 0; j < n; j++) {
        if (j + 2 < avail) {
            const int64_t ahead = lst[j + 2] & GROVE_ROW_MASK;
            if (ahead != GROVE_DEAD) prefetch_row(x, slot_row[ahead]);
        }
        const int64_t slot = lst[j] & GROVE_ROW_MASK;
        if (slot == GROVE_DEAD) continue;
        out[j] = row_score(rq, x, slot_row[slot]);
    }
}

TT static void int8_dots(const int16_t *q, const int8_t *a, int64_t d, const int64_t *which, int64_t n,
                         int32_t *out) {
    for (int64_t i = 0; i < n; i++) {
        if (which && i + 4 < n) prefetch_bytes(a + which[i + 4] * d, d);
        out[i] = k_idot_i8(q, a + (which ? which[i] : i) * d, d);
    }
}

TT static float dot_f32(const float *a, const float *b, int64_t d) { return k_dot_f32(a, b, d); }

const grove_tree_ops TREE_OPS = {TREE_ISA, code_scores, row_scores, int8_dots, dot_f32};
