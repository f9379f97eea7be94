/* The ABI entry points: pick an instruction set once by CPU feature detection, prepare the queries, run the scan
 * (few queries: score blocks of rows per query) or the tile path (many queries: pack rows into panels, decoded to
 * float32, and multiply them with packed queries in a register-blocked microkernel), and keep each query's top-k
 * in a heap fed straight from the scores (nothing of size m x n is written). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ---- instruction set ------------------------------------------------------------------------------------ */
static int cpu_isa = -1;
static int use_isa = -1;
/* batches of at least this many queries take the tile path */
static int32_t tile_min = 16;

static int detect(void) {
#if GROVE_X86 && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
        return __builtin_cpu_supports("avx512vnni") ? GROVE_ISA_AVX512VNNI : GROVE_ISA_AVX512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return GROVE_ISA_AVX2;
#endif
    return GROVE_ISA_SCALAR;
}

int grove_abi_version(void) { return GROVE_ABI_VERSION; }

int grove_cpu_isa(void) {
    if (cpu_isa < 0) cpu_isa = detect();
    return cpu_isa;
}

/* The default is the best level that measured faster: VNNI scoring of LVQ codes lost to the AVX-512 float path
 * on rows that do not start on a 64-byte boundary (numpy's usual 16 mod 64), so it is opt-in (grove_set_isa). */
int grove_get_isa(void) {
    if (use_isa < 0) use_isa = grove_cpu_isa() < GROVE_ISA_AVX512VNNI ? grove_cpu_isa() : GROVE_ISA_AVX512;
    return use_isa;
}

int grove_set_isa(int isa) {
    int best = grove_cpu_isa();
    use_isa = isa < 0 ? 0 : (isa > best ? best : isa);
    return use_isa;
}

int32_t grove_set_tile_min(int32_t queries) {
    int32_t old = tile_min;
    tile_min = queries < 1 ? 1 : queries;
    return old;
}

const char *grove_isa_name(int isa) {
    switch (isa) {
    case GROVE_ISA_AVX2: return "avx2";
    case GROVE_ISA_AVX512: return "avx512";
    case GROVE_ISA_AVX512VNNI: return "avx512vnni";
    default: return "scalar";
    }
}

static const grove_ops *ops_for(int isa) {
#if GROVE_X86
    switch (isa) {
    case GROVE_ISA_AVX512VNNI: return &grove_ops_avx512vnni;
    case GROVE_ISA_AVX512: return &grove_ops_avx512;
    case GROVE_ISA_AVX2: return &grove_ops_avx2;
    default: break;
    }
#else
    (void)isa;
#endif
    return &grove_ops_scalar;
}

/* ---- memory --------------------------------------------------------------------------------------------- */
static void *alloc64(size_t bytes) {
    unsigned char *raw = (unsigned char *)malloc(bytes + 64 + sizeof(void *));
    if (!raw) return NULL;
    uintptr_t p = ((uintptr_t)(raw + sizeof(void *)) + 63) & ~(uintptr_t)63;
    ((void **)p)[-1] = raw;
    memset((void *)p, 0, bytes);
    return (void *)p;
}

static void free64(void *p) {
    if (p) free(((void **)p)[-1]);
}

static int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

/* ---- top-k heaps: a min-heap of the k best, the worst at the root; on equal scores the larger row is worse -- */
typedef struct {
    float *s;
    int64_t *r;
    int32_t k;
    int32_t size;
    float thr; /* scores below this cannot enter: -inf until the heap is full, then the root's score */
} heap_t;

static inline int worse(float s1, int64_t r1, float s2, int64_t r2) { return s1 < s2 || (s1 == s2 && r1 > r2); }

static void sift_down(float *hs, int64_t *hr, int32_t size) {
    int32_t i = 0;
    for (;;) {
        int32_t c = 2 * i + 1;
        if (c >= size) return;
        if (c + 1 < size && worse(hs[c + 1], hr[c + 1], hs[c], hr[c])) c++;
        if (!worse(hs[c], hr[c], hs[i], hr[i])) return;
        float ts = hs[i];
        hs[i] = hs[c];
        hs[c] = ts;
        int64_t tr = hr[i];
        hr[i] = hr[c];
        hr[c] = tr;
        i = c;
    }
}

static void offer(heap_t *h, float s, int64_t r) {
    if (h->size < h->k) {
        int32_t i = h->size++;
        while (i > 0) {
            int32_t p = (i - 1) / 2;
            if (!worse(s, r, h->s[p], h->r[p])) break;
            h->s[i] = h->s[p];
            h->r[i] = h->r[p];
            i = p;
        }
        h->s[i] = s;
        h->r[i] = r;
        if (h->size == h->k) h->thr = h->s[0];
        return;
    }
    if (!worse(h->s[0], h->r[0], s, r)) return;
    h->s[0] = s;
    h->r[0] = r;
    sift_down(h->s, h->r, h->size);
    h->thr = h->s[0];
}

