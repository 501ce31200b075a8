/*
 * model.c: GGUF (as written by llama.cpp's converter) to rk_model, through the row of arch.c's
 * table for general.architecture: the row says which keys are read and which optional tensors
 * exist, so no architecture's key names are spelled here. "<a>" is the architecture's name.
 *
 * GGUF key                                    -> field
 *   <a>.vocab_size (else token_embd rows)       n_vocab
 *   <a>.embedding_length                        n_embd
 *   <a>.block_count                             n_layers
 *   <a>.feed_forward_length                     n_ff
 *   <a>.attention.head_count                    n_heads
 *   <a>.attention.head_count_kv (= n_heads)     n_kv_heads   (GQA when smaller)
 *   <a>.attention.key_length/value_length (= n_embd/n_heads) head_dim, hp.head_dim_k/v
 *   <a>.attention.layer_norm_rms_epsilon        rms_eps
 *   <a>.rope.freq_base (row default)            rope_base, hp.rope_base of global layers
 *   <a>.rope.dimension_count (= head_dim)       n_rot, hp.n_rot
 *   <a>.rope.scaling.type/.factor, or the older <a>.rope.scale_linear: rope_freq_scale, hp.rope_freq_scale
 *   <a>.attention.sliding_window, .sliding_window_pattern, <a>.rope.freq_base_swa: hp.n_swa and the
 *       local layers' hp.rope_base (only rows that list them; llama does not)
 *   <a>.context_length                          n_ctx_train
 * Tensors: token_embd, output_norm, output (absent = tied to token_embd),
 * rope_freqs (llama3 factors, optional), blk.N.{attn_norm, attn_q, attn_k,
 * attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}, plus the row's optional
 * ones (rk_arch_tensor: biases, Q/K norms, post-norms).
 * Derived on first need (src/model/gram.c, rk_wo_gram_prepare): wo_gram, the per-head Gram matrices of
 * attn_output that ReST-KV scores with.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "arch.h"
#include "error.h"
#include "model.h"
#include "backend.h"
#include "quant.h"

static int str_eq(const char *s, uint64_t len, const char *lit) {
    return len == strlen(lit) && memcmp(s, lit, len) == 0;
}

/* key NULL: the architecture does not read it, so it counts as absent (*out unchanged) */
static rk_status get_count(const rk_gguf *g, const char *key, int32_t *out, int required, int64_t min, int64_t max) {
    if (!key) return RK_OK;
    int64_t v = *out;
    rk_status st = rk_gguf_get_i64(g, key, &v, required);
    if (st) return st;
    if (v < min || v > max)
        return rk_fail(RK_ERR_FORMAT, "%s: metadata '%s' = %lld is out of range (%lld..%lld)", g->path, key,
                       (long long)v, (long long)min, (long long)max);
    *out = (int32_t)v;
    return RK_OK;
}

static rk_status get_dim(const rk_gguf *g, const char *key, int32_t *out, int required, int64_t max) {
    return get_count(g, key, out, required, 1, max);
}

static rk_status get_f64(const rk_gguf *g, const char *key, double *out, int required) {
    return key ? rk_gguf_get_f64(g, key, out, required) : RK_OK;
}

/* The full names of the keys the architecture reads ("" for the others), so that every read below
 * goes through the table: KEY(k) is the name, or NULL when the row does not read key k. */
typedef struct {
    char name[RK_KEY_COUNT][80];
} arch_keys;

static void arch_keys_init(arch_keys *k, const rk_arch *a) {
    for (int i = 0; i < RK_KEY_COUNT; i++)
        if (!rk_arch_key_name(a, (rk_arch_key)i, k->name[i], sizeof k->name[i])) k->name[i][0] = 0;
}

static const char *key_of(const arch_keys *k, rk_arch_key i) { return k->name[i][0] ? k->name[i] : NULL; }

