/* ops.c: CPU operators: threaded quantised matmul, RMSNorm, RoPE, SwiGLU. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "ops.h"
#include "quant.h"
#include "repack.h"

#define MM_ROW_BLOCK 16 /* weight rows kept hot in L1 while all tokens pass over them */

size_t rk_matmul_scratch_bytes(const rk_weight *w, int n_tokens) {
    const rk_type_traits *tr = rk_get_type_traits(w->type);
    /* with the block sums whichever kernel set is active then: the set can change between sessions */
    return (size_t)n_tokens * rk_act_row_bytes(tr->vec_dot_type, w->n_in);
}

typedef struct {
    const float *x;
    int n_tokens;
    const rk_weight *const *w;
    float *const *y;
    int n_w;
    const rk_type_traits *act;  /* activation format traits */
    int32_t act_type;           /* its type (Q8_0 rows carry block sums) */
    int act_sums;               /* the tiles read the rows' block sums (rk_act_row_bytes) */
    uint8_t *act_buf;
    size_t act_row;
    int64_t n_in;
    long total_rows;            /* rows handed out: all weights' rows, or gate rows when fused */
    int swiglu;                 /* w = {gate, up}: each chunk computes both, then y[0] = silu(y[0]) * y[1] */
    long chunk;                 /* rows per chunk, a multiple of MM_ROW_BLOCK */
    atomic_long next;           /* first row of the next chunk to take */
} mm_job;

static void quantize_task(void *ctx, int ith, int nth) {
    mm_job *j = ctx;
    long b, e;
    rk_split_range(j->n_tokens, ith, nth, 1, &b, &e);
    for (long t = b; t < e; t++) {
        j->act->from_float(j->x + t * j->n_in, j->act_buf + t * j->act_row, j->n_in);
        if (j->act_sums) rk_act_block_sums(j->act_type, j->act_buf + t * j->act_row, j->n_in);
    }
}

/* rows [r0, r1) of a repacked matrix (r0, r1 multiples of RK_PACK_ROWS): each group of
 * 8 rows (or two, where the type has a 16-row tile) meets the tokens RK_DOT_ROWS at a time,
 * then the rest */
static void packed_rows(const mm_job *j, const rk_weight *w, const rk_type_traits *tr, float *y, long r0, long r1) {
    const size_t group_bytes = (size_t)RK_PACK_ROWS * w->row_bytes;
    for (long r = r0; r < r1;) {
        const uint8_t *wg = (const uint8_t *)w->packed + (size_t)(r / RK_PACK_ROWS) * group_bytes;
        const int two = tr->vec_dot_packed16 && r + 2 * RK_PACK_ROWS <= r1;
        for (int t = 0; t < j->n_tokens; t += RK_DOT_ROWS) {
            const int nt = j->n_tokens - t < RK_DOT_ROWS ? j->n_tokens - t : RK_DOT_ROWS;
            float *yt = y + (size_t)t * (size_t)w->n_out + r;
            const uint8_t *at = j->act_buf + (size_t)t * j->act_row;
            if (two && nt == RK_DOT_ROWS)
                tr->vec_dot_packed16(w->n_in, yt, (size_t)w->n_out, wg, group_bytes, at, j->act_row);
            else
                for (int k = 0; k <= two; k++)
                    tr->vec_dot_packed(w->n_in, nt, yt + k * RK_PACK_ROWS, (size_t)w->n_out, wg + k * group_bytes, at,
                                       j->act_row);
        }
        r += two ? 2 * RK_PACK_ROWS : RK_PACK_ROWS;
    }
}

