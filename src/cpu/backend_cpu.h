/* backend_cpu.h: the CPU backend's context, shared by its files (backend_cpu.c, attention.c,
 * window_attention.c, kv_ops.c); nothing outside src/cpu/ sees it. */
#ifndef RK_BACKEND_CPU_H
#define RK_BACKEND_CPU_H

#include "backend.h"

struct rk_backend_ctx {
    rk_pool *pool;
    int      n_threads, n_batch, n_ctx, n_heads, head_dim;
    void    *act;      /* quantised activations for rk_matmul */
    float   *att_ws;   /* [n_threads][rk_attention_scratch_floats] per-thread scores and rows */
    float   *att_dec;  /* [n_heads][n_ctx + 1] one decoded token's scores, then its weights */
    /* RoPE angles of the last (pos0, n, hp) asked for: layers with the same RoPE reuse them */
    float   *cos_sin;  /* [n_batch][max n_rot] */
    int      cs_valid, cs_n;
    int32_t  cs_pos0, cs_n_rot;
    float    cs_base, cs_scale;
    const float *cs_freq;
};

/* attention.c */
void   rk_cpu_attention(rk_backend_ctx *c, const rk_attn_args *a);
size_t rk_attention_scratch_floats(int n_ctx, int head_dim);
/* query rows attention handles together (tokens x heads of a GQA group), and tokens per job */
#define RK_ATT_ROWS 16
#define RK_ATT_TOKENS 4
/* window_attention.c */
void rk_cpu_window_attention(rk_backend_ctx *c, const rk_window_args *a);
/* kv_ops.c */
void rk_cpu_kv_append(rk_backend_ctx *c, rk_kv *kv, int il, const float *k, const float *v, int n, int32_t pos0);
void rk_cpu_kv_to_f32(rk_backend_ctx *c, const rk_kv *kv, int il, float *k, float *v);
void rk_cpu_kv_gather(rk_backend_ctx *c, rk_kv *kv, int il, int g, const uint8_t *keep);
void rk_cpu_kv_reposition(rk_backend_ctx *c, rk_kv *kv, const rk_model *m);
void rk_cpu_kv_copy(rk_backend_ctx *c, rk_kv *dst, const rk_kv *src);

#endif
