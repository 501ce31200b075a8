/*
 * session.c: rk_session lifecycle and the eval / logprobs entry points.
 * Every argument is checked before any state changes, so a failing call leaves
 * the session exactly as it was.
 */
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "ops.h"
#include "session.h"

#define MAX_THREADS 1024

rk_session_params rk_session_default_params(void) {
    rk_session_params p = {0, 0, 512, RK_TYPE_F16};
    return p;
}

/* the activations of one batch, in the backend's memory */
static rk_status alloc_acts(rk_session *s) {
    const rk_model *m = s->model;
    const size_t nb = (size_t)s->n_batch, d = (size_t)m->n_embd, dq = (size_t)m->n_heads * m->head_dim,
                 dkv = (size_t)m->n_kv_heads * m->head_dim, ff = (size_t)m->n_ff, f = sizeof(float);
    rk_acts *a = &s->a;
    float **bufs[] = {&a->x, &a->xb, &a->q, &a->k, &a->v, &a->att, &a->proj, &a->hb, &a->hb2, &a->logit_rows};
    const size_t sizes[] = {nb * d, nb * d, nb * dq, nb * dkv, nb * dkv, nb * dq, nb * d, nb * ff, nb * ff,
                            (size_t)RK_LOGIT_BLOCK * (size_t)m->n_vocab};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (!(*bufs[i] = s->be->alloc(s->bctx, sizes[i] * f)))
            return rk_fail(RK_ERR_OOM, "cannot allocate session scratch buffers");
    if (!(a->last_h = malloc(d * f))) return rk_fail(RK_ERR_OOM, "cannot allocate session scratch buffers");
    return RK_OK;
}

static void free_acts(rk_session *s) {
    rk_acts *a = &s->a;
    float *bufs[] = {a->x, a->xb, a->q, a->k, a->v, a->att, a->proj, a->hb, a->hb2, a->logit_rows};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) s->be->dealloc(s->bctx, bufs[i]);
    free(a->last_h);
}

rk_status rk_session_init(rk_session **out, rk_model *model, const rk_session_params *params) {
    if (!out) return rk_fail(RK_ERR_ARG, "rk_session_init: out is NULL");
    *out = NULL;
    if (!model) return rk_fail(RK_ERR_ARG, "rk_session_init: model is NULL");
    rk_session_params p = params ? *params : rk_session_default_params();
    if (p.n_ctx < 0) return rk_fail(RK_ERR_ARG, "n_ctx must be >= 0 (0 = the model's trained context), got %d", p.n_ctx);
    if (p.n_threads < 0 || p.n_threads > MAX_THREADS)
        return rk_fail(RK_ERR_ARG, "n_threads must be in 1..%d (0 = default), got %d", MAX_THREADS, p.n_threads);
    if (p.n_batch < 0) return rk_fail(RK_ERR_ARG, "n_batch must be > 0, got %d", p.n_batch);
    if (p.kv_type != RK_TYPE_F16 && p.kv_type != RK_TYPE_F32)
        return rk_fail(RK_ERR_ARG, "kv_type must be RK_TYPE_F16 or RK_TYPE_F32, got %d", p.kv_type);
    rk_session *s = calloc(1, sizeof *s);
    if (!s) return rk_fail(RK_ERR_OOM, "out of memory");
    atomic_init(&s->busy, 0);
    rk_model_retain(model);
    s->model = model;
    s->be = model->backend;
    s->n_ctx = p.n_ctx ? p.n_ctx : model->n_ctx_train;
    s->n_batch = p.n_batch ? p.n_batch : 512;
    if (s->n_batch > s->n_ctx) s->n_batch = s->n_ctx;
    s->n_threads = p.n_threads ? p.n_threads : model->n_threads;
    /* attention's workspaces cover the largest buffer: n_ctx, or a window layer's ring */
    int32_t n_slots = s->n_ctx;
    for (int il = 0; il < model->n_layers; il++) {
        const int32_t w = model->layers[il].hp.n_swa;
        if (w > 0 && rk_kv_window_slots(w, s->n_batch) > n_slots) n_slots = rk_kv_window_slots(w, s->n_batch);
    }
    rk_status st = s->be->init(&s->bctx, model, s->n_threads, s->n_batch, n_slots);
    int32_t *swa = st ? NULL : malloc((size_t)model->n_layers * sizeof(int32_t));
    if (!st && !swa) st = rk_fail(RK_ERR_OOM, "out of memory");
    if (!st) {
        for (int il = 0; il < model->n_layers; il++) swa[il] = model->layers[il].hp.n_swa;
        st = rk_kv_init(&s->kv, s->be, s->bctx, model->n_layers, model->n_kv_heads, model->head_dim, s->n_ctx,
                        p.kv_type, swa, s->n_batch);
    }
    free(swa);
    if (!st) st = alloc_acts(s);
    if (!st) st = rk_evict_set(s, "full", NULL);
    if (st) {
        rk_session_free(s);
        return st;
    }
    *out = s;
    return RK_OK;
}

