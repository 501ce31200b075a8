/*
 * model.c: GGUF (architecture "llama", as written by llama.cpp's converter) to rk_model.
 *
 * GGUF key                                    -> field
 *   llama.vocab_size (else token_embd rows)     n_vocab
 *   llama.embedding_length                      n_embd
 *   llama.block_count                           n_layers
 *   llama.feed_forward_length                   n_ff
 *   llama.attention.head_count                  n_heads
 *   llama.attention.head_count_kv (= n_heads)   n_kv_heads   (GQA when smaller)
 *   llama.attention.key_length (= n_embd/n_heads) head_dim
 *   llama.attention.layer_norm_rms_epsilon      rms_eps
 *   llama.rope.freq_base (= 10000)              rope_base
 *   llama.rope.dimension_count (= head_dim)     n_rot
 *   llama.rope.scaling.type/.factor, or the older llama.rope.scale_linear: rope_freq_scale
 *   llama.context_length                        n_ctx_train
 * Tensors: token_embd, output_norm, output (absent = tied to token_embd),
 * rope_freqs (llama3 factors, optional), blk.N.{attn_norm, attn_q, attn_k,
 * attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}.
 * Derived at load: wo_gram, the per-head Gram matrices of attn_output that ReST-KV scores with.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "model.h"
#include "gram.h"
#include "repack.h"
#include "quant.h"

static int str_eq(const char *s, uint64_t len, const char *lit) {
    return len == strlen(lit) && memcmp(s, lit, len) == 0;
}

static rk_status get_dim(const rk_gguf *g, const char *key, int32_t *out, int required, int64_t max) {
    int64_t v = *out;
    rk_status st = rk_gguf_get_i64(g, key, &v, required);
    if (st) return st;
    if (v < 1 || v > max)
        return rk_fail(RK_ERR_FORMAT, "%s: metadata '%s' = %lld is out of range (1..%lld)", g->path, key,
                       (long long)v, (long long)max);
    *out = (int32_t)v;
    return RK_OK;
}

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

static rk_status read_hparams(rk_model *m) {
    const rk_gguf *g = m->gguf;
    const char *arch;
    uint64_t alen;
    rk_status st = rk_gguf_get_str(g, "general.architecture", &arch, &alen, 1);
    if (st) return st;
    if (!str_eq(arch, alen, "llama"))
        return rk_fail(RK_ERR_UNSUPPORTED, "%s: architecture '%.*s' is not supported (only 'llama')", g->path,
                       (int)(alen < 64 ? alen : 64), arch);
    const rk_gguf_kv *hkv = rk_gguf_find_kv(g, "llama.attention.head_count_kv");
    if (hkv && hkv->type == RK_GGUF_ARRAY)
        return rk_fail(RK_ERR_UNSUPPORTED, "%s: per-layer head counts are not supported", g->path);

    if ((st = get_dim(g, "llama.embedding_length", &m->n_embd, 1, 1 << 16)) ||
        (st = get_dim(g, "llama.block_count", &m->n_layers, 1, 1024)) ||
        (st = get_dim(g, "llama.feed_forward_length", &m->n_ff, 1, 1 << 20)) ||
        (st = get_dim(g, "llama.attention.head_count", &m->n_heads, 1, 1024)))
        return st;
    m->n_kv_heads = m->n_heads;
    m->n_ctx_train = 2048;
    if ((st = get_dim(g, "llama.attention.head_count_kv", &m->n_kv_heads, 0, 1024)) ||
        (st = get_dim(g, "llama.context_length", &m->n_ctx_train, 0, 1 << 24)))
        return st;
    if (m->n_embd % m->n_heads)
        return rk_fail(RK_ERR_FORMAT, "%s: embedding_length %d is not a multiple of head_count %d", g->path,
                       m->n_embd, m->n_heads);
    if (m->n_heads % m->n_kv_heads)
        return rk_fail(RK_ERR_FORMAT, "%s: head_count %d is not a multiple of head_count_kv %d", g->path,
                       m->n_heads, m->n_kv_heads);
    m->head_dim = m->n_embd / m->n_heads;
    int32_t key_len = m->head_dim, val_len = m->head_dim;
    if ((st = get_dim(g, "llama.attention.key_length", &key_len, 0, 1 << 16)) ||
        (st = get_dim(g, "llama.attention.value_length", &val_len, 0, 1 << 16)))
        return st;
    if (key_len != m->head_dim || val_len != m->head_dim)
        return rk_fail(RK_ERR_UNSUPPORTED, "%s: head sizes %d/%d differ from embedding_length/head_count = %d",
                       g->path, key_len, val_len, m->head_dim);
    m->n_rot = m->head_dim;
    if ((st = get_dim(g, "llama.rope.dimension_count", &m->n_rot, 0, m->head_dim))) return st;
    if (m->n_rot % 2) return rk_fail(RK_ERR_FORMAT, "%s: rope.dimension_count %d is odd", g->path, m->n_rot);

    double eps = 1e-5, base = 10000.0, scale = 1.0;
    if ((st = rk_gguf_get_f64(g, "llama.attention.layer_norm_rms_epsilon", &eps, 0)) ||
        (st = rk_gguf_get_f64(g, "llama.rope.freq_base", &base, 0)))
        return st;
    if (!(eps > 0 && eps < 1)) return rk_fail(RK_ERR_FORMAT, "%s: rms epsilon %g is out of range", g->path, eps);
    if (!(base > 1 && base < 1e12)) return rk_fail(RK_ERR_FORMAT, "%s: rope.freq_base %g is out of range", g->path, base);
    const char *stype = NULL;
    uint64_t slen = 0;
    if ((st = rk_gguf_get_str(g, "llama.rope.scaling.type", &stype, &slen, 0))) return st;
    if (stype && !str_eq(stype, slen, "none") && !str_eq(stype, slen, "linear"))
        return rk_fail(RK_ERR_UNSUPPORTED, "%s: rope scaling '%.*s' is not supported (none, linear)", g->path,
                       (int)(slen < 32 ? slen : 32), stype);
    if (stype && str_eq(stype, slen, "linear")) {
        if ((st = rk_gguf_get_f64(g, "llama.rope.scaling.factor", &scale, 1))) return st;
    } else if (!stype) {
        if ((st = rk_gguf_get_f64(g, "llama.rope.scale_linear", &scale, 0))) return st;
    }
    if (!(scale > 0 && scale < 1e6)) return rk_fail(RK_ERR_FORMAT, "%s: rope scaling factor %g is out of range", g->path, scale);
    m->rms_eps = (float)eps;
    m->rope_base = (float)base;
    m->rope_freq_scale = (float)(1.0 / scale);

    const rk_gguf_tensor *emb = rk_gguf_find_tensor(g, "token_embd.weight");
    if (!emb) return rk_fail(RK_ERR_FORMAT, "%s: tensor 'token_embd.weight' is missing", g->path);
    m->n_vocab = emb->ne[1] > INT32_MAX ? INT32_MAX : (int32_t)emb->ne[1];
    int32_t vocab_key = m->n_vocab;
    if ((st = get_dim(g, "llama.vocab_size", &vocab_key, 0, INT32_MAX))) return st;
    if (vocab_key != m->n_vocab)
        return rk_fail(RK_ERR_FORMAT, "%s: llama.vocab_size %d does not match token_embd.weight (%d rows)", g->path,
                       vocab_key, m->n_vocab);
    return RK_OK;
}

static rk_status load_tensors(rk_model *m) {
    const int64_t d = m->n_embd, dq = (int64_t)m->n_heads * m->head_dim, dkv = (int64_t)m->n_kv_heads * m->head_dim;
    char name[128];
    rk_status st;
    m->owned_cap = (size_t)(2 * m->n_layers + 1) * (size_t)d;
    if (!(m->owned = malloc(m->owned_cap * sizeof(float))) ||
        !(m->layers = calloc((size_t)m->n_layers, sizeof *m->layers)))
        return rk_fail(RK_ERR_OOM, "out of memory");
    if ((st = load_weight(m, "token_embd.weight", d, m->n_vocab, 1, &m->tok_embd)) ||
        (st = load_vector(m, "output_norm.weight", d, 1, &m->output_norm)) ||
        (st = load_weight(m, "output.weight", d, m->n_vocab, 0, &m->output)))
        return st;
    if (!m->output.data) m->output = m->tok_embd; /* tied embeddings */
    const rk_gguf_tensor *rf;
    if ((st = find_tensor(m->gguf, "rope_freqs.weight", m->n_rot / 2, 0, 0, &rf))) return st;
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
#undef W
#undef V
    }
    return RK_OK;
}

