/*
 * backend_ops.c: per-operation parity of a backend with the CPU reference (the shape of ggml's
 * test-backend-ops). Every operation of backend.h runs on the same seeded inputs on the backend
 * under test (-b, default "cpu": AVX2 kernels, repacked weights) and on the reference (-r, default
 * "cpu-portable": portable kernels, weights as stored); the outputs are compared by normalised
 * mean squared error, nmse = sum((out - ref)^2) / sum(ref^2), against a limit per operation
 * (ggml's: 1e-7, and 5e-4 for matrix products, whose activations are quantised).
 *
 *   restkv-backend-ops [-b BACKEND] [-r REFERENCE] [-o OP] [--perturb]
 * Exit status: 0 all passed, 1 a case failed, 77 the backend is not available here (the reason is
 * printed). --perturb adds 5% relative noise to the tested backend's outputs: the harness must
 * then fail (its own check).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "quant.h"

static const rk_backend_i *B, *R;
static const char *only_op;
static int perturb, n_pass, n_fail;
static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint32_t next_u32(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}
static float uniform(float lo, float hi) { return lo + (hi - lo) * (float)(next_u32() & 0xFFFFFF) / 16777216.0f; }
static void fill(float *x, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) x[i] = uniform(lo, hi);
}

/* the kernels of a backend: the reference runs the portable ones */
static void use(const rk_backend_i *be) { rk_quant_force_scalar(be == R && strcmp(R->name, "cpu-portable") == 0); }

static void maybe_perturb(float *x, size_t n) {
    if (perturb)
        for (size_t i = 0; i < n; i++) x[i] += 0.05f * fabsf(x[i]) + 1e-6f;
}

static double nmse(const float *out, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = (double)out[i] - ref[i];
        if (isnan(out[i]) != isnan(ref[i])) return INFINITY;
        if (!isnan(ref[i])) num += d * d, den += (double)ref[i] * ref[i];
    }
    return den > 0 ? num / den : num;
}

static void report(const char *op, const char *params, double err, double limit) {
    const int ok = err <= limit;
    printf("  %-16s %-56s %s (nmse %.3g, limit %.0e)\n", op, params, ok ? "OK  " : "FAIL", err, limit);
    ok ? n_pass++ : n_fail++;
}

static int selected(const char *op) { return !only_op || strcmp(only_op, op) == 0; }

/* ---- a one-matrix "model" a backend lays out as it would a real one's ---- */

typedef struct {
    rk_model m;
    rk_gguf g;
} one_matrix;

/* random weight bytes of a type, with sane scales in each block's f16 fields */
static void *random_weight(int32_t type, int64_t n_in, int64_t n_out, size_t *row_bytes) {
    const rk_type_traits *tr = rk_get_type_traits(type);
    *row_bytes = rk_row_bytes(type, n_in);
    uint8_t *w = malloc(*row_bytes * (size_t)n_out);
    if (type == RK_TYPE_F32) {
        fill((float *)w, (size_t)(n_in * n_out), -0.1f, 0.1f);
        return w;
    }
    if (type == RK_TYPE_F16) {
        for (int64_t i = 0; i < n_in * n_out; i++) ((uint16_t *)w)[i] = rk_fp32_to_fp16(uniform(-0.1f, 0.1f));
        return w;
    }
    for (size_t i = 0; i < *row_bytes * (size_t)n_out; i++) w[i] = (uint8_t)next_u32();
    /* offsets of the f16 scale fields in a block (ggml's block layouts) */
    int halves[2] = {-1, -1};
    switch (type) {
    case RK_TYPE_Q4_0: case RK_TYPE_Q5_0: case RK_TYPE_Q8_0: halves[0] = 0; break;
    case RK_TYPE_Q4_1: case RK_TYPE_Q5_1: case RK_TYPE_Q4_K: case RK_TYPE_Q5_K: halves[0] = 0, halves[1] = 2; break;
    case RK_TYPE_Q6_K: halves[0] = 208; break;
    }
    for (size_t b = 0; b < *row_bytes * (size_t)n_out / (size_t)tr->type_size; b++)
        for (int k = 0; k < 2; k++)
            if (halves[k] >= 0) {
                const uint16_t h = rk_fp32_to_fp16(uniform(0.001f, 0.01f) * (k ? -1.0f : 1.0f));
                memcpy(w + b * (size_t)tr->type_size + (size_t)halves[k], &h, 2);
            }
    return w;
}