rk_status rk_session_enter(rk_session *s, const char *fn) {
    if (!s) return rk_fail(RK_ERR_ARG, "%s: session is NULL", fn);
    if (atomic_exchange_explicit(&s->busy, 1, memory_order_acquire))
        return rk_fail(RK_ERR_BUSY, "%s: the session is in a call from another thread (a session runs one call "
                                    "at a time: give each thread its own session)", fn);
    return RK_OK;
}

void rk_session_leave(rk_session *s) { atomic_store_explicit(&s->busy, 0, memory_order_release); }

void rk_session_free(rk_session *s) {
    if (!s) return;
    /* a call in flight in another thread still uses the buffers: let it finish */
    while (atomic_exchange_explicit(&s->busy, 1, memory_order_acquire)) sched_yield();
    rk_evict_free(&s->ev);
    rk_kv_free(&s->kv);
    if (s->bctx) {
        free_acts(s);
        s->be->free(s->bctx);
    }
    rk_model_free(s->model);
    free(s);
}

static rk_status check_tokens(const rk_session *s, const int32_t *tokens, int32_t n, const char *fn) {
    if (!s) return rk_fail(RK_ERR_ARG, "%s: session is NULL", fn);
    if (n < 1) return rk_fail(RK_ERR_ARG, "%s: need at least one token, got %d", fn, n);
    if (!tokens) return rk_fail(RK_ERR_ARG, "%s: tokens is NULL", fn);
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= s->model->n_vocab)
            return rk_fail(RK_ERR_ARG, "%s: token id %d at index %d is outside the vocabulary (0..%d)", fn,
                           tokens[i], i, s->model->n_vocab - 1);
    const int32_t used = rk_evict_max_used(s);
    if (rk_evict_streaming(s) || (int64_t)used + n <= s->n_ctx) return RK_OK; /* streaming evicts as it goes */
    return rk_fail(RK_ERR_CTX_FULL, "%s: %d tokens do not fit: %d of the session's %d KV slots are used", fn, n,
                   used, s->n_ctx);
}

/* tokens of the next forward: at most n_batch, and no more than the cache (or the
 * streaming schedule's budget + slack) has room for */
static int next_batch(const rk_session *s, int32_t left) {
    int32_t nb = left < s->n_batch ? left : s->n_batch;
    int32_t room = rk_evict_room(s);
    return nb < room ? nb : room;
}

/* A streaming eval that could not evict stops there: the tokens so far stay evaluated
 * (they cannot be taken back) and the error says how far it got. */
static rk_status stopped(const rk_session *s, rk_status st, int32_t done, int32_t n) {
    if (st == RK_OK)
        st = rk_fail(RK_ERR_CTX_FULL, "the KV cache is full (%d slots) and nothing could be evicted", s->n_ctx);
    char why[512];
    snprintf(why, sizeof why, "%s", rk_last_error()); /* rk_fail rewrites that buffer */
    return rk_fail(st, "%s (after %d of %d tokens)", why, done, n);
}