#define KEY(k) key_of(&keys, RK_KEY_##k)
#define REQ(k) ((m->arch->keys_required & RK_KEYBIT(RK_KEY_##k)) != 0)

/* Looks up a tensor and checks its shape (ne0, ne1; ne1 = 0 for a vector). */
static rk_status find_tensor(const rk_gguf *g, const char *name, int64_t ne0, int64_t ne1, int required,
                             const rk_gguf_tensor **out) {
    const rk_gguf_tensor *t = rk_gguf_find_tensor(g, name);
    *out = t;
    if (!t) return required ? rk_fail(RK_ERR_FORMAT, "%s: tensor '%s' is missing", g->path, name) : RK_OK;
    int64_t want1 = ne1 ? ne1 : 1;
    if (t->ne[0] != ne0 || t->ne[1] != want1 || t->ne[2] != 1 || t->ne[3] != 1)
        return rk_fail(RK_ERR_FORMAT, "%s: tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]",
                       g->path, name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                       (long long)t->ne[3], (long long)ne0, (long long)want1);
    return RK_OK;
}

static rk_status load_weight(rk_model *m, const char *name, int64_t n_in, int64_t n_out, int required,
                             rk_weight *w) {
    const rk_gguf_tensor *t;
    rk_status st = find_tensor(m->gguf, name, n_in, n_out, required, &t);
    if (st || !t) return st;
    const rk_type_traits *tr = rk_get_type_traits((int32_t)t->type);
    if (!tr || !tr->vec_dot) {
        const char *tn = rk_ggml_type_name(t->type);
        return rk_fail(RK_ERR_UNSUPPORTED,
                       "%s: tensor '%s' has type %s, which this engine does not support "
                       "(supported: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K)",
                       m->gguf->path, name, tn ? tn : "?");
    }
    w->name = t->name;
    w->type = (int32_t)t->type;
    w->n_in = n_in;
    w->n_out = n_out;
    w->row_bytes = rk_row_bytes(w->type, n_in);
    w->data = t->data;
    m->n_params += n_in * n_out;
    m->weight_bytes += t->nbytes;
    return RK_OK;
}

/* Norm vectors are used as f32; other float types are converted once at load. */
static rk_status load_vector(rk_model *m, const char *name, int64_t n, int required, const float **out) {
    const rk_gguf_tensor *t;
    rk_status st = find_tensor(m->gguf, name, n, 0, required, &t);
    *out = NULL;
    if (st || !t) return st;
    m->n_params += n;
    m->weight_bytes += t->nbytes;
    if (t->type == RK_TYPE_F32) {
        if ((uintptr_t)t->data % sizeof(float))
            return rk_fail(RK_ERR_FORMAT, "%s: tensor '%s' is not 4-byte aligned", m->gguf->path, name);
        *out = t->data;
        return RK_OK;
    }
    if (t->type != RK_TYPE_F16 && t->type != RK_TYPE_BF16)
        return rk_fail(RK_ERR_UNSUPPORTED, "%s: tensor '%s' has type %s (expected F32, F16 or BF16)",
                       m->gguf->path, name, rk_ggml_type_name(t->type));
    if (m->owned_used + (size_t)n > m->owned_cap)
        return rk_fail(RK_ERR_INTERNAL, "norm buffer too small");
    float *dst = m->owned + m->owned_used;
    rk_get_type_traits((int32_t)t->type)->to_float(t->data, dst, n);
    m->owned_used += (size_t)n;
    *out = dst;
    return RK_OK;
}

