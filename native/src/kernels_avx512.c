/* AVX-512 kernels (16 float lanes, masked tails), and the VNNI variants of the LVQ inner products.
 * Every function carries its own target attribute; the file is compiled without -m flags, and dispatch.c calls
 * into it only when the CPU reports avx512f/bw/vl/dq (and avx512vnni for grove_ops_avx512vnni). */
#include "internal.h"

#if GROVE_X86
#include <immintrin.h>

#define T5 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define TV __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx512vnni")))

T5 static inline __mmask16 m16(int64_t left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1); }

T5 static inline __m512 u8x16(const uint8_t *c) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)c)));
}

T5 static inline __m512 u8x16m(__mmask16 m, const uint8_t *c) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, c)));
}

/* numpy puts large arrays at 16 mod 64, and a 512-bit load that crosses a cache line (even with the crossing part
 * masked off) is slow, so the loops start with one masked load from the 64-byte boundary below x: lanes [mis, 16)
 * hold x[0 .. 16 - mis), and the query is read from q - mis (prepared queries have GROVE_PAD zeros in front).
 * Returns mis (0 when x is aligned, or not 4-byte aligned). */
T5 static inline int64_t mis_f32(const float *x) {
    return ((uintptr_t)x & 3) ? 0 : (int64_t)(((uintptr_t)x & 63) >> 2);
}

T5 static inline __mmask16 head16(int64_t mis, int64_t d) {
    int64_t end = mis + d < 16 ? mis + d : 16;
    return (__mmask16)(((1u << end) - 1) & ~((1u << mis) - 1));
}

T5 static float dot_f32(const float *q, const float *x, int64_t d) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    const int64_t mis = mis_f32(x);
    int64_t j = 0;
    if (mis) {
        a0 = _mm512_mul_ps(_mm512_loadu_ps(q - mis), _mm512_maskz_load_ps(head16(mis, d), x - mis));
        j = 16 - mis;
    }
    for (; j + 64 <= d; j += 64) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j), _mm512_load_ps(x + j), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j + 16), _mm512_load_ps(x + j + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j + 32), _mm512_load_ps(x + j + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j + 48), _mm512_load_ps(x + j + 48), a3);
    }
    for (; j + 16 <= d; j += 16) a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j), _mm512_loadu_ps(x + j), a1);
    if (j < d) a2 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j), _mm512_maskz_loadu_ps(m16(d - j), x + j), a2);
    /* j >= d here when the head load covered everything */
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

T5 static float l2_f32(const float *q, const float *x, int64_t d) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    const int64_t mis = mis_f32(x);
    int64_t j = 0;
    if (mis) {
        const __mmask16 m = head16(mis, d);
        __m512 t = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, q - mis), _mm512_maskz_load_ps(m, x - mis));
        a0 = _mm512_mul_ps(t, t);
        j = 16 - mis;
    }
    for (; j + 64 <= d; j += 64) {
        __m512 t0 = _mm512_sub_ps(_mm512_loadu_ps(q + j), _mm512_load_ps(x + j));
        __m512 t1 = _mm512_sub_ps(_mm512_loadu_ps(q + j + 16), _mm512_load_ps(x + j + 16));
        __m512 t2 = _mm512_sub_ps(_mm512_loadu_ps(q + j + 32), _mm512_load_ps(x + j + 32));
        __m512 t3 = _mm512_sub_ps(_mm512_loadu_ps(q + j + 48), _mm512_load_ps(x + j + 48));
        a0 = _mm512_fmadd_ps(t0, t0, a0);
        a1 = _mm512_fmadd_ps(t1, t1, a1);
        a2 = _mm512_fmadd_ps(t2, t2, a2);
        a3 = _mm512_fmadd_ps(t3, t3, a3);
    }
    for (; j + 16 <= d; j += 16) {
        __m512 t = _mm512_sub_ps(_mm512_loadu_ps(q + j), _mm512_loadu_ps(x + j));
        a1 = _mm512_fmadd_ps(t, t, a1);
    }
    if (j < d) {
        __mmask16 m = m16(d - j);
        __m512 t = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, q + j), _mm512_maskz_loadu_ps(m, x + j));
        a2 = _mm512_fmadd_ps(t, t, a2);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

T5 static float dot_u8(const float *q, const uint8_t *c, int64_t d) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= d; j += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j), u8x16(c + j), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j + 16), u8x16(c + j + 16), a1);
    }
    for (; j < d; j += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + j), u8x16m(m16(d - j), c + j), a0);
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