static rk_status eval(rk_session *s, const int32_t *tokens, int32_t n, float *logits, int32_t mode) {
    rk_status st = check_tokens(s, tokens, n, "rk_session_eval");
    if (st) return st;
    if (mode != RK_LOGITS_NONE && mode != RK_LOGITS_LAST && mode != RK_LOGITS_ALL)
        return rk_fail(RK_ERR_ARG, "rk_session_eval: unknown logits mode %d", mode);
    if (mode != RK_LOGITS_NONE && !logits) return rk_fail(RK_ERR_ARG, "rk_session_eval: logits buffer is NULL");
    const size_t nv = (size_t)s->model->n_vocab, d = (size_t)s->model->n_embd;
    for (int32_t i = 0, nb; i < n; i += nb) {
        nb = next_batch(s, n - i);
        if (nb == 0) return stopped(s, RK_OK, i, n);
        rk_forward(s, tokens + i, nb);
        if (mode == RK_LOGITS_ALL) {
            rk_logits(s, s->a.xb, nb, logits + (size_t)i * nv);
        } else if (mode == RK_LOGITS_LAST && i + nb == n) {
            rk_logits(s, s->a.xb + (size_t)(nb - 1) * d, 1, logits);
        }
        if ((st = rk_evict_after_forward(s))) return stopped(s, st, i + nb, n);
    }
    return RK_OK;
}

/* log-softmax of each logits row at its target token, threads over rows */
typedef struct {
    const float *rows;
    int n_rows, n_vocab;
    const int32_t *targets;
    float *out;
    int32_t *argmax;
} lp_job;

static void logprob_task(void *ctx, int ith, int nth) {
    const lp_job *j = ctx;
    long b, e;
    rk_split_range(j->n_rows, ith, nth, 1, &b, &e);
    for (long r = b; r < e; r++) {
        const float *l = j->rows + (size_t)r * (size_t)j->n_vocab;
        float mx = l[0];
        int32_t am = 0;
        for (int i = 1; i < j->n_vocab; i++)
            if (l[i] > mx) {
                mx = l[i];
                am = i;
            }
        double sum = 0.0;
        for (int i = 0; i < j->n_vocab; i++) sum += exp((double)(l[i] - mx));
        j->out[r] = (float)((double)(l[j->targets[r]] - mx) - log(sum));
        if (j->argmax) j->argmax[r] = am;
    }
}

static rk_status logprobs(rk_session *s, const int32_t *tokens, int32_t n, float *out, int32_t *argmax_out) {
    rk_status st = check_tokens(s, tokens, n, "rk_session_logprobs");
    if (st) return st;
    if (n > 1 && !out) return rk_fail(RK_ERR_ARG, "rk_session_logprobs: out is NULL");
    const size_t d = (size_t)s->model->n_embd;
    for (int32_t i = 0, nb; i < n; i += nb) {
        nb = next_batch(s, n - i);
        if (nb == 0) return stopped(s, RK_OK, i, n);
        rk_forward(s, tokens + i, nb);
        /* row r of this batch is token i+r; it predicts token i+r+1, which exists for i+r < n-1 */
        const int n_scored = i + nb <= n - 1 ? nb : n - 1 - i;
        for (int r = 0; r < n_scored; r += RK_LOGIT_BLOCK) {
            const int nr = n_scored - r < RK_LOGIT_BLOCK ? n_scored - r : RK_LOGIT_BLOCK;
            rk_logits(s, s->a.xb + (size_t)r * d, nr, s->a.logit_rows);
            lp_job j = {s->a.logit_rows, nr, s->model->n_vocab, tokens + i + r + 1, out + i + r,
                        argmax_out ? argmax_out + i + r : NULL};
            s->be->parallel(s->bctx, logprob_task, &j);
        }
        if ((st = rk_evict_after_forward(s))) return stopped(s, st, i + nb, n);
    }
    return RK_OK;
}

static rk_status logprobs_next(rk_session *s, const int32_t *tokens, int32_t n, float *out, int32_t *argmax_out) {
    rk_status st = check_tokens(s, tokens, n, "rk_session_logprobs_next");
    if (st) return st;
    if (!out) return rk_fail(RK_ERR_ARG, "rk_session_logprobs_next: out is NULL");
    if (s->n_past == 0)
        return rk_fail(RK_ERR_ARG, "rk_session_logprobs_next: no token evaluated yet to predict tokens[0] from");
    rk_logits(s, s->a.last_h, 1, s->a.logit_rows);
    lp_job j = {s->a.logit_rows, 1, s->model->n_vocab, tokens, out, argmax_out};
    s->be->parallel(s->bctx, logprob_task, &j);
    return n > 1 ? logprobs(s, tokens, n, out + 1, argmax_out ? argmax_out + 1 : NULL)
                 : eval(s, tokens, 1, NULL, RK_LOGITS_NONE);
}

