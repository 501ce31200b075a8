/*
 * backend_cpu.c: the CPU backend's table (backend.h): its context (thread pool, scratch), its
 * weight layout (the 8-row repack of repack.c) and the forward ops of ops.c behind the interface.
 * "cpu-portable" is the same backend with the portable kernels and the weights as stored: the
 * reference the parity harness compares every backend with (tests/backend_ops/).
 */
#include <stdlib.h>
#include <string.h>

#include "backend_cpu.h"
#include "error.h"
#include "ops.h"
#include "quant.h"
#include "repack.h"

static rk_status cpu_upload_weights(rk_model *m) { return rk_model_repack(m); }

static void cpu_free_weights(rk_model *m) {
    free(m->packed);
    m->packed = NULL;
    m->packed_bytes = 0;
}

static void cpu_free(rk_backend_ctx *c) {
    if (!c) return;
    rk_pool_free(c->pool);
    free(c->act);
    free(c->att_ws);
    free(c->att_dec);
    free(c->cos_sin);
    free(c);
}

/* the largest quantised-activation scratch any matrix of a batch needs */
static size_t act_bytes(const rk_model *m, int n_batch) {
    size_t act = rk_matmul_scratch_bytes(&m->output, n_batch);
    for (int il = 0; il < m->n_layers; il++) {
        const rk_weight *ws[] = {&m->layers[il].wq, &m->layers[il].wo, &m->layers[il].w_down};
        for (int i = 0; i < 3; i++) {
            const size_t b = rk_matmul_scratch_bytes(ws[i], n_batch);
            if (b > act) act = b;
        }
    }
    return act;
}

static rk_status cpu_init(rk_backend_ctx **out, const rk_model *m, int n_threads, int n_batch, int n_ctx) {
    rk_backend_ctx *c = calloc(1, sizeof *c);
    if (!c) return rk_fail(RK_ERR_OOM, "out of memory");
    c->n_threads = n_threads;
    c->n_batch = n_batch;
    c->n_ctx = n_ctx;
    c->n_heads = m->n_heads;
    c->head_dim = m->head_dim;
    const size_t ab = act_bytes(m, n_batch);
    c->act = malloc(ab ? ab : 1);
    c->att_ws = malloc((size_t)n_threads * rk_attention_scratch_floats(n_ctx, m->head_dim) * sizeof(float));
    c->att_dec = malloc((size_t)m->n_heads * ((size_t)n_ctx + 1) * sizeof(float));
    c->cos_sin = malloc((size_t)n_batch * (size_t)m->head_dim * sizeof(float));
    if (!c->act || !c->att_ws || !c->att_dec || !c->cos_sin) {
        cpu_free(c);
        return rk_fail(RK_ERR_OOM, "cannot allocate session scratch buffers");
    }
    if (!(c->pool = rk_pool_create(n_threads))) {
        cpu_free(c);
        return rk_fail(RK_ERR_OOM, "cannot start %d threads", n_threads);
    }
    *out = c;
    return RK_OK;
}

static int cpu_n_threads(const rk_backend_ctx *c) { return c->n_threads; }
static void *cpu_alloc(rk_backend_ctx *c, size_t bytes) { return malloc(bytes ? bytes : 1); }
static void cpu_dealloc(rk_backend_ctx *c, void *p) { free(p); }
static void cpu_parallel(rk_backend_ctx *c, rk_task_fn fn, void *job) { rk_pool_run(c->pool, fn, job); }
static void cpu_to_host(rk_backend_ctx *c, float *dst, const float *src, size_t n) {
    memcpy(dst, src, n * sizeof(float));
}

static void cpu_embed(rk_backend_ctx *c, const rk_weight *e, const int32_t *tokens, int n, float scale, float *x) {
    const rk_type_traits *tr = rk_get_type_traits(e->type);
    for (int t = 0; t < n; t++) {
        float *xt = x + (size_t)t * e->n_in;
        if (e->packed) /* the file's rows were dropped from memory once repacked */
            rk_packed_row_to_float(e, tokens[t], xt);
        else
            tr->to_float((const uint8_t *)e->data + (size_t)tokens[t] * e->row_bytes, xt, e->n_in);
        if (scale != 1.0f)
            for (int64_t i = 0; i < e->n_in; i++) xt[i] *= scale;
    }
}

