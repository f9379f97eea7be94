/* Portable C kernels: the fallback on every CPU, and the plainest statement of what each kernel computes. */
#include "internal.h"

static float dot_f32(const float *q, const float *x, int64_t d) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t j = 0;
    for (; j + 4 <= d; j += 4) {
        s0 += q[j] * x[j];
        s1 += q[j + 1] * x[j + 1];
        s2 += q[j + 2] * x[j + 2];
        s3 += q[j + 3] * x[j + 3];
    }
    for (; j < d; j++) s0 += q[j] * x[j];
    return (s0 + s1) + (s2 + s3);
}

static float l2_f32(const float *q, const float *x, int64_t d) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t j = 0;
    for (; j + 4 <= d; j += 4) {
        float t0 = q[j] - x[j], t1 = q[j + 1] - x[j + 1], t2 = q[j + 2] - x[j + 2], t3 = q[j + 3] - x[j + 3];
        s0 += t0 * t0;
        s1 += t1 * t1;
        s2 += t2 * t2;
        s3 += t3 * t3;
    }
    for (; j < d; j++) {
        float t = q[j] - x[j];
        s0 += t * t;
    }
    return (s0 + s1) + (s2 + s3);
}

static float dot_u8(const float *q, const uint8_t *c, int64_t d) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t j = 0;
    for (; j + 4 <= d; j += 4) {
        s0 += q[j] * (float)c[j];
        s1 += q[j + 1] * (float)c[j + 1];
        s2 += q[j + 2] * (float)c[j + 2];
        s3 += q[j + 3] * (float)c[j + 3];
    }
    for (; j < d; j++) s0 += q[j] * (float)c[j];
    return (s0 + s1) + (s2 + s3);
}

/* sum_{j<h} qa_j lo_j + sum_{j<d-h} qb_j hi_j; qb is zero past d-h and the unused high nibble is 0 */
static float dot_nib(const float *qa, const float *qb, const uint8_t *c, int64_t h) {
    float s0 = 0, s1 = 0;
    for (int64_t j = 0; j < h; j++) {
        s0 += qa[j] * (float)(c[j] & 15);
        s1 += qb[j] * (float)(c[j] >> 4);
    }
    return s0 + s1;
}

static float l2_u8(const float *q, const uint8_t *c, float lo, float step, int64_t d) {
    float s0 = 0, s1 = 0;
    int64_t j = 0;
    for (; j + 2 <= d; j += 2) {
        float t0 = q[j] - lo - step * (float)c[j];
        float t1 = q[j + 1] - lo - step * (float)c[j + 1];
        s0 += t0 * t0;
        s1 += t1 * t1;
    }
    for (; j < d; j++) {
        float t = q[j] - lo - step * (float)c[j];
        s0 += t * t;
    }
    return s0 + s1;
}

/* residual (if any) is in natural order: element j of the low half is res[j], of the high half res[h + j] */
static float l2_nib(const float *qa, const float *qb, const uint8_t *c, const uint8_t *res, float lo, float step,
                    float step2, int64_t h, int64_t d) {
    float s0 = 0, s1 = 0;
    int64_t nb = d - h;
    for (int64_t j = 0; j < h; j++) {
        float t = qa[j] - lo - step * (float)(c[j] & 15);
        if (res) t -= step2 * (float)res[j];
        s0 += t * t;
        if (j < nb) {
            float u = qb[j] - lo - step * (float)(c[j] >> 4);
            if (res) u -= step2 * (float)res[h + j];
            s1 += u * u;
        }
    }
    return s0 + s1;
}

static void score_scalar(const grove_query *q, const grove_data *x, int metric, const int64_t *rows, int64_t start,
                         int64_t n, float *out) {
    const int64_t d = x->dim, h = (d + 1) / 2;
    for (int64_t i = 0; i < n; i++) {
        const int64_t r = rows ? rows[i] : start + i;
        const uint8_t *c = grove_row(x, r);
        float s;
        switch (x->encoding) {
        case GROVE_F32:
            s = metric == GROVE_IP ? dot_f32(q->q, (const float *)c, d) : -l2_f32(q->q, (const float *)c, d);
            break;
        case GROVE_LVQ8:
            s = metric == GROVE_IP ? q->qmu + x->bias[r] * q->qsum + x->scale[r] * dot_u8(q->q, c, d)
                                   : -l2_u8(q->q, c, x->bias[r], x->scale[r], d);
            break;
        case GROVE_LVQ4:
            s = metric == GROVE_IP ? q->qmu + x->bias[r] * q->qsum + x->scale[r] * dot_nib(q->qa, q->qb, c, h)
                                   : -l2_nib(q->qa, q->qb, c, NULL, x->bias[r], x->scale[r], 0.0f, h, d);
            break;
        default: { /* GROVE_LVQ4X8 */
            const float st = x->scale[r], st2 = st / 255.0f, lo = x->bias[r] - 0.5f * st;
            const uint8_t *res = x->residual + r * x->residual_stride;
            s = metric == GROVE_IP
                    ? q->qmu + lo * q->qsum + st * dot_nib(q->qa, q->qb, c, h) + st2 * dot_u8(q->q, res, d)
                    : -l2_nib(q->qa, q->qb, c, res, lo, st, st2, h, d);
        }
        }
        out[i] = s;
    }
}

#define SMR 4
#define SNR 8
static void tile_scalar(const float *qp, const float *panel, int64_t d, float *out) {
    float acc[SMR][SNR] = {{0}};
    for (int64_t p = 0; p < d; p++) {
        const float *b = panel + p * SNR;
        const float *a = qp + p * SMR;
        for (int r = 0; r < SMR; r++)
            for (int j = 0; j < SNR; j++) acc[r][j] += a[r] * b[j];
    }
    for (int r = 0; r < SMR; r++)
        for (int j = 0; j < SNR; j++) out[r * SNR + j] = acc[r][j];
}

const grove_ops grove_ops_scalar = {GROVE_ISA_SCALAR, 0, SMR, SNR, score_scalar, tile_scalar};