/* Per-layer values from the file and the row (arch.h, "Per-layer derivation"); allocates m->layers. */
static rk_status derive_layer_hparams(rk_model *m, const arch_keys *kp, int32_t key_len, int32_t val_len) {
    const rk_gguf *g = m->gguf;
    const rk_arch *a = m->arch;
    const arch_keys keys = *kp; /* for KEY() */
    rk_status st;
    int32_t n_swa = 0, period = a->swa_period_default;
    double base_swa = a->swa_rope_base_default;
    /* absent or 0 = no window anywhere (llama.cpp at 4df29be4), so 0 is in range here */
    if ((st = get_count(g, KEY(SLIDING_WINDOW), &n_swa, REQ(SLIDING_WINDOW), 0, 1 << 24)) ||
        (st = get_count(g, KEY(SLIDING_WINDOW_PATTERN), &period, REQ(SLIDING_WINDOW_PATTERN), 0, 1024)) ||
        (st = get_f64(g, KEY(ROPE_FREQ_BASE_SWA), &base_swa, REQ(ROPE_FREQ_BASE_SWA))))
        return st;
    if (n_swa > 0 && !(base_swa > 1 && base_swa < 1e12))
        return rk_fail(RK_ERR_FORMAT, "%s: rope.freq_base_swa %g is out of range", g->path, base_swa);
    if (!(m->layers = calloc((size_t)m->n_layers, sizeof *m->layers))) return rk_fail(RK_ERR_OOM, "out of memory");
    m->embd_scale = a->embd_scale_sqrt ? sqrtf((float)m->n_embd) : 1.0f;
    m->rope_neox = a->rope == RK_ROPE_NEOX;
    for (int il = 0; il < m->n_layers; il++) {
        rk_layer_hparams *hp = &m->layers[il].hp;
        /* llama.cpp's set_swa_pattern: P == 0 makes every layer local, else the last of each P is global */
        const int local = n_swa > 0 && (period == 0 || il % period < period - 1);
        hp->n_swa = local ? n_swa : 0;
        /* global layers take exactly the file's floats, so llama's angles keep their bits */
        hp->rope_base = local ? (float)base_swa : m->rope_base;
        hp->rope_freq_scale = local && !a->swa_rope_scaled ? 1.0f : m->rope_freq_scale;
        hp->n_rot = m->n_rot;
        hp->rope_neox = m->rope_neox;
        hp->head_dim_k = key_len;
        hp->head_dim_v = val_len;
        const int wide = a->attn_scale == RK_ATTN_SCALE_GEMMA3 && m->n_layers == 62;
        hp->attn_scale = 1.0f / sqrtf((float)(wide ? m->n_embd / m->n_heads : key_len));
    }
    return RK_OK;
}

/* Facts of a row that this build has no op for yet are refused here, not computed wrongly: adding
 * an architecture adds its op and removes its line (docs/architecture.md, "Architectures"). */
static rk_status check_implemented(const rk_model *m) {
    const rk_arch *a = m->arch;
    const char *missing = a->norm_w_offset != 0.0f ? "norm weights stored without their offset" : NULL;
    for (int il = 0; !missing && il < m->n_layers; il++) {
        const rk_layer_hparams *hp = &m->layers[il].hp;
        if (hp->head_dim_k != m->head_dim || hp->head_dim_v != m->head_dim || hp->n_rot != m->n_rot)
            missing = "per-layer head sizes";
    }
    if (missing)
        return rk_fail(RK_ERR_UNSUPPORTED, "%s: architecture '%s' needs %s, which this engine does not implement yet",
                       m->gguf->path, a->name, missing);
    return RK_OK;
}

