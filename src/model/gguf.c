/*
 * gguf.c: GGUF v2/v3 parser. Every read goes through a cursor that checks the
 * remaining length first; counts are checked against what the file could hold
 * before anything is allocated, so absurd counts fail fast instead of
 * allocating terabytes.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "gguf.h"

#define GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */
#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32

/* ---- GGML type facts ---- */

static const struct { uint32_t id; const char *name; int64_t blck, bytes; } ggml_types[] = {
    {0, "F32", 1, 4},        {1, "F16", 1, 2},         {2, "Q4_0", 32, 18},     {3, "Q4_1", 32, 20},
    {6, "Q5_0", 32, 22},     {7, "Q5_1", 32, 24},      {8, "Q8_0", 32, 34},     {9, "Q8_1", 32, 36},
    {10, "Q2_K", 256, 84},   {11, "Q3_K", 256, 110},   {12, "Q4_K", 256, 144},  {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210},  {15, "Q8_K", 256, 292},   {16, "IQ2_XXS", 256, 66}, {17, "IQ2_XS", 256, 74},
    {18, "IQ3_XXS", 256, 98}, {19, "IQ1_S", 256, 50},  {20, "IQ4_NL", 32, 18},  {21, "IQ3_S", 256, 110},
    {22, "IQ2_S", 256, 82},  {23, "IQ4_XS", 256, 136}, {24, "I8", 1, 1},        {25, "I16", 1, 2},
    {26, "I32", 1, 4},       {27, "I64", 1, 8},        {28, "F64", 1, 8},       {29, "IQ1_M", 256, 56},
    {30, "BF16", 1, 2},      {34, "TQ1_0", 256, 54},   {35, "TQ2_0", 256, 66},  {39, "MXFP4", 32, 17},
};

const char *rk_ggml_type_name(uint32_t type) {
    for (size_t i = 0; i < sizeof ggml_types / sizeof ggml_types[0]; i++)
        if (ggml_types[i].id == type) return ggml_types[i].name;
    return NULL;
}

int rk_ggml_type_size(uint32_t type, int64_t *blck, int64_t *bytes) {
    for (size_t i = 0; i < sizeof ggml_types / sizeof ggml_types[0]; i++)
        if (ggml_types[i].id == type) {
            *blck = ggml_types[i].blck;
            *bytes = ggml_types[i].bytes;
            return 1;
        }
    return 0;
}

/* ---- bounds-checked cursor ---- */

typedef struct {
    const uint8_t *p, *end;
    const char *name; /* file name for messages */
} cursor;

static size_t remaining(const cursor *c) { return (size_t)(c->end - c->p); }

static rk_status truncated(const cursor *c, const char *what) {
    return rk_fail(RK_ERR_FORMAT, "%s: file truncated while reading %s", c->name, what);
}

static rk_status rd(cursor *c, void *dst, size_t n, const char *what) {
    if (remaining(c) < n) return truncated(c, what);
    memcpy(dst, c->p, n);
    c->p += n;
    return RK_OK;
}

static rk_status rd_str(cursor *c, const uint8_t **s, uint64_t *len, const char *what) {
    rk_status st = rd(c, len, 8, what);
    if (st) return st;
    if (*len > remaining(c))
        return rk_fail(RK_ERR_FORMAT, "%s: %s: string length %llu runs past the end of the file",
                       c->name, what, (unsigned long long)*len);
    *s = c->p;
    c->p += *len;
    return RK_OK;
}

static size_t vtype_size(uint32_t t) {
    static const size_t sz[RK_GGUF_NTYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return t < RK_GGUF_NTYPES ? sz[t] : 0;
}

static const char *vtype_name(uint32_t t) {
    static const char *n[RK_GGUF_NTYPES] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32",
                                            "bool", "string", "array", "u64", "i64", "f64"};
    return t < RK_GGUF_NTYPES ? n[t] : "unknown";
}

