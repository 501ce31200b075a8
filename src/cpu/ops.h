/*
 * ops.h: CPU operators of the forward pass (the reference implementations).
 * Activations are row-major f32: x [n_tokens][n].
 */
#ifndef RK_OPS_H
#define RK_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "threadpool.h"

/* Bytes of scratch rk_matmul needs to hold n_tokens quantised rows of length n_in for weight w. */
size_t rk_matmul_scratch_bytes(const rk_weight *w, int n_tokens);

/* y[i][t][r] = dot(w[i] row r, x[t]) for each of the n_w weights, which share the
 * input (same n_in, same activation format): x is quantised once.
 * y[i] is [n_tokens][w[i]->n_out]. `scratch` has rk_matmul_scratch_bytes(w[0]). */
void rk_matmul(rk_pool *pool, const float *x, int n_tokens, const rk_weight *const *w, float *const *y, int n_w,
               void *scratch);

/* rk_matmul of {gate, up} (same type and shape) followed by y_gate = silu(y_gate) * y_up,
 * fused: each thread applies it to the rows it has just computed. */
void rk_matmul_swiglu(rk_pool *pool, const float *x, int n_tokens, const rk_weight *gate, const rk_weight *up,
                      float *y_gate, float *y_up, void *scratch);

/* y = x / sqrt(mean(x^2) + eps) * weight, per row of n elements. In place is fine. */
void rk_rmsnorm(float *y, const float *x, const float *weight, int n_rows, int n, float eps);

/* Rotates each head of x [n_heads][head_dim] for position pos (llama.cpp "normal" RoPE:
 * adjacent pairs (2i, 2i+1), the first n_rot dims). cos_sin: [n_rot/2][2] from rk_rope_angles. */
void rk_rope_angles(float *cos_sin, int32_t pos, int n_rot, float base, float freq_scale, const float *freq_factors);
void rk_rope_apply(float *x, int n_heads, int head_dim, int n_rot, const float *cos_sin);
/* the NEOX pairing (x[i], x[i + n_rot/2]) of qwen2, qwen3 and gemma3, same angles */
void rk_rope_apply_neox(float *x, int n_heads, int head_dim, int n_rot, const float *cos_sin);
/* either, by the layer's rk_layer_hparams.rope_neox */
void rk_rope_apply_kind(int neox, float *x, int n_heads, int head_dim, int n_rot, const float *cos_sin);

/* a[i] = silu(a[i]) * b[i] */
void rk_swiglu(float *a, const float *b, size_t n);
/* a[i] = gelu_tanh(a[i]) * b[i], as ggml-cpu computes it (an f16 table, see ops.c): gemma3 */
void rk_geglu(float *a, const float *b, size_t n);
/* x[i] = cap * tanh(x[i] / cap): a final logit softcap */
void rk_softcap(float *x, size_t n, float cap);

#endif
