/*
 * vocab.c: token id -> bytes, from the GGUF vocabulary, so C programs can print
 * what they generate. Byte-level BPE ("gpt2") tokens are stored with GPT-2's
 * byte-to-unicode mapping (printable bytes as themselves, the other 68 bytes
 * as U+0100 + n in byte order); SentencePiece ("llama") tokens use U+2581 for a
 * space and <0xXX> for raw bytes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "model.h"

static int printable(int b) { return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255); }

/* inverse of GPT-2's mapping: code point -> byte, or -1 */
static int gpt2_byte(uint32_t cp) {
    if (cp < 256) return printable((int)cp) ? (int)cp : -1;
    uint32_t n = cp - 256;
    for (int b = 0; b < 256; b++)
        if (!printable(b) && n-- == 0) return b;
    return -1;
}

/* decodes one UTF-8 code point; returns its length or 0 if malformed */
static int utf8_next(const unsigned char *s, uint32_t len, uint32_t *cp) {
    if (!len) return 0;
    if (s[0] < 0x80) { *cp = s[0]; return 1; }
    int n = (s[0] & 0xE0) == 0xC0 ? 2 : (s[0] & 0xF0) == 0xE0 ? 3 : (s[0] & 0xF8) == 0xF0 ? 4 : 0;
    if (!n || (uint32_t)n > len) return 0;
    uint32_t c = s[0] & (0x7F >> n);
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    *cp = c;
    return n;
}

rk_status rk_vocab_load(rk_model *m) {
    const rk_gguf *g = m->gguf;
    m->bos_id = m->eos_id = -1;
    const rk_gguf_kv *toks = rk_gguf_find_kv(g, "tokenizer.ggml.tokens");
    if (!toks) return RK_OK;
    if (toks->type != RK_GGUF_ARRAY || toks->arr_type != RK_GGUF_STRING)
        return rk_fail(RK_ERR_FORMAT, "%s: tokenizer.ggml.tokens is not a string array", g->path);
    if (toks->arr_n > (uint64_t)INT32_MAX) return rk_fail(RK_ERR_FORMAT, "%s: vocabulary too large", g->path);
    const char *model = NULL;
    uint64_t mlen = 0;
    rk_status st = rk_gguf_get_str(g, "tokenizer.ggml.model", &model, &mlen, 0);
    if (st) return st;
    m->vocab_spm = model && mlen == 5 && !memcmp(model, "llama", 5);
    m->n_tok = (int32_t)toks->arr_n;
    m->tok_text = malloc(sizeof *m->tok_text * (size_t)(m->n_tok ? m->n_tok : 1));
    m->tok_len = malloc(sizeof *m->tok_len * (size_t)(m->n_tok ? m->n_tok : 1));
    m->tok_type = malloc(sizeof *m->tok_type * (size_t)(m->n_tok ? m->n_tok : 1));
    if (!m->tok_text || !m->tok_len || !m->tok_type) return rk_fail(RK_ERR_OOM, "out of memory");
    const uint8_t *p = toks->data; /* the parser checked every element lies inside the file */
    for (int32_t i = 0; i < m->n_tok; i++) {
        uint64_t l;
        memcpy(&l, p, 8);
        m->tok_text[i] = (const char *)p + 8;
        m->tok_len[i] = l > UINT32_MAX ? UINT32_MAX : (uint32_t)l;
        m->tok_type[i] = 1;
        p += 8 + l;
    }
    const rk_gguf_kv *types = rk_gguf_find_kv(g, "tokenizer.ggml.token_type");
    if (types && types->type == RK_GGUF_ARRAY && types->arr_type == RK_GGUF_I32 && types->arr_n == toks->arr_n)
        for (int32_t i = 0; i < m->n_tok; i++) memcpy(&m->tok_type[i], types->data + 4 * (size_t)i, 4);
    int64_t id;
    id = -1;
    if (!rk_gguf_get_i64(g, "tokenizer.ggml.bos_token_id", &id, 0) && id >= 0 && id < m->n_tok) m->bos_id = (int32_t)id;
    id = -1;
    if (!rk_gguf_get_i64(g, "tokenizer.ggml.eos_token_id", &id, 0) && id >= 0 && id < m->n_tok) m->eos_id = (int32_t)id;
    rk_clear_error();
    return RK_OK;
}