/* rows [lo, hi) of one weight into y, for every token */
static void weight_rows(const mm_job *j, const rk_weight *w, float *y, long lo, long hi) {
    const rk_type_traits *tr = rk_get_type_traits(w->type);
    /* a range not on 8-row boundaries (only after an unpacked matrix of odd height
     * in the same call) takes the row kernels on the file's layout */
    if (w->packed && tr->vec_dot_packed && lo % RK_PACK_ROWS == 0 && hi % RK_PACK_ROWS == 0) {
        packed_rows(j, w, tr, y, lo, hi);
        return;
    }
    const rk_vec_dot_fn dot = tr->vec_dot;
    const rk_vec_dot_tile_fn tile = tr->vec_dot_tile;
    for (long r0 = lo; r0 < hi; r0 += MM_ROW_BLOCK) {
        long r1 = r0 + MM_ROW_BLOCK < hi ? r0 + MM_ROW_BLOCK : hi;
        int t = 0;
        /* RK_DOT_ROWS tokens at a time against the whole row block: each
         * weight block unpacked once per group of tokens; the remaining
         * tokens one by one. Either way every output is bit-identical. */
        if (tile)
            for (; t + RK_DOT_ROWS <= j->n_tokens; t += RK_DOT_ROWS)
                tile(w->n_in, (int)(r1 - r0), y + (size_t)t * (size_t)w->n_out + r0, (size_t)w->n_out,
                     (const uint8_t *)w->data + (size_t)r0 * w->row_bytes, w->row_bytes,
                     j->act_buf + (size_t)t * j->act_row, j->act_row);
        for (; t < j->n_tokens; t++) {
            const uint8_t *a = j->act_buf + (size_t)t * j->act_row;
            float *yt = y + (size_t)t * (size_t)w->n_out;
            for (long r = r0; r < r1; r++)
                dot(w->n_in, &yt[r], (const uint8_t *)w->data + (size_t)r * w->row_bytes, a);
        }
    }
}

static inline float silu(float x) { return x / (1.0f + expf(-x)); }
static void swiglu_rows(float *a, const float *b, size_t n, int wide);

/* Threads take chunks of rows until none is left: a thread slowed by a neighbour
 * on a shared machine does less, instead of everyone waiting for its fixed share.
 * Which thread computes a row does not change its bits. */
static void matmul_task(void *ctx, int ith, int nth) {
    (void)ith;
    (void)nth;
    mm_job *j = ctx;
    for (;;) {
        const long b = atomic_fetch_add_explicit(&j->next, j->chunk, memory_order_relaxed);
        if (b >= j->total_rows) return;
        const long e = b + j->chunk < j->total_rows ? b + j->chunk : j->total_rows;
        if (j->swiglu) {
            const long n_out = j->w[0]->n_out;
            weight_rows(j, j->w[0], j->y[0], b, e);
            weight_rows(j, j->w[1], j->y[1], b, e);
            for (int t = 0; t < j->n_tokens; t++)
                swiglu_rows(j->y[0] + (size_t)t * (size_t)n_out + b, j->y[1] + (size_t)t * (size_t)n_out + b, (size_t)(e - b),
                            j->n_tokens >= RK_DOT_ROWS);
            continue;
        }
        long base = 0;
        for (int i = 0; i < j->n_w && base < e; i++) {
            const rk_weight *w = j->w[i];
            const long lo = b > base ? b : base, hi = e < base + w->n_out ? e : base + w->n_out;
            if (lo < hi) weight_rows(j, w, j->y[i], lo - base, hi - base);
            base += w->n_out;
        }
    }
}

/* the activation rows' format, and whether a full tile of some weight reads their block sums */
static void act_format(mm_job *j, int32_t act_type) {
    j->act = rk_get_type_traits(act_type);
    j->act_type = act_type;
    j->act_row = rk_act_row_bytes(act_type, j->n_in);
    j->act_sums = 0;
    for (int i = 0; i < j->n_w; i++)
        j->act_sums |= j->n_tokens >= RK_DOT_ROWS && rk_get_type_traits(j->w[i]->type)->packed_act_sums;
}

