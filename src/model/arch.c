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
    /* Next: qwen2 (NEOX, Q/K/V biases required in practice, rope base 1e6), qwen3 (NEOX, key_length,
     * Q/K norms), gemma3 (NEOX, GEGLU_TANH, embd_scale_sqrt, key_length, Q/K norms, post-norms,
     * sliding_window with period 6 and freq_base_swa 10000, final_logit_softcapping, RK_ATTN_SCALE_GEMMA3). */
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
