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
 * mutable timeline (KV cache, scratch buffers, thread pool) and runs one call at a
 * time: a call made while another thread is inside one of its calls fails at once
 * with RK_ERR_BUSY and changes nothing (give each thread its own session).
 *
 * Lifetimes: a session holds a reference to its model, so rk_model_free() may come
 * before the sessions' rk_session_free(): the weights are released with the last of
 * them. rk_session_free() waits for a call in flight in another thread to return
 * before it frees; the handle must not be used after it.
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
    RK_ERR_INTERNAL     = -8,
    RK_ERR_BUSY         = -9   /* the session is in a call from another thread */
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
/* Bytes of weights the model re-laid out at load for the CPU's kernels (8 interleaved rows of
 * Q4_0/Q4_1/Q8_0 matrices with AVX2; 0 with the portable kernels or RK_REPACK=0). */
size_t      rk_model_repacked_bytes(const rk_model *model);
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
/* Like rk_session_logprobs, but tokens[0] is scored too, from the last token evaluated
 * before this call: writes n values, out[i] = log p(tokens[i] | everything before it), so
 * a long text can be scored in consecutive pieces without losing or repeating a
 * prediction. Needs at least one token evaluated since the last reset. */
rk_status   rk_session_logprobs_next(rk_session *session, const int32_t *tokens, int32_t n,
                                     float *out, int32_t *argmax_out);
rk_status   rk_session_reset(rk_session *session);             /* empty KV cache, n_past = 0 */
int32_t     rk_session_n_past(const rk_session *session);      /* tokens evaluated since reset */
int32_t     rk_session_n_ctx(const rk_session *session);
int32_t     rk_session_n_threads(const rk_session *session);
size_t      rk_session_kv_bytes_alloc(const rk_session *session);  /* KV storage allocated */
size_t      rk_session_kv_bytes_used(const rk_session *session);   /* KV storage holding live entries */
/* The same for one kind of layer: global layers (evicted from, counted in budgets) or sliding-window
 * layers (gemma3's local layers: rings of n_swa - 1 + n_batch slots, never evicted from). */
typedef enum { RK_LAYERS_GLOBAL = 0, RK_LAYERS_WINDOW = 1 } rk_layer_kind;
size_t      rk_session_kv_bytes_alloc_of(const rk_session *session, int32_t layer_kind);
size_t      rk_session_kv_bytes_used_of(const rk_session *session, int32_t layer_kind);
int32_t     rk_model_layer_window(const rk_model *model, int32_t layer); /* n_swa, 0 = global, -1 = no such layer */

/* ---- KV-cache eviction ----
 * A session evicts per (layer, kv-head): each such buffer keeps its own set of
 * tokens. The policy scores tokens; shared code protects sinks and the recent
 * window, picks the top-scored rest and compacts the buffer.
 *   prefix schedule:    nothing is evicted during eval; rk_session_compress()
 *                       cuts every buffer to the budget once (SnapKV/ReST-KV
 *                       semantics: the prefill's own outputs used the full cache).
 *   streaming schedule: eval evicts whenever a buffer would exceed budget + slack,
 *                       down to the budget, so memory stays bounded forever.
 * Budget: a value in (0, 1] is a fraction (prefix: of the tokens cached when
 * compressing; streaming: of n_ctx); a value >= 2 is a number of tokens.
 *
 * Settings are text, "key=value,key=value" (spaces around items allowed): the shared
 * settings (rk_policy_param_info(RK_EVICT_SHARED, ...): budget, schedule, positions,
 * window, n_sink, slack) and the policy's own parameters (rk_policy_param_info(i, ...)).
 * Keys not given take their defaults; an unknown key, a value out of range or of the
 * wrong type is an RK_ERR_ARG naming the parameter, its range and the policy. The
 * tables below describe every parameter, so bindings and tools build their options
 * from them (engine/eviction.py does). */
typedef enum {
    RK_SCHEDULE_PREFIX    = 0,
    RK_SCHEDULE_STREAMING = 1
} rk_schedule;

typedef enum {
    RK_POSITIONS_ORIGINAL = 0,  /* kept keys keep their RoPE positions; new tokens continue the text's positions */
    RK_POSITIONS_SHIFT    = 1   /* kept keys re-rotated to positions 0..n-1; new tokens continue from n */
} rk_positions;

