/*
 * attention.c: softmax attention of a batch of queries over the per-head KV
 * buffers of one layer. A query at position p sees exactly the slots whose
 * stored position is <= p, wherever those slots are in the buffer.
 *
 * Every query row is computed with the same float operations in the same
 * order, however the work is cut: the score of a slot is the KV type's dot of
 * the stored key with the query (times 1/sqrt(head_dim)), the softmax sums in
 * slot order, and V rows are added into the output in slot order. So how rows
 * are grouped changes speed, not results; decode gives the bits a prefill gives.
 *
 * Prefill: jobs of several query rows that share one kv-head (up to
 * RK_ATT_TOKENS tokens x the heads of a GQA group), so each K and V row is
 * read once per job instead of once per query row.
 * Decode (one token): three passes, so that both threads stream the cache and
 * each K/V row is read once for the whole GQA group: scores by (kv-head, slot
 * block), softmax by head, then value sums by (kv-head, 32-wide slice of the
 * head dimension), each slice keeping the slot order of its sums.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "backend_cpu.h"
#include "quant.h"
#include "quant_avx2.h"
#include "policy.h"

#define DEC_SLOTS 256 /* slots per scoring job of a decode step */
#define DEC_DIMS 32   /* head-dimension slice per value job of a decode step */
#define BLK 8         /* K and V rows converted to f32 together, then met by every query row */

/* Key and value blocks: keys scored 8 at a time against one query, values summed 8 slots at a
 * time into one output row. Prefill and decode use the same pair, so their rows agree bit for bit. */
typedef struct {
    void (*dot_block)(int n, int nk, const float *k, const float *q, float *out);
    void (*accum_block)(int n, int nv, const float *w, const float *v, size_t vs, float *out);
    /* sc[i] = exp(sc[i] - mx) (0 for -inf), returns their sum */
    double (*softmax_exp)(float *sc, int n, float mx);
} att_kernels;

/* portable twins: one accumulator per key, in element order; values as in the AVX2 kernel */
static void dot_block_c(int n, int nk, const float *k, const float *q, float *out) {
    for (int i = 0; i < nk; i++) {
        double acc = 0.0;
        for (int c = 0; c < n; c++) acc += (double)k[(size_t)i * n + c] * q[c];
        out[i] = (float)acc;
    }
}

static void accum_block_c(int n, int nv, const float *w, const float *v, size_t vs, float *out) {
    for (int c = 0; c < n; c++)
        for (int i = 0; i < nv; i++)
            if (w[i] != 0.0f) out[c] += w[i] * v[(size_t)i * vs + c];
}

static double softmax_exp_c(float *sc, int n, float mx) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        sc[i] = sc[i] == -INFINITY ? 0.0f : expf(sc[i] - mx);
        sum += sc[i];
    }
    return sum;
}

static att_kernels pick_kernels(int head_dim) {
    att_kernels k = {dot_block_c, accum_block_c, softmax_exp_c};
#if defined(RK_HAVE_X86)
    if (head_dim % 8 == 0 && rk_quant_avx2_active())
        k = (att_kernels){rk_avx2_dot_block, rk_avx2_accum_block, rk_avx2_softmax_exp};
#else
    (void)head_dim;
#endif
    return k;
}

typedef struct {
    rk_backend_ctx *c;
    const rk_attn_args *a;
    const rk_kv *kv;
    int il, n, group;
    int32_t pos0;
    int tokens, heads;        /* rows of a job: `tokens` query tokens x `heads` query heads */
    long n_tb, n_hb;          /* token blocks, head blocks per kv-head */
    int whole_heads;          /* accumulated statistics: a job owns one head for every token */
    att_kernels kern;
} att_job;

size_t rk_attention_scratch_floats(int n_ctx, int head_dim) {
    return (size_t)(RK_ATT_ROWS + 1) * (size_t)n_ctx + RK_ATT_ROWS + (size_t)2 * BLK * (size_t)head_dim + BLK;
}

/* one thread's share of c->att_ws, laid out in this one place */
typedef struct {
    float *scores; /* [RK_ATT_ROWS][n_ctx] a prefill job's rows */
    float *tmp;    /* [n_ctx] top-k scratch */
    float *inv;    /* [RK_ATT_ROWS] 1/sum per row */
    float *kf, *vf; /* [BLK][head_dim] keys and values as f32 */
    float *blk;    /* [BLK] one row's block of scores or weights */
} att_scratch;