/* writes best first into out (k slots), padding with (-inf, -1); consumes the heap */
static void drain(heap_t *h, float shift, float *out_s, int64_t *out_r) {
    for (int32_t i = h->size; i < h->k; i++) {
        out_s[i] = -INFINITY;
        out_r[i] = -1;
    }
    int32_t n = h->size;
    while (n > 0) {
        out_s[n - 1] = h->s[0] + shift;
        out_r[n - 1] = h->r[0];
        n--;
        h->s[0] = h->s[n];
        h->r[0] = h->r[n];
        sift_down(h->s, h->r, n);
    }
}

/* ---- query preparation ---------------------------------------------------------------------------------- */
typedef struct {
    grove_query *qs;
    void *mem;
} prepared_t;

static void quantize(const float *q, int64_t len, float scale, int8_t *hi, int8_t *lo) {
    for (int64_t j = 0; j < len; j++) {
        long qq = scale > 0 ? lrintf(q[j] / scale) : 0;
        if (qq > 16256) qq = 16256;
        if (qq < -16256) qq = -16256;
        long hh = lrint((double)qq / 128.0);
        hi[j] = (int8_t)hh;
        lo[j] = (int8_t)(qq - 128 * hh);
    }
}

static int prepare(const grove_ops *ops, const grove_data *x, const float *queries, int64_t m, int metric,
                   prepared_t *out) {
    const int64_t d = x->dim, h = (d + 1) / 2, dpad = round_up(d, GROVE_PAD) + GROVE_PAD,
                  hpad = round_up(h, GROVE_PAD) + GROVE_PAD;
    const int lvq = x->encoding != GROVE_F32;
    const int vnni = ops->vnni && lvq && metric == GROVE_IP;
    /* every array has GROVE_PAD zeros in front (the AVX-512 loops read from q - mis) and its padded length */
    const int64_t fl = GROVE_PAD + dpad, hl = GROVE_PAD + hpad;
    const size_t fper = (size_t)(fl + 2 * hl), bper = vnni ? (size_t)(2 * fl + 4 * hl) : 0;
    out->qs = (grove_query *)calloc((size_t)(m > 0 ? m : 1), sizeof(grove_query));
    out->mem = alloc64((size_t)m * (fper * sizeof(float) + bper) + 64);
    if (!out->qs || !out->mem) {
        free(out->qs);
        free64(out->mem);
        return GROVE_ENOMEM;
    }
    float *fbase = (float *)out->mem;
    int8_t *bbase = (int8_t *)(fbase + (size_t)m * fper);
    for (int64_t i = 0; i < m; i++) {
        grove_query *g = &out->qs[i];
        const float *src = queries + i * d;
        float *q = fbase + (size_t)i * fper + GROVE_PAD, *qa = q + dpad + GROVE_PAD, *qb = qa + hpad + GROVE_PAD;
        double qmu = 0, qsum = 0;
        for (int64_t j = 0; j < d; j++) {
            q[j] = (lvq && metric == GROVE_L2) ? src[j] - x->mean[j] : src[j];
            if (lvq && metric == GROVE_IP) {
                qmu += (double)src[j] * (double)x->mean[j];
                qsum += (double)src[j];
            }
        }
        memcpy(qa, q, (size_t)h * sizeof(float));
        memcpy(qb, q + h, (size_t)(d - h) * sizeof(float));
        g->q = q;
        g->qa = qa;
        g->qb = qb;
        g->qmu = (float)qmu;
        g->qsum = (float)qsum;
        if (vnni) {
            int8_t *b = bbase + (size_t)i * bper + GROVE_PAD;
            float amax = 0;
            for (int64_t j = 0; j < d; j++) amax = fabsf(q[j]) > amax ? fabsf(q[j]) : amax;
            g->qscale = amax / 16256.0f;
            int8_t *q8h = b, *q8l = q8h + fl, *qa8h = q8l + fl, *qa8l = qa8h + hl, *qb8h = qa8l + hl, *qb8l = qb8h + hl;
            quantize(q, d, g->qscale, q8h, q8l);
            quantize(qa, h, g->qscale, qa8h, qa8l);
            quantize(qb, d - h, g->qscale, qb8h, qb8l);
            g->q8[0] = q8h;
            g->q8[1] = q8l;
            g->qa8[0] = qa8h;
            g->qa8[1] = qa8l;
            g->qb8[0] = qb8h;
            g->qb8[1] = qb8l;
        }
    }
    return GROVE_OK;
}

