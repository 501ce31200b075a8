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
 * The kernels (att_kernels) take a set of query rows (rk_att_rows) and read each
 * K/V row once, in its stored type, for all of them.
 * Prefill: jobs of several query rows that share one kv-head (up to
 * RK_ATT_TOKENS tokens x the heads of a GQA group).
 * Decode (one token): three passes, so that both threads stream the cache and
 * each K/V row is read once for the whole GQA group: scores by (kv-head, slot
 * block), softmax by head, then value sums by (kv-head, 32-wide slice of the
 * head dimension), each slice keeping the slot order of its sums.
 *
 * Profile that shaped this (perf, SmolLM2-135M, F16 cache, 2 threads, Zen 1): decode at depth
 * 8192 spent ~85% of a step in attention, a third each in converting K/V blocks to an f32
 * buffer, the dots, and the value sums reading that buffer back; prefill 2048 ~55% (the rest
 * the matmuls). The kernels now convert each element once in registers and tile rows x keys
 * (attention_avx2.c says why); on the AVX512-VNNI tier prefill jobs run them 16 lanes wide, with the
 * same bits (attention_avx512.c).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "backend_cpu.h"
#include "quant.h"
#include "quant_avx2.h"
#include "policy.h"

#define DEC_SLOTS 256 /* slots per scoring job of a decode step */
#define DEC_MIN_DIMS 16 /* the narrowest head-dimension slice of a decode step's value job */
#define CVT_MAX 512   /* the portable twins convert a K/V row once when it is at most this long */

/* scores of keys [0, ns) for a set of rows, value sums into them, softmax exponentials.
 * Prefill and decode use the same kernels, so their rows agree bit for bit. */
typedef struct {
    void (*scores)(int hd, int f16, int ns, const void *k, const int32_t *pos, float scale, const rk_att_rows *r);
    void (*values)(int nd, int f16, int ns, const void *v, size_t vs, const rk_att_rows *r);
    float (*max)(const float *sc, int n); /* max of sc[0..n), -inf for none */
    /* sc[i] = exp(sc[i] - mx) (0 for -inf), returns their sum */
    double (*softmax_exp)(float *sc, int n, float mx);
} att_kernels;

/* element c of a stored row (f16 or f32), and the row as f32: in buf, or the row itself */
static inline float elt(const void *x, int f16, size_t c) {
    return f16 ? rk_fp16_to_fp32(((const uint16_t *)x)[c]) : ((const float *)x)[c];
}
static const float *row_f32(const void *x, int f16, int n, float *buf) {
    if (!f16) return x;
    for (int c = 0; c < n; c++) buf[c] = elt(x, 1, (size_t)c);
    return buf;
}

/* portable twins: one double accumulator per (key, row), in element order; values multiplied then added
 * (the AVX2 kernel fuses them: the same order, rounding apart) */
static void scores_c(int hd, int f16, int ns, const void *k, const int32_t *pos, float scale, const rk_att_rows *rw) {
    float buf[CVT_MAX];
    const size_t es = f16 ? 2 : 4;
    for (int i = 0; i < ns; i++) {
        const void *ki = (const uint8_t *)k + (size_t)i * hd * es;
        const float *kf = hd <= CVT_MAX ? row_f32(ki, f16, hd, buf) : NULL;
        for (int r = 0; r < rw->n; r++) {
            double acc = 0.0;
            for (int c = 0; c < hd; c++) acc += (double)(kf ? kf[c] : elt(ki, f16, (size_t)c)) * rw->q[r][c];
            rw->sc[r][i] = pos[i] <= rw->p[r] && pos[i] >= rw->lo[r] ? (float)acc * scale : -INFINITY;
        }
    }
}

static void values_c(int nd, int f16, int ns, const void *v, size_t vs, const rk_att_rows *rw) {
    float buf[CVT_MAX];
    const size_t es = f16 ? 2 : 4;
    for (int i = 0; i < ns; i++) {
        const void *vi = (const uint8_t *)v + (size_t)i * vs * es;
        const float *vf = nd <= CVT_MAX ? row_f32(vi, f16, nd, buf) : NULL;
        for (int r = 0; r < rw->n; r++) {
            const float w = rw->sc[r][i];
            if (w == 0.0f) continue;
            for (int c = 0; c < nd; c++) rw->o[r][c] += w * (vf ? vf[c] : elt(vi, f16, (size_t)c));
        }
    }
}

