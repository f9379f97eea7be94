/* Grove distance kernels: a tiny C ABI (pointers and sizes only), loaded by engine/kernels/native.py with ctypes.
 *
 * One entry point scores a batch of queries against rows of one data set (float32 vectors or LVQ codes in the
 * layout of engine/quant/lvq.py) and keeps the top-k of each query, fused with the scan. Every function picks
 * its instruction set at run time (AVX-512 + VNNI, AVX-512, AVX2 + FMA, scalar) from CPU feature detection;
 * nothing is compiled with -march=native.
 *
 * Scores are order-preserving surrogates, higher is better: GROVE_IP is the inner product, GROVE_L2 is minus
 * the squared Euclidean distance. Results are best first, ties to the smaller row, padded with (-inf, -1).
 */
#ifndef GROVE_KERNELS_H
#define GROVE_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GROVE_ABI_VERSION 1

#if defined(_WIN32)
#define GROVE_API __declspec(dllexport)
#else
#define GROVE_API __attribute__((visibility("default")))
#endif

enum grove_encoding { GROVE_F32 = 0, GROVE_LVQ8 = 1, GROVE_LVQ4 = 2, GROVE_LVQ4X8 = 3 };
enum grove_metric { GROVE_IP = 0, GROVE_L2 = 1 };
enum grove_isa { GROVE_ISA_SCALAR = 0, GROVE_ISA_AVX2 = 1, GROVE_ISA_AVX512 = 2, GROVE_ISA_AVX512VNNI = 3 };
enum grove_status { GROVE_OK = 0, GROVE_EINVAL = -1, GROVE_ENOMEM = -2 };

/* One data set. Row i of the codes starts at (const char *)codes + i * stride.
 *   GROVE_F32:    float [n][dim].
 *   GROVE_LVQ8:   uint8 [n][dim] codes c; x~ = mean + bias + scale * c.
 *   GROVE_LVQ4:   uint8 [n][ceil(dim/2)]: byte j holds c_j (low nibble) and c_{j+h} (high nibble), h = ceil(dim/2).
 *   GROVE_LVQ4X8: GROVE_LVQ4 codes plus uint8 residual [n][dim] r (row stride residual_stride);
 *                 x~ = mean + bias - scale/2 + scale * c + scale/255 * r.
 * scale, bias: float [n]; mean: float [dim] (LVQ only; NULL for float32). */
typedef struct grove_data {
    int32_t encoding;
    int32_t dim;
    int64_t n;
    const void *codes;
    int64_t stride;
    const float *scale;
    const float *bias;
    const float *mean;
    const uint8_t *residual;
    int64_t residual_stride;
} grove_data;

GROVE_API int grove_abi_version(void);
/* Best instruction set this CPU supports, and the one in use (starts at the best; GROVE_ISA env may lower it). */
GROVE_API int grove_cpu_isa(void);
GROVE_API int grove_get_isa(void);
/* Use at most `isa` (clamped to what the CPU supports); returns the level now in use. For tests and benchmarks. */
GROVE_API int grove_set_isa(int isa);
GROVE_API const char *grove_isa_name(int isa);
/* Batches of at least this many queries take the tile path (default 16); returns the old value. For tests. */
GROVE_API int32_t grove_set_tile_min(int32_t queries);

/* Top-k of rows for each of m queries (float [m][dim], C order).
 * rows != NULL: the n row numbers rows[0..n) (each in [0, x->n)); rows == NULL: the block start .. start + n.
 * out_s float [m][k], out_r int64 [m][k]. Returns GROVE_OK or a negative grove_status. Does not touch Python. */
GROVE_API int grove_topk(const grove_data *x, const float *queries, int64_t m, const int64_t *rows, int64_t start, int64_t n,
               int32_t metric, int32_t k, float *out_s, int64_t *out_r);

/* Surrogate scores of every query against every selected row: out float [m][n]. */
GROVE_API int grove_scores(const grove_data *x, const float *queries, int64_t m, const int64_t *rows, int64_t start, int64_t n,
                 int32_t metric, float *out);

#ifdef __cplusplus
}
#endif
#endif
