/*
 * gguf.h: a bounds-checked GGUF v2/v3 reader over a memory-mapped file.
 *
 * The whole file is validated at open: every length, count and offset is
 * checked against the file size before it is used, tensor data must lie inside
 * the data section, aligned, without overlap. After a successful open, the
 * accessors below cannot read outside the mapping.
 */
#ifndef RK_GGUF_H
#define RK_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "restkv.h"

enum rk_gguf_vtype {
    RK_GGUF_U8 = 0, RK_GGUF_I8 = 1, RK_GGUF_U16 = 2, RK_GGUF_I16 = 3,
    RK_GGUF_U32 = 4, RK_GGUF_I32 = 5, RK_GGUF_F32 = 6, RK_GGUF_BOOL = 7,
    RK_GGUF_STRING = 8, RK_GGUF_ARRAY = 9, RK_GGUF_U64 = 10, RK_GGUF_I64 = 11,
    RK_GGUF_F64 = 12, RK_GGUF_NTYPES = 13
};

typedef struct {
    char          *key;      /* NUL-terminated copy */
    uint32_t       type;     /* rk_gguf_vtype */
    const uint8_t *data;     /* value bytes in the mapping (for arrays: first element) */
    uint32_t       arr_type; /* element type when type == ARRAY */
    uint64_t       arr_n;    /* element count when type == ARRAY */
} rk_gguf_kv;

typedef struct {
    char       *name;        /* NUL-terminated copy */
    uint32_t    n_dims;
    int64_t     ne[4];       /* ne[0] is the contiguous (row) dimension; unused dims are 1 */
    uint32_t    type;        /* GGML type id */
    uint64_t    offset;      /* relative to the data section */
    size_t      nbytes;
    const void *data;        /* inside the mapping */
} rk_gguf_tensor;

typedef struct rk_gguf {
    char           *path;
    const uint8_t  *base;     /* mapping (or caller's buffer) */
    size_t          size;
    int             mapped;   /* 1 if base must be munmap'ed */
    uint32_t        version;
    uint64_t        n_kv;
    rk_gguf_kv     *kv;
    uint64_t        n_tensors;
    rk_gguf_tensor *tensors;
    uint64_t        alignment;
    size_t          data_offset;
} rk_gguf;

rk_status rk_gguf_open(rk_gguf **out, const char *path);
/* Parses a caller-owned buffer (kept, not copied): used by the fuzzer and tests. */
rk_status rk_gguf_parse(rk_gguf **out, const void *buf, size_t size, const char *name);
void      rk_gguf_close(rk_gguf *g);

const rk_gguf_kv     *rk_gguf_find_kv(const rk_gguf *g, const char *key);
const rk_gguf_tensor *rk_gguf_find_tensor(const rk_gguf *g, const char *name);

/* Typed getters: return RK_OK and write *out, or fail with a message naming the
 * file and key. `required` = 0 turns a missing key into RK_OK with *out unchanged. */
rk_status rk_gguf_get_i64(const rk_gguf *g, const char *key, int64_t *out, int required);
rk_status rk_gguf_get_f64(const rk_gguf *g, const char *key, double *out, int required);
rk_status rk_gguf_get_bool(const rk_gguf *g, const char *key, int *out, int required);
/* String value: pointer into the mapping (not NUL-terminated) and its length. */
rk_status rk_gguf_get_str(const rk_gguf *g, const char *key, const char **s, uint64_t *len, int required);
/* i-th string of a string array. */
rk_status rk_gguf_arr_str(const rk_gguf *g, const rk_gguf_kv *kv, uint64_t i, const char **s, uint64_t *len);

/* GGML type facts (all types GGUF files may contain, not just those we run). */
const char *rk_ggml_type_name(uint32_t type);   /* NULL if unknown */
int         rk_ggml_type_size(uint32_t type, int64_t *blck, int64_t *bytes);  /* 0 if unknown */

#endif