/* Skips one value of type t (arrays of arrays are allowed by the format). */
static rk_status skip_value(cursor *c, uint32_t t, const char *key, int depth) {
    if (t == RK_GGUF_STRING) {
        const uint8_t *s = NULL;
        uint64_t len = 0;
        return rd_str(c, &s, &len, key);
    }
    if (t == RK_GGUF_ARRAY) {
        uint32_t et = 0;
        uint64_t n = 0;
        rk_status st;
        if (depth > 2) return rk_fail(RK_ERR_FORMAT, "%s: key '%s': arrays nested too deeply", c->name, key);
        if ((st = rd(c, &et, 4, key)) || (st = rd(c, &n, 8, key))) return st;
        if (et >= RK_GGUF_NTYPES)
            return rk_fail(RK_ERR_FORMAT, "%s: key '%s': unknown array element type %u", c->name, key, et);
        size_t es = vtype_size(et);
        if (es) {
            if (n > remaining(c) / es)
                return rk_fail(RK_ERR_FORMAT, "%s: key '%s': array of %llu elements runs past the end of the file",
                               c->name, key, (unsigned long long)n);
            c->p += n * es;
            return RK_OK;
        }
        /* strings and arrays take at least 8 bytes each */
        if (n > remaining(c) / 8)
            return rk_fail(RK_ERR_FORMAT, "%s: key '%s': array of %llu elements runs past the end of the file",
                           c->name, key, (unsigned long long)n);
        for (uint64_t i = 0; i < n; i++)
            if ((st = skip_value(c, et, key, depth + 1))) return st;
        return RK_OK;
    }
    size_t sz = vtype_size(t);
    if (!sz) return rk_fail(RK_ERR_FORMAT, "%s: key '%s': unknown value type %u", c->name, key, t);
    if (remaining(c) < sz) return truncated(c, key);
    c->p += sz;
    return RK_OK;
}

static char *dup_str(const uint8_t *s, uint64_t len) {
    char *d = malloc(len + 1);
    if (!d) return NULL;
    memcpy(d, s, len);
    d[len] = '\0';
    return d;
}

static int has_nul(const uint8_t *s, uint64_t len) { return memchr(s, 0, len) != NULL; }

/* ---- parsing ---- */

static rk_status parse_kv(rk_gguf *g, cursor *c) {
    rk_status st;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        rk_gguf_kv *kv = &g->kv[i];
        const uint8_t *ks = NULL;
        uint64_t klen = 0;
        if ((st = rd_str(c, &ks, &klen, "a metadata key"))) return st;
        if (klen == 0 || klen > 65535 || has_nul(ks, klen))
            return rk_fail(RK_ERR_FORMAT, "%s: metadata key #%llu is empty, too long or contains NUL",
                           g->path, (unsigned long long)i);
        if (!(kv->key = dup_str(ks, klen))) return rk_fail(RK_ERR_OOM, "out of memory");
        for (uint64_t j = 0; j < i; j++)
            if (!strcmp(g->kv[j].key, kv->key))
                return rk_fail(RK_ERR_FORMAT, "%s: duplicate metadata key '%s'", g->path, kv->key);
        if ((st = rd(c, &kv->type, 4, kv->key))) return st;
        if (kv->type >= RK_GGUF_NTYPES)
            return rk_fail(RK_ERR_FORMAT, "%s: key '%s' has unknown value type %u", g->path, kv->key, kv->type);
        if (kv->type == RK_GGUF_ARRAY) {
            if (remaining(c) < 12) return truncated(c, kv->key);
            memcpy(&kv->arr_type, c->p, 4);
            memcpy(&kv->arr_n, c->p + 4, 8);
            kv->data = c->p + 12;
        } else {
            kv->data = c->p;
        }
        if ((st = skip_value(c, kv->type, kv->key, 0))) return st;
    }
    return RK_OK;
}