static att_scratch scratch_of(const rk_backend_ctx *c, int ith) {
    const size_t C = (size_t)c->n_ctx, hd = (size_t)c->head_dim;
    att_scratch w;
    w.scores = c->att_ws + (size_t)ith * rk_attention_scratch_floats(c->n_ctx, (int)hd);
    w.tmp = w.scores + RK_ATT_ROWS * C;
    w.inv = w.tmp + C;
    w.kf = w.inv + RK_ATT_ROWS;
    w.vf = w.kf + BLK * hd;
    w.blk = w.vf + BLK * hd;
    return w;
}

/* Query row (token at position p, head h of kv-head g) with raw scores sc[0..n_used):
 * turns them into exp(score - max) (0 where masked) and returns 1/sum; adds the
 * normalised weights to the accumulated-attention statistics when they are kept. */
static float softmax_row(const att_job *j, int g, int h, int32_t p, float *sc, int32_t n_used, float *tmp) {
    const rk_attn_args *a = j->a;
    const int group = j->group;
    const size_t C = (size_t)j->kv->capacity;
    const int32_t *pos = rk_kv_pos(j->kv, j->il, g);
    float mx = -INFINITY;
    for (int32_t sl = 0; sl < n_used; sl++)
        if (sc[sl] > mx) mx = sc[sl];
    if (a->topk || a->topk_frac > 0) rk_topk_mask(a->topk, a->topk_frac, sc, n_used, tmp);
    const double sum = j->kern.softmax_exp(sc, n_used, mx);
    const float inv = sum > 0 ? (float)(1.0 / sum) : 0.0f;
    if (a->stats.acc) {
        float *acc = a->stats.acc + (size_t)h * C;
        float *cnt = a->stats.cnt + (size_t)g * C;
        for (int32_t sl = 0; sl < n_used; sl++) {
            if (pos[sl] > p) continue; /* (statistics are kept for global layers only: no window here) */
            acc[sl] += sc[sl] * inv;
            if (h % group == 0) cnt[sl] += 1.0f;
        }
    }
    return inv;
}

/* ---- prefill: rows r = (t - t0) * nh + (h - h0) for tokens [t0, t1) and query heads [h0, h0 + nh) of kv-head g */
static void attend_rows(const att_job *j, const att_scratch *ws, int g, int h0, int nh, int t0, int t1) {
    const rk_kv *kv = j->kv;
    const int hd = kv->head_dim, dq = j->a->n_heads * hd;
    const size_t C = (size_t)j->c->n_ctx; /* the workspace's row stride: the largest buffer of any layer */
    const rk_type_traits *kt = rk_get_type_traits(kv->type);
    const size_t row = (size_t)hd * kv->elt_size;
    const float scale = j->a->scale;
    float *scores = ws->scores, *tmp = ws->tmp, *inv = ws->inv, *kf = ws->kf, *vf = ws->vf, *blk = ws->blk;
    const uint8_t *K = rk_kv_k(kv, j->il, g), *V = rk_kv_v(kv, j->il, g);
    const int32_t *pos = rk_kv_pos(kv, j->il, g);
    /* slots past the last one any row of the job sees (in a cache filled in order: the
     * batch's later tokens) take no work; every row masks its own later slots */
    const int32_t p_last = j->pos0 + t1 - 1;
    int32_t n_used = kv->n_used[rk_kv_head_index(kv, j->il, g)];
    while (n_used > 0 && pos[n_used - 1] > p_last) n_used--;

    for (int32_t s0 = 0; s0 < n_used; s0 += BLK) {
        const int ns = s0 + BLK < n_used ? BLK : n_used - s0;
        kt->to_float(K + (size_t)s0 * row, kf, (int64_t)ns * hd);
        for (int t = t0, r = 0; t < t1; t++)
            for (int h = h0; h < h0 + nh; h++, r++) {
                j->kern.dot_block(hd, ns, kf, j->a->q + (size_t)t * dq + (size_t)h * hd, blk);
                float *sc = scores + (size_t)r * C + s0;
                const int32_t p = j->pos0 + t, lo = j->a->n_swa ? p - j->a->n_swa + 1 : INT32_MIN;
                for (int i = 0; i < ns; i++) sc[i] = pos[s0 + i] <= p && pos[s0 + i] >= lo ? blk[i] * scale : -INFINITY;
            }
    }
    for (int t = t0, r = 0; t < t1; t++)
        for (int h = h0; h < h0 + nh; h++, r++) {
            inv[r] = softmax_row(j, g, h, j->pos0 + t, scores + (size_t)r * C, n_used, tmp);
            memset(j->a->out + (size_t)t * dq + (size_t)h * hd, 0, (size_t)hd * sizeof(float));
        }
    for (int32_t s0 = 0; s0 < n_used; s0 += BLK) {
        const int ns = s0 + BLK < n_used ? BLK : n_used - s0;
        kt->to_float(V + (size_t)s0 * row, vf, (int64_t)ns * hd);
        for (int t = t0, r = 0; t < t1; t++)
            for (int h = h0; h < h0 + nh; h++, r++) {
                for (int i = 0; i < ns; i++) blk[i] = scores[(size_t)r * C + s0 + i] * inv[r];
                j->kern.accum_block(hd, ns, blk, vf, (size_t)hd, j->a->out + (size_t)t * dq + (size_t)h * hd);
            }
    }
}