static void release(prepared_t *p) {
    free(p->qs);
    free64(p->mem);
}

/* ---- panels: NR rows decoded to float32 and stored transposed, panel[p][j] ------------------------------- */
static void pack_panel(const grove_data *x, const int64_t *rows, int64_t start, int64_t cnt, int nr, float *panel,
                       float *norms) {
    const int64_t d = x->dim, h = (d + 1) / 2;
    for (int64_t j = 0; j < nr; j++) {
        double nn = 0;
        if (j >= cnt) {
            for (int64_t p = 0; p < d; p++) panel[p * nr + j] = 0.0f;
            norms[j] = 0.0f;
            continue;
        }
        const int64_t r = rows ? rows[j] : start + j;
        const uint8_t *c = grove_row(x, r);
        switch (x->encoding) {
        case GROVE_F32: {
            const float *v = (const float *)c;
            for (int64_t p = 0; p < d; p++) {
                panel[p * nr + j] = v[p];
                nn += (double)v[p] * v[p];
            }
            break;
        }
        case GROVE_LVQ8: {
            const float st = x->scale[r], lo = x->bias[r];
            for (int64_t p = 0; p < d; p++) {
                float v = x->mean[p] + lo + st * (float)c[p];
                panel[p * nr + j] = v;
                nn += (double)v * v;
            }
            break;
        }
        default: {
            const int two = x->encoding == GROVE_LVQ4X8;
            const float st = x->scale[r], st2 = st / 255.0f, lo = two ? x->bias[r] - 0.5f * st : x->bias[r];
            const uint8_t *res = two ? x->residual + r * x->residual_stride : NULL;
            for (int64_t p = 0; p < d; p++) {
                int code = p < h ? (c[p] & 15) : (c[p - h] >> 4);
                float v = x->mean[p] + lo + st * (float)code;
                if (two) v += st2 * (float)res[p];
                panel[p * nr + j] = v;
                nn += (double)v * v;
            }
        }
        }
        norms[j] = (float)nn;
    }
}

/* ---- drivers ---------------------------------------------------------------------------------------------- */
static int check(const grove_data *x, const float *queries, int64_t m, int64_t n, int32_t metric) {
    if (!x || x->dim < 1 || x->n < 0 || m < 0 || n < 0 || (m > 0 && !queries)) return GROVE_EINVAL;
    if (x->encoding < GROVE_F32 || x->encoding > GROVE_LVQ4X8 || (metric != GROVE_IP && metric != GROVE_L2))
        return GROVE_EINVAL;
    if (x->encoding != GROVE_F32 && (!x->scale || !x->bias || !x->mean)) return GROVE_EINVAL;
    if (x->encoding == GROVE_LVQ4X8 && !x->residual) return GROVE_EINVAL;
    return GROVE_OK;
}

/* heaps != NULL: offer the scores, and set shift[i] to what must be added to query i's survivors;
 * else write the scores to out [m][n] */