T5 static inline void nib16(__m512i b, const float *qa, const float *qb, __m512 *a0, __m512 *a1) {
    const __m512i m15 = _mm512_set1_epi32(15);
    *a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qa), _mm512_cvtepi32_ps(_mm512_and_si512(b, m15)), *a0);
    *a1 = _mm512_fmadd_ps(_mm512_loadu_ps(qb), _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4)), *a1);
}

T5 static float dot_nib(const float *qa, const float *qb, const uint8_t *c, int64_t h) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= h; j += 32) {
        nib16(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(c + j))), qa + j, qb + j, &a0, &a1);
        nib16(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(c + j + 16))), qa + j + 16, qb + j + 16, &a2,
              &a3);
    }
    for (; j < h; j += 16) nib16(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m16(h - j), c + j)), qa + j, qb + j, &a0, &a1);
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

T5 static float l2_u8(const float *q, const uint8_t *c, float lo, float step, int64_t d) {
    const __m512 vl = _mm512_set1_ps(lo), vs = _mm512_set1_ps(step);
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= d; j += 32) {
        __m512 t0 = _mm512_fnmadd_ps(vs, u8x16(c + j), _mm512_sub_ps(_mm512_loadu_ps(q + j), vl));
        __m512 t1 = _mm512_fnmadd_ps(vs, u8x16(c + j + 16), _mm512_sub_ps(_mm512_loadu_ps(q + j + 16), vl));
        a0 = _mm512_fmadd_ps(t0, t0, a0);
        a1 = _mm512_fmadd_ps(t1, t1, a1);
    }
    for (; j < d; j += 16) {
        __mmask16 m = m16(d - j);
        __m512 t = _mm512_fnmadd_ps(vs, u8x16m(m, c + j), _mm512_sub_ps(_mm512_loadu_ps(q + j), vl));
        a0 = _mm512_mask3_fmadd_ps(t, t, a0, m);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

T5 static inline void l2nib16(__m512i b, const float *qa, const float *qb, const uint8_t *ra, const uint8_t *rb,
                               __m512 vl, __m512 vs, __m512 vs2, __mmask16 ml, __mmask16 mh, __m512 *a0, __m512 *a1) {
    const __m512i m15 = _mm512_set1_epi32(15);
    __m512 t0 = _mm512_fnmadd_ps(vs, _mm512_cvtepi32_ps(_mm512_and_si512(b, m15)), _mm512_sub_ps(_mm512_loadu_ps(qa), vl));
    __m512 t1 = _mm512_fnmadd_ps(vs, _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4)), _mm512_sub_ps(_mm512_loadu_ps(qb), vl));
    if (ra) {
        t0 = _mm512_fnmadd_ps(vs2, u8x16m(ml, ra), t0);
        t1 = _mm512_fnmadd_ps(vs2, u8x16m(mh, rb), t1);
    }
    *a0 = _mm512_mask3_fmadd_ps(t0, t0, *a0, ml);
    *a1 = _mm512_mask3_fmadd_ps(t1, t1, *a1, mh);
}

/* the high half has nb = d - h <= h elements; lanes past it are masked out of the sums */
T5 static float l2_nib(const float *qa, const float *qb, const uint8_t *c, const uint8_t *res, float lo, float step,
                       float step2, int64_t h, int64_t d) {
    const __m512 vl = _mm512_set1_ps(lo), vs = _mm512_set1_ps(step), vs2 = _mm512_set1_ps(step2);
    const int64_t nb = d - h;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= nb; j += 16)
        l2nib16(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(c + j))), qa + j, qb + j,
                res ? res + j : NULL, res ? res + h + j : NULL, vl, vs, vs2, 0xFFFF, 0xFFFF, &a0, &a1);
    for (; j < h; j += 16) {
        const __mmask16 ml = m16(h - j), mh = nb > j ? m16(nb - j) : 0;
        l2nib16(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(ml, c + j)), qa + j, qb + j, res ? res + j : NULL,
                res ? res + h + j : NULL, vl, vs, vs2, ml, mh, &a0, &a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

T5 static void score_avx512(const grove_query *q, const grove_data *x, int metric, const int64_t *rows,
                            int64_t start, int64_t n, float *out) {
    /* float32 scans are memory-bound: on the Zen 5 development machine the 512-bit loop measured no faster than
     * the AVX2 one at dim 384 and 1.6x slower at dim 128 (cause not found), so float32 rows take the AVX2 loop. */
    if (x->encoding == GROVE_F32) {
        grove_ops_avx2.score(q, x, metric, rows, start, n, out);
        return;
    }
    const int64_t d = x->dim, h = (d + 1) / 2;
    for (int64_t i = 0; i < n; i++) {
        const int64_t r = rows ? rows[i] : start + i;
        if (rows && i + 4 < n) __builtin_prefetch(grove_row(x, rows[i + 4]));
        const uint8_t *c = grove_row(x, r);
        float s;
        switch (x->encoding) {
        case GROVE_F32: /* not reached: see the note at the top of score_avx512 */
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

/* ---- VNNI: integer dot products of 8-bit (or 4-bit) codes with the query quantized to 15 bits ----------------
 * q_j ~= qscale * (128 hi_j + lo_j) with hi, lo int8; vpdpbusd multiplies the unsigned codes by the signed parts
 * and sums into int32 lanes exactly, so the only error is the query rounding, |q_j - qscale qq_j| <= qscale / 2
 * with qscale = max|q| / 16256. The two accumulators are combined as floats (exact below 2^24 per lane). */
TV static inline float vsum(__m512i hi, __m512i lo) {
    return _mm512_reduce_add_ps(
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), _mm512_set1_ps(128.0f), _mm512_cvtepi32_ps(lo)));
}

TV static inline __mmask64 m64(int64_t left) { return left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << left) - 1); }