static void attention_task(void *ctx, int ith, int nth) {
    const att_job *j = ctx;
    const int group = j->group;
    const att_scratch ws = scratch_of(j->c, ith);
    long b, e;
    if (j->whole_heads) { /* job = one query head, all tokens, in blocks */
        rk_split_range(j->a->n_heads, ith, nth, 1, &b, &e);
        for (long h = b; h < e; h++)
            for (int t0 = 0; t0 < j->n; t0 += RK_ATT_ROWS) {
                const int t1 = t0 + RK_ATT_ROWS < j->n ? t0 + RK_ATT_ROWS : j->n;
                attend_rows(j, &ws, (int)h / group, (int)h, 1, t0, t1);
            }
        return;
    }
    /* job = (kv-head, head block, token block) */
    rk_split_range((long)j->kv->n_kv_heads * j->n_hb * j->n_tb, ith, nth, 1, &b, &e);
    for (long job = b; job < e; job++) {
        const int tb = (int)(job % j->n_tb), hb = (int)(job / j->n_tb % j->n_hb), g = (int)(job / j->n_tb / j->n_hb);
        const int h0 = g * group + hb * j->heads;
        const int nh = h0 + j->heads <= (g + 1) * group ? j->heads : (g + 1) * group - h0;
        const int t0 = tb * j->tokens, t1 = t0 + j->tokens < j->n ? t0 + j->tokens : j->n;
        attend_rows(j, &ws, g, h0, nh, t0, t1);
    }
}

/* ---- decode: one query token at position j->pos0 */

static long max_used(const rk_kv *kv, int il) {
    long mx = 0;
    for (int g = 0; g < kv->n_kv_heads; g++) {
        const long u = kv->n_used[rk_kv_head_index(kv, il, g)];
        if (u > mx) mx = u;
    }
    return mx;
}

/* job = (kv-head, block of DEC_SLOTS slots): the group's scores, each key read once */
static void decode_scores_task(void *ctx, int ith, int nth) {
    const att_job *j = ctx;
    const rk_kv *kv = j->kv;
    const int hd = kv->head_dim, group = j->group;
    const size_t C1 = (size_t)j->c->n_ctx + 1, row = (size_t)hd * kv->elt_size;
    const rk_type_traits *kt = rk_get_type_traits(kv->type);
    const float scale = j->a->scale;
    const int32_t lo = j->a->n_swa ? j->pos0 - j->a->n_swa + 1 : INT32_MIN; /* the window's first position */
    const att_scratch ws = scratch_of(j->c, ith);
    float *kf = ws.kf, *blk = ws.blk;
    const long n_blocks = (max_used(kv, j->il) + DEC_SLOTS - 1) / DEC_SLOTS;
    long b, e;
    rk_split_range((long)kv->n_kv_heads * n_blocks, ith, nth, 1, &b, &e);
    for (long job = b; job < e; job++) {
        const int g = (int)(job / n_blocks);
        const int32_t n_used = kv->n_used[rk_kv_head_index(kv, j->il, g)];
        const int32_t s0 = (int32_t)(job % n_blocks) * DEC_SLOTS;
        const int32_t s1 = s0 + DEC_SLOTS < n_used ? s0 + DEC_SLOTS : n_used;
        const uint8_t *K = rk_kv_k(kv, j->il, g);
        const int32_t *pos = rk_kv_pos(kv, j->il, g);
        for (int32_t b0 = s0; b0 < s1; b0 += BLK) {
            const int ns = b0 + BLK < s1 ? BLK : s1 - b0;
            kt->to_float(K + (size_t)b0 * row, kf, (int64_t)ns * hd);
            for (int h = g * group; h < (g + 1) * group; h++) {
                j->kern.dot_block(hd, ns, kf, j->a->q + (size_t)h * hd, blk);
                float *sc = j->c->att_dec + (size_t)h * C1 + b0;
                for (int i = 0; i < ns; i++) sc[i] = pos[b0 + i] <= j->pos0 && pos[b0 + i] >= lo ? blk[i] * scale : -INFINITY;
            }
        }
    }
}

