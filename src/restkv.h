/*
 * restkv.h: the whole public C API of restkv-engine.
 *
 * Basic usage (see src/examples/generate.c for a complete program):
 *
 *     rk_model *model = NULL;
 *     rk_model_params mp = rk_model_default_params();
 *     if (rk_model_load(&model, "model.gguf", &mp) != RK_OK) puts(rk_last_error());
 *     rk_session *sess = NULL;
 *     rk_session_params sp = rk_session_default_params();
 *     sp.n_ctx = 2048;
 *     rk_session_init(&sess, model, &sp);
 *     float *logits = malloc(sizeof(float) * rk_model_n_vocab(model));
 *     rk_session_eval(sess, tokens, n_tokens, logits, RK_LOGITS_LAST);
 *     ...
 *     rk_session_free(sess);
 *     rk_model_free(model);
 *
 * Objects: an rk_model holds immutable weights (memory-mapped GGUF) and may be
 * shared read-only by any number of sessions, in any threads. An rk_session is one
 * mutable timeline (KV cache, scratch buffers, thread pool); use it from one
 * thread at a time.
 *
 * Errors: every fallible call returns rk_status (RK_OK = 0, errors < 0). The
 * reason is in rk_last_error(), a thread-local string valid until the next
 * failing call in the same thread. The library never prints, exits or aborts.
 * A call that fails leaves the session as it was before the call.
 *
 * Everything between RK_API_BEGIN and RK_API_END is read verbatim by the cffi
 * build (python/ffi_build.py): keep it to plain C declarations (no #if, no
 * function-like macros, explicit enum values).
 */
#ifndef RESTKV_H
#define RESTKV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* RK_API_BEGIN */

typedef enum {
    RK_OK               = 0,
    RK_ERR_ARG          = -1,  /* bad argument (NULL, out of range, unknown name) */
    RK_ERR_IO           = -2,  /* file cannot be opened, read or mapped */
    RK_ERR_FORMAT       = -3,  /* malformed GGUF file */
    RK_ERR_UNSUPPORTED  = -4,  /* well-formed, but an architecture or tensor type we do not run */
    RK_ERR_OOM          = -5,  /* allocation failed */
    RK_ERR_NO_CUDA      = -6,  /* device "cuda" asked for, but this build has no CUDA */
    RK_ERR_CTX_FULL     = -7,  /* the tokens do not fit in the session's KV cache */
    RK_ERR_INTERNAL     = -8
} rk_status;

/* Tensor types, numbered as in GGML/GGUF. */
typedef enum {
    RK_TYPE_F32  = 0,
    RK_TYPE_F16  = 1,
    RK_TYPE_Q4_0 = 2,
    RK_TYPE_Q4_1 = 3,
    RK_TYPE_Q5_0 = 6,
    RK_TYPE_Q5_1 = 7,
    RK_TYPE_Q8_0 = 8,
    RK_TYPE_Q8_1 = 9,
    RK_TYPE_Q4_K = 12,
    RK_TYPE_Q5_K = 13,
    RK_TYPE_Q6_K = 14,
    RK_TYPE_Q8_K = 15,
    RK_TYPE_BF16 = 30
} rk_type;

typedef enum {
    RK_DEVICE_CPU  = 0,
    RK_DEVICE_CUDA = 1
} rk_device;

/* What rk_session_eval writes into its logits buffer. */
typedef enum {
    RK_LOGITS_NONE = 0,  /* nothing (prefill only) */
    RK_LOGITS_LAST = 1,  /* [n_vocab] for the last token */
    RK_LOGITS_ALL  = 2   /* [n_tokens][n_vocab], one row per token */
} rk_logits_mode;

typedef struct rk_model   rk_model;
typedef struct rk_session rk_session;

typedef struct {
    int32_t n_threads;  /* default for sessions of this model; <= 0 means all cores */
    int32_t device;     /* rk_device */
} rk_model_params;

typedef struct {
    int32_t n_ctx;      /* KV cache capacity in tokens (per layer and kv-head); 0 = model's trained context */
    int32_t n_threads;  /* worker threads; 0 = the model's default */
    int32_t n_batch;    /* tokens per forward pass in prefill; larger inputs are split */
    int32_t kv_type;    /* RK_TYPE_F16 (default) or RK_TYPE_F32 */
} rk_session_params;

