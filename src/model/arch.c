/*
 * arch.c: the architecture table (arch.h). Adding an architecture = a row here plus the ops its
 * facts need that the engine does not have yet (docs/architecture.md, "Architectures").
 */
#include <stdio.h>
#include <string.h>

#include "arch.h"

/* Key suffixes, as llama.cpp's converter writes them after "<arch>." */
static const char *const key_suffix[RK_KEY_COUNT] = {
    [RK_KEY_CONTEXT_LENGTH] = "context_length",
    [RK_KEY_EMBEDDING_LENGTH] = "embedding_length",
    [RK_KEY_BLOCK_COUNT] = "block_count",
    [RK_KEY_FEED_FORWARD_LENGTH] = "feed_forward_length",
    [RK_KEY_VOCAB_SIZE] = "vocab_size",
    [RK_KEY_HEAD_COUNT] = "attention.head_count",
    [RK_KEY_HEAD_COUNT_KV] = "attention.head_count_kv",
    [RK_KEY_KEY_LENGTH] = "attention.key_length",
    [RK_KEY_VALUE_LENGTH] = "attention.value_length",
    [RK_KEY_RMS_EPS] = "attention.layer_norm_rms_epsilon",
    [RK_KEY_SLIDING_WINDOW] = "attention.sliding_window",
    [RK_KEY_SLIDING_WINDOW_PATTERN] = "attention.sliding_window_pattern",
    [RK_KEY_ROPE_DIMENSION_COUNT] = "rope.dimension_count",
    [RK_KEY_ROPE_FREQ_BASE] = "rope.freq_base",
    [RK_KEY_ROPE_FREQ_BASE_SWA] = "rope.freq_base_swa",
    [RK_KEY_ROPE_SCALING_TYPE] = "rope.scaling.type",
    [RK_KEY_ROPE_SCALING_FACTOR] = "rope.scaling.factor",
    [RK_KEY_ROPE_SCALE_LINEAR] = "rope.scale_linear",
    [RK_KEY_FINAL_LOGIT_SOFTCAP] = "final_logit_softcapping",
};

#define K(k) RK_KEYBIT(RK_KEY_##k)