static void one_matrix_init(one_matrix *o, const rk_backend_i *be, int32_t type, int64_t n_in, int64_t n_out,
                            const void *data, size_t row_bytes) {
    memset(o, 0, sizeof *o);
    o->m.gguf = &o->g;
    o->m.n_embd = (int32_t)n_in;
    o->m.output = (rk_weight){"output", type, n_in, n_out, row_bytes, data, NULL};
    o->m.tok_embd = o->m.output; /* tied: embed reads the output matrix's layout */
    use(be);
    if (be->upload_weights(&o->m)) fprintf(stderr, "upload_weights: %s\n", rk_last_error());
}

static rk_backend_ctx *ctx_of(const rk_backend_i *be, int n_heads, int head_dim, int n_ctx, const rk_model *m) {
    rk_model shape = *m;
    shape.n_heads = n_heads;
    shape.head_dim = head_dim;
    rk_backend_ctx *c = NULL;
    if (be->init(&c, &shape, 2, 64, n_ctx)) {
        fprintf(stderr, "%s init: %s\n", be->name, rk_last_error());
        exit(1);
    }
    return c;
}

/* ---- matrix products and the embedding lookup ---- */

static void test_matmul(int32_t type, int64_t n_in, int64_t n_out, int n) {
    char params[96];
    snprintf(params, sizeof params, "type=%s,n_in=%lld,n_out=%lld,n=%d", rk_get_type_traits(type)->name,
             (long long)n_in, (long long)n_out, n);
    size_t rb;
    void *w = random_weight(type, n_in, n_out, &rb);
    float *x = malloc((size_t)n * n_in * sizeof(float)), *y[2], *g[2];
    fill(x, (size_t)n * n_in, -1, 1);
    const rk_backend_i *bes[2] = {B, R};
    for (int k = 0; k < 2; k++) {
        one_matrix o;
        one_matrix_init(&o, bes[k], type, n_in, n_out, w, rb);
        rk_backend_ctx *c = ctx_of(bes[k], 1, 8, 8, &o.m);
        y[k] = malloc((size_t)n * n_out * sizeof(float));
        g[k] = malloc((size_t)n * n_out * sizeof(float));
        float *u = malloc((size_t)n * n_out * sizeof(float));
        const rk_weight *wp = &o.m.output;
        use(bes[k]);
        bes[k]->matmul(c, x, n, &wp, &y[k], 1);
        bes[k]->matmul_swiglu(c, x, n, wp, wp, g[k], u);
        free(u);
        if (k == 0) maybe_perturb(y[0], (size_t)n * n_out), maybe_perturb(g[0], (size_t)n * n_out);
        bes[k]->free(c);
        bes[k]->free_weights(&o.m);
    }
    if (selected("matmul")) report("matmul", params, nmse(y[0], y[1], (size_t)n * n_out), 5e-4);
    if (selected("matmul_swiglu")) report("matmul_swiglu", params, nmse(g[0], g[1], (size_t)n * n_out), 5e-4);
    free(w), free(x);
    for (int k = 0; k < 2; k++) free(y[k]), free(g[k]);
}

static void test_embed(int32_t type, int64_t n_embd, int64_t n_vocab) {
    if (!selected("embed")) return;
    char params[96];
    snprintf(params, sizeof params, "type=%s,n_embd=%lld,n_vocab=%lld", rk_get_type_traits(type)->name,
             (long long)n_embd, (long long)n_vocab);
    size_t rb;
    void *w = random_weight(type, n_embd, n_vocab, &rb);
    int32_t tok[5];
    for (int i = 0; i < 5; i++) tok[i] = (int32_t)(next_u32() % (uint32_t)n_vocab);
    float *x[2];
    const rk_backend_i *bes[2] = {B, R};
    for (int k = 0; k < 2; k++) {
        one_matrix o;
        one_matrix_init(&o, bes[k], type, n_embd, n_vocab, w, rb);
        rk_backend_ctx *c = ctx_of(bes[k], 1, 8, 8, &o.m);
        x[k] = malloc(5 * (size_t)n_embd * sizeof(float));
        use(bes[k]);
        bes[k]->embed(c, &o.m.tok_embd, tok, 5, 1.5f, x[k]);
        if (k == 0) maybe_perturb(x[0], 5 * (size_t)n_embd);
        bes[k]->free(c);
        bes[k]->free_weights(&o.m);
    }
    report("embed", params, nmse(x[0], x[1], 5 * (size_t)n_embd), 1e-7);
    free(w), free(x[0]), free(x[1]);
}