/* ---- errors ---- */
const char *rk_status_str(int32_t status);
const char *rk_last_error(void);     /* thread-local; "" when none */
int32_t     rk_has_cuda(void);       /* 1 if this build can run on CUDA */
const char *rk_cpu_features(void);   /* e.g. "avx2 fma f16c" or "scalar" */

/* ---- model ---- */
rk_model_params rk_model_default_params(void);
rk_status   rk_model_load(rk_model **out, const char *path, const rk_model_params *params);
void        rk_model_free(rk_model *model);                    /* NULL is fine */
int32_t     rk_model_n_vocab(const rk_model *model);
int32_t     rk_model_n_layers(const rk_model *model);
int32_t     rk_model_n_heads(const rk_model *model);
int32_t     rk_model_n_kv_heads(const rk_model *model);
int32_t     rk_model_n_embd(const rk_model *model);
int32_t     rk_model_head_dim(const rk_model *model);
int32_t     rk_model_n_ctx_train(const rk_model *model);
int64_t     rk_model_n_params(const rk_model *model);
size_t      rk_model_weight_bytes(const rk_model *model);
/* The bytes token `id` stands for when text is decoded (GPT-2 byte-level or
 * SentencePiece conventions, from the GGUF vocabulary); control tokens give ""
 * unless `special` is 1. Writes at most `size` bytes to buf (not NUL-terminated)
 * and returns the piece's full length, or -1 for an invalid id. Text
 * tokenisation itself lives in the Python package (engine.tokenizer). */
int32_t     rk_model_token_piece(const rk_model *model, int32_t id, char *buf, int32_t size, int32_t special);
int32_t     rk_model_bos(const rk_model *model);   /* -1 if none */
int32_t     rk_model_eos(const rk_model *model);   /* -1 if none */
/* Short human-readable description ("llama, 30 layers, 9/3 heads, Q4_1 ..."); owned by the model. */
const char *rk_model_desc(const rk_model *model);

/* ---- session ---- */
rk_session_params rk_session_default_params(void);
rk_status   rk_session_init(rk_session **out, rk_model *model, const rk_session_params *params);
void        rk_session_free(rk_session *session);              /* NULL is fine */
/* Appends tokens[0..n) at positions n_past.., and writes logits per mode into
 * `logits` (caller-owned; [n_vocab] for LAST, [n][n_vocab] for ALL; may be NULL
 * with RK_LOGITS_NONE). */
rk_status   rk_session_eval(rk_session *session, const int32_t *tokens, int32_t n,
                            float *logits, int32_t logits_mode);
/* Appends tokens[0..n) and writes out[i] = log p(tokens[i+1] | everything before),
 * for i in [0, n-1): n-1 floats. Whole logit rows never leave the library.
 * If `argmax_out` is not NULL, it receives the greedy token at each of those
 * n-1 positions. */
rk_status   rk_session_logprobs(rk_session *session, const int32_t *tokens, int32_t n,
                                float *out, int32_t *argmax_out);
rk_status   rk_session_reset(rk_session *session);             /* empty KV cache, n_past = 0 */
int32_t     rk_session_n_past(const rk_session *session);      /* tokens evaluated since reset */
int32_t     rk_session_n_ctx(const rk_session *session);
int32_t     rk_session_n_threads(const rk_session *session);
size_t      rk_session_kv_bytes_alloc(const rk_session *session);  /* KV storage allocated */
size_t      rk_session_kv_bytes_used(const rk_session *session);   /* KV storage holding live entries */

/* ---- tensor-type utilities (block formats; used by tests and tools) ---- */
const char *rk_type_name(int32_t type);               /* NULL if unknown */
int32_t     rk_type_block_size(int32_t type);         /* elements per block; 0 if unknown */
int32_t     rk_type_block_bytes(int32_t type);        /* bytes per block; 0 if unknown */
/* Dequantises n elements (a multiple of the block size) from src (src_bytes long). */
rk_status   rk_dequantize(int32_t type, const void *src, size_t src_bytes, float *dst, int64_t n);
/* out = dot(row of `type` with n elements, x[0..n)), computed exactly as the
 * engine's matmul does (including its quantisation of x where it uses one). */
rk_status   rk_vec_dot(int32_t type, const void *row, size_t row_bytes, const float *x, int64_t n, float *out);

/* RK_API_END */

#ifdef __cplusplus
}
#endif

#endif /* RESTKV_H */