static const rk_arch arch_table[] = {
    /* llama: Llama 1/2/3, SmolLM, TinyLlama, and Mistral. llama.cpp's converter writes HF
     * MistralForCausalLM (and Mistral-native checkpoints) as architecture "llama", and the llama
     * loader reads no sliding-window key: llama.cpp runs Mistral-7B-v0.1 (HF sliding_window 4096)
     * with full attention on every layer (../shared/docs/architectures.md section 5). So this row
     * does not list RK_KEY_SLIDING_WINDOW: a llama file that carries the key computes the same
     * logits as without it, as in llama.cpp. The biases are optional in llama.cpp's llama loader. */
    {
        .name = "llama",
        .keys = K(CONTEXT_LENGTH) | K(EMBEDDING_LENGTH) | K(BLOCK_COUNT) | K(FEED_FORWARD_LENGTH) | K(VOCAB_SIZE) |
                K(HEAD_COUNT) | K(HEAD_COUNT_KV) | K(KEY_LENGTH) | K(VALUE_LENGTH) | K(RMS_EPS) |
                K(ROPE_DIMENSION_COUNT) | K(ROPE_FREQ_BASE) | K(ROPE_SCALING_TYPE) | K(ROPE_SCALING_FACTOR) |
                K(ROPE_SCALE_LINEAR),
        .keys_required = K(EMBEDDING_LENGTH) | K(BLOCK_COUNT) | K(FEED_FORWARD_LENGTH) | K(HEAD_COUNT),
        .rms_eps_default = 1e-5,
        .rope_base_default = 10000.0,
        .rope = RK_ROPE_NORM,
        .act = RK_ACT_SWIGLU,
        .attn_scale = RK_ATTN_SCALE_KEY_LENGTH,
        .embd_scale_sqrt = 0,
        .norm_w_offset = 0.0f,
        .tensors_optional = RK_TENSOR_ROPE_FREQS | RK_TENSOR_ATTN_Q_BIAS | RK_TENSOR_ATTN_K_BIAS |
                            RK_TENSOR_ATTN_V_BIAS | RK_TENSOR_ATTN_OUT_BIAS,
        .tensors_required = 0,
        .swa_period_default = 0,
        .swa_rope_base_default = 0.0,
        .swa_rope_scaled = 0,
    },
    /* qwen2: Qwen2, Qwen2.5, Qwen2.5-Coder. NEOX RoPE (weights not permuted), Q/K/V biases added
     * before RoPE (present in every Qwen2 file; optional in llama.cpp's loader at 4df29be4), full
     * attention on every layer (HF's sliding_window is never written), head dim d/H unless a
     * key_length says otherwise (../shared/docs/architectures.md section 2). */
    {
        .name = "qwen2",
        .keys = K(CONTEXT_LENGTH) | K(EMBEDDING_LENGTH) | K(BLOCK_COUNT) | K(FEED_FORWARD_LENGTH) | K(VOCAB_SIZE) |
                K(HEAD_COUNT) | K(HEAD_COUNT_KV) | K(KEY_LENGTH) | K(VALUE_LENGTH) | K(RMS_EPS) |
                K(ROPE_DIMENSION_COUNT) | K(ROPE_FREQ_BASE) | K(ROPE_SCALING_TYPE) | K(ROPE_SCALING_FACTOR) |
                K(ROPE_SCALE_LINEAR),
        .keys_required = K(EMBEDDING_LENGTH) | K(BLOCK_COUNT) | K(FEED_FORWARD_LENGTH) | K(HEAD_COUNT) | K(RMS_EPS),
        .rms_eps_default = 1e-6,
        .rope_base_default = 10000.0,
        .rope = RK_ROPE_NEOX,
        .act = RK_ACT_SWIGLU,
        .attn_scale = RK_ATTN_SCALE_KEY_LENGTH,
        .tensors_optional = RK_TENSOR_ATTN_Q_BIAS | RK_TENSOR_ATTN_K_BIAS | RK_TENSOR_ATTN_V_BIAS |
                            RK_TENSOR_ATTN_OUT_BIAS,
    },
    /* qwen3: as qwen2 with an explicit head dim (key_length, H*hd may differ from d), per-head
     * RMSNorm of q and k before RoPE (required), and no biases in practice (accepted when present). */
    {
        .name = "qwen3",
        .keys = K(CONTEXT_LENGTH) | K(EMBEDDING_LENGTH) | K(BLOCK_COUNT) | K(FEED_FORWARD_LENGTH) | K(VOCAB_SIZE) |
                K(HEAD_COUNT) | K(HEAD_COUNT_KV) | K(KEY_LENGTH) | K(VALUE_LENGTH) | K(RMS_EPS) |
                K(ROPE_DIMENSION_COUNT) | K(ROPE_FREQ_BASE) | K(ROPE_SCALING_TYPE) | K(ROPE_SCALING_FACTOR) |
                K(ROPE_SCALE_LINEAR),
        .keys_required = K(EMBEDDING_LENGTH) | K(BLOCK_COUNT) | K(FEED_FORWARD_LENGTH) | K(HEAD_COUNT) | K(RMS_EPS),
        .rms_eps_default = 1e-6,
        .rope_base_default = 10000.0,
        .rope = RK_ROPE_NEOX,
        .act = RK_ACT_SWIGLU,
        .attn_scale = RK_ATTN_SCALE_KEY_LENGTH,
        .tensors_optional = RK_TENSOR_ATTN_Q_BIAS | RK_TENSOR_ATTN_K_BIAS | RK_TENSOR_ATTN_V_BIAS |
                            RK_TENSOR_ATTN_OUT_BIAS,
        .tensors_required = RK_TENSOR_ATTN_Q_NORM | RK_TENSOR_ATTN_K_NORM,
    },
    /* gemma3: Gemma 3 text models (270M, 1B, ...). NEOX RoPE; GELU-tanh gated FFN; the looked-up
     * embedding row times sqrt(n_embd); head dim = key_length (270M: 256, not d/H = 160); per-head Q/K
     * RMSNorm, RMSNorm of the attention and FFN outputs before their residual adds (norm weights
     * stored as 1 + w by the converter: used as stored); sliding-window layers (attention.sliding_window,
     * period 6 unless the pattern key says otherwise: layers 5, 11, 17, ... are global) with their own
     * RoPE base (rope.freq_base_swa, default 10000) and no linear scaling; the final logit softcap only
     * when the key exists; attention scale 1/sqrt(key_length), 1/sqrt(d/H) at 62 layers (27B)
     * (../shared/docs/architectures.md section 4). */
    {
        .name = "gemma3",
        .keys = K(CONTEXT_LENGTH) | K(EMBEDDING_LENGTH) | K(BLOCK_COUNT) | K(FEED_FORWARD_LENGTH) | K(VOCAB_SIZE) |
                K(HEAD_COUNT) | K(HEAD_COUNT_KV) | K(KEY_LENGTH) | K(VALUE_LENGTH) | K(RMS_EPS) |
                K(SLIDING_WINDOW) | K(SLIDING_WINDOW_PATTERN) | K(ROPE_DIMENSION_COUNT) | K(ROPE_FREQ_BASE) |
                K(ROPE_FREQ_BASE_SWA) | K(ROPE_SCALING_TYPE) | K(ROPE_SCALING_FACTOR) | K(ROPE_SCALE_LINEAR) |
                K(FINAL_LOGIT_SOFTCAP),
        .keys_required = K(EMBEDDING_LENGTH) | K(BLOCK_COUNT) | K(FEED_FORWARD_LENGTH) | K(HEAD_COUNT) | K(RMS_EPS),
        .rms_eps_default = 1e-6,
        .rope_base_default = 10000.0,
        .rope = RK_ROPE_NEOX,
        .act = RK_ACT_GEGLU_TANH,
        .attn_scale = RK_ATTN_SCALE_GEMMA3,
        .embd_scale_sqrt = 1,
        .norm_w_offset = 0.0f,
        .tensors_required = RK_TENSOR_ATTN_Q_NORM | RK_TENSOR_ATTN_K_NORM | RK_TENSOR_POST_ATTN_NORM |
                            RK_TENSOR_POST_FFN_NORM,
        .swa_period_default = 6,
        .swa_rope_base_default = 10000.0,
        .swa_rope_scaled = 0,
    },
};

#undef K

#define N_ARCH (sizeof arch_table / sizeof arch_table[0])

const rk_arch *rk_arch_find(const char *name, size_t len) {
    for (size_t i = 0; i < N_ARCH; i++)
        if (strlen(arch_table[i].name) == len && memcmp(arch_table[i].name, name, len) == 0) return &arch_table[i];
    return NULL;
}

const char *rk_arch_supported_list(char *buf, size_t n) {
    /* built from the table, so the message can never disagree with it; into the caller's buffer
     * (no static state: models may be loaded from several threads) */
    size_t used = 0;
    if (n) buf[0] = 0;
    for (size_t i = 0; i < N_ARCH && used < n; i++) {
        int w = snprintf(buf + used, n - used, "%s%s", i ? ", " : "", arch_table[i].name);
        if (w < 0) break;
        used += (size_t)w;
    }
    return buf;
}

const char *rk_arch_key_name(const rk_arch *a, rk_arch_key key, char *buf, size_t n) {
    if (!a || (unsigned)key >= RK_KEY_COUNT || !(a->keys & RK_KEYBIT(key))) return NULL;
    int w = snprintf(buf, n, "%s.%s", a->name, key_suffix[key]);
    return w > 0 && (size_t)w < n ? buf : NULL;
}
