/*
 * backend.h: what a compute device provides to the engine, as one table of functions (the
 * shape of ggml's ggml_backend_i, in small). forward.c, session.c and the eviction code call a
 * device only through this table; the CPU backend (src/cpu/backend_cpu.c) is the reference
 * every other one is checked against, op by op (tests/backend_ops/).
 *
 * Objects: the model's weights are prepared for a device once, at load (upload_weights: the CPU
 * backend repacks matrices into its 8-row layout there, the loader does not); a session owns one
 * backend context (its threads and scratch: the thread pool, quantised activations, attention
 * workspaces) and the buffers it gets from `alloc` (activations, KV cache). Buffers are device
 * memory: the engine hands them back to the device's ops and never reads them on the host,
 * except where an op says so (`to_host`).
 *
 * Data layout of every activation: row-major f32, [n_tokens][width]. The KV cache layout is
 * kv.h's (one buffer per (layer, kv-head), any slot order, causality from stored positions).
 */
#ifndef RK_BACKEND_H
#define RK_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "kv.h"
#include "model.h"
#include "threadpool.h"

typedef struct rk_backend_ctx rk_backend_ctx;

/* Where attention writes eviction statistics (H2O-style accumulated attention), or all NULL:
 * acc[h * cap + slot] += the normalised weight of query head h on the slot (slots the query may
 * see), cnt[g * cap + slot] += 1 per query of kv-head g that saw it; this layer's rows. */
typedef struct {
    float *acc; /* [n_heads][cap] */
    float *cnt; /* [n_kv_heads][cap] */
} rk_attn_stats;

/* One causal attention call: n queries at positions pos0.. over layer il's cache. */
typedef struct {
    const rk_kv  *kv;
    int           il, n;
    int32_t       pos0;
    int           n_heads;     /* query heads; n_heads / kv->n_kv_heads per kv-head */
    float         scale;       /* of q.k (1/sqrt(head_dim) by the architecture's rule) */
    int32_t       n_swa;       /* > 0: a query at p sees only keys with p - pos < n_swa (sliding window) */
    const float  *q;           /* [n][n_heads][head_dim], RoPE applied */
    float        *out;         /* [n][n_heads][head_dim] */
    int32_t       topk;        /* top-k mask: keep this many logits per query (> 0), */
    float         topk_frac;   /*   or this fraction of the visible keys; both 0 = no mask */
    rk_attn_stats stats;       /* NULL pointers: no statistics */
} rk_attn_args;

/* The attention the scoring policies need: each of n_win observation queries (positions
 * win_pos[i]) against the f32 keys of one layer (kv_to_f32), softmax over the slots it may see.
 * out[(h * n_win + i) * cap + slot], 0 where the query may not see the slot. */
typedef struct {
    int            n_heads, n_kv_heads, head_dim, cap, n_win;
    const float   *k;        /* [n_kv_heads][cap][head_dim] */
    const int32_t *n_used;   /* [n_kv_heads] */
    const int32_t *pos;      /* [n_kv_heads][cap] */
    const float   *q;        /* [n_win][n_heads][head_dim] */
    const int32_t *win_pos;  /* [n_win] */
    float         *out;      /* [n_heads][n_win][cap] */
} rk_window_args;