/* as mis_f32/head16 for bytes: the first load is from the 64-byte boundary below c, lanes [mis, 64) */
TV static inline __mmask64 head64(int64_t mis, int64_t d) {
    int64_t end = mis + d < 64 ? mis + d : 64;
    __mmask64 upto = end >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << end) - 1);
    return upto & ~(((__mmask64)1 << mis) - 1);
}

/* the query parts have GROVE_PAD zeros before and after them, so every load below stays inside the buffer */
TV static float vdot_u8(const int8_t *qh, const int8_t *ql, const uint8_t *c, int64_t d) {
    __m512i h0 = _mm512_setzero_si512(), l0 = _mm512_setzero_si512();
    __m512i h1 = _mm512_setzero_si512(), l1 = _mm512_setzero_si512();
    const int64_t mis = (int64_t)((uintptr_t)c & 63);
    int64_t j = 0;
    if (mis) {
        __m512i v = _mm512_maskz_loadu_epi8(head64(mis, d), c - mis);
        h0 = _mm512_dpbusd_epi32(h0, v, _mm512_loadu_si512(qh - mis));
        l0 = _mm512_dpbusd_epi32(l0, v, _mm512_loadu_si512(ql - mis));
        j = 64 - mis;
    }
    for (; j + 128 <= d; j += 128) {
        __m512i v0 = _mm512_load_si512(c + j), v1 = _mm512_load_si512(c + j + 64);
        h0 = _mm512_dpbusd_epi32(h0, v0, _mm512_loadu_si512(qh + j));
        l0 = _mm512_dpbusd_epi32(l0, v0, _mm512_loadu_si512(ql + j));
        h1 = _mm512_dpbusd_epi32(h1, v1, _mm512_loadu_si512(qh + j + 64));
        l1 = _mm512_dpbusd_epi32(l1, v1, _mm512_loadu_si512(ql + j + 64));
    }
    for (; j < d; j += 64) {
        __m512i v = _mm512_maskz_loadu_epi8(m64(d - j), c + j);
        h0 = _mm512_dpbusd_epi32(h0, v, _mm512_loadu_si512(qh + j));
        l0 = _mm512_dpbusd_epi32(l0, v, _mm512_loadu_si512(ql + j));
    }
    return vsum(_mm512_add_epi32(h0, h1), _mm512_add_epi32(l0, l1));
}

TV static inline void vnib64(__m512i b, const grove_query *q, int64_t j, __m512i *hi, __m512i *lo) {
    const __m512i m15 = _mm512_set1_epi8(15);
    __m512i cl = _mm512_and_si512(b, m15), ch = _mm512_and_si512(_mm512_srli_epi16(b, 4), m15);
    hi[0] = _mm512_dpbusd_epi32(hi[0], cl, _mm512_loadu_si512(q->qa8[0] + j));
    lo[0] = _mm512_dpbusd_epi32(lo[0], cl, _mm512_loadu_si512(q->qa8[1] + j));
    hi[1] = _mm512_dpbusd_epi32(hi[1], ch, _mm512_loadu_si512(q->qb8[0] + j));
    lo[1] = _mm512_dpbusd_epi32(lo[1], ch, _mm512_loadu_si512(q->qb8[1] + j));
}