static rk_status parse_tensor_infos(rk_gguf *g, cursor *c) {
    rk_status st;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        rk_gguf_tensor *t = &g->tensors[i];
        const uint8_t *ns = NULL;
        uint64_t nlen = 0;
        if ((st = rd_str(c, &ns, &nlen, "a tensor name"))) return st;
        if (nlen == 0 || nlen > 1024 || has_nul(ns, nlen))
            return rk_fail(RK_ERR_FORMAT, "%s: tensor #%llu has an empty, too long or NUL-containing name",
                           g->path, (unsigned long long)i);
        if (!(t->name = dup_str(ns, nlen))) return rk_fail(RK_ERR_OOM, "out of memory");
        if ((st = rd(c, &t->n_dims, 4, t->name))) return st;
        if (t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS)
            return rk_fail(RK_ERR_FORMAT, "%s: tensor '%s' has %u dimensions (expected 1 to 4)",
                           g->path, t->name, t->n_dims);
        int64_t nelem = 1;
        for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            uint64_t ne = 0;
            if ((st = rd(c, &ne, 8, t->name))) return st;
            if (ne == 0 || ne > (uint64_t)INT64_MAX / (uint64_t)nelem)
                return rk_fail(RK_ERR_FORMAT, "%s: tensor '%s' has an invalid size %llu in dimension %u",
                               g->path, t->name, (unsigned long long)ne, d);
            t->ne[d] = (int64_t)ne;
            nelem *= (int64_t)ne;
        }
        if ((st = rd(c, &t->type, 4, t->name)) || (st = rd(c, &t->offset, 8, t->name))) return st;
        int64_t blck, bytes;
        if (!rk_ggml_type_size(t->type, &blck, &bytes))
            return rk_fail(RK_ERR_FORMAT, "%s: tensor '%s' has unknown tensor type id %u", g->path, t->name, t->type);
        if (t->ne[0] % blck)
            return rk_fail(RK_ERR_FORMAT, "%s: tensor '%s': row length %lld is not a multiple of the %s block size %lld",
                           g->path, t->name, (long long)t->ne[0], rk_ggml_type_name(t->type), (long long)blck);
        if ((uint64_t)(nelem / blck) > (uint64_t)SIZE_MAX / (uint64_t)bytes)
            return rk_fail(RK_ERR_FORMAT, "%s: tensor '%s' is too large", g->path, t->name);
        t->nbytes = (size_t)(nelem / blck) * (size_t)bytes;
        for (uint64_t j = 0; j < i; j++)
            if (!strcmp(g->tensors[j].name, t->name))
                return rk_fail(RK_ERR_FORMAT, "%s: duplicate tensor name '%s'", g->path, t->name);
    }
    return RK_OK;
}

static int cmp_offset(const void *a, const void *b) {
    const rk_gguf_tensor *x = *(rk_gguf_tensor *const *)a, *y = *(rk_gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static rk_status place_tensors(rk_gguf *g) {
    size_t data_size = g->size - g->data_offset;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        rk_gguf_tensor *t = &g->tensors[i];
        if (t->offset % g->alignment)
            return rk_fail(RK_ERR_FORMAT, "%s: tensor '%s' data offset %llu is not aligned to %llu bytes",
                           g->path, t->name, (unsigned long long)t->offset, (unsigned long long)g->alignment);
        if (t->offset > data_size || t->nbytes > data_size - t->offset)
            return rk_fail(RK_ERR_FORMAT,
                           "%s: tensor '%s' data (%zu bytes at offset %llu) runs past the end of the file "
                           "(data section is %zu bytes; file truncated?)",
                           g->path, t->name, t->nbytes, (unsigned long long)t->offset, data_size);
        t->data = g->base + g->data_offset + t->offset;
    }
    /* overlapping tensors would alias weights: reject */
    if (g->n_tensors > 1) {
        rk_gguf_tensor **order = malloc(g->n_tensors * sizeof *order);
        if (!order) return rk_fail(RK_ERR_OOM, "out of memory");
        for (uint64_t i = 0; i < g->n_tensors; i++) order[i] = &g->tensors[i];
        qsort(order, g->n_tensors, sizeof *order, cmp_offset);
        for (uint64_t i = 1; i < g->n_tensors; i++)
            if (order[i - 1]->offset + order[i - 1]->nbytes > order[i]->offset) {
                rk_status st = rk_fail(RK_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap", g->path,
                                       order[i - 1]->name, order[i]->name);
                free(order);
                return st;
            }
        free(order);
    }
    return RK_OK;
}

static rk_status parse(rk_gguf *g) {
    cursor c = {g->base, g->base + g->size, g->path};
    uint32_t magic;
    rk_status st;
    if (g->size < 4 || (memcpy(&magic, g->base, 4), magic != GGUF_MAGIC))
        return rk_fail(RK_ERR_FORMAT, "%s: not a GGUF file (bad magic)", g->path);
    c.p += 4;
    if ((st = rd(&c, &g->version, 4, "the header"))) return st;
    if (g->version != 2 && g->version != 3)
        return rk_fail(RK_ERR_UNSUPPORTED, "%s: GGUF version %u is not supported (expected 2 or 3)", g->path,
                       g->version);
    if ((st = rd(&c, &g->n_tensors, 8, "the header")) || (st = rd(&c, &g->n_kv, 8, "the header"))) return st;
    /* each key-value pair takes >= 13 bytes and each tensor info >= 29: a larger count cannot be real */
    if (g->n_kv > remaining(&c) / 13)
        return rk_fail(RK_ERR_FORMAT, "%s: header claims %llu metadata entries, more than the file can hold",
                       g->path, (unsigned long long)g->n_kv);
    if (g->n_tensors > remaining(&c) / 29)
        return rk_fail(RK_ERR_FORMAT, "%s: header claims %llu tensors, more than the file can hold", g->path,
                       (unsigned long long)g->n_tensors);
    g->kv = calloc(g->n_kv ? g->n_kv : 1, sizeof *g->kv);
    g->tensors = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) return rk_fail(RK_ERR_OOM, "out of memory");
    if ((st = parse_kv(g, &c))) return st;

    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const rk_gguf_kv *al = rk_gguf_find_kv(g, "general.alignment");
    if (al) {
        uint32_t a;
        if (al->type != RK_GGUF_U32)
            return rk_fail(RK_ERR_FORMAT, "%s: general.alignment has type %s (expected u32)", g->path,
                           vtype_name(al->type));
        memcpy(&a, al->data, 4);
        if (a == 0 || (a & (a - 1)) || a > (1u << 20))
            return rk_fail(RK_ERR_FORMAT, "%s: general.alignment %u is not a power of two", g->path, a);
        g->alignment = a;
    }
    if ((st = parse_tensor_infos(g, &c))) return st;
    size_t pos = (size_t)(c.p - g->base);
    size_t data_offset = (pos + g->alignment - 1) / g->alignment * g->alignment;
    if (g->n_tensors && data_offset > g->size)
        return rk_fail(RK_ERR_FORMAT, "%s: file truncated before the tensor data section", g->path);
    g->data_offset = data_offset < g->size ? data_offset : g->size;
    return place_tensors(g);
}