/* ---- element-wise operations ---- */

static void test_elementwise(void) {
    const int n = 5, width = 96, n_heads = 3, head_dim = 32;
    float *x = malloc(n * width * sizeof(float)), *y = malloc(n * width * sizeof(float)),
          *w = malloc(width * sizeof(float)), *out[2][7];
    fill(x, (size_t)n * width, -2, 2), fill(y, (size_t)n * width, -2, 2), fill(w, width, 0.5f, 1.5f);
    rk_model shape = {0};
    const rk_layer_hparams hp = {10000.0f, 0.5f, 24, 0, 0, head_dim, head_dim, 0};
    rk_layer_hparams neox = hp;
    neox.rope_neox = 1;
    float freq[12];
    fill(freq, 12, 1, 4);
    const rk_backend_i *bes[2] = {B, R};
    for (int k = 0; k < 2; k++) {
        rk_backend_ctx *c = ctx_of(bes[k], n_heads, head_dim, 8, &shape);
        use(bes[k]);
        for (int i = 0; i < 7; i++) {
            out[k][i] = malloc(n * width * sizeof(float));
            memcpy(out[k][i], x, n * width * sizeof(float));
        }
        bes[k]->rmsnorm(c, out[k][0], x, w, n, width, 1e-5f);
        bes[k]->add(c, out[k][1], y, n, n, width);
        bes[k]->add(c, out[k][1], w, n, 1, width);
        bes[k]->swiglu(c, out[k][2], y, (size_t)n * width);
        bes[k]->rope(c, out[k][3], n, n_heads, head_dim, 1000, &hp, freq);
        bes[k]->rope(c, out[k][4], n, n_heads, head_dim, 77, &neox, NULL);
        for (int i = 0; i < n * width; i++) out[k][5][i] *= 6.0f; /* past ggml's +-10 GELU cut-offs too */
        bes[k]->geglu(c, out[k][5], y, (size_t)n * width);
        bes[k]->softcap(c, out[k][6], (size_t)n * width, 1.5f);
        if (k == 0)
            for (int i = 0; i < 7; i++) maybe_perturb(out[0][i], (size_t)n * width);
        bes[k]->free(c);
    }
    const char *names[7] = {"rmsnorm", "add", "swiglu", "rope", "rope", "geglu", "softcap"};
    const char *params[7] = {"rows=5,width=96", "rows=5,width=96 (residual, then bias)", "n=480",
                             "heads=3,head_dim=32,n_rot=24,pos0=1000,scale=0.5,freq_factors",
                             "neox,heads=3,head_dim=32,n_rot=24,pos0=77,scale=0.5", "n=480,x in [-12,12]",
                             "n=480,cap=1.5"};
    for (int i = 0; i < 7; i++)
        /* GEGLU: the AVX2 lanes must give the portable loop's bits (glu_avx2.c) */
        if (selected(names[i]))
            report(names[i], params[i], nmse(out[0][i], out[1][i], (size_t)n * width), i == 5 ? 0.0 : 1e-7);
    free(x), free(y), free(w);
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 7; i++) free(out[k][i]);
}

/* ---- the KV cache and attention ---- */

typedef struct {
    int n_heads, n_kv, head_dim, cap, kv_type;
} att_shape;

/* a cache filled with `n_fill` tokens (positions 0..), a few slots dropped so positions are not slot indices */
static void fill_cache(const rk_backend_i *be, rk_backend_ctx *c, rk_kv *kv, const att_shape *sh, int n_fill,
                       const float *k, const float *v) {
    if (rk_kv_init(kv, be, c, 2, sh->n_kv, sh->head_dim, sh->cap, sh->kv_type, NULL, 64)) exit(1);
    for (int il = 0; il < 2; il++) be->kv_append(c, kv, il, k, v, n_fill, 0);
    uint8_t keep[4096];
    for (int g = 0; g < sh->n_kv; g++) {
        for (int s = 0; s < n_fill; s++) keep[s] = (s * 7 + g) % 5 != 3;
        be->kv_gather(c, kv, 1, g, keep);
    }
}

/* swa > 0: layer 0 has a sliding window of swa positions (a ring of swa - 1 + 16 slots, filled by
 * batches of at most 16 tokens, as eval does) and attention runs there */