static rk_status read_hparams(rk_model *m) {
    const rk_gguf *g = m->gguf;
    const char *arch;
    uint64_t alen;
    rk_status st = rk_gguf_get_str(g, "general.architecture", &arch, &alen, 1);
    if (st) return st;
    if (!(m->arch = rk_arch_find(arch, alen))) {
        char list[128];
        return rk_fail(RK_ERR_UNSUPPORTED, "%s: architecture '%.*s' is not supported (supported: %s)", g->path,
                       (int)(alen < 64 ? alen : 64), arch, rk_arch_supported_list(list, sizeof list));
    }
    arch_keys keys;
    arch_keys_init(&keys, m->arch);
    const rk_gguf_kv *hkv = KEY(HEAD_COUNT_KV) ? rk_gguf_find_kv(g, KEY(HEAD_COUNT_KV)) : NULL;
    if (hkv && hkv->type == RK_GGUF_ARRAY)
        return rk_fail(RK_ERR_UNSUPPORTED, "%s: per-layer head counts are not supported", g->path);

    if ((st = get_dim(g, KEY(EMBEDDING_LENGTH), &m->n_embd, REQ(EMBEDDING_LENGTH), 1 << 16)) ||
        (st = get_dim(g, KEY(BLOCK_COUNT), &m->n_layers, REQ(BLOCK_COUNT), 1024)) ||
        (st = get_dim(g, KEY(FEED_FORWARD_LENGTH), &m->n_ff, REQ(FEED_FORWARD_LENGTH), 1 << 20)) ||
        (st = get_dim(g, KEY(HEAD_COUNT), &m->n_heads, REQ(HEAD_COUNT), 1024)))
        return st;
    /* a row that reads none of them would leave 0s here: every row must read these four */
    if (m->n_embd < 1 || m->n_layers < 1 || m->n_ff < 1 || m->n_heads < 1)
        return rk_fail(RK_ERR_INTERNAL, "%s: architecture '%s' reads no model dimensions", g->path, m->arch->name);
    m->n_kv_heads = m->n_heads;
    m->n_ctx_train = 2048;
    if ((st = get_dim(g, KEY(HEAD_COUNT_KV), &m->n_kv_heads, REQ(HEAD_COUNT_KV), 1024)) ||
        (st = get_dim(g, KEY(CONTEXT_LENGTH), &m->n_ctx_train, REQ(CONTEXT_LENGTH), 1 << 24)))
        return st;
    if (m->n_heads % m->n_kv_heads)
        return rk_fail(RK_ERR_FORMAT, "%s: head_count %d is not a multiple of head_count_kv %d", g->path,
                       m->n_heads, m->n_kv_heads);
    /* the head dim is key_length when the file has it (qwen3, gemma3, Mistral-Nemo: H * hd may differ
     * from n_embd), else n_embd / H */
    int32_t key_len = m->n_embd % m->n_heads ? 0 : m->n_embd / m->n_heads, val_len = -1;
    if ((st = get_dim(g, KEY(KEY_LENGTH), &key_len, REQ(KEY_LENGTH), 1 << 16))) return st;
    if (key_len < 1)
        return rk_fail(RK_ERR_FORMAT, "%s: embedding_length %d is not a multiple of head_count %d and no "
                       "attention.key_length says the head size", g->path, m->n_embd, m->n_heads);
    val_len = key_len;
    if ((st = get_dim(g, KEY(VALUE_LENGTH), &val_len, REQ(VALUE_LENGTH), 1 << 16))) return st;
    if (val_len != key_len)
        return rk_fail(RK_ERR_UNSUPPORTED, "%s: key and value head sizes differ (%d, %d)", g->path, key_len, val_len);
    m->head_dim = key_len;
    m->n_rot = m->head_dim;
    if ((st = get_dim(g, KEY(ROPE_DIMENSION_COUNT), &m->n_rot, REQ(ROPE_DIMENSION_COUNT), m->head_dim))) return st;
    if (m->n_rot % 2) return rk_fail(RK_ERR_FORMAT, "%s: rope.dimension_count %d is odd", g->path, m->n_rot);

    double eps = m->arch->rms_eps_default, base = m->arch->rope_base_default, scale = 1.0;
    if ((st = get_f64(g, KEY(RMS_EPS), &eps, REQ(RMS_EPS))) ||
        (st = get_f64(g, KEY(ROPE_FREQ_BASE), &base, REQ(ROPE_FREQ_BASE))))
        return st;
    if (!(eps > 0 && eps < 1)) return rk_fail(RK_ERR_FORMAT, "%s: rms epsilon %g is out of range", g->path, eps);
    if (!(base > 1 && base < 1e12)) return rk_fail(RK_ERR_FORMAT, "%s: rope.freq_base %g is out of range", g->path, base);
    const char *stype = NULL;
    uint64_t slen = 0;
    if (KEY(ROPE_SCALING_TYPE) && (st = rk_gguf_get_str(g, KEY(ROPE_SCALING_TYPE), &stype, &slen, 0))) return st;
    if (stype && !str_eq(stype, slen, "none") && !str_eq(stype, slen, "linear"))
        return rk_fail(RK_ERR_UNSUPPORTED, "%s: rope scaling '%.*s' is not supported (none, linear)", g->path,
                       (int)(slen < 32 ? slen : 32), stype);
    if (stype && str_eq(stype, slen, "linear")) {
        /* a row that reads the type reads the factor too; NULL would leave scale 1 */
        if ((st = get_f64(g, KEY(ROPE_SCALING_FACTOR), &scale, 1))) return st;
    } else if (!stype) {
        if ((st = get_f64(g, KEY(ROPE_SCALE_LINEAR), &scale, 0))) return st;
    }
    if (!(scale > 0 && scale < 1e6)) return rk_fail(RK_ERR_FORMAT, "%s: rope scaling factor %g is out of range", g->path, scale);
    double softcap = 0.0; /* absent = none (never Gemma 2's default of 30) */
    if ((st = get_f64(g, KEY(FINAL_LOGIT_SOFTCAP), &softcap, REQ(FINAL_LOGIT_SOFTCAP)))) return st;
    if (!(softcap >= 0 && softcap < 1e6))
        return rk_fail(RK_ERR_FORMAT, "%s: final_logit_softcapping %g is out of range", g->path, softcap);
    m->final_softcap = (float)softcap;
    m->rms_eps = (float)eps;
    m->rope_base = (float)base;
    m->rope_freq_scale = (float)(1.0 / scale);
    if ((st = derive_layer_hparams(m, &keys, key_len, val_len))) return st;

    const rk_gguf_tensor *emb = rk_gguf_find_tensor(g, "token_embd.weight");
    if (!emb) return rk_fail(RK_ERR_FORMAT, "%s: tensor 'token_embd.weight' is missing", g->path);
    m->n_vocab = emb->ne[1] > INT32_MAX ? INT32_MAX : (int32_t)emb->ne[1];
    int32_t vocab_key = m->n_vocab;
    if ((st = get_dim(g, KEY(VOCAB_SIZE), &vocab_key, REQ(VOCAB_SIZE), INT32_MAX))) return st;
    if (vocab_key != m->n_vocab)
        return rk_fail(RK_ERR_FORMAT, "%s: %s %d does not match token_embd.weight (%d rows)", g->path,
                       KEY(VOCAB_SIZE), vocab_key, m->n_vocab);
    return check_implemented(m);
}