rk_status rk_gguf_parse(rk_gguf **out, const void *buf, size_t size, const char *name) {
    if (!out || (!buf && size)) return rk_fail(RK_ERR_ARG, "rk_gguf_parse: NULL argument");
    *out = NULL;
    rk_gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(name ? name : "<buffer>"))) {
        free(g);
        return rk_fail(RK_ERR_OOM, "out of memory");
    }
    g->base = buf;
    g->size = size;
    rk_status st = parse(g);
    if (st) {
        rk_gguf_close(g);
        return st;
    }
    *out = g;
    return RK_OK;
}

rk_status rk_gguf_open(rk_gguf **out, const char *path) {
    if (!out || !path) return rk_fail(RK_ERR_ARG, "rk_gguf_open: NULL argument");
    *out = NULL;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return rk_fail(RK_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return rk_fail(RK_ERR_IO, "%s: not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    if (size == 0) {
        close(fd);
        return rk_fail(RK_ERR_FORMAT, "%s: file is empty", path);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return rk_fail(RK_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
    rk_gguf *g = NULL;
    rk_status st = rk_gguf_parse(&g, map, size, path);
    if (st) {
        munmap(map, size);
        return st;
    }
    g->mapped = 1;
    *out = g;
    return RK_OK;
}

void rk_gguf_close(rk_gguf *g) {
    if (!g) return;
    if (g->kv)
        for (uint64_t i = 0; i < g->n_kv; i++) free(g->kv[i].key);
    if (g->tensors)
        for (uint64_t i = 0; i < g->n_tensors; i++) free(g->tensors[i].name);
    free(g->kv);
    free(g->tensors);
    if (g->mapped) munmap((void *)g->base, g->size);
    free(g->path);
    free(g);
}

/* ---- lookups and typed getters ---- */

const rk_gguf_kv *rk_gguf_find_kv(const rk_gguf *g, const char *key) {
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key && !strcmp(g->kv[i].key, key)) return &g->kv[i];
    return NULL;
}

const rk_gguf_tensor *rk_gguf_find_tensor(const rk_gguf *g, const char *name) {
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (!strcmp(g->tensors[i].name, name)) return &g->tensors[i];
    return NULL;
}

static rk_status missing(const rk_gguf *g, const char *key, int required) {
    return required ? rk_fail(RK_ERR_FORMAT, "%s: required metadata key '%s' is missing", g->path, key) : RK_OK;
}

static rk_status wrong_type(const rk_gguf *g, const rk_gguf_kv *kv, const char *expected) {
    return rk_fail(RK_ERR_FORMAT, "%s: metadata key '%s' has type %s (expected %s)", g->path, kv->key,
                   vtype_name(kv->type), expected);
}

rk_status rk_gguf_get_i64(const rk_gguf *g, const char *key, int64_t *out, int required) {
    const rk_gguf_kv *kv = rk_gguf_find_kv(g, key);
    if (!kv) return missing(g, key, required);
    const uint8_t *p = kv->data;
    switch (kv->type) {
    case RK_GGUF_U8:  *out = *(const uint8_t *)p; return RK_OK;
    case RK_GGUF_I8:  *out = *(const int8_t *)p; return RK_OK;
    case RK_GGUF_U16: { uint16_t v; memcpy(&v, p, 2); *out = v; return RK_OK; }
    case RK_GGUF_I16: { int16_t v; memcpy(&v, p, 2); *out = v; return RK_OK; }
    case RK_GGUF_U32: { uint32_t v; memcpy(&v, p, 4); *out = v; return RK_OK; }
    case RK_GGUF_I32: { int32_t v; memcpy(&v, p, 4); *out = v; return RK_OK; }
    case RK_GGUF_I64: { int64_t v; memcpy(&v, p, 8); *out = v; return RK_OK; }
    case RK_GGUF_U64: {
        uint64_t v;
        memcpy(&v, p, 8);
        if (v > INT64_MAX) return rk_fail(RK_ERR_FORMAT, "%s: metadata key '%s' is out of range", g->path, key);
        *out = (int64_t)v;
        return RK_OK;
    }
    default: return wrong_type(g, kv, "an integer");
    }
}

rk_status rk_gguf_get_f64(const rk_gguf *g, const char *key, double *out, int required) {
    const rk_gguf_kv *kv = rk_gguf_find_kv(g, key);
    if (!kv) return missing(g, key, required);
    if (kv->type == RK_GGUF_F32) { float v; memcpy(&v, kv->data, 4); *out = v; return RK_OK; }
    if (kv->type == RK_GGUF_F64) { double v; memcpy(&v, kv->data, 8); *out = v; return RK_OK; }
    int64_t i;
    if (rk_gguf_get_i64(g, key, &i, 1) == RK_OK) { *out = (double)i; return RK_OK; }
    return wrong_type(g, kv, "a number");
}

rk_status rk_gguf_get_bool(const rk_gguf *g, const char *key, int *out, int required) {
    const rk_gguf_kv *kv = rk_gguf_find_kv(g, key);
    if (!kv) return missing(g, key, required);
    if (kv->type != RK_GGUF_BOOL) return wrong_type(g, kv, "bool");
    *out = kv->data[0] != 0;
    return RK_OK;
}

rk_status rk_gguf_get_str(const rk_gguf *g, const char *key, const char **s, uint64_t *len, int required) {
    const rk_gguf_kv *kv = rk_gguf_find_kv(g, key);
    if (!kv) return missing(g, key, required);
    if (kv->type != RK_GGUF_STRING) return wrong_type(g, kv, "string");
    memcpy(len, kv->data, 8);
    *s = (const char *)kv->data + 8;
    return RK_OK;
}

rk_status rk_gguf_arr_str(const rk_gguf *g, const rk_gguf_kv *kv, uint64_t i, const char **s, uint64_t *len) {
    if (kv->type != RK_GGUF_ARRAY || kv->arr_type != RK_GGUF_STRING)
        return rk_fail(RK_ERR_FORMAT, "%s: metadata key '%s' is not a string array", g->path, kv->key);
    if (i >= kv->arr_n) return rk_fail(RK_ERR_ARG, "%s: index %llu out of range", kv->key, (unsigned long long)i);
    /* validated at parse time: every element lies inside the mapping */
    const uint8_t *p = kv->data;
    uint64_t l;
    for (uint64_t k = 0; k < i; k++) {
        memcpy(&l, p, 8);
        p += 8 + l;
    }
    memcpy(len, p, 8);
    *s = (const char *)p + 8;
    return RK_OK;
}