static int run(const grove_data *x, const float *queries, int64_t m, const int64_t *rows, int64_t start, int64_t n,
               int32_t metric, heap_t *heaps, float *shift, float *out) {
    const grove_ops *ops = ops_for(grove_get_isa());
    const int64_t d = x->dim;
    if (m == 0 || n == 0) return GROVE_OK;
    if (m < tile_min) {
        prepared_t pq;
        int rc = prepare(ops, x, queries, m, metric, &pq);
        if (rc) return rc;
        float buf[GROVE_BLOCK];
        for (int64_t t0 = 0; t0 < n; t0 += GROVE_BLOCK) {
            const int64_t cnt = n - t0 < GROVE_BLOCK ? n - t0 : GROVE_BLOCK;
            const int64_t *rr = rows ? rows + t0 : NULL;
            for (int64_t i = 0; i < m; i++) {
                if (!heaps) {
                    ops->score(&pq.qs[i], x, metric, rr, start + t0, cnt, out + i * n + t0);
                    continue;
                }
                ops->score(&pq.qs[i], x, metric, rr, start + t0, cnt, buf);
                heap_t *hp = &heaps[i];
                for (int64_t j = 0; j < cnt; j++)
                    if (buf[j] >= hp->thr) offer(hp, buf[j], rr ? rr[j] : start + t0 + j);
            }
        }
        release(&pq);
        return GROVE_OK;
    }
    /* tile path */
    const int mr = ops->mr, nr = ops->nr;
    const int64_t groups = (m + mr - 1) / mr;
    float *qp = (float *)alloc64((size_t)groups * (size_t)d * (size_t)mr * sizeof(float));
    float *panel = (float *)alloc64((size_t)d * (size_t)nr * sizeof(float));
    float *norms = (float *)alloc64((size_t)nr * sizeof(float));
    float *tbuf = (float *)alloc64((size_t)mr * (size_t)nr * sizeof(float));
    float *qn = (float *)alloc64((size_t)m * sizeof(float));
    if (!qp || !panel || !norms || !tbuf || !qn) {
        free64(qp);
        free64(panel);
        free64(norms);
        free64(tbuf);
        free64(qn);
        return GROVE_ENOMEM;
    }
    for (int64_t i = 0; i < m; i++) {
        const float *src = queries + i * d;
        float *dst = qp + (i / mr) * d * mr + (i % mr);
        double nn = 0;
        for (int64_t p = 0; p < d; p++) {
            dst[p * mr] = src[p];
            nn += (double)src[p] * src[p];
        }
        qn[i] = (float)nn;
    }
    const int l2 = metric == GROVE_L2;
    for (int64_t t0 = 0; t0 < n; t0 += nr) {
        const int64_t cnt = n - t0 < nr ? n - t0 : nr;
        const int64_t *rr = rows ? rows + t0 : NULL;
        pack_panel(x, rr, start + t0, cnt, nr, panel, norms);
        for (int64_t g = 0; g < groups; g++) {
            ops->tile(qp + g * d * mr, panel, d, tbuf);
            const int64_t rmax = m - g * mr < mr ? m - g * mr : mr;
            for (int64_t r = 0; r < rmax; r++) {
                const int64_t i = g * mr + r;
                const float *ts = tbuf + r * nr;
                if (!heaps) {
                    float *o = out + i * n + t0;
                    for (int64_t j = 0; j < cnt; j++) o[j] = l2 ? 2.0f * ts[j] - norms[j] - qn[i] : ts[j];
                    continue;
                }
                heap_t *hp = &heaps[i];
                for (int64_t j = 0; j < cnt; j++) {
                    const float s = l2 ? 2.0f * ts[j] - norms[j] : ts[j];
                    if (s >= hp->thr) offer(hp, s, rr ? rr[j] : start + t0 + j);
                }
            }
        }
    }
    if (heaps && l2) /* the heaps ranked by 2<q,x> - |x|^2; the survivors get the -|q|^2 back */
        for (int64_t i = 0; i < m; i++) shift[i] = -qn[i];
    free64(qp);
    free64(panel);
    free64(norms);
    free64(tbuf);
    free64(qn);
    return GROVE_OK;
}

int grove_topk(const grove_data *x, const float *queries, int64_t m, const int64_t *rows, int64_t start, int64_t n,
               int32_t metric, int32_t k, float *out_s, int64_t *out_r) {
    int rc = check(x, queries, m, n, metric);
    if (rc) return rc;
    if (k < 1 || !out_s || !out_r) return GROVE_EINVAL;
    const size_t mm = (size_t)(m > 0 ? m : 1);
    heap_t *heaps = (heap_t *)calloc(mm, sizeof(heap_t));
    float *shift = (float *)calloc(mm, sizeof(float));
    float *hs = (float *)malloc(mm * (size_t)k * sizeof(float));
    int64_t *hr = (int64_t *)malloc(mm * (size_t)k * sizeof(int64_t));
    if (!heaps || !shift || !hs || !hr) {
        free(heaps);
        free(shift);
        free(hs);
        free(hr);
        return GROVE_ENOMEM;
    }
    for (int64_t i = 0; i < m; i++) {
        heaps[i].s = hs + i * k;
        heaps[i].r = hr + i * k;
        heaps[i].k = k;
        heaps[i].size = 0;
        heaps[i].thr = -INFINITY;
    }
    rc = run(x, queries, m, rows, start, n, metric, heaps, shift, NULL);
    if (rc == GROVE_OK)
        for (int64_t i = 0; i < m; i++) drain(&heaps[i], shift[i], out_s + i * k, out_r + i * k);
    free(heaps);
    free(shift);
    free(hs);
    free(hr);
    return rc;
}

int grove_scores(const grove_data *x, const float *queries, int64_t m, const int64_t *rows, int64_t start, int64_t n,
                 int32_t metric, float *out) {
    int rc = check(x, queries, m, n, metric);
    if (rc) return rc;
    if (!out && m > 0 && n > 0) return GROVE_EINVAL;
    return run(x, queries, m, rows, start, n, metric, NULL, NULL, out);
}