static rk_status load_tensors(rk_model *m) {
    const int64_t d = m->n_embd, dq = (int64_t)m->n_heads * m->head_dim, dkv = (int64_t)m->n_kv_heads * m->head_dim;
    char name[128];
    rk_status st;
    /* room for every vector a layer may have (norms, the row's optional biases and norms) as f32 */
    m->owned_cap = (size_t)m->n_layers * (size_t)(5 * d + dq + 2 * dkv + 2 * m->head_dim) + (size_t)d;
    if (!(m->owned = malloc(m->owned_cap * sizeof(float)))) /* m->layers: derive_layer_hparams */
        return rk_fail(RK_ERR_OOM, "out of memory");
    if ((st = load_weight(m, "token_embd.weight", d, m->n_vocab, 1, &m->tok_embd)) ||
        (st = load_vector(m, "output_norm.weight", d, 1, &m->output_norm)) ||
        (st = load_weight(m, "output.weight", d, m->n_vocab, 0, &m->output)))
        return st;
    if (!m->output.data) m->output = m->tok_embd; /* tied embeddings */
    const uint32_t want = m->arch->tensors_optional | m->arch->tensors_required;
#define HAS(bit) ((want & (bit)) != 0)
#define REQUIRED(bit) ((m->arch->tensors_required & (bit)) != 0)
    const rk_gguf_tensor *rf = NULL;
    if (HAS(RK_TENSOR_ROPE_FREQS) &&
        (st = find_tensor(m->gguf, "rope_freqs.weight", m->n_rot / 2, 0, REQUIRED(RK_TENSOR_ROPE_FREQS), &rf)))
        return st;
    if (rf) {
        if (rf->type != RK_TYPE_F32 || (uintptr_t)rf->data % 4)
            return rk_fail(RK_ERR_FORMAT, "%s: rope_freqs.weight must be F32", m->gguf->path);
        m->rope_freqs = rf->data;
    }
    for (int il = 0; il < m->n_layers; il++) {
        rk_layer *L = &m->layers[il];
#define W(field, suffix, n_in, n_out)                                            \
    snprintf(name, sizeof name, "blk.%d." suffix ".weight", il);                 \
    if ((st = load_weight(m, name, n_in, n_out, 1, &L->field))) return st;
#define V(field, suffix)                                                         \
    snprintf(name, sizeof name, "blk.%d." suffix ".weight", il);                 \
    if ((st = load_vector(m, name, d, 1, &L->field))) return st;
        V(attn_norm, "attn_norm")
        V(ffn_norm, "ffn_norm")
        W(wq, "attn_q", d, dq)
        W(wk, "attn_k", d, dkv)
        W(wv, "attn_v", d, dkv)
        W(wo, "attn_output", dq, d)
        W(w_gate, "ffn_gate", d, m->n_ff)
        W(w_up, "ffn_up", d, m->n_ff)
        W(w_down, "ffn_down", m->n_ff, d)
        /* the row's optional tensors; a tensor outside the row is not looked at (NULL) */
#define OPT(bit, field, fullname, n)                                                         \
    if (HAS(bit)) {                                                                        \
        snprintf(name, sizeof name, "blk.%d." fullname, il);                               \
        if ((st = load_vector(m, name, n, REQUIRED(bit), &L->field))) return st;           \
    }
        OPT(RK_TENSOR_ATTN_Q_BIAS, bq, "attn_q.bias", dq)
        OPT(RK_TENSOR_ATTN_K_BIAS, bk, "attn_k.bias", dkv)
        OPT(RK_TENSOR_ATTN_V_BIAS, bv, "attn_v.bias", dkv)
        OPT(RK_TENSOR_ATTN_OUT_BIAS, bo, "attn_output.bias", d)
        OPT(RK_TENSOR_ATTN_Q_NORM, q_norm, "attn_q_norm.weight", m->head_dim)
        OPT(RK_TENSOR_ATTN_K_NORM, k_norm, "attn_k_norm.weight", m->head_dim)
        OPT(RK_TENSOR_POST_ATTN_NORM, post_attn_norm, "post_attention_norm.weight", d)
        OPT(RK_TENSOR_POST_FFN_NORM, post_ffn_norm, "post_ffw_norm.weight", d)
#undef OPT
#undef W
#undef V
    }
#undef HAS
#undef REQUIRED
    return RK_OK;
}