/* What a policy does (rk_policy_info.flags). A policy with neither EVICTS nor MASKS_ATTN keeps
 * every entry and changes nothing ("full"). */
typedef enum {
    RK_POLICY_EVICTS       = 1,   /* compresses the cache to the budget (entries per (layer, kv-head)) */
    RK_POLICY_MASKS_ATTN   = 2,   /* evicts nothing: each query attends to its top budget keys ("topk") */
    RK_POLICY_KEEPS_SINKS  = 4,   /* the shared code keeps the first n_sink positions */
    RK_POLICY_KEEPS_WINDOW = 8,   /* the shared code keeps the newest min(window, budget / 2) tokens */
    RK_POLICY_KEEPS_LAST   = 16   /* the shared code keeps the newest token */
} rk_policy_flag;

/* Statistics a policy scores with (rk_policy_info.needs / .gathers). */
typedef enum {
    RK_NEED_WINDOW = 1,  /* the last `window` evaluated tokens' queries (window attention) */
    RK_NEED_ACC    = 2   /* attention each cached token received, accumulated over every query */
} rk_policy_need;

typedef enum {
    RK_PARAM_INT    = 0,  /* an integer in [min, max] */
    RK_PARAM_FLOAT  = 1,  /* a number in [min, max] (an open end: min_open / max_open) */
    RK_PARAM_CHOICE = 2   /* one of the names in `choices` ("a|b"); default_value is its index */
} rk_param_type;

/* policy index of the shared settings in rk_policy_param_info */
typedef enum { RK_EVICT_SHARED = -1 } rk_evict_shared_index;

typedef struct {
    const char *name;      /* key in the settings text */
    int32_t     type;      /* rk_param_type */
    double      default_value;  /* CHOICE: index into choices */
    double      min, max;  /* range (CHOICE: 0 .. number of choices - 1); +-inf when unbounded */
    int32_t     min_open, max_open;  /* 1: that end of the range is excluded */
    const char *choices;   /* CHOICE: "name|name|..."; else NULL */
    const char *help;      /* one line; further rules (e.g. "odd") are stated here and checked by the policy */
} rk_param_info;

typedef struct {
    const char *name;      /* user-facing name, e.g. "restkv" */
    const char *help;      /* one line: what it keeps */
    uint32_t    flags;     /* rk_policy_flag bits */
    uint32_t    needs;     /* rk_policy_need bits its scores read */
    uint32_t    gathers;   /* rk_policy_need bits a session set to it keeps, which rk_session_copy_state
                            * can pass on: its needs, and the query window for every evicting policy */
    int32_t     n_params;  /* its own parameters (the shared settings not counted) */
} rk_policy_info;

int32_t     rk_policy_count(void);
/* The i-th policy name (i from 0), NULL past the end. */
const char *rk_policy_name(int32_t i);
/* Index of a policy by name, -1 if unknown. */
int32_t     rk_policy_index(const char *name);
rk_status   rk_policy_get_info(int32_t policy, rk_policy_info *out);
/* Number of parameters of a policy, or of the shared settings (RK_EVICT_SHARED); -1 for a bad index. */
int32_t     rk_policy_n_params(int32_t policy);
rk_status   rk_policy_param_info(int32_t policy, int32_t i, rk_param_info *out);
/* Validates a policy and settings as rk_session_set_eviction does, without a session (the checks
 * that depend on the session's n_ctx excepted). */
rk_status   rk_evict_check(const char *policy, const char *settings);
/* Sets the session's eviction policy and settings (settings may be NULL or "": all defaults).
 * Validated; the session is unchanged on error. Prepares what the policy needs from the model on
 * first use (ReST-KV's W_o Gram matrices, computed once per model, whichever session asks first).
 * The KV capacity stays n_ctx slots per (layer, kv-head). A new session has policy "full". */
rk_status   rk_session_set_eviction(rk_session *session, const char *policy, const char *settings);
/* Prefix schedule: compresses every (layer, kv-head) buffer to the budget now, scoring
 * with the last `window` evaluated tokens as observation queries. No-op at budget 1. */
rk_status   rk_session_compress(rk_session *session);
/* Tokens held by one (layer, kv-head) buffer, and their original positions
 * (written to out, up to cap entries, in slot order). Returns -1 for bad indices. */