static int32_t put(char *buf, int32_t size, int32_t n, unsigned char b) {
    if (n < size) buf[n] = (char)b;
    return n + 1;
}

int32_t rk_model_token_piece(const rk_model *m, int32_t id, char *buf, int32_t size, int32_t special) {
    if (!m || id < 0 || id >= m->n_tok || size < 0 || (!buf && size > 0)) return -1;
    const unsigned char *s = (const unsigned char *)m->tok_text[id];
    uint32_t len = m->tok_len[id], i = 0;
    int32_t type = m->tok_type[id], n = 0;
    if ((type == 3 || type == 5) && !special) return 0;
    if (m->vocab_spm) {
        unsigned b;
        if (type == 6 && len == 6 && sscanf((const char *)s, "<0x%02X>", &b) == 1) return put(buf, size, 0, (unsigned char)b);
        while (i < len) {
            if (i + 2 < len && s[i] == 0xE2 && s[i + 1] == 0x96 && s[i + 2] == 0x81) {
                n = put(buf, size, n, ' ');
                i += 3;
            } else {
                n = put(buf, size, n, s[i++]);
            }
        }
        return n;
    }
    if (type == 3 || type == 4) { /* special tokens are stored as plain text */
        for (; i < len; i++) n = put(buf, size, n, s[i]);
        return n;
    }
    while (i < len) {
        uint32_t cp;
        int k = utf8_next(s + i, len - i, &cp);
        int b = k ? gpt2_byte(cp) : -1;
        if (b < 0) { /* not byte-level text: pass the raw byte through */
            n = put(buf, size, n, s[i++]);
            continue;
        }
        n = put(buf, size, n, (unsigned char)b);
        i += (uint32_t)k;
    }
    return n;
}

int32_t rk_model_bos(const rk_model *m) { return m ? m->bos_id : -1; }
int32_t rk_model_eos(const rk_model *m) { return m ? m->eos_id : -1; }

/* ---- GGUF metadata for the tokenizer (restkv.h: "vocabulary / metadata") ----
 * Read-only views of the key/values the parser validated at load: every scalar, string and
 * array element lies inside the mapping, so these only check their own arguments. */

static size_t meta_elem_size(uint32_t t) {
    switch (t) {
    case RK_GGUF_U8: case RK_GGUF_I8: case RK_GGUF_BOOL: return 1;
    case RK_GGUF_U16: case RK_GGUF_I16: return 2;
    case RK_GGUF_U32: case RK_GGUF_I32: case RK_GGUF_F32: return 4;
    case RK_GGUF_U64: case RK_GGUF_I64: case RK_GGUF_F64: return 8;
    default: return 0;
    }
}

static rk_status meta_kv(const rk_model *m, int64_t i, const rk_gguf_kv **out) {
    if (!m || !m->gguf) return rk_fail(RK_ERR_ARG, "model is NULL");
    if (i < 0 || (uint64_t)i >= m->gguf->n_kv)
        return rk_fail(RK_ERR_ARG, "metadata index %lld out of range [0, %llu)", (long long)i,
                       (unsigned long long)m->gguf->n_kv);
    *out = &m->gguf->kv[i];
    return RK_OK;
}

int64_t rk_model_meta_count(const rk_model *m) {
    if (!m || !m->gguf) return -1;
    return m->gguf->n_kv > (uint64_t)INT64_MAX ? -1 : (int64_t)m->gguf->n_kv;
}

int64_t rk_model_meta_find(const rk_model *m, const char *key) {
    if (!m || !m->gguf || !key) return -1;
    const rk_gguf_kv *kv = rk_gguf_find_kv(m->gguf, key);
    return kv ? (int64_t)(kv - m->gguf->kv) : -1;
}