static float max_c(const float *sc, int n) {
    float mx = -INFINITY;
    for (int i = 0; i < n; i++)
        if (sc[i] > mx) mx = sc[i];
    return mx;
}

static double softmax_exp_c(float *sc, int n, float mx) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        sc[i] = sc[i] == -INFINITY ? 0.0f : expf(sc[i] - mx);
        sum += sc[i];
    }
    return sum;
}

/* wide: the 512-bit kernels of the VNNI tier (the same bits) may serve; for prefill jobs only, since
 * an Intel core that runs them lowers its clock for a while, which the decode step around a few
 * score blocks pays without gaining (measured: decode 0.95x with them) */
static att_kernels pick_kernels(int head_dim, int wide) {
    (void)wide;
    att_kernels k = {scores_c, values_c, max_c, softmax_exp_c};
#if defined(RK_HAVE_X86)
    if (head_dim % 8 == 0 && rk_quant_avx2_active())
        k = (att_kernels){rk_avx2_att_scores, rk_avx2_att_values, rk_avx2_att_max, rk_avx2_softmax_exp};
#if defined(RK_HAVE_VNNI)
    if (wide && head_dim % 8 == 0 && rk_quant_avx512_active()) {
        k.scores = rk_avx512_att_scores;
        k.values = rk_avx512_att_values;
        k.softmax_exp = rk_avx512_softmax_exp;
    }
#endif
#else
    (void)head_dim;
#endif
    return k;
}

/* the arrays behind an rk_att_rows of at most RK_ATT_ROWS rows */
typedef struct {
    const float *q[RK_ATT_ROWS];
    float *sc[RK_ATT_ROWS], *o[RK_ATT_ROWS];
    int32_t p[RK_ATT_ROWS], lo[RK_ATT_ROWS];
    rk_att_rows r;
} att_rowset;

static void rows_init(att_rowset *s) { s->r = (rk_att_rows){0, s->q, s->sc, s->o, s->p, s->lo}; }
static void rows_add(att_rowset *s, const float *q, float *sc, float *o, int32_t p, int32_t n_swa) {
    const int i = s->r.n++;
    s->q[i] = q, s->sc[i] = sc, s->o[i] = o, s->p[i] = p;
    s->lo[i] = n_swa ? p - n_swa + 1 : INT32_MIN;
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
    (void)head_dim;
    return (size_t)(RK_ATT_ROWS + 1) * (size_t)n_ctx;
}

/* one thread's share of c->att_ws, laid out in this one place */
typedef struct {
    float *scores; /* [RK_ATT_ROWS][n_ctx] a prefill job's rows */
    float *tmp;    /* [n_ctx] top-k scratch */
} att_scratch;

static att_scratch scratch_of(const rk_backend_ctx *c, int ith) {
    att_scratch w;
    w.scores = c->att_ws + (size_t)ith * rk_attention_scratch_floats(c->n_ctx, c->head_dim);
    w.tmp = w.scores + RK_ATT_ROWS * (size_t)c->n_ctx;
    return w;
}

/* Query row (token at position p, head h of kv-head g) with raw scores sc[0..n_used): turns
 * them into the softmax weights exp(score - max) * (1/sum) (0 where masked), the one product
 * the value sums and the accumulated-attention statistics (when kept) both read. */