int32_t     rk_session_kv_count(const rk_session *session, int32_t layer, int32_t kv_head);
int32_t     rk_session_kv_positions(const rk_session *session, int32_t layer, int32_t kv_head, int32_t *out, int32_t cap);
/* Position the next evaluated token gets (= n_past with original positions). */
int32_t     rk_session_next_pos(const rk_session *session);
/* Copies src's evaluated state into dst: the KV cache with its positions, n_past, the
 * next position, and the statistics dst's eviction policy scores with (its window of
 * queries, accumulated attention), so one prefill can be compressed and continued under
 * several eviction configurations. dst keeps its own eviction settings. Both sessions
 * must be on the same model with the same n_ctx and KV type, and src must have gathered
 * what dst needs (rk_policy_info.gathers of src's policy covers dst's, with the same
 * window). A policy that masks attention changes the prefill itself: it shares only with
 * the same policy and budget. */
rk_status   rk_session_copy_state(rk_session *dst, const rk_session *src);

/* ---- vocabulary / metadata for the tokenizer ----
 * Read-only access to the GGUF metadata the model was loaded from (parsed and
 * bounds-checked at load), so the tokenizer is built without reading the file again.
 * Key/values are numbered 0..rk_model_meta_count()-1 in file order; value types are
 * GGUF's (rk_meta_type); numbers are copied as stored (little-endian). Pointers point
 * into the model and stay valid until rk_model_free. Bad indices or types fail with
 * RK_ERR_ARG. */
typedef enum {
    RK_META_U8     = 0,
    RK_META_I8     = 1,
    RK_META_U16    = 2,
    RK_META_I16    = 3,
    RK_META_U32    = 4,
    RK_META_I32    = 5,
    RK_META_F32    = 6,
    RK_META_BOOL   = 7,
    RK_META_STRING = 8,
    RK_META_ARRAY  = 9,
    RK_META_U64    = 10,
    RK_META_I64    = 11,
    RK_META_F64    = 12
} rk_meta_type;

int64_t     rk_model_meta_count(const rk_model *model);                  /* -1 for NULL */
int64_t     rk_model_meta_find(const rk_model *model, const char *key);  /* index, -1 if absent */
/* The key (NUL-terminated), its rk_meta_type, and for an array the element type and count
 * (-1 and 0 otherwise). Any output pointer may be NULL. */
rk_status   rk_model_meta_info(const rk_model *model, int64_t i, const char **key, int32_t *type,
                               int32_t *arr_type, int64_t *arr_n);
/* A number or bool, or an array of them: copies its bytes (1 or arr_n elements) to out,
 * which holds `size` bytes. */
rk_status   rk_model_meta_data(const rk_model *model, int64_t i, void *out, size_t size);
/* A string: pointer to its bytes (not NUL-terminated) and its length. */
rk_status   rk_model_meta_str(const rk_model *model, int64_t i, const char **s, uint64_t *len);
/* An array of strings: *total (if not NULL) receives the sum of their lengths; if buf is
 * not NULL, the strings are copied to it back to back (size >= *total) and string k is
 * buf[offsets[k] .. offsets[k+1]) (n_offsets = arr_n + 1). */
rk_status   rk_model_meta_strs(const rk_model *model, int64_t i, char *buf, size_t size,
                               int64_t *offsets, int64_t n_offsets, uint64_t *total);

/* ---- tensor-type utilities (block formats; used by tests and tools) ---- */
const char *rk_type_name(int32_t type);               /* NULL if unknown */
int32_t     rk_type_block_size(int32_t type);         /* elements per block; 0 if unknown */
int32_t     rk_type_block_bytes(int32_t type);        /* bytes per block; 0 if unknown */
/* Dequantises n elements (a multiple of the block size) from src (src_bytes long). */
rk_status   rk_dequantize(int32_t type, const void *src, size_t src_bytes, float *dst, int64_t n);
/* out = dot(row of `type` with n elements, x[0..n)), computed exactly as the
 * engine's matmul does for a matrix in the file's row layout (including its
 * quantisation of x where it uses one). Matrices the model repacked at load
 * (rk_model_repacked_bytes) go through 8-row kernels that sum in another order. */
rk_status   rk_vec_dot(int32_t type, const void *row, size_t row_bytes, const float *x, int64_t n, float *out);

/* RK_API_END */

#ifdef __cplusplus
}
#endif

#endif /* RESTKV_H */