static void test_attention(const att_shape *sh, int n_fill, int n, int stats, int32_t topk, float topk_frac, int swa) {
    char params[128];
    snprintf(params, sizeof params, "heads=%d/%d,hd=%d,kv=%s,cached=%d,n=%d%s%s%s", sh->n_heads, sh->n_kv, sh->head_dim,
             sh->kv_type == RK_TYPE_F16 ? "f16" : "f32", n_fill, n, stats ? ",stats" : "",
             topk ? ",topk" : topk_frac > 0 ? ",topk_frac" : "", swa ? ",window" : "");
    const size_t dkv = (size_t)sh->n_kv * sh->head_dim, dq = (size_t)sh->n_heads * sh->head_dim;
    const int total = n_fill + n;
    float *k = malloc(total * dkv * sizeof(float)), *v = malloc(total * dkv * sizeof(float)),
          *q = malloc((size_t)n * dq * sizeof(float));
    fill(k, total * dkv, -1, 1), fill(v, total * dkv, -1, 1), fill(q, (size_t)n * dq, -1, 1);
    const size_t n_acc = (size_t)sh->n_heads * sh->cap, n_cnt = (size_t)sh->n_kv * sh->cap;
    float *out[2], *acc[2], *cnt[2];
    rk_model shape = {0};
    const rk_backend_i *bes[2] = {B, R};
    /* the workspaces cover the largest buffer, a ring may exceed the global capacity (as in session.c) */
    const int slots = swa && swa - 1 + 16 > sh->cap ? swa - 1 + 16 : sh->cap;
    for (int j = 0; j < 2; j++) {
        rk_backend_ctx *c = ctx_of(bes[j], sh->n_heads, sh->head_dim, slots, &shape);
        use(bes[j]);
        rk_kv kv;
        int il = 1;
        if (swa) {
            const int32_t layer_swa[2] = {swa, 0};
            if (rk_kv_init(&kv, bes[j], c, 2, sh->n_kv, sh->head_dim, sh->cap, sh->kv_type, layer_swa, 16)) exit(1);
            for (int t = 0; t < n_fill; t += 16)
                bes[j]->kv_append(c, &kv, 0, k + (size_t)t * dkv, v + (size_t)t * dkv, n_fill - t < 16 ? n_fill - t : 16, t);
            il = 0;
        } else {
            fill_cache(bes[j], c, &kv, sh, n_fill, k, v);
        }
        bes[j]->kv_append(c, &kv, il, k + (size_t)n_fill * dkv, v + (size_t)n_fill * dkv, n, n_fill);
        out[j] = calloc((size_t)n * dq, sizeof(float));
        acc[j] = calloc(n_acc, sizeof(float));
        cnt[j] = calloc(n_cnt, sizeof(float));
        const rk_attn_args a = {&kv, il, n, n_fill, sh->n_heads, 1.0f / sqrtf((float)sh->head_dim), swa, q, out[j],
                                topk, topk_frac, {stats ? acc[j] : NULL, stats ? cnt[j] : NULL}};
        bes[j]->attention(c, &a);
        if (j == 0) maybe_perturb(out[0], (size_t)n * dq), maybe_perturb(acc[0], n_acc);
        rk_kv_free(&kv);
        bes[j]->free(c);
    }
    if (selected("attention")) {
        report("attention", params, nmse(out[0], out[1], (size_t)n * dq), 1e-7);
        if (stats) report("attention.stats", params, nmse(acc[0], acc[1], n_acc) + nmse(cnt[0], cnt[1], n_cnt), 1e-7);
    }
    free(k), free(v), free(q);
    for (int j = 0; j < 2; j++) free(out[j]), free(acc[j]), free(cnt[j]);
}