static void run_matmul(rk_pool *pool, mm_job *j) {
    const int nth = rk_pool_size(pool);
    /* two chunks per thread: some evening out, while each chunk stays a long run of rows (a
     * decode step is memory-bound and every new run restarts the prefetch streams: measured in
     * one process, 4 chunks per thread decode 3.5% slower than 2, 16 chunks 11% slower than 4) */
    const long per = (j->total_rows + 2L * nth - 1) / (2L * nth);
    j->chunk = (per + MM_ROW_BLOCK - 1) / MM_ROW_BLOCK * MM_ROW_BLOCK;
    atomic_init(&j->next, 0);
    if (j->n_tokens >= 4 * nth)
        rk_pool_run(pool, quantize_task, j);
    else
        quantize_task(j, 0, 1);
    rk_pool_run(pool, matmul_task, j);
}

void rk_matmul(rk_pool *pool, const float *x, int n_tokens, const rk_weight *const *w, float *const *y, int n_w,
               void *scratch) {
    const rk_type_traits *tr = rk_get_type_traits(w[0]->type);
    mm_job j = {.x = x, .n_tokens = n_tokens, .w = w, .y = y, .n_w = n_w, .act_buf = scratch, .n_in = w[0]->n_in};
    act_format(&j, tr->vec_dot_type);
    for (int i = 0; i < n_w; i++) j.total_rows += w[i]->n_out;
    run_matmul(pool, &j);
}

void rk_matmul_swiglu(rk_pool *pool, const float *x, int n_tokens, const rk_weight *gate, const rk_weight *up,
                      float *y_gate, float *y_up, void *scratch) {
    const rk_type_traits *tr = rk_get_type_traits(gate->type);
    const rk_weight *w[2] = {gate, up};
    float *const y[2] = {y_gate, y_up};
    mm_job j = {.x = x, .n_tokens = n_tokens, .w = w, .y = y, .n_w = 2, .act_buf = scratch, .n_in = gate->n_in,
                .total_rows = gate->n_out, .swiglu = 1};
    act_format(&j, tr->vec_dot_type);
    run_matmul(pool, &j);
}

void rk_rmsnorm(float *y, const float *x, const float *weight, int n_rows, int n, float eps) {
    for (int r = 0; r < n_rows; r++) {
        const float *xr = x + (size_t)r * n;
        float *yr = y + (size_t)r * n;
        double sum = 0.0;
        for (int i = 0; i < n; i++) sum += (double)xr[i] * xr[i];
        const float scale = 1.0f / sqrtf((float)(sum / n) + eps);
        for (int i = 0; i < n; i++) yr[i] = xr[i] * scale * weight[i];
    }
}

void rk_rope_angles(float *cos_sin, int32_t pos, int n_rot, float base, float freq_scale, const float *freq_factors) {
    /* float arithmetic in ggml's order (theta multiplied by theta_scale pair after pair):
     * the angles then round exactly as llama.cpp's, and since the 8-bit activation
     * quantisation downstream amplifies last-bit differences, that keeps our logits
     * bit-close to llama.cpp's instead of drifting by ~1e-2. */
    const float theta_scale = powf(base, -2.0f / (float)n_rot);
    float theta = (float)pos;
    for (int i = 0; i < n_rot / 2; i++) {
        const float ff = freq_factors ? freq_factors[i] : 1.0f;
        const float t = freq_scale * (theta / ff);
        cos_sin[2 * i] = cosf(t);
        cos_sin[2 * i + 1] = sinf(t);
        theta *= theta_scale;
    }
}

void rk_rope_apply(float *x, int n_heads, int head_dim, int n_rot, const float *cos_sin) {
    for (int h = 0; h < n_heads; h++) {
        float *xh = x + (size_t)h * head_dim;
        for (int i = 0; i < n_rot / 2; i++) {
            const float c = cos_sin[2 * i], s = cos_sin[2 * i + 1];
            const float x0 = xh[2 * i], x1 = xh[2 * i + 1];
            xh[2 * i] = x0 * c - x1 * s;
            xh[2 * i + 1] = x0 * s + x1 * c;
        }
    }
}