rk_status rk_session_reset(rk_session *s) {
    rk_status st = rk_session_enter(s, "rk_session_reset");
    if (st) return st;
    rk_kv_clear(&s->kv);
    s->n_past = 0;
    s->next_pos = 0;
    rk_evict_reset(&s->ev);
    rk_session_leave(s);
    return RK_OK;
}

/* the public entry points: one call at a time per session */
rk_status rk_session_eval(rk_session *s, const int32_t *tokens, int32_t n, float *logits, int32_t mode) {
    rk_status st = rk_session_enter(s, "rk_session_eval");
    if (st) return st;
    st = eval(s, tokens, n, logits, mode);
    rk_session_leave(s);
    return st;
}

rk_status rk_session_logprobs(rk_session *s, const int32_t *tokens, int32_t n, float *out, int32_t *argmax_out) {
    rk_status st = rk_session_enter(s, "rk_session_logprobs");
    if (st) return st;
    st = logprobs(s, tokens, n, out, argmax_out);
    rk_session_leave(s);
    return st;
}

rk_status rk_session_logprobs_next(rk_session *s, const int32_t *tokens, int32_t n, float *out, int32_t *argmax_out) {
    rk_status st = rk_session_enter(s, "rk_session_logprobs_next");
    if (st) return st;
    st = logprobs_next(s, tokens, n, out, argmax_out);
    rk_session_leave(s);
    return st;
}

int32_t rk_session_n_past(const rk_session *s) { return s ? s->n_past : 0; }
int32_t rk_session_n_ctx(const rk_session *s) { return s ? s->n_ctx : 0; }
int32_t rk_session_n_threads(const rk_session *s) { return s ? s->n_threads : 0; }
size_t rk_session_kv_bytes_alloc(const rk_session *s) { return s ? rk_kv_bytes_alloc(&s->kv) : 0; }
size_t rk_session_kv_bytes_used(const rk_session *s) { return s ? rk_kv_bytes_used(&s->kv) : 0; }
size_t rk_session_kv_bytes_alloc_of(const rk_session *s, int32_t kind) {
    return s && (kind == RK_LAYERS_GLOBAL || kind == RK_LAYERS_WINDOW) ? rk_kv_bytes_alloc_of(&s->kv, kind) : 0;
}
size_t rk_session_kv_bytes_used_of(const rk_session *s, int32_t kind) {
    return s && (kind == RK_LAYERS_GLOBAL || kind == RK_LAYERS_WINDOW) ? rk_kv_bytes_used_of(&s->kv, kind) : 0;
}

/* ---- eviction (evict.c does the work) ---- */

rk_status rk_session_set_eviction(rk_session *s, const char *policy, const char *settings) {
    rk_status st = rk_session_enter(s, "rk_session_set_eviction");
    if (st) return st;
    st = rk_evict_set(s, policy, settings);
    rk_session_leave(s);
    return st;
}

rk_status rk_session_compress(rk_session *s) {
    rk_status st = rk_session_enter(s, "rk_session_compress");
    if (st) return st;
    st = rk_evict_compress(s);
    rk_session_leave(s);
    return st;
}

int32_t rk_session_kv_count(const rk_session *s, int32_t il, int32_t g) {
    if (!s || il < 0 || il >= s->kv.n_layers || g < 0 || g >= s->kv.n_kv_heads) return -1;
    return s->kv.n_used[rk_kv_head_index(&s->kv, il, g)];
}

int32_t rk_session_kv_positions(const rk_session *s, int32_t il, int32_t g, int32_t *out, int32_t cap) {
    int32_t n = rk_session_kv_count(s, il, g);
    if (n < 0 || (!out && cap > 0)) return -1;
    const int32_t *pos = rk_kv_pos(&s->kv, il, g);
    for (int32_t i = 0; i < n && i < cap; i++) out[i] = pos[i];
    return n;
}

int32_t rk_session_next_pos(const rk_session *s) { return s ? s->next_pos : 0; }