TV static float vdot_nib(const grove_query *q, const uint8_t *c, int64_t h) {
    __m512i hi[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
    __m512i lo[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
    const int64_t mis = (int64_t)((uintptr_t)c & 63);
    int64_t j = 0;
    if (mis) {
        vnib64(_mm512_maskz_loadu_epi8(head64(mis, h), c - mis), q, -mis, hi, lo);
        j = 64 - mis;
    }
    for (; j + 64 <= h; j += 64) vnib64(_mm512_load_si512(c + j), q, j, hi, lo);
    if (j < h) vnib64(_mm512_maskz_loadu_epi8(m64(h - j), c + j), q, j, hi, lo);
    return vsum(_mm512_add_epi32(hi[0], hi[1]), _mm512_add_epi32(lo[0], lo[1]));
}

TV static void score_vnni(const grove_query *q, const grove_data *x, int metric, const int64_t *rows, int64_t start,
                          int64_t n, float *out) {
    if (metric != GROVE_IP || x->encoding == GROVE_F32) {
        score_avx512(q, x, metric, rows, start, n, out);
        return;
    }
    const int64_t d = x->dim, h = (d + 1) / 2;
    const float qs = q->qscale;
    for (int64_t i = 0; i < n; i++) {
        const int64_t r = rows ? rows[i] : start + i;
        if (rows && i + 4 < n) __builtin_prefetch(grove_row(x, rows[i + 4]));
        const uint8_t *c = grove_row(x, r);
        float s;
        switch (x->encoding) {
        case GROVE_LVQ8:
            s = q->qmu + x->bias[r] * q->qsum + x->scale[r] * qs * vdot_u8(q->q8[0], q->q8[1], c, d);
            break;
        case GROVE_LVQ4:
            s = q->qmu + x->bias[r] * q->qsum + x->scale[r] * qs * vdot_nib(q, c, h);
            break;
        default: {
            const float st = x->scale[r], lo = x->bias[r] - 0.5f * st;
            const uint8_t *res = x->residual + r * x->residual_stride;
            s = q->qmu + lo * q->qsum +
                st * qs * (vdot_nib(q, c, h) + vdot_u8(q->q8[0], q->q8[1], res, d) * (1.0f / 255.0f));
        }
        }
        out[i] = s;
    }
}

/* ---- the batch microkernel: 8 queries x 32 rows, 16 zmm accumulators ------------------------------------- */
#define ZMR 8
#define ZNR 32
#define ZROW(r)                                                                                                    \
    do {                                                                                                           \
        const __m512 v = _mm512_set1_ps(a[r]);                                                                     \
        c##r##0 = _mm512_fmadd_ps(v, b0, c##r##0);                                                                 \
        c##r##1 = _mm512_fmadd_ps(v, b1, c##r##1);                                                                 \
    } while (0)
#define ZSTORE(r)                                                                                                  \
    do {                                                                                                           \
        _mm512_storeu_ps(out + r * ZNR, c##r##0);                                                                  \
        _mm512_storeu_ps(out + r * ZNR + 16, c##r##1);                                                             \
    } while (0)

T5 static void tile_avx512(const float *qp, const float *panel, int64_t d, float *out) {
    __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps(), c10 = _mm512_setzero_ps(),
           c11 = _mm512_setzero_ps(), c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps(),
           c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps(), c40 = _mm512_setzero_ps(),
           c41 = _mm512_setzero_ps(), c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps(),
           c60 = _mm512_setzero_ps(), c61 = _mm512_setzero_ps(), c70 = _mm512_setzero_ps(),
           c71 = _mm512_setzero_ps();
    for (int64_t p = 0; p < d; p++) {
        const __m512 b0 = _mm512_loadu_ps(panel + p * ZNR), b1 = _mm512_loadu_ps(panel + p * ZNR + 16);
        const float *a = qp + p * ZMR;
        ZROW(0);
        ZROW(1);
        ZROW(2);
        ZROW(3);
        ZROW(4);
        ZROW(5);
        ZROW(6);
        ZROW(7);
    }
    ZSTORE(0);
    ZSTORE(1);
    ZSTORE(2);
    ZSTORE(3);
    ZSTORE(4);
    ZSTORE(5);
    ZSTORE(6);
    ZSTORE(7);
}

const grove_ops grove_ops_avx512 = {GROVE_ISA_AVX512, 0, ZMR, ZNR, score_avx512, tile_avx512};
const grove_ops grove_ops_avx512vnni = {GROVE_ISA_AVX512VNNI, 1, ZMR, ZNR, score_vnni, tile_avx512};
#endif