static int32_t default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 256 ? 256 : (int32_t)n;
}

rk_model_params rk_model_default_params(void) {
    rk_model_params p = {0, RK_DEVICE_CPU};
    return p;
}

/* path != NULL: map that file; else parse buf[0..size) (kept, not copied), called `name` */
static rk_status load(rk_model **out, const char *path, const void *buf, size_t size, const char *name,
                      const rk_model_params *params) {
    rk_model_params p = params ? *params : rk_model_default_params();
    const rk_backend_i *be;
    rk_status st0 = rk_backend_for_device(p.device, &be);
    if (st0) return st0;
    if (p.n_threads > 1024) return rk_fail(RK_ERR_ARG, "n_threads %d is too large", p.n_threads);
    rk_quant_init();
    rk_model *m = calloc(1, sizeof *m);
    if (!m) return rk_fail(RK_ERR_OOM, "out of memory");
    atomic_init(&m->refs, 1);
    rk_status st = path ? rk_gguf_open(&m->gguf, path) : rk_gguf_parse(&m->gguf, buf, size, name);
    if (!st) st = read_hparams(m);
    if (!st) st = load_tensors(m);
    if (!st) st = rk_vocab_load(m);
    m->backend = be;
    /* the device's layout (CPU: 8-row repack); the W_o Gram matrices (gram.c, on first need) read
     * w->data, kept as stored */
    if (!st) st = be->upload_weights(m);
    if (st) {
        rk_model_free(m);
        return st;
    }
    m->n_threads = p.n_threads > 0 ? p.n_threads : default_threads();
    m->device = p.device;
    snprintf(m->desc, sizeof m->desc, "%s, %d layers, n_embd %d, heads %d/%d (kv), ff %d, vocab %d, %s weights",
             m->arch->name, m->n_layers, m->n_embd, m->n_heads, m->n_kv_heads, m->n_ff, m->n_vocab,
             rk_ggml_type_name((uint32_t)m->layers[0].wq.type));
    *out = m;
    return RK_OK;
}