static void softmax_row(const att_job *j, int g, int h, int32_t p, float *sc, int32_t n_used, float *tmp) {
    const rk_attn_args *a = j->a;
    const int group = j->group;
    const size_t C = (size_t)j->kv->capacity;
    const int32_t *pos = rk_kv_pos(j->kv, j->il, g);
    const float mx = j->kern.max(sc, n_used);
    if (a->topk || a->topk_frac > 0) rk_topk_mask(a->topk, a->topk_frac, sc, n_used, tmp);
    const double sum = j->kern.softmax_exp(sc, n_used, mx);
    const float inv = sum > 0 ? (float)(1.0 / sum) : 0.0f;
    for (int32_t sl = 0; sl < n_used; sl++) sc[sl] *= inv;
    if (a->stats.acc) {
        float *acc = a->stats.acc + (size_t)h * C;
        float *cnt = a->stats.cnt + (size_t)g * C;
        for (int32_t sl = 0; sl < n_used; sl++) {
            if (pos[sl] > p) continue; /* (statistics are kept for global layers only: no window here) */
            acc[sl] += sc[sl];
            if (h % group == 0) cnt[sl] += 1.0f;
        }
    }
}

/* ---- sliding-window layers: only the slots a job's rows can see. A ring holds n_swa - 1 + n_batch
 * slots, so a decode step or a job of a few tokens sees about half of them; the others (one
 * contiguous stretch of the ring) would be scored only to be masked. Skipping them changes no bits:
 * their scores are -inf either way, their weights 0, and zero weights add nothing to the sums. */

#define RUN_GAP 16 /* invisible slots inside a run: cheaper to score and mask than to split the run */
#define MAX_RUNS 4

typedef struct {
    int32_t b, e;
} slot_run;

/* maximal runs of the slots of [0, ns) whose position is in [lo, hi] (gaps under RUN_GAP kept
 * inside); past MAX_RUNS the last run is extended over the rest */
static int visible_runs(const int32_t *pos, int32_t ns, int32_t lo, int32_t hi, slot_run *runs) {
    int n = 0;
    for (int32_t s = 0; s < ns;) {
        while (s < ns && (pos[s] < lo || pos[s] > hi)) s++;
        if (s == ns) break;
        int32_t last = s;
        for (int32_t t = s + 1; t < ns && t - last <= RUN_GAP; t++)
            if (pos[t] >= lo && pos[t] <= hi) last = t;
        if (n == MAX_RUNS) runs[n - 1].e = last + 1;
        else runs[n++] = (slot_run){s, last + 1};
        s = last + 1;
    }
    return n;
}

/* kern.scores over slots [0, ns) (sc, k and pos from slot 0), of a window layer (lo <= hi: the
 * positions any row sees) only over its visible runs, the rest of each row -inf */
static void scores_seen(const att_job *j, int hd, int f16, int32_t ns, const uint8_t *k, const int32_t *pos,
                        const rk_att_rows *rw, int32_t lo, int32_t hi) {
    if (!j->a->n_swa) {
        j->kern.scores(hd, f16, ns, k, pos, j->a->scale, rw);
        return;
    }
    slot_run runs[MAX_RUNS];
    const int n = visible_runs(pos, ns, lo, hi, runs);
    float *sc[RK_ATT_ROWS];
    rk_att_rows sub = *rw;
    sub.sc = sc;
    const size_t row = (size_t)hd * (f16 ? 2 : 4);
    int32_t prev = 0;
    for (int i = 0; i <= n; i++) {
        const int32_t b = i < n ? runs[i].b : ns;
        for (int r = 0; r < rw->n; r++)
            for (int32_t s = prev; s < b; s++) rw->sc[r][s] = -INFINITY;
        if (i == n) break;
        for (int r = 0; r < rw->n; r++) sc[r] = rw->sc[r] + b;
        j->kern.scores(hd, f16, runs[i].e - b, k + (size_t)b * row, pos + b, j->a->scale, &sub);
        prev = runs[i].e;
    }
}

/* kern.values over slots [0, ns) (weights and v from slot 0), of a window layer only over the
 * runs visible to [lo, hi] (the others' weights are 0) */
static void values_seen(const att_job *j, int nd, int f16, int32_t ns, const uint8_t *v, const int32_t *pos,
                        const rk_att_rows *rw, int32_t lo, int32_t hi) {
    const size_t vs = (size_t)j->kv->head_dim;
    if (!j->a->n_swa) {
        j->kern.values(nd, f16, ns, v, vs, rw);
        return;
    }
    slot_run runs[MAX_RUNS];
    const int n = visible_runs(pos, ns, lo, hi, runs);
    float *sc[RK_ATT_ROWS];
    rk_att_rows sub = *rw;
    sub.sc = sc;
    for (int i = 0; i < n; i++) {
        for (int r = 0; r < rw->n; r++) sc[r] = rw->sc[r] + runs[i].b;
        j->kern.values(nd, f16, runs[i].e - runs[i].b, v + (size_t)runs[i].b * vs * (f16 ? 2 : 4), vs, &sub);
    }
}