typedef struct rk_backend_i {
    const char *name;

    /* ---- weights: once per model, at load ---- */
    /* lays out the matrices the forward pass multiplies for this device (may keep or drop the
     * file's copy); the model keeps what it returns until free_weights */
    rk_status (*upload_weights)(rk_model *m);
    void (*free_weights)(rk_model *m);

    /* ---- one context per session: threads and scratch for batches of up to n_batch tokens
     * against a cache of n_ctx slots ---- */
    rk_status (*init)(rk_backend_ctx **out, const rk_model *m, int n_threads, int n_batch, int n_ctx);
    void (*free)(rk_backend_ctx *c);
    int (*n_threads)(const rk_backend_ctx *c);
    /* device buffers (activations, KV); NULL on failure; free(NULL) is a no-op */
    void *(*alloc)(rk_backend_ctx *c, size_t bytes);
    void (*dealloc)(rk_backend_ctx *c, void *p);
    /* host work in parallel (policy scoring, log-softmax over logits): fn(job, ith, nth) on every thread */
    void (*parallel)(rk_backend_ctx *c, rk_task_fn fn, void *job);
    /* copies n floats of a device buffer to host memory */
    void (*to_host)(rk_backend_ctx *c, float *dst, const float *src, size_t n);

    /* ---- the forward pass ---- */
    /* x[t] = row tokens[t] of the embedding table, times scale */
    void (*embed)(rk_backend_ctx *c, const rk_weight *table, const int32_t *tokens, int n, float scale, float *x);
    /* y[i][t] = w[i] x[t] for the n_w weights sharing the input (same n_in, same activation format) */
    void (*matmul)(rk_backend_ctx *c, const float *x, int n, const rk_weight *const *w, float *const *y, int n_w);
    /* y_gate = silu(gate x) * (up x), y_up = up x (gate and up of one type and shape) */
    void (*matmul_swiglu)(rk_backend_ctx *c, const float *x, int n, const rk_weight *gate, const rk_weight *up,
                          float *y_gate, float *y_up);
    /* y = x / sqrt(mean(x^2) + eps) * w per row of `width` (y == x allowed) */
    void (*rmsnorm)(rk_backend_ctx *c, float *y, const float *x, const float *w, int n_rows, int width, float eps);
    /* x[r] += y[r % n_y_rows] for n_rows rows of `width` (a residual add, or a bias with n_y_rows = 1) */
    void (*add)(rk_backend_ctx *c, float *x, const float *y, int n_rows, int n_y_rows, int width);
    /* a[i] = silu(a[i]) * b[i] */
    void (*swiglu)(rk_backend_ctx *c, float *a, const float *b, size_t n);
    /* a[i] = gelu_tanh(a[i]) * b[i], with ggml-cpu's f16-table GELU (gemma3's gated FFN) */
    void (*geglu)(rk_backend_ctx *c, float *a, const float *b, size_t n);
    /* x[i] = cap * tanh(x[i] / cap) (a final logit softcap) */
    void (*softcap)(rk_backend_ctx *c, float *x, size_t n, float cap);
    /* rotates each of the n_heads heads of the n rows of x, row t at position pos0 + t (adjacent pairs,
     * the first hp->n_rot dims): llama.cpp's "normal" RoPE with hp's base and linear scale and the
     * optional llama3-style frequency divisors */
    void (*rope)(rk_backend_ctx *c, float *x, int n, int n_heads, int head_dim, int32_t pos0,
                 const rk_layer_hparams *hp, const float *freq_factors);

    /* ---- the KV cache ---- */
    /* appends the n tokens' keys and values ([n][n_kv_heads][head_dim]) of layer il at positions pos0.. */
    void (*kv_append)(rk_backend_ctx *c, rk_kv *kv, int il, const float *k, const float *v, int n, int32_t pos0);
    /* f32 copies of layer il's live keys and values, [n_kv_heads][cap][head_dim] each (host memory) */
    void (*kv_to_f32)(rk_backend_ctx *c, const rk_kv *kv, int il, float *k, float *v);
    /* keeps the slots of (il, g) with keep[slot] != 0, compacted to the front in slot order */
    void (*kv_gather)(rk_backend_ctx *c, rk_kv *kv, int il, int g, const uint8_t *keep);
    /* re-rotates every live key of the cache to its slot index as position (pos[slot] = slot) */
    void (*kv_reposition)(rk_backend_ctx *c, rk_kv *kv, const rk_model *m);
    /* dst's buffers := src's live slots (same shape) */
    void (*kv_copy)(rk_backend_ctx *c, rk_kv *dst, const rk_kv *src);

    /* ---- attention ---- */
    void (*attention)(rk_backend_ctx *c, const rk_attn_args *a);
    void (*window_attention)(rk_backend_ctx *c, const rk_window_args *a);
} rk_backend_i;

/* backend.c: the backend of a device (rk_device); otherwise the status and message of why there is
 * none (a build without CUDA, no usable GPU, or a CUDA forward pass not written yet) */
rk_status rk_backend_for_device(int32_t device, const rk_backend_i **out);
/* by name, for the parity harness: "cpu", "cpu-portable" (the CPU backend with its portable
 * kernels and unpacked weights: the reference), or a device name; NULL when absent */
const rk_backend_i *rk_backend_by_name(const char *name);

#endif
