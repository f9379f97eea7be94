/* AVX-512 primitives of the tree search (tree_loops.h): 16 float lanes, 32 int16 x byte products per vpmaddwd,
 * masked tails. Compiled without -m flags; every function carries its target attribute, and tree_search.c calls
 * in here only when the CPU reports avx512f/bw/vl/dq. */
#include "internal.h"

#if GROVE_X86
#include <immintrin.h>

#define TT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define TREE_OPS grove_tree_ops_avx512
#define TREE_ISA GROVE_ISA_AVX512

TT static inline __mmask16 m16(int64_t left) {
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
}

TT static inline __mmask32 m32(int64_t left) {
    return left >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << left) - 1);
}

TT static inline __m512 u8x16(const uint8_t *c) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)c)));
}

TT static inline __m512i u8x32(const uint8_t *c) {
    return _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)c));
}

TT static inline float k_dot_f32(const float *a, const float *b, int64_t d) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 64 <= d; j += 64) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + j), _mm512_loadu_ps(b + j), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + j + 16), _mm512_loadu_ps(b + j + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + j + 32), _mm512_loadu_ps(b + j + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + j + 48), _mm512_loadu_ps(b + j + 48), a3);
    }
    for (; j + 16 <= d; j += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + j), _mm512_loadu_ps(b + j), a0);
    if (j < d) {
        const __mmask16 m = m16(d - j);
        a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + j), _mm512_maskz_loadu_ps(m, b + j), a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

TT static inline float k_l2_f32(const float *a, const float *b, int64_t d) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 64 <= d; j += 64) {
        const __m512 t0 = _mm512_sub_ps(_mm512_loadu_ps(a + j), _mm512_loadu_ps(b + j));
        const __m512 t1 = _mm512_sub_ps(_mm512_loadu_ps(a + j + 16), _mm512_loadu_ps(b + j + 16));
        const __m512 t2 = _mm512_sub_ps(_mm512_loadu_ps(a + j + 32), _mm512_loadu_ps(b + j + 32));
        const __m512 t3 = _mm512_sub_ps(_mm512_loadu_ps(a + j + 48), _mm512_loadu_ps(b + j + 48));
        a0 = _mm512_fmadd_ps(t0, t0, a0);
        a1 = _mm512_fmadd_ps(t1, t1, a1);
        a2 = _mm512_fmadd_ps(t2, t2, a2);
        a3 = _mm512_fmadd_ps(t3, t3, a3);
    }
    for (; j + 16 <= d; j += 16) {
        const __m512 t = _mm512_sub_ps(_mm512_loadu_ps(a + j), _mm512_loadu_ps(b + j));
        a0 = _mm512_fmadd_ps(t, t, a0);
    }
    if (j < d) {
        const __mmask16 m = m16(d - j);
        const __m512 t = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + j), _mm512_maskz_loadu_ps(m, b + j));
        a1 = _mm512_fmadd_ps(t, t, a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

TT static inline float k_dot_u8(const float *w, const uint8_t *c, int64_t d) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= d; j += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j), u8x16(c + j), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j + 16), u8x16(c + j + 16), a1);
    }
    for (; j < d; j += 16) {
        const __mmask16 m = m16(d - j);
        const __m512 cv = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, c + j)));
        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + j), cv, a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

TT static inline void nib16(__m512i b, __m512 wlo, __m512 whi, __m512 *a0, __m512 *a1) {
    const __m512i m15 = _mm512_set1_epi32(15);
    *a0 = _mm512_fmadd_ps(wlo, _mm512_cvtepi32_ps(_mm512_and_si512(b, m15)), *a0);
    *a1 = _mm512_fmadd_ps(whi, _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4)), *a1);
}

TT static inline float k_dot_nib(const float *wlo, const float *whi, const uint8_t *c, int64_t h) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= h; j += 32) {
        nib16(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(c + j))), _mm512_loadu_ps(wlo + j),
              _mm512_loadu_ps(whi + j), &a0, &a1);
        nib16(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(c + j + 16))), _mm512_loadu_ps(wlo + j + 16),
              _mm512_loadu_ps(whi + j + 16), &a2, &a3);
    }
    for (; j < h; j += 16) {
        const __mmask16 m = m16(h - j);
        nib16(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, c + j)), _mm512_maskz_loadu_ps(m, wlo + j),
              _mm512_maskz_loadu_ps(m, whi + j), &a0, &a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

TT static inline int32_t k_idot_u8(const int16_t *q, const uint8_t *c, int64_t d) {
    __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
    int64_t j = 0;
    for (; j + 64 <= d; j += 64) {
        a0 = _mm512_add_epi32(a0, _mm512_madd_epi16(u8x32(c + j), _mm512_loadu_si512(q + j)));
        a1 = _mm512_add_epi32(a1, _mm512_madd_epi16(u8x32(c + j + 32), _mm512_loadu_si512(q + j + 32)));
    }
    for (; j < d; j += 32) {
        const __mmask32 m = m32(d - j);
        const __m512i cv = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(m, c + j));
        a0 = _mm512_add_epi32(a0, _mm512_madd_epi16(cv, _mm512_maskz_loadu_epi16(m, q + j)));
    }
    return _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1));
}

TT static inline int32_t k_idot_nib(const int16_t *qlo, const int16_t *qhi, const uint8_t *c, int64_t h) {
    const __m512i m15 = _mm512_set1_epi16(15);
    __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
    int64_t j = 0;
    for (; j + 32 <= h; j += 32) {
        const __m512i b = u8x32(c + j);
        a0 = _mm512_add_epi32(a0, _mm512_madd_epi16(_mm512_and_si512(b, m15), _mm512_loadu_si512(qlo + j)));
        a1 = _mm512_add_epi32(a1, _mm512_madd_epi16(_mm512_srli_epi16(b, 4), _mm512_loadu_si512(qhi + j)));
    }
    for (; j < h; j += 32) {
        const __mmask32 m = m32(h - j);
        const __m512i b = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(m, c + j));
        a0 = _mm512_add_epi32(a0, _mm512_madd_epi16(_mm512_and_si512(b, m15), _mm512_maskz_loadu_epi16(m, qlo + j)));
        a1 = _mm512_add_epi32(a1, _mm512_madd_epi16(_mm512_srli_epi16(b, 4), _mm512_maskz_loadu_epi16(m, qhi + j)));
    }
    return _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1));
}

TT static inline int32_t k_idot_i8(const int16_t *q, const int8_t *a, int64_t d) {
    __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
    int64_t j = 0;
    for (; j + 64 <= d; j += 64) {
        const __m512i v0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(a + j)));
        const __m512i v1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(a + j + 32)));
        a0 = _mm512_add_epi32(a0, _mm512_madd_epi16(v0, _mm512_loadu_si512(q + j)));
        a1 = _mm512_add_epi32(a1, _mm512_madd_epi16(v1, _mm512_loadu_si512(q + j + 32)));
    }
    for (; j < d; j += 32) {
        const __mmask32 m = m32(d - j);
        const __m512i v = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, a + j));
        a0 = _mm512_add_epi32(a0, _mm512_madd_epi16(v, _mm512_maskz_loadu_epi16(m, q + j)));
    }
    return _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1));
}

#include "tree_loops.h"
#endif