/* ---- prefill: rows r = (t - t0) * nh + (h - h0) for tokens [t0, t1) and query heads [h0, h0 + nh) of kv-head g */
static void attend_rows(const att_job *j, const att_scratch *ws, int g, int h0, int nh, int t0, int t1) {
    const rk_kv *kv = j->kv;
    const int hd = kv->head_dim, dq = j->a->n_heads * hd, f16 = kv->type == RK_TYPE_F16;
    const size_t C = (size_t)j->c->n_ctx; /* the workspace's row stride: the largest buffer of any layer */
    const int32_t *pos = rk_kv_pos(kv, j->il, g);
    /* slots past the last one any row of the job sees (in a cache filled in order: the
     * batch's later tokens) take no work; every row masks its own later slots */
    const int32_t p_last = j->pos0 + t1 - 1;
    int32_t n_used = kv->n_used[rk_kv_head_index(kv, j->il, g)];
    while (n_used > 0 && pos[n_used - 1] > p_last) n_used--;

    att_rowset rs;
    rows_init(&rs);
    for (int t = t0; t < t1; t++)
        for (int h = h0; h < h0 + nh; h++) {
            const size_t off = (size_t)t * dq + (size_t)h * hd;
            rows_add(&rs, j->a->q + off, ws->scores + (size_t)rs.r.n * C, j->a->out + off, j->pos0 + t, j->a->n_swa);
        }
    const int32_t lo = rs.lo[0]; /* the first row's window starts first */
    scores_seen(j, hd, f16, n_used, rk_kv_k(kv, j->il, g), pos, &rs.r, lo, p_last);
    for (int r = 0; r < rs.r.n; r++) {
        softmax_row(j, g, h0 + r % nh, rs.p[r], rs.sc[r], n_used, ws->tmp);
        memset(rs.o[r], 0, (size_t)hd * sizeof(float));
    }
    values_seen(j, hd, f16, n_used, rk_kv_v(kv, j->il, g), pos, &rs.r, lo, p_last);
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

/* ---- decode: one query token at position j->pos0; row h's scores, then weights, at att_dec + h * (n_ctx + 1) */

static long max_used(const rk_kv *kv, int il) {
    long mx = 0;
    for (int g = 0; g < kv->n_kv_heads; g++) {
        const long u = kv->n_used[rk_kv_head_index(kv, il, g)];
        if (u > mx) mx = u;
    }
    return mx;
}

/* job = (kv-head, block of DEC_SLOTS slots): the group's scores, each key read once per RK_ATT_ROWS heads */
static void decode_scores_task(void *ctx, int ith, int nth) {
    const att_job *j = ctx;
    const rk_kv *kv = j->kv;
    const int hd = kv->head_dim, group = j->group, f16 = kv->type == RK_TYPE_F16;
    const size_t C1 = (size_t)j->c->n_ctx + 1, row = (size_t)hd * kv->elt_size;
    const long n_blocks = (max_used(kv, j->il) + DEC_SLOTS - 1) / DEC_SLOTS;
    long b, e;
    rk_split_range((long)kv->n_kv_heads * n_blocks, ith, nth, 1, &b, &e);
    for (long job = b; job < e; job++) {
        const int g = (int)(job / n_blocks);
        const int32_t n_used = kv->n_used[rk_kv_head_index(kv, j->il, g)];
        const int32_t s0 = (int32_t)(job % n_blocks) * DEC_SLOTS;
        const int32_t s1 = s0 + DEC_SLOTS < n_used ? s0 + DEC_SLOTS : n_used;
        if (s1 <= s0) continue;
        for (int h0 = g * group; h0 < (g + 1) * group; h0 += RK_ATT_ROWS) {
            att_rowset rs;
            rows_init(&rs);
            for (int h = h0; h < (g + 1) * group && h < h0 + RK_ATT_ROWS; h++)
                rows_add(&rs, j->a->q + (size_t)h * hd, j->c->att_dec + (size_t)h * C1 + s0, NULL, j->pos0, j->a->n_swa);
            scores_seen(j, hd, f16, s1 - s0, rk_kv_k(kv, j->il, g) + (size_t)s0 * row, rk_kv_pos(kv, j->il, g) + s0,
                        &rs.r, rs.lo[0], j->pos0);
        }
    }
}

/* job = one head: softmax over its scores, into weights */
static void decode_softmax_task(void *ctx, int ith, int nth) {
    const att_job *j = ctx;
    const int group = j->group;
    float *tmp = scratch_of(j->c, ith).tmp;
    long b, e;
    rk_split_range(j->a->n_heads, ith, nth, 1, &b, &e);
    for (long h = b; h < e; h++) {
        const int g = (int)h / group;
        const int32_t n_used = j->kv->n_used[rk_kv_head_index(j->kv, j->il, g)];
        softmax_row(j, g, (int)h, j->pos0, j->c->att_dec + (size_t)h * ((size_t)j->c->n_ctx + 1), n_used, tmp);
    }
}

/* V slices per kv-head of a decode step: as few as give every thread the same number of jobs.
 * Whole rows where the kv-heads alone do (Qwen2.5-1.5B: 2 kv-heads, 2 threads): a job then streams
 * its V rows once, front to back, where 32-wide slices read one cache line of every 256-byte row
 * in each of 4 passes over the cache. Which slice an output element is in does not change its bits. */
static int value_slices(int n_kv, int hd, int nth) {
    int n = 1;
    while ((n_kv * n) % nth && hd % (2 * n) == 0 && hd / (2 * n) >= DEC_MIN_DIMS && hd / (2 * n) % 8 == 0) n *= 2;
    return n;
}

/* job = (kv-head, slice of the head dimension): every slot's V slice into the group's outputs, in slot order */
static void decode_values_task(void *ctx, int ith, int nth) {
    const att_job *j = ctx;
    const rk_kv *kv = j->kv;
    const int hd = kv->head_dim, group = j->group, f16 = kv->type == RK_TYPE_F16;
    const size_t C1 = (size_t)j->c->n_ctx + 1;
    const int n_slices = value_slices(kv->n_kv_heads, hd, nth), width = hd / n_slices;
    long b, e;
    rk_split_range((long)kv->n_kv_heads * n_slices, ith, nth, 1, &b, &e);
    for (long job = b; job < e; job++) {
        const int g = (int)(job / n_slices), d0 = (int)(job % n_slices) * width, nd = width;
        const int32_t n_used = kv->n_used[rk_kv_head_index(kv, j->il, g)];
        for (int h0 = g * group; h0 < (g + 1) * group; h0 += RK_ATT_ROWS) {
            att_rowset rs;
            rows_init(&rs);
            for (int h = h0; h < (g + 1) * group && h < h0 + RK_ATT_ROWS; h++) {
                float *o = j->a->out + (size_t)h * hd + d0;
                memset(o, 0, (size_t)nd * sizeof(float));
                rows_add(&rs, NULL, j->c->att_dec + (size_t)h * C1, o, j->pos0, 0);
            }
            /* a slot after the query has weight 0 (its score was -inf): skipped like any zero */
            values_seen(j, nd, f16, n_used, rk_kv_v(kv, j->il, g) + (size_t)d0 * kv->elt_size, rk_kv_pos(kv, j->il, g),
                        &rs.r, j->a->n_swa ? j->pos0 - j->a->n_swa + 1 : INT32_MIN, j->pos0);
        }
    }
}

void rk_cpu_attention(rk_backend_ctx *c, const rk_attn_args *a) {
    const int n = a->n, group = a->n_heads / a->kv->n_kv_heads;
    att_job j = {c, a, a->kv, a->il, n, group, a->pos0, 1, 1, 0, 0, a->stats.acc != NULL,
                 pick_kernels(a->kv->head_dim, n >= RK_ATT_TOKENS)};
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