/* wo_gram: G_h[a][b] = sum over the n_embd rows r of W_o[r][h*d + a] * W_o[r][h*d + b], accumulated in
 * double (upper triangle, then mirrored). Cost n_layers * n_embd * n_heads * d^2 / 2 multiply-adds:
 * about 0.3 G for SmolLM2-135M, 4.4 MB of result. */
static rk_status compute_wo_gram(rk_model *m) {
    const size_t d = (size_t)m->head_dim, H = (size_t)m->n_heads, dd = d * d;
    m->wo_gram = malloc((size_t)m->n_layers * H * dd * sizeof(float));
    double *acc = malloc((H * dd + RK_GRAM_ROWS * d) * sizeof(double)); /* + rk_gram_accumulate's scratch */
    float *row = malloc(RK_GRAM_ROWS * H * d * sizeof(float)); /* a block of dequantised rows */
    if (!m->wo_gram || !acc || !row) {
        free(acc);
        free(row);
        return rk_fail(RK_ERR_OOM, "cannot allocate the W_o Gram matrices");
    }
    for (int il = 0; il < m->n_layers; il++) {
        const rk_weight *w = &m->layers[il].wo;
        const rk_type_traits *tr = rk_get_type_traits(w->type);
        if (!tr || !tr->to_float) {
            free(acc);
            free(row);
            return rk_fail(RK_ERR_UNSUPPORTED, "%s: cannot dequantise '%s' for the W_o Gram matrices", m->gguf->path,
                           w->name);
        }
        memset(acc, 0, H * dd * sizeof(double));
        for (int64_t r0 = 0; r0 < w->n_out; r0 += RK_GRAM_ROWS) { /* src/model/gram.c: register tiles, same bits */
            const int64_t nr = w->n_out - r0 < RK_GRAM_ROWS ? w->n_out - r0 : RK_GRAM_ROWS;
            for (int64_t r = 0; r < nr; r++)
                tr->to_float((const uint8_t *)w->data + (size_t)(r0 + r) * w->row_bytes, row + (size_t)r * H * d,
                             w->n_in);
            rk_gram_accumulate(acc, row, nr, H, d, acc + H * dd);
        }
        float *out = m->wo_gram + (size_t)il * H * dd;
        for (size_t h = 0; h < H; h++)
            for (size_t a = 0; a < d; a++)
                for (size_t b = a; b < d; b++)
                    out[h * dd + a * d + b] = out[h * dd + b * d + a] = (float)acc[h * dd + a * d + b];
    }
    free(acc);
    free(row);
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
    rk_status st0 = rk_device_check(p.device);
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
    if (!st) st = compute_wo_gram(m);
    if (!st) st = rk_model_repack(m); /* after the Gram matrices: they read the rows as stored */
    if (st) {
        rk_model_free(m);
        return st;
    }
    m->n_threads = p.n_threads > 0 ? p.n_threads : default_threads();
    m->device = p.device;
    snprintf(m->desc, sizeof m->desc, "llama, %d layers, n_embd %d, heads %d/%d (kv), ff %d, vocab %d, %s weights",
             m->n_layers, m->n_embd, m->n_heads, m->n_kv_heads, m->n_ff, m->n_vocab,
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
    free(m->packed);
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
const char *rk_model_desc(const rk_model *m) { return m ? m->desc : ""; }
