/*
 * arch.h: the architecture table, what differs between the GGUF architectures the engine runs.
 *
 * One row per `general.architecture` value. A row says which metadata keys the loader reads
 * (all of them are "<arch>.<suffix>"; the suffixes are shared by every architecture, as in
 * llama.cpp's LLM_KV table), the per-architecture facts of the forward pass that the GGUF does
 * not store (RoPE pairing, activation, embedding scale, attention scale rule, ...), which
 * optional tensors a layer may have, and how per-layer values are derived (sliding-window
 * pattern, local RoPE base). model.c reads the file through the row into rk_model and one
 * rk_layer_hparams per layer; forward.c's layer loop is written once over those.
 *
 * The fields are those qwen2, qwen3 and gemma3 need (../shared/docs/architectures.md); only
 * `llama` has a row so far. docs/architecture.md, "Architectures", says how to add one.
 */
#ifndef RK_ARCH_H
#define RK_ARCH_H

#include <stddef.h>
#include <stdint.h>

/* Metadata keys an architecture may read: rk_arch_key_name() gives "<arch>.<suffix>". */
typedef enum {
    RK_KEY_CONTEXT_LENGTH,          /* context_length */
    RK_KEY_EMBEDDING_LENGTH,        /* embedding_length */
    RK_KEY_BLOCK_COUNT,             /* block_count */
    RK_KEY_FEED_FORWARD_LENGTH,     /* feed_forward_length */
    RK_KEY_VOCAB_SIZE,              /* vocab_size (checked against token_embd.weight) */
    RK_KEY_HEAD_COUNT,              /* attention.head_count */
    RK_KEY_HEAD_COUNT_KV,           /* attention.head_count_kv */
    RK_KEY_KEY_LENGTH,              /* attention.key_length (K head dim) */
    RK_KEY_VALUE_LENGTH,            /* attention.value_length (V head dim) */
    RK_KEY_RMS_EPS,                 /* attention.layer_norm_rms_epsilon */
    RK_KEY_SLIDING_WINDOW,          /* attention.sliding_window (0 or absent = no window) */
    RK_KEY_SLIDING_WINDOW_PATTERN,  /* attention.sliding_window_pattern (period) */
    RK_KEY_ROPE_DIMENSION_COUNT,    /* rope.dimension_count (n_rot) */
    RK_KEY_ROPE_FREQ_BASE,          /* rope.freq_base (global layers) */
    RK_KEY_ROPE_FREQ_BASE_SWA,      /* rope.freq_base_swa (sliding-window layers) */
    RK_KEY_ROPE_SCALING_TYPE,       /* rope.scaling.type: none | linear */
    RK_KEY_ROPE_SCALING_FACTOR,     /* rope.scaling.factor */
    RK_KEY_ROPE_SCALE_LINEAR,       /* rope.scale_linear (the older name of the factor) */
    RK_KEY_FINAL_LOGIT_SOFTCAP,     /* final_logit_softcapping */
    RK_KEY_COUNT
} rk_arch_key;

#define RK_KEYBIT(k) (1u << (k))

/* RoPE pairing, decided by the architecture (not stored in the GGUF). Values are llama.cpp's
 * rope type ids. NORM: adjacent pairs (x[2i], x[2i+1]); the converter permutes llama's Q/K rows
 * so that this reproduces HF. NEOX: split halves (x[i], x[i + n_rot/2]): qwen2, qwen3, gemma3. */
typedef enum { RK_ROPE_NORM = 0, RK_ROPE_NEOX = 2 } rk_rope_kind;

/* Gated feed-forward: act(x W_gate) * (x W_up), then W_down. */
typedef enum {
    RK_ACT_SWIGLU,     /* silu: llama, qwen2, qwen3 */
    RK_ACT_GEGLU_TANH, /* gelu with the tanh approximation: gemma3 */
} rk_act_kind;

/* The attention score scale (applied to q k^T). */
typedef enum {
    RK_ATTN_SCALE_KEY_LENGTH, /* 1/sqrt(head_dim_k): llama, qwen2, qwen3 */
    RK_ATTN_SCALE_GEMMA3,     /* 1/sqrt(head_dim_k), except 1/sqrt(n_embd/n_heads) when n_layers == 62 (27B),
                               * llama.cpp's stand-in for the unstored query_pre_attn_scalar */
} rk_attn_scale_rule;

