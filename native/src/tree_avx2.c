/* AVX2 + FMA primitives of the tree search (tree_loops.h): 8 float lanes, and 16 int16 x byte products per
 * vpmaddwd for the integer paths. Compiled without -m flags; every function carries its target attribute, and
 * tree_search.c calls in here only when the CPU reports avx2 and fma. */
#include "internal.h"

#if GROVE_X86
#include <immintrin.h>

#define TT __attribute__((target("avx2,fma")))
#define TREE_OPS grove_tree_ops_avx2
#define TREE_ISA GROVE_ISA_AVX2

TT static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 sh = _mm_movehdup_ps(s);
    s = _mm_add_ps(s, sh);
    sh = _mm_movehl_ps(sh, s);
    return _mm_cvtss_f32(_mm_add_ss(s, sh));
}

TT static inline int32_t hsum8i(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

TT static inline __m256 u8x8(const uint8_t *c) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)c)));
}

TT static inline __m256i u8x16(const uint8_t *c) { return _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)c)); }

TT static inline __m256i i16x16(const int16_t *q) { return _mm256_loadu_si256((const __m256i *)q); }

TT static inline float k_dot_f32(const float *a, const float *b, int64_t d) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= d; j += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j + 8), _mm256_loadu_ps(b + j + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j + 16), _mm256_loadu_ps(b + j + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j + 24), _mm256_loadu_ps(b + j + 24), a3);
    }
    for (; j + 8 <= d; j += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), a0);
    float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; j < d; j++) s += a[j] * b[j];
    return s;
}

TT static inline float k_l2_f32(const float *a, const float *b, int64_t d) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= d; j += 32) {
        const __m256 t0 = _mm256_sub_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j));
        const __m256 t1 = _mm256_sub_ps(_mm256_loadu_ps(a + j + 8), _mm256_loadu_ps(b + j + 8));
        const __m256 t2 = _mm256_sub_ps(_mm256_loadu_ps(a + j + 16), _mm256_loadu_ps(b + j + 16));
        const __m256 t3 = _mm256_sub_ps(_mm256_loadu_ps(a + j + 24), _mm256_loadu_ps(b + j + 24));
        a0 = _mm256_fmadd_ps(t0, t0, a0);
        a1 = _mm256_fmadd_ps(t1, t1, a1);
        a2 = _mm256_fmadd_ps(t2, t2, a2);
        a3 = _mm256_fmadd_ps(t3, t3, a3);
    }
    for (; j + 8 <= d; j += 8) {
        const __m256 t = _mm256_sub_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j));
        a0 = _mm256_fmadd_ps(t, t, a0);
    }
    float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; j < d; j++) {
        const float t = a[j] - b[j];
        s += t * t;
    }
    return s;
}

TT static inline float k_dot_u8(const float *w, const uint8_t *c, int64_t d) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= d; j += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + j), u8x8(c + j), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + j + 8), u8x8(c + j + 8), a1);
    }
    for (; j + 8 <= d; j += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + j), u8x8(c + j), a0);
    float s = hsum8(_mm256_add_ps(a0, a1));
    for (; j < d; j++) s += w[j] * (float)c[j];
    return s;
}

TT static inline float k_dot_nib(const float *wlo, const float *whi, const uint8_t *c, int64_t h) {
    const __m256i m15 = _mm256_set1_epi32(15);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= h; j += 8) {
        const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(c + j)));
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(wlo + j), _mm256_cvtepi32_ps(_mm256_and_si256(b, m15)), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(whi + j), _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4)), a1);
    }
    float s = hsum8(_mm256_add_ps(a0, a1));
    for (; j < h; j++) s += wlo[j] * (float)(c[j] & 15) + whi[j] * (float)(c[j] >> 4);
    return s;
}

TT static inline int32_t k_idot_u8(const int16_t *q, const uint8_t *c, int64_t d) {
    __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
    int64_t j = 0;
    for (; j + 32 <= d; j += 32) {
        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(u8x16(c + j), i16x16(q + j)));
        a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(u8x16(c + j + 16), i16x16(q + j + 16)));
    }
    for (; j + 16 <= d; j += 16) a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(u8x16(c + j), i16x16(q + j)));
    int32_t s = hsum8i(_mm256_add_epi32(a0, a1));
    for (; j < d; j++) s += (int32_t)q[j] * (int32_t)c[j];
    return s;
}

TT static inline int32_t k_idot_nib(const int16_t *qlo, const int16_t *qhi, const uint8_t *c, int64_t h) {
    const __m256i m15 = _mm256_set1_epi16(15);
    __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
    int64_t j = 0;
    for (; j + 16 <= h; j += 16) {
        const __m256i b = u8x16(c + j);
        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_and_si256(b, m15), i16x16(qlo + j)));
        a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_srli_epi16(b, 4), i16x16(qhi + j)));
    }
    int32_t s = hsum8i(_mm256_add_epi32(a0, a1));
    for (; j < h; j++) s += (int32_t)qlo[j] * (int32_t)(c[j] & 15) + (int32_t)qhi[j] * (int32_t)(c[j] >> 4);
    return s;
}

TT static inline int32_t k_idot_i8(const int16_t *q, const int8_t *a, int64_t d) {
    __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
    int64_t j = 0;
    for (; j + 32 <= d; j += 32) {
        const __m256i v0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(a + j)));
        const __m256i v1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(a + j + 16)));
        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(v0, i16x16(q + j)));
        a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(v1, i16x16(q + j + 16)));
    }
    for (; j + 16 <= d; j += 16) {
        const __m256i v = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(a + j)));
        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(v, i16x16(q + j)));
    }
    int32_t s = hsum8i(_mm256_add_epi32(a0, a1));
    for (; j < d; j++) s += (int32_t)q[j] * (int32_t)a[j];
    return s;
}

#include "tree_loops.h"
#endif
