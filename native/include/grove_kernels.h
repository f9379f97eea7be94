/* Grove distance kernels: a tiny C ABI (pointers and sizes only), loaded by engine/kernels/native.py with ctypes.
 *
 * One entry point scores a batch of queries against rows of one data set (float32 vectors or LVQ codes in the
 * layout of engine/quant/lvq.py) and keeps the top-k of each query, fused with the scan; another runs the Curator
 * index's tenant-scoped tree search (grove_tree_search, at the end). Every function picks its instruction set at
 * run time (AVX-512 + VNNI, AVX-512, AVX2 + FMA, scalar) from CPU feature detection; nothing is compiled with
 * -march=native.
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

#define GROVE_ABI_VERSION 2

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

/* ---- the Curator tree search (engine.kernels.tree.search, same semantics) --------------------------------
 *
 * A tenant's list holds int64 entries (leaf_rank << 32) | code_slot, sorted, plus an unsorted tail; a deleted
 * entry has the slot field GROVE_DEAD. Code slots index the scan codes; slot_row maps a slot to its table row.
 * One call searches m queries over one tenant, each query in turn (engine.kernels.native splits batches over
 * threads): an exact scan of the rows for a small tenant (or an untrained tree), else the scan codes of the tail
 * and of a flat scan, a leaf-order scan or a best-first walk, then the best candidates rescored from the rows.
 * Results are best first, ties to the smaller row, padded with (-inf, -1). */
#define GROVE_ROW_BITS 32
#define GROVE_DEAD 0xFFFFFFFFLL

/* what the table's rows hold (engine.kernels.tree.ROWS_*) */
enum grove_rows_kind { GROVE_ROWS_F32 = 0, GROVE_ROWS_LVQ8 = 1, GROVE_ROWS_LVQ4X8 = 2, GROVE_ROWS_LVQ4 = 3 };

/* The table's rows, read by exact scans and rescoring (engine.index.rows kernel_args). Strides are in bytes.
 *   GROVE_ROWS_F32:   data float [*][dim].
 *   GROVE_ROWS_LVQ8:  codes uint8 [*][dim]; x~ = mean + bias + scale * c.
 *   GROVE_ROWS_LVQ4:  codes uint8 [*][ceil(dim/2)], split-half nibbles (as GROVE_LVQ4).
 *   GROVE_ROWS_LVQ4X8: LVQ-4 codes plus residual uint8 [*][dim]; x~ = mean + bias - scale/2 + scale c + scale/255 r.
 * sqnorm: the originals' |x|^2 (LVQ rows with GROVE_L2, scored 2 <q, x~> - |x|^2 - |q|^2), else NULL. */
typedef struct grove_tree_rows {
    int32_t kind;
    int32_t dim;
    const float *data;
    int64_t data_stride;
    const uint8_t *codes;
    int64_t codes_stride;
    const uint8_t *residual;
    int64_t residual_stride;
    const float *scale;
    const float *bias;
    const float *sqnorm;
    const float *mean;
} grove_tree_rows;

/* The scan codes by slot and how a query enters their space (engine.index.scancodes kernel_args).
 * codes: bits 4: uint8 [*][width] split-half nibbles (width = ceil(p/2)); bits 8: uint8 or (is_float) float
 * [*][width] (width = p). A slot scores mul * <w, c> + add * sum(w) (mul, add NULL: <w, c>), minus sub for GROVE_L2.
 * The query's code-space vector is qn = pscale * (proj q) - poff (proj: int8 [p][dim], or no rows: qn = q - poff)
 * and its weights w = (qn + poff) * scale for GROVE_IP, 2 qn * scale for GROVE_L2. slot_row: the table row of
 * each code slot. */
typedef struct grove_scan_codes {
    int32_t bits;
    int32_t is_float;
    int32_t width;
    int32_t p;
    const void *codes;
    int64_t stride;
    const float *mul;
    const float *add;
    const float *sub;
    const int8_t *proj;
    int32_t proj_rows;
    const float *pscale;
    const float *poff;
    const float *scale;
    const int32_t *slot_row;
} grove_scan_codes;

/* The shared tree as a search reads it (engine.index.curator). Node c's children are child_start[c] ..
 * child_start[c] + child_count[c] - 1 (no children: a leaf; child_count[0] == 0: untrained); leaf_lo[c] is the
 * first leaf rank below c. Node priorities are pbias[c] - 2 qn[:pn] . pcent[c]. The leaves, in leaf-rank order,
 * as int8 rows leaf_cent [n_leaves][pn] with one scale each, and their node ids (the leaf-order scan). */
typedef struct grove_tree {
    int32_t n_nodes;
    int32_t pn;
    const int32_t *child_start;
    const int32_t *child_count;
    const int32_t *leaf_lo;
    const float *pcent;
    const float *pbias;
    int32_t n_leaves;
    const int8_t *leaf_cent;
    const float *leaf_scale;
    const int32_t *leaf_node;
} grove_tree;

/* One tenant's entries: main [n] sorted, tail [nt] unsorted, and where each leaf rank starts in main
 * (bounds int32 [n_bounds], n_bounds = leaves + 1, or 0 when the tenant has none). */
typedef struct grove_tenant_list {
    const int64_t *main;
    int64_t n;
    const int64_t *tail;
    int64_t nt;
    const int32_t *bounds;
    int64_t n_bounds;
} grove_tenant_list;

/* k results; early stop after ef scanned entries in a row left the candidates unchanged; candidate heap of
 * max(cands, k); max(min(rerank, that), k) rescored; nodes of at most max_sl entries are scanned, not expanded;
 * at most exact_max entries: exact; at most flat_max: every code scanned; metric: grove_metric. */
typedef struct grove_search_params {
    int64_t k;
    int64_t ef;
    int64_t cands;
    int64_t rerank;
    int64_t max_sl;
    int64_t exact_max;
    int64_t flat_max;
    int32_t metric;
} grove_search_params;

/* Top-k of each of m queries (float [m][rows->dim]) over one tenant: out_s float [m][k], out_r int64 [m][k]
 * (table rows). Returns the entries scanned over all queries (>= 0), or a negative grove_status. Does not touch
 * Python. */
GROVE_API int64_t grove_tree_search(const grove_tree_rows *rows, const grove_scan_codes *codes,
                                    const grove_tree *tree, const grove_tenant_list *list,
                                    const grove_search_params *params, const float *queries, int64_t m, float *out_s,
                                    int64_t *out_r);

#ifdef __cplusplus
}
#endif
#endif