static void cpu_matmul(rk_backend_ctx *c, const float *x, int n, const rk_weight *const *w, float *const *y, int n_w) {
    rk_matmul(c->pool, x, n, w, y, n_w, c->act);
}

static void cpu_matmul_swiglu(rk_backend_ctx *c, const float *x, int n, const rk_weight *gate, const rk_weight *up,
                              float *y_gate, float *y_up) {
    rk_matmul_swiglu(c->pool, x, n, gate, up, y_gate, y_up, c->act);
}

static void cpu_rmsnorm(rk_backend_ctx *c, float *y, const float *x, const float *w, int n_rows, int width, float eps) {
    rk_rmsnorm(y, x, w, n_rows, width, eps);
}

static void cpu_add(rk_backend_ctx *c, float *x, const float *y, int n_rows, int n_y_rows, int width) {
    for (int r = 0; r < n_rows; r++) {
        float *xr = x + (size_t)r * width;
        const float *yr = y + (size_t)(r % n_y_rows) * width;
        for (int i = 0; i < width; i++) xr[i] += yr[i];
    }
}

static void cpu_swiglu(rk_backend_ctx *c, float *a, const float *b, size_t n) { rk_swiglu(a, b, n); }
static void cpu_geglu(rk_backend_ctx *c, float *a, const float *b, size_t n) { rk_geglu(a, b, n); }
static void cpu_softcap(rk_backend_ctx *c, float *x, size_t n, float cap) { rk_softcap(x, n, cap); }

static void cpu_rope(rk_backend_ctx *c, float *x, int n, int n_heads, int head_dim, int32_t pos0,
                     const rk_layer_hparams *hp, const float *freq) {
    const int n_rot = hp->n_rot;
    if (!(c->cs_valid && c->cs_pos0 == pos0 && c->cs_n >= n && c->cs_n_rot == n_rot && c->cs_base == hp->rope_base &&
          c->cs_scale == hp->rope_freq_scale && c->cs_freq == freq)) {
        for (int t = 0; t < n; t++)
            rk_rope_angles(c->cos_sin + (size_t)t * n_rot, pos0 + t, n_rot, hp->rope_base, hp->rope_freq_scale, freq);
        c->cs_valid = 1, c->cs_pos0 = pos0, c->cs_n = n, c->cs_n_rot = n_rot;
        c->cs_base = hp->rope_base, c->cs_scale = hp->rope_freq_scale, c->cs_freq = freq;
    }
    for (int t = 0; t < n; t++)
        rk_rope_apply_kind(hp->rope_neox, x + (size_t)t * n_heads * head_dim, n_heads, head_dim, n_rot,
                           c->cos_sin + (size_t)t * n_rot);
}

#define CPU_OPS                                                                                                    \
    .init = cpu_init, .free = cpu_free, .n_threads = cpu_n_threads, .alloc = cpu_alloc, .dealloc = cpu_dealloc,    \
    .parallel = cpu_parallel, .to_host = cpu_to_host, .embed = cpu_embed, .matmul = cpu_matmul,                    \
    .matmul_swiglu = cpu_matmul_swiglu, .rmsnorm = cpu_rmsnorm, .add = cpu_add, .swiglu = cpu_swiglu,    \
    .geglu = cpu_geglu, .softcap = cpu_softcap,              \
    .rope = cpu_rope, .kv_append = rk_cpu_kv_append, .kv_to_f32 = rk_cpu_kv_to_f32, .kv_gather = rk_cpu_kv_gather, \
    .kv_reposition = rk_cpu_kv_reposition, .kv_copy = rk_cpu_kv_copy, .attention = rk_cpu_attention,                                         \
    .window_attention = rk_cpu_window_attention

const rk_backend_i rk_backend_cpu = {
    .name = "cpu",
    .upload_weights = cpu_upload_weights,
    .free_weights = cpu_free_weights,
    CPU_OPS,
};

/* the reference: weights as stored, portable kernels (the parity harness switches the kernel
 * table around each call: not for sessions running in other threads at the same time) */
static rk_status keep_as_stored(rk_model *m) { return RK_OK; }

const rk_backend_i rk_backend_cpu_portable = {
    .name = "cpu-portable",
    .upload_weights = keep_as_stored,
    .free_weights = cpu_free_weights,
    CPU_OPS,
};
