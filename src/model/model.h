/*
 * model.h: the immutable model behind rk_model (architectures of arch.h's table).
 *
 * Dimension names follow llama2.c/calm; the GGUF keys they come from are listed
 * in model.c and arch.c. A weight matrix is stored as GGUF writes it: n_out rows of n_in
 * elements each (GGUF ne = [n_in, n_out]), so y = W x is one dot product per row.
 */
#ifndef RK_MODEL_H
#define RK_MODEL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "arch.h"
#include "gguf.h"
#include "restkv.h"

typedef struct {
    const char *name;
    int32_t     type;       /* GGML type id with rk_get_type_traits() != NULL */
    int64_t     n_in;       /* elements per row */
    int64_t     n_out;      /* rows */
    size_t      row_bytes;
    const void *data;       /* [n_out][row_bytes], inside the mapping */
    const void *packed;     /* the same bytes in the 8-row layout of repack.h, or NULL */
} rk_weight;

/* What may differ from layer to layer (gemma3: sliding-window layers with their own RoPE base),
 * derived at load from the file and the architecture's row; forward.c reads only these. */
typedef struct {
    float   rope_base;       /* rope.freq_base, or rope.freq_base_swa on a sliding-window layer */
    float   rope_freq_scale; /* 1 / linear scaling factor (1 where the row leaves local layers unscaled) */
    int32_t n_rot;           /* rotated dims per head (<= head_dim_k) */
    int32_t rope_neox;       /* 1: NEOX pairing (x[i], x[i + n_rot/2]); 0: adjacent pairs (arch.h rk_rope_kind) */
    int32_t n_swa;           /* attention window in positions, the query's own included; 0 = global */
    int32_t head_dim_k, head_dim_v;
    float   attn_scale;      /* score scale by the row's rule (attention.c computes 1/sqrt(head_dim) itself today) */
} rk_layer_hparams;

typedef struct {
    const float *attn_norm; /* [n_embd] */
    const float *ffn_norm;  /* [n_embd] */
    rk_weight    wq, wk, wv, wo;
    rk_weight    w_gate, w_up, w_down;
    rk_layer_hparams hp;
    /* optional tensors (rk_arch_tensor), NULL when absent or not in the architecture's row */
    const float *bq, *bk, *bv, *bo;          /* [n_heads*head_dim_k], [n_kv_heads*head_dim_k], [n_kv_heads*head_dim_v], [n_embd] */
    const float *q_norm, *k_norm;            /* [head_dim_k] */
    const float *post_attn_norm, *post_ffn_norm; /* [n_embd] */
} rk_layer;

struct rk_model {
    atomic_int refs;              /* the caller's handle + one per session (rk_model_retain) */
    rk_gguf  *gguf;
    const rk_arch *arch;          /* the table row of general.architecture */
    int32_t   n_vocab, n_embd, n_layers, n_heads, n_kv_heads, head_dim, n_ff, n_ctx_train, n_rot;
    float     rms_eps;
    /* the file's (global layers') RoPE values; forward.c reads each layer's hp instead, evict.c these */
    float     rope_base;
    float     rope_freq_scale;    /* 1 / linear scaling factor */
    int32_t   rope_neox;          /* the architecture's RoPE pairing (1 = NEOX) */
    float     embd_scale;         /* multiplies each looked-up embedding row (1 = none) */
    float     final_softcap;      /* > 0: logits = c * tanh(logits / c) */
    const float *rope_freqs;      /* [n_rot/2] llama3-style divisors, or NULL */
    rk_weight tok_embd;           /* [n_vocab][n_embd] */
    rk_weight output;             /* [n_vocab][n_embd]; tok_embd when tied */
    const float *output_norm;     /* [n_embd] */
    rk_layer *layers;             /* [n_layers] */
    /* ReST-KV: per-head Gram matrices of the output projection, G_h = W_o^(h)T W_o^(h) with
     * W_o^(h) = columns h*head_dim..(h+1)*head_dim of the dequantised blk.N.attn_output.weight,
     * so that ||W_o^(h) x||^2 = x^T G_h x (eviction-policies b.14). NULL until a policy that scores
     * with it is set: rk_wo_gram_prepare (gram.c) computes it once, under a lock. */
    float    *wo_gram;            /* [n_layers][n_heads][head_dim][head_dim] */
    float    *owned;              /* f32 copies of norm vectors stored as F16/BF16 */
    size_t    owned_used, owned_cap;
    const struct rk_backend_i *backend; /* the device the weights were laid out for (backend.h) */
    void     *packed;             /* the backend's copy of the weights (CPU: every rk_weight.packed lives here) */
    size_t    packed_bytes;
    int32_t   n_threads;          /* default for sessions */
    int32_t   device;
    int64_t   n_params;
    size_t    weight_bytes;
    char      desc[256];
    /* vocabulary, for rk_model_token_piece (tokenisation is done in Python) */
    const char **tok_text;        /* [n_tok] pointers into the mapping */
    uint32_t *tok_len;
    int32_t  *tok_type;           /* 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte */
    int32_t   n_tok;
    int32_t   vocab_spm;          /* 1 = SentencePiece ("llama"), 0 = byte-level BPE ("gpt2") */
    int32_t   bos_id, eos_id;
};

/* a session's reference: the weights stay until rk_model_free() has been called once for
 * the caller's handle and once per retain */
void rk_model_retain(rk_model *m);

/* device.c: RK_OK for a device this build can run a model on; else the status and message
 * (no CUDA backend built, no usable GPU, or the CUDA forward pass not written yet) */
rk_status rk_device_check(int32_t device);
/* vocab.c: reads the GGUF vocabulary (optional: a model without one still runs on ids) */
rk_status rk_vocab_load(rk_model *m);

/* Loads a model from a caller-owned GGUF image in memory (kept, not copied, until
 * rk_model_free): the fuzzer's entry point; error messages call it `name`. */
rk_status rk_model_load_buffer(rk_model **out, const void *buf, size_t size, const char *name,
                               const rk_model_params *params);

#endif