/* kv_append + kv_gather + kv_to_f32 + kv_copy + kv_reposition, compared through kv_to_f32 and positions */
static void test_kv(const att_shape *sh, int n_fill) {
    const size_t dkv = (size_t)sh->n_kv * sh->head_dim, lay = (size_t)sh->n_kv * sh->cap * sh->head_dim;
    float *k = malloc(n_fill * dkv * sizeof(float)), *v = malloc(n_fill * dkv * sizeof(float));
    fill(k, n_fill * dkv, -1, 1), fill(v, n_fill * dkv, -1, 1);
    float *kf[2][2], *vf[2][2];
    int32_t *pos[2][2];
    rk_model m = {0};
    m.n_rot = sh->head_dim, m.rope_base = 10000.0f, m.rope_freq_scale = 1.0f;
    const rk_backend_i *bes[2] = {B, R};
    for (int j = 0; j < 2; j++) {
        rk_backend_ctx *c = ctx_of(bes[j], sh->n_heads, sh->head_dim, sh->cap, &m);
        use(bes[j]);
        rk_kv kv, kv2;
        fill_cache(bes[j], c, &kv, sh, n_fill, k, v);
        if (rk_kv_init(&kv2, bes[j], c, 2, sh->n_kv, sh->head_dim, sh->cap, sh->kv_type, NULL, 64)) exit(1);
        bes[j]->kv_copy(c, &kv2, &kv);
        for (int step = 0; step < 2; step++) { /* 0: gathered and copied; 1: then repositioned */
            if (step) bes[j]->kv_reposition(c, &kv2, &m);
            kf[j][step] = calloc(lay, sizeof(float)), vf[j][step] = calloc(lay, sizeof(float));
            pos[j][step] = calloc((size_t)sh->n_kv * sh->cap, sizeof(int32_t));
            bes[j]->kv_to_f32(c, &kv2, 1, kf[j][step], vf[j][step]);
            memcpy(pos[j][step], rk_kv_pos(&kv2, 1, 0), (size_t)sh->n_kv * sh->cap * sizeof(int32_t));
            for (int g = 0; g < sh->n_kv; g++) /* slots past n_used hold nothing comparable */
                for (int s = kv2.n_used[kv2.n_kv_heads + g]; s < sh->cap; s++) pos[j][step][g * sh->cap + s] = -1;
            if (j == 0) maybe_perturb(kf[0][step], lay);
        }
        rk_kv_free(&kv), rk_kv_free(&kv2);
        bes[j]->free(c);
    }
    char params[96];
    snprintf(params, sizeof params, "kv=%s,hd=%d,cached=%d", sh->kv_type == RK_TYPE_F16 ? "f16" : "f32",
             sh->head_dim, n_fill);
    for (int step = 0; step < 2; step++) {
        const char *op = step ? "kv_reposition" : "kv_gather+copy";
        if (!selected(step ? "kv_reposition" : "kv_gather")) continue;
        double e = nmse(kf[0][step], kf[1][step], lay) + nmse(vf[0][step], vf[1][step], lay);
        if (memcmp(pos[0][step], pos[1][step], (size_t)sh->n_kv * sh->cap * sizeof(int32_t))) e = INFINITY;
        report(op, params, e, 1e-7);
    }
    free(k), free(v);
    for (int j = 0; j < 2; j++)
        for (int s = 0; s < 2; s++) free(kf[j][s]), free(vf[j][s]), free(pos[j][s]);
}

static void test_window_attention(int n_heads, int n_kv, int head_dim, int cap, int n_win) {
    if (!selected("window_attention")) return;
    const size_t lay = (size_t)n_kv * cap * head_dim, dq = (size_t)n_heads * head_dim;
    float *k = malloc(lay * sizeof(float)), *q = malloc(n_win * dq * sizeof(float)), *out[2];
    int32_t n_used[16], pos[16 * 512], win_pos[64];
    fill(k, lay, -1, 1), fill(q, n_win * dq, -1, 1);
    for (int g = 0; g < n_kv; g++) {
        n_used[g] = cap - 3 * g;
        for (int s = 0; s < cap; s++) pos[g * cap + s] = 2 * s;
    }
    for (int i = 0; i < n_win; i++) win_pos[i] = 2 * cap - n_win + i;
    rk_model shape = {0};
    const rk_backend_i *bes[2] = {B, R};
    for (int j = 0; j < 2; j++) {
        rk_backend_ctx *c = ctx_of(bes[j], n_heads, head_dim, cap, &shape);
        use(bes[j]);
        out[j] = calloc((size_t)n_heads * n_win * cap, sizeof(float));
        const rk_window_args a = {n_heads, n_kv, head_dim, cap, n_win, k, n_used, pos, q, win_pos, out[j]};
        bes[j]->window_attention(c, &a);
        if (j == 0) maybe_perturb(out[0], (size_t)n_heads * n_win * cap);
        bes[j]->free(c);
    }
    char params[96];
    snprintf(params, sizeof params, "heads=%d/%d,hd=%d,cap=%d,n_win=%d", n_heads, n_kv, head_dim, cap, n_win);
    report("window_attention", params, nmse(out[0], out[1], (size_t)n_heads * n_win * cap), 1e-7);
    free(k), free(q), free(out[0]), free(out[1]);
}