/* NEOX pairing (qwen2, qwen3, gemma3): dims (i, i + n_rot/2) rotate by angle i */
void rk_rope_apply_neox(float *x, int n_heads, int head_dim, int n_rot, const float *cos_sin) {
    const int half = n_rot / 2;
    for (int h = 0; h < n_heads; h++) {
        float *xh = x + (size_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            const float c = cos_sin[2 * i], s = cos_sin[2 * i + 1];
            const float x0 = xh[i], x1 = xh[i + half];
            xh[i] = x0 * c - x1 * s;
            xh[i + half] = x0 * s + x1 * c;
        }
    }
}

void rk_rope_apply_kind(int neox, float *x, int n_heads, int head_dim, int n_rot, const float *cos_sin) {
    (neox ? rk_rope_apply_neox : rk_rope_apply)(x, n_heads, head_dim, n_rot, cos_sin);
}

/* ggml-cpu's GELU (GGML_GELU_FP16): the tanh formula, tabulated at every f16 value and rounded to f16;
 * x is rounded to f16 for the lookup, 0 below -10, x above 10 (one spare entry: see glu_avx2.c) */
static uint16_t gelu_f16[(1 << 16) + 1];

#if defined(RK_HAVE_X86)
void rk_avx2_geglu(const uint16_t *table, float *a, const float *b, size_t n); /* the same bits */
void rk_avx2_swiglu(float *a, const float *b, size_t n); /* silu's exp from exp_avx2.h, not libm's */
#endif
#if defined(RK_HAVE_VNNI)
void rk_avx512_swiglu(float *a, const float *b, size_t n); /* the same bits, 16 lanes */
#endif
static pthread_once_t gelu_once = PTHREAD_ONCE_INIT;

static void gelu_table(void) {
    for (uint32_t i = 0; i < (1u << 16); i++) {
        const float x = rk_fp16_to_fp32((uint16_t)i);
        gelu_f16[i] = rk_fp32_to_fp16(0.5f * x * (1.0f + tanhf(0.79788456080286535587989211986876f * x * (1.0f + 0.044715f * x * x))));
    }
}

void rk_geglu(float *a, const float *b, size_t n) {
    pthread_once(&gelu_once, gelu_table);
    size_t i = 0;
#if defined(RK_HAVE_X86)
    if (rk_quant_avx2_active()) {
        rk_avx2_geglu(gelu_f16, a, b, n);
        i = n / 8 * 8;
    }
#endif
    for (; i < n; i++) {
        const float x = a[i];
        a[i] = x <= -10.0f ? 0.0f : x >= 10.0f ? x * b[i] : rk_fp16_to_fp32(gelu_f16[rk_fp32_to_fp16(x)]) * b[i];
    }
}

void rk_softcap(float *x, size_t n, float cap) {
    const float inv = 1.0f / cap; /* ggml's order: scale by 1/cap, tanh, scale by cap */
    for (size_t i = 0; i < n; i++) x[i] = tanhf(x[i] * inv) * cap;
}

/* wide: 512-bit registers allowed (the VNNI tier; the same bits). Only for batches: an Intel core
 * that runs them lowers its clock for a while, which a decode step, bound by memory and 256-bit
 * kernels, pays without gaining (measured: decode 0.95x with them, prefill 2048 faster) */
static void swiglu_rows(float *a, const float *b, size_t n, int wide) {
#if defined(RK_HAVE_VNNI)
    if (wide && rk_quant_avx512_active()) {
        rk_avx512_swiglu(a, b, n);
        return;
    }
#else
    (void)wide;
#endif
#if defined(RK_HAVE_X86)
    if (rk_quant_avx2_active()) {
        rk_avx2_swiglu(a, b, n);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++) a[i] = silu(a[i]) * b[i];
}

void rk_swiglu(float *a, const float *b, size_t n) { swiglu_rows(a, b, n, 0); }
