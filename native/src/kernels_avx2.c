/* AVX2 + FMA kernels (8 float lanes). Every function carries its own target attribute; the file is compiled
 * without -m flags, and dispatch.c calls into it only when the CPU reports avx2 and fma. */
#include "internal.h"

#if GROVE_X86
#include <immintrin.h>

#define T2 __attribute__((target("avx2,fma")))

T2 static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 sh = _mm_movehdup_ps(s);
    s = _mm_add_ps(s, sh);
    sh = _mm_movehl_ps(sh, s);
    return _mm_cvtss_f32(_mm_add_ss(s, sh));
}

T2 static inline __m256 u8x8(const uint8_t *c) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)c)));
}

T2 static float dot_f32(const float *q, const float *x, int64_t d) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= d; j += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), _mm256_loadu_ps(x + j), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j + 8), _mm256_loadu_ps(x + j + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j + 16), _mm256_loadu_ps(x + j + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j + 24), _mm256_loadu_ps(x + j + 24), a3);
    }
    for (; j + 8 <= d; j += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), _mm256_loadu_ps(x + j), a0);
    float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; j < d; j++) s += q[j] * x[j];
    return s;
}

T2 static float l2_f32(const float *q, const float *x, int64_t d) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= d; j += 32) {
        __m256 t0 = _mm256_sub_ps(_mm256_loadu_ps(q + j), _mm256_loadu_ps(x + j));
        __m256 t1 = _mm256_sub_ps(_mm256_loadu_ps(q + j + 8), _mm256_loadu_ps(x + j + 8));
        __m256 t2 = _mm256_sub_ps(_mm256_loadu_ps(q + j + 16), _mm256_loadu_ps(x + j + 16));
        __m256 t3 = _mm256_sub_ps(_mm256_loadu_ps(q + j + 24), _mm256_loadu_ps(x + j + 24));
        a0 = _mm256_fmadd_ps(t0, t0, a0);
        a1 = _mm256_fmadd_ps(t1, t1, a1);
        a2 = _mm256_fmadd_ps(t2, t2, a2);
        a3 = _mm256_fmadd_ps(t3, t3, a3);
    }
    for (; j + 8 <= d; j += 8) {
        __m256 t = _mm256_sub_ps(_mm256_loadu_ps(q + j), _mm256_loadu_ps(x + j));
        a0 = _mm256_fmadd_ps(t, t, a0);
    }
    float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; j < d; j++) {
        float t = q[j] - x[j];
        s += t * t;
    }
    return s;
}

T2 static float dot_u8(const float *q, const uint8_t *c, int64_t d) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= d; j += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), u8x8(c + j), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j + 8), u8x8(c + j + 8), a1);
    }
    for (; j + 8 <= d; j += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), u8x8(c + j), a0);
    float s = hsum8(_mm256_add_ps(a0, a1));
    for (; j < d; j++) s += q[j] * (float)c[j];
    return s;
}

T2 static float dot_nib(const float *qa, const float *qb, const uint8_t *c, int64_t h) {
    const __m256i m15 = _mm256_set1_epi32(15);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= h; j += 8) {
        __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(c + j)));
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qa + j), _mm256_cvtepi32_ps(_mm256_and_si256(b, m15)), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qb + j), _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4)), a1);
    }
    float s = hsum8(_mm256_add_ps(a0, a1));
    for (; j < h; j++) s += qa[j] * (float)(c[j] & 15) + qb[j] * (float)(c[j] >> 4);
    return s;
}

T2 static float l2_u8(const float *q, const uint8_t *c, float lo, float step, int64_t d) {
    const __m256 vl = _mm256_set1_ps(lo), vs = _mm256_set1_ps(step);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= d; j += 16) {
        __m256 t0 = _mm256_fnmadd_ps(vs, u8x8(c + j), _mm256_sub_ps(_mm256_loadu_ps(q + j), vl));
        __m256 t1 = _mm256_fnmadd_ps(vs, u8x8(c + j + 8), _mm256_sub_ps(_mm256_loadu_ps(q + j + 8), vl));
        a0 = _mm256_fmadd_ps(t0, t0, a0);
        a1 = _mm256_fmadd_ps(t1, t1, a1);
    }
    for (; j + 8 <= d; j += 8) {
        __m256 t = _mm256_fnmadd_ps(vs, u8x8(c + j), _mm256_sub_ps(_mm256_loadu_ps(q + j), vl));
        a0 = _mm256_fmadd_ps(t, t, a0);
    }
    float s = hsum8(_mm256_add_ps(a0, a1));
    for (; j < d; j++) {
        float t = q[j] - lo - step * (float)c[j];
        s += t * t;
    }
    return s;
}

