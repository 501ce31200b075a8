/* types_api.c: the public tensor-type utilities of restkv.h over quant.h. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "quant.h"
#include "restkv.h"

const char *rk_type_name(int32_t type) {
    const rk_type_traits *t = rk_get_type_traits(type);
    return t ? t->name : NULL;
}

int32_t rk_type_block_size(int32_t type) {
    const rk_type_traits *t = rk_get_type_traits(type);
    return t ? t->blck : 0;
}

int32_t rk_type_block_bytes(int32_t type) {
    const rk_type_traits *t = rk_get_type_traits(type);
    return t ? t->type_size : 0;
}

const char *rk_cpu_features(void) { return rk_quant_features(); }

/* Checks n against the type and the buffer holding n elements of it. */
static rk_status check_row(const char *fn, const rk_type_traits *t, int64_t n, size_t bytes, const char *what) {
    if (n < 0) return rk_fail(RK_ERR_ARG, "%s: n must be >= 0, got %lld", fn, (long long)n);
    if (n % t->blck)
        return rk_fail(RK_ERR_ARG, "%s: n = %lld is not a multiple of the %s block size %d",
                       fn, (long long)n, t->name, t->blck);
    const uint64_t blocks = (uint64_t)(n / t->blck);
    if (blocks > SIZE_MAX / (uint64_t)t->type_size)
        return rk_fail(RK_ERR_ARG, "%s: n = %lld is too large", fn, (long long)n);
    const size_t need = (size_t)blocks * (size_t)t->type_size;
    if (bytes < need)
        return rk_fail(RK_ERR_ARG, "%s: %s is %zu bytes, but %lld %s elements need %zu",
                       fn, what, bytes, (long long)n, t->name, need);
    return RK_OK;
}

/* The kernels read scales as u16/f32 in place: copy a block array that sits at
 * an odd address (possible with caller buffers) to an aligned one. */
static const void *aligned_blocks(const void *p, size_t bytes, void **copy) {
    *copy = NULL;
    if ((uintptr_t)p % 4 == 0) return p;
    if (!(*copy = malloc(bytes ? bytes : 1))) return NULL;
    return memcpy(*copy, p, bytes);
}

rk_status rk_dequantize(int32_t type, const void *src, size_t src_bytes, float *dst, int64_t n) {
    static const char fn[] = "rk_dequantize";
    const rk_type_traits *t = rk_get_type_traits(type);
    if (!t) return rk_fail(RK_ERR_ARG, "%s: unknown tensor type %d", fn, (int)type);
    if (!src) return rk_fail(RK_ERR_ARG, "%s: src is NULL", fn);
    if (!dst) return rk_fail(RK_ERR_ARG, "%s: dst is NULL", fn);
    rk_status st = check_row(fn, t, n, src_bytes, "src_bytes");
    if (st != RK_OK) return st;
    if (n == 0) return RK_OK;

    const size_t bytes = rk_row_bytes(type, n);
    void *copy;
    const void *blocks = aligned_blocks(src, bytes, &copy);
    if (!blocks) return rk_fail(RK_ERR_OOM, "%s: out of memory copying %zu bytes", fn, bytes);
    t->to_float(blocks, dst, n);
    free(copy);
    return RK_OK;
}

rk_status rk_vec_dot(int32_t type, const void *row, size_t row_bytes, const float *x, int64_t n, float *out) {
    static const char fn[] = "rk_vec_dot";
    const rk_type_traits *t = rk_get_type_traits(type);
    if (!t) return rk_fail(RK_ERR_ARG, "%s: unknown tensor type %d", fn, (int)type);
    if (!t->vec_dot)
        return rk_fail(RK_ERR_ARG, "%s: %s is an activation format, not a weight type", fn, t->name);
    if (!row) return rk_fail(RK_ERR_ARG, "%s: row is NULL", fn);
    if (!x) return rk_fail(RK_ERR_ARG, "%s: x is NULL", fn);
    if (!out) return rk_fail(RK_ERR_ARG, "%s: out is NULL", fn);
    rk_status st = check_row(fn, t, n, row_bytes, "row_bytes");
    if (st != RK_OK) return st;
    if (n == 0) { *out = 0; return RK_OK; }

    /* as the matmul: x in the weight type's activation format, then vec_dot */
    const rk_type_traits *at = rk_get_type_traits(t->vec_dot_type);
    void *qx = NULL, *copy = NULL;
    const void *a = x;
    if (t->vec_dot_type != RK_TYPE_F32) {
        if (!(qx = malloc(rk_row_bytes(t->vec_dot_type, n))))
            return rk_fail(RK_ERR_OOM, "%s: out of memory quantising x", fn);
        at->from_float(x, qx, n);
        a = qx;
    }
    const size_t bytes = rk_row_bytes(type, n);
    const void *w = aligned_blocks(row, bytes, &copy);
    if (!w) {
        free(qx);
        return rk_fail(RK_ERR_OOM, "%s: out of memory copying %zu bytes", fn, bytes);
    }
    t->vec_dot(n, out, w, a);
    free(copy);
    free(qx);
    return RK_OK;
}