rk_status rk_model_load(rk_model **out, const char *path, const rk_model_params *params) {
    if (!out) return rk_fail(RK_ERR_ARG, "rk_model_load: out is NULL");
    *out = NULL;
    if (!path) return rk_fail(RK_ERR_ARG, "rk_model_load: path is NULL");
    return load(out, path, NULL, 0, NULL, params);
}

rk_status rk_model_load_buffer(rk_model **out, const void *buf, size_t size, const char *name,
                               const rk_model_params *params) {
    if (!out) return rk_fail(RK_ERR_ARG, "rk_model_load_buffer: out is NULL");
    *out = NULL;
    if (!buf && size) return rk_fail(RK_ERR_ARG, "rk_model_load_buffer: buf is NULL");
    return load(out, NULL, buf, size, name ? name : "<buffer>", params);
}

void rk_model_retain(rk_model *m) { atomic_fetch_add(&m->refs, 1); }

void rk_model_free(rk_model *m) {
    if (!m || atomic_fetch_sub(&m->refs, 1) != 1) return; /* sessions still use the weights */
    rk_gguf_close(m->gguf);
    free(m->layers);
    free(m->wo_gram);
    if (m->backend) m->backend->free_weights(m);
    free(m->owned);
    free(m->tok_text);
    free(m->tok_len);
    free(m->tok_type);
    free(m);
}

int32_t rk_model_n_vocab(const rk_model *m) { return m ? m->n_vocab : 0; }
int32_t rk_model_n_layers(const rk_model *m) { return m ? m->n_layers : 0; }
int32_t rk_model_n_heads(const rk_model *m) { return m ? m->n_heads : 0; }
int32_t rk_model_n_kv_heads(const rk_model *m) { return m ? m->n_kv_heads : 0; }
int32_t rk_model_n_embd(const rk_model *m) { return m ? m->n_embd : 0; }
int32_t rk_model_head_dim(const rk_model *m) { return m ? m->head_dim : 0; }
int32_t rk_model_n_ctx_train(const rk_model *m) { return m ? m->n_ctx_train : 0; }
int64_t rk_model_n_params(const rk_model *m) { return m ? m->n_params : 0; }
size_t rk_model_weight_bytes(const rk_model *m) { return m ? m->weight_bytes : 0; }
size_t rk_model_repacked_bytes(const rk_model *m) { return m ? m->packed_bytes : 0; }
int32_t rk_model_layer_window(const rk_model *m, int32_t il) {
    return m && il >= 0 && il < m->n_layers ? m->layers[il].hp.n_swa : -1;
}
const char *rk_model_desc(const rk_model *m) { return m ? m->desc : ""; }