/* Optional (or required) tensors beyond the ones every architecture has. Per layer unless
 * marked global; a bias is [n_out] of its projection, a Q/K norm is [head_dim_k], shared by
 * all heads; a post-norm is [n_embd]. */
typedef enum {
    RK_TENSOR_ROPE_FREQS     = 1u << 0, /* global rope_freqs.weight [n_rot/2]: llama3 frequency divisors */
    RK_TENSOR_ATTN_Q_BIAS    = 1u << 1, /* blk.N.attn_q.bias, added before RoPE */
    RK_TENSOR_ATTN_K_BIAS    = 1u << 2, /* blk.N.attn_k.bias */
    RK_TENSOR_ATTN_V_BIAS    = 1u << 3, /* blk.N.attn_v.bias */
    RK_TENSOR_ATTN_OUT_BIAS  = 1u << 4, /* blk.N.attn_output.bias, added after W_o */
    RK_TENSOR_ATTN_Q_NORM    = 1u << 5, /* blk.N.attn_q_norm.weight: per-head RMSNorm of q before RoPE */
    RK_TENSOR_ATTN_K_NORM    = 1u << 6, /* blk.N.attn_k_norm.weight */
    RK_TENSOR_POST_ATTN_NORM = 1u << 7, /* blk.N.post_attention_norm.weight: RMSNorm of o W_o before the residual add */
    RK_TENSOR_POST_FFN_NORM  = 1u << 8, /* blk.N.post_ffw_norm.weight: RMSNorm of the FFN output before the residual add */
} rk_arch_tensor;

typedef struct rk_arch {
    const char *name;            /* general.architecture, and the prefix of its keys */
    uint32_t    keys;            /* RK_KEYBIT(k): the loader reads key k; a key not listed is never read */
    uint32_t    keys_required;   /* subset of keys: missing = RK_ERR_FORMAT */
    double      rms_eps_default; /* when the (optional) epsilon key is absent */
    double      rope_base_default;
    rk_rope_kind rope;
    rk_act_kind  act;
    rk_attn_scale_rule attn_scale;
    /* multiply the looked-up embedding row (never the table: a tied output reads it) by sqrt(n_embd), in f32 */
    int         embd_scale_sqrt;
    /* added to every stored *norm.weight at load; 0 = the file holds the multiplier itself. gemma3 is
     * 0 too: its converter already stores 1 + w (adding 1 again is a known way to break every layer) */
    float       norm_w_offset;
    uint32_t    tensors_optional; /* rk_arch_tensor bits the loader takes when present (NULL when absent) */
    uint32_t    tensors_required; /* rk_arch_tensor bits that must be present */
    /* Per-layer derivation. With a sliding window n_swa > 0 (RK_KEY_SLIDING_WINDOW read and non-zero),
     * layer il is local iff P == 0 or il % P < P - 1 (llama.cpp's set_swa_pattern), P = the pattern
     * key or swa_period_default (gemma3: 6, so layers 5, 11, 17, ... are global); other layers are
     * global. A row without sliding-window layers does not read RK_KEY_SLIDING_WINDOW. Local layers use rope.freq_base_swa (default
     * swa_rope_base_default) and, unless swa_rope_scaled, no linear RoPE scaling. */
    int32_t     swa_period_default;
    double      swa_rope_base_default;
    int         swa_rope_scaled;
} rk_arch;

/* The row for general.architecture = name[0..len), or NULL. */
const rk_arch *rk_arch_find(const char *name, size_t len);
/* The row names, comma-separated ("llama"), written into buf (truncated to n); returns buf. */
const char *rk_arch_supported_list(char *buf, size_t n);
/* Writes "<arch>.<suffix of key>" into buf; returns buf, or NULL when the row does not read that key
 * (or buf is too small), so a caller treats the key as absent. */
const char *rk_arch_key_name(const rk_arch *a, rk_arch_key key, char *buf, size_t n);

#endif