int main(int argc, char **argv) {
    const char *b = "cpu", *r = "cpu-portable";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-b") && i + 1 < argc) b = argv[++i];
        else if (!strcmp(argv[i], "-r") && i + 1 < argc) r = argv[++i];
        else if (!strcmp(argv[i], "-o") && i + 1 < argc) only_op = argv[++i];
        else if (!strcmp(argv[i], "--perturb")) perturb = 1;
        else {
            fprintf(stderr, "usage: %s [-b BACKEND] [-r REFERENCE] [-o OP] [--perturb]\n", argv[0]);
            return 2;
        }
    }
    if (!(R = rk_backend_by_name(r))) {
        printf("reference backend '%s' is not available: %s\n", r, rk_last_error());
        return 77;
    }
    if (!(B = rk_backend_by_name(b))) {
        printf("backend '%s' is not available: %s\n", b, rk_last_error());
        return 77;
    }
    printf("backend %s (kernels: %s) vs reference %s\n", B->name, rk_quant_features(), R->name);
    const int32_t types[] = {RK_TYPE_F32, RK_TYPE_F16, RK_TYPE_Q4_0, RK_TYPE_Q4_1, RK_TYPE_Q5_0, RK_TYPE_Q5_1,
                             RK_TYPE_Q8_0, RK_TYPE_Q4_K, RK_TYPE_Q5_K, RK_TYPE_Q6_K};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        const int64_t n_in = types[t] >= RK_TYPE_Q4_K ? 512 : 256;
        test_matmul(types[t], n_in, 64, 1);
        test_matmul(types[t], n_in, 72, 7);
        test_matmul(types[t], n_in, 40, 33);
    }
    test_embed(RK_TYPE_Q4_1, 128, 64);
    test_embed(RK_TYPE_Q8_0, 128, 64);
    test_embed(RK_TYPE_Q6_K, 256, 24);
    /* the other packed layouts: a tied matrix is looked up in its packed rows */
    test_embed(RK_TYPE_Q5_0, 128, 64);
    test_embed(RK_TYPE_Q4_K, 256, 24);
    test_embed(RK_TYPE_Q5_K, 256, 16);
    test_elementwise();
    const att_shape shapes[] = {{6, 2, 64, 160, RK_TYPE_F16}, {6, 2, 64, 160, RK_TYPE_F32}, {4, 4, 20, 96, RK_TYPE_F16},
                                {9, 3, 64, 600, RK_TYPE_F16}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const att_shape *sh = &shapes[i];
        const int n_fill = sh->cap / 2;
        test_attention(sh, n_fill, 1, 0, 0, 0, 0);       /* decode */
        test_attention(sh, n_fill, 1, 1, 0, 0, 0);
        test_attention(sh, n_fill, 2, 0, 0, 0, 0);       /* a short batch: one row a job */
        test_attention(sh, n_fill, 13, 0, 0, 0, 0);      /* prefill over a cache */
        test_attention(sh, 0, 37, 1, 0, 0, 0);           /* prefill of an empty cache, statistics */
        test_attention(sh, n_fill, 5, 0, 17, 0, 0);      /* top-k mask */
        test_attention(sh, n_fill, 1, 0, 0, 0.25f, 0);
        test_attention(sh, n_fill, 1, 0, 0, 0, 24);      /* a sliding-window ring that has wrapped: decode */
        test_attention(sh, n_fill, 13, 0, 0, 0, 24);     /*   and a batch */
        test_kv(sh, n_fill);
    }
    /* a ring (24 - 1 + 16 = 39 slots) larger than the global layers' capacity (20) */
    const att_shape small = {6, 2, 64, 20, RK_TYPE_F16};
    test_attention(&small, 30, 1, 0, 0, 0, 24);
    test_attention(&small, 30, 13, 0, 0, 0, 24);
    test_window_attention(6, 2, 64, 160, 8);
    test_window_attention(9, 3, 20, 77, 32);
    rk_quant_force_scalar(0);
    printf("%d/%d cases passed\n", n_pass, n_pass + n_fail);
    return n_fail ? 1 : 0;
}