/* job = one head: softmax over its scores; 1/sum stored after them */
static void decode_softmax_task(void *ctx, int ith, int nth) {
    const att_job *j = ctx;
    const int group = j->group;
    const size_t C = (size_t)j->c->n_ctx;
    float *tmp = scratch_of(j->c, ith).tmp;
    long b, e;
    rk_split_range(j->a->n_heads, ith, nth, 1, &b, &e);
    for (long h = b; h < e; h++) {
        const int g = (int)h / group;
        float *sc = j->c->att_dec + (size_t)h * (C + 1);
        const int32_t n_used = j->kv->n_used[rk_kv_head_index(j->kv, j->il, g)];
        sc[C] = softmax_row(j, g, (int)h, j->pos0, sc, n_used, tmp);
    }
}

/* job = (kv-head, DEC_DIMS-wide slice): every slot's V slice into the group's outputs, in slot order */
static void decode_values_task(void *ctx, int ith, int nth) {
    const att_job *j = ctx;
    const rk_kv *kv = j->kv;
    const int hd = kv->head_dim, group = j->group;
    const size_t C = (size_t)j->c->n_ctx, row = (size_t)hd * kv->elt_size;
    const rk_type_traits *kt = rk_get_type_traits(kv->type);
    const att_scratch ws = scratch_of(j->c, ith);
    float *vf = ws.vf, *blk = ws.blk;
    float *out = j->a->out;
    const int n_slices = (hd + DEC_DIMS - 1) / DEC_DIMS;
    long b, e;
    rk_split_range((long)kv->n_kv_heads * n_slices, ith, nth, 1, &b, &e);
    for (long job = b; job < e; job++) {
        const int g = (int)(job / n_slices), d0 = (int)(job % n_slices) * DEC_DIMS;
        const int nd = d0 + DEC_DIMS < hd ? DEC_DIMS : hd - d0;
        const int32_t n_used = kv->n_used[rk_kv_head_index(kv, j->il, g)];
        const uint8_t *V = rk_kv_v(kv, j->il, g) + (size_t)d0 * kv->elt_size;
        for (int h = g * group; h < (g + 1) * group; h++) memset(out + (size_t)h * hd + d0, 0, (size_t)nd * sizeof(float));
        for (int32_t s0 = 0; s0 < n_used; s0 += BLK) {
            const int ns = s0 + BLK < n_used ? BLK : n_used - s0;
            for (int i = 0; i < ns; i++) kt->to_float(V + (size_t)(s0 + i) * row, vf + (size_t)i * nd, nd);
            for (int h = g * group; h < (g + 1) * group; h++) {
                const float *sc = j->c->att_dec + (size_t)h * (C + 1);
                /* a slot after the query has weight 0 (its score was -inf): skipped like any zero */
                for (int i = 0; i < ns; i++) blk[i] = sc[s0 + i] * sc[C];
                j->kern.accum_block(nd, ns, blk, vf, (size_t)nd, out + (size_t)h * hd + d0);
            }
        }
    }
}

void rk_cpu_attention(rk_backend_ctx *c, const rk_attn_args *a) {
    const int n = a->n, group = a->n_heads / a->kv->n_kv_heads;
    att_job j = {c, a, a->kv, a->il, n, group, a->pos0, 1, 1, 0, 0, a->stats.acc != NULL, pick_kernels(a->kv->head_dim)};
    if (n == 1) {
        rk_pool_run(c->pool, decode_scores_task, &j);
        rk_pool_run(c->pool, decode_softmax_task, &j);
        rk_pool_run(c->pool, decode_values_task, &j);
        return;
    }
    if (n >= RK_ATT_TOKENS) { /* prefill: share each K/V row among tokens and the group's heads */
        j.heads = group * RK_ATT_TOKENS <= RK_ATT_ROWS ? group : (RK_ATT_ROWS / RK_ATT_TOKENS > 0 ? RK_ATT_ROWS / RK_ATT_TOKENS : 1);
        j.tokens = RK_ATT_ROWS / j.heads < RK_ATT_TOKENS ? RK_ATT_ROWS / j.heads : RK_ATT_TOKENS;
    } /* short batches: one row a job, so the threads split the heads evenly */
    j.n_tb = (n + j.tokens - 1) / j.tokens;
    j.n_hb = (group + j.heads - 1) / j.heads;
    rk_pool_run(c->pool, attention_task, &j);
}