T2 static float l2_nib(const float *qa, const float *qb, const uint8_t *c, const uint8_t *res, float lo, float step,
                       float step2, int64_t h, int64_t d) {
    const __m256i m15 = _mm256_set1_epi32(15);
    const __m256 vl = _mm256_set1_ps(lo), vs = _mm256_set1_ps(step), vs2 = _mm256_set1_ps(step2);
    const int64_t nb = d - h; /* the high half has nb <= h elements */
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= nb; j += 8) {
        __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(c + j)));
        __m256 t0 = _mm256_fnmadd_ps(vs, _mm256_cvtepi32_ps(_mm256_and_si256(b, m15)),
                                     _mm256_sub_ps(_mm256_loadu_ps(qa + j), vl));
        __m256 t1 = _mm256_fnmadd_ps(vs, _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4)),
                                     _mm256_sub_ps(_mm256_loadu_ps(qb + j), vl));
        if (res) {
            t0 = _mm256_fnmadd_ps(vs2, u8x8(res + j), t0);
            t1 = _mm256_fnmadd_ps(vs2, u8x8(res + h + j), t1);
        }
        a0 = _mm256_fmadd_ps(t0, t0, a0);
        a1 = _mm256_fmadd_ps(t1, t1, a1);
    }
    float s = hsum8(_mm256_add_ps(a0, a1));
    for (; j < h; j++) {
        float t = qa[j] - lo - step * (float)(c[j] & 15);
        if (res) t -= step2 * (float)res[j];
        s += t * t;
        if (j < nb) {
            float u = qb[j] - lo - step * (float)(c[j] >> 4);
            if (res) u -= step2 * (float)res[h + j];
            s += u * u;
        }
    }
    return s;
}

T2 static void score_avx2(const grove_query *q, const grove_data *x, int metric, const int64_t *rows, int64_t start,
                          int64_t n, float *out) {
    const int64_t d = x->dim, h = (d + 1) / 2;
    for (int64_t i = 0; i < n; i++) {
        const int64_t r = rows ? rows[i] : start + i;
        if (rows && i + 4 < n) __builtin_prefetch(grove_row(x, rows[i + 4]));
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
        default: {
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

/* 6 queries x 16 rows: 12 accumulators, 2 panel loads and 6 broadcasts per step of p */
#define AMR 6
#define ANR 16
T2 static void tile_avx2(const float *qp, const float *panel, int64_t d, float *out) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(),
           c11 = _mm256_setzero_ps(), c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(),
           c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps(), c40 = _mm256_setzero_ps(),
           c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    for (int64_t p = 0; p < d; p++) {
        const __m256 b0 = _mm256_loadu_ps(panel + p * ANR), b1 = _mm256_loadu_ps(panel + p * ANR + 8);
        const float *a = qp + p * AMR;
        __m256 v = _mm256_broadcast_ss(a);
        c00 = _mm256_fmadd_ps(v, b0, c00);
        c01 = _mm256_fmadd_ps(v, b1, c01);
        v = _mm256_broadcast_ss(a + 1);
        c10 = _mm256_fmadd_ps(v, b0, c10);
        c11 = _mm256_fmadd_ps(v, b1, c11);
        v = _mm256_broadcast_ss(a + 2);
        c20 = _mm256_fmadd_ps(v, b0, c20);
        c21 = _mm256_fmadd_ps(v, b1, c21);
        v = _mm256_broadcast_ss(a + 3);
        c30 = _mm256_fmadd_ps(v, b0, c30);
        c31 = _mm256_fmadd_ps(v, b1, c31);
        v = _mm256_broadcast_ss(a + 4);
        c40 = _mm256_fmadd_ps(v, b0, c40);
        c41 = _mm256_fmadd_ps(v, b1, c41);
        v = _mm256_broadcast_ss(a + 5);
        c50 = _mm256_fmadd_ps(v, b0, c50);
        c51 = _mm256_fmadd_ps(v, b1, c51);
    }
    _mm256_storeu_ps(out + 0 * ANR, c00);
    _mm256_storeu_ps(out + 0 * ANR + 8, c01);
    _mm256_storeu_ps(out + 1 * ANR, c10);
    _mm256_storeu_ps(out + 1 * ANR + 8, c11);
    _mm256_storeu_ps(out + 2 * ANR, c20);
    _mm256_storeu_ps(out + 2 * ANR + 8, c21);
    _mm256_storeu_ps(out + 3 * ANR, c30);
    _mm256_storeu_ps(out + 3 * ANR + 8, c31);
    _mm256_storeu_ps(out + 4 * ANR, c40);
    _mm256_storeu_ps(out + 4 * ANR + 8, c41);
    _mm256_storeu_ps(out + 5 * ANR, c50);
    _mm256_storeu_ps(out + 5 * ANR + 8, c51);
}

const grove_ops grove_ops_avx2 = {GROVE_ISA_AVX2, 0, AMR, ANR, score_avx2, tile_avx2};
#endif