rk_status rk_model_meta_info(const rk_model *m, int64_t i, const char **key, int32_t *type, int32_t *arr_type,
                             int64_t *arr_n) {
    const rk_gguf_kv *kv = NULL;
    rk_status st = meta_kv(m, i, &kv);
    if (st) return st;
    if (key) *key = kv->key;
    if (type) *type = (int32_t)kv->type;
    if (arr_type) *arr_type = kv->type == RK_GGUF_ARRAY ? (int32_t)kv->arr_type : -1;
    if (arr_n) *arr_n = kv->type == RK_GGUF_ARRAY ? (int64_t)kv->arr_n : 0;
    return RK_OK;
}

rk_status rk_model_meta_data(const rk_model *m, int64_t i, void *out, size_t size) {
    const rk_gguf_kv *kv = NULL;
    rk_status st = meta_kv(m, i, &kv);
    if (st) return st;
    size_t es = meta_elem_size(kv->type == RK_GGUF_ARRAY ? kv->arr_type : kv->type);
    if (!es)
        return rk_fail(RK_ERR_ARG, "metadata key '%s' is not a number, a bool or an array of them", kv->key);
    uint64_t n = kv->type == RK_GGUF_ARRAY ? kv->arr_n : 1;
    if (n > SIZE_MAX / es) return rk_fail(RK_ERR_ARG, "metadata key '%s': array too large", kv->key);
    size_t bytes = (size_t)n * es;
    if (size < bytes)
        return rk_fail(RK_ERR_ARG, "metadata key '%s' needs %zu bytes, the buffer has %zu", kv->key, bytes, size);
    if (bytes && !out) return rk_fail(RK_ERR_ARG, "metadata key '%s': output buffer is NULL", kv->key);
    if (bytes) memcpy(out, kv->data, bytes);
    return RK_OK;
}

rk_status rk_model_meta_str(const rk_model *m, int64_t i, const char **s, uint64_t *len) {
    const rk_gguf_kv *kv = NULL;
    rk_status st = meta_kv(m, i, &kv);
    if (st) return st;
    if (kv->type != RK_GGUF_STRING) return rk_fail(RK_ERR_ARG, "metadata key '%s' is not a string", kv->key);
    if (!s || !len) return rk_fail(RK_ERR_ARG, "rk_model_meta_str: NULL output");
    memcpy(len, kv->data, 8);
    *s = (const char *)kv->data + 8;
    return RK_OK;
}

rk_status rk_model_meta_strs(const rk_model *m, int64_t i, char *buf, size_t size, int64_t *offsets,
                             int64_t n_offsets, uint64_t *total) {
    const rk_gguf_kv *kv = NULL;
    rk_status st = meta_kv(m, i, &kv);
    if (st) return st;
    if (kv->type != RK_GGUF_ARRAY || kv->arr_type != RK_GGUF_STRING)
        return rk_fail(RK_ERR_ARG, "metadata key '%s' is not a string array", kv->key);
    /* every element was checked to lie inside the mapping at parse time, so their lengths sum
     * to less than the file size: no overflow */
    const uint8_t *p = kv->data;
    uint64_t sum = 0, l;
    for (uint64_t k = 0; k < kv->arr_n; k++) {
        memcpy(&l, p, 8);
        sum += l;
        p += 8 + l;
    }
    if (total) *total = sum;
    if (!buf) return RK_OK;
    if (size < sum) return rk_fail(RK_ERR_ARG, "metadata key '%s' needs %llu bytes, the buffer has %zu", kv->key,
                                   (unsigned long long)sum, size);
    if (!offsets || n_offsets < 0 || (uint64_t)n_offsets != kv->arr_n + 1)
        return rk_fail(RK_ERR_ARG, "metadata key '%s' needs %llu offsets, got %lld", kv->key,
                       (unsigned long long)kv->arr_n + 1, (long long)n_offsets);
    p = kv->data;
    uint64_t at = 0;
    for (uint64_t k = 0; k < kv->arr_n; k++) {
        memcpy(&l, p, 8);
        offsets[k] = (int64_t)at;
        memcpy(buf + at, p + 8, (size_t)l);
        at += l;
        p += 8 + l;
    }
    offsets[kv->arr_n] = (int64_t)at;
    return RK_OK;
}
