/*
 * kernel_twins.c: the AVX-512 kernels of the VNNI tier against their AVX2 twins, bit for bit, on
 * random inputs (tests/test_kernel_twins.py runs it). End to end, the golden digests compare whole
 * forward passes; this compares each kernel's own outputs, including what a forward pass rarely
 * shows (a softmax sum's last bits, masked slots, odd lengths, tails).
 *   restkv-kernel-twins            all cases; exit 0 when every one agrees, 1 if one differs,
 *                                  77 when this CPU or build has no AVX512-VNNI tier
 *   restkv-kernel-twins --perturb  the AVX-512 side's outputs nudged by one ulp: every case must fail
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"
#include "quant_avx2.h"

#if defined(RK_HAVE_VNNI)
void rk_avx2_swiglu(float *a, const float *b, size_t n);
void rk_avx512_swiglu(float *a, const float *b, size_t n);

static int perturb, n_cases, n_ok;
static uint64_t rng = 88172645463325252ull;
static float unif(void) { /* xorshift64 in [-1, 1) */
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / (1 << 23)) - 1.0);
}
static void nudge(float *x, size_t n) {
    if (!perturb) return;
    for (size_t i = 0; i < n; i++) x[i] = nextafterf(x[i], INFINITY);
}
static void report(const char *name, const char *shape, int same) {
    n_cases++, n_ok += same;
    printf("  %-14s %-34s %s\n", name, shape, same ? "OK" : "FAIL");
}

/* one attention call on both kernel sets: n rows, ns slots, head dim hd, value dims nd */
static void attention_case(int n, int ns, int hd, int nd, int f16) {
    const size_t es = f16 ? 2 : 4;
    uint8_t *k = malloc((size_t)ns * hd * es), *v = malloc((size_t)ns * hd * es);
    for (size_t i = 0; i < (size_t)ns * hd; i++) {
        const float a = unif(), b = unif();
        if (f16) ((uint16_t *)k)[i] = rk_fp32_to_fp16(a), ((uint16_t *)v)[i] = rk_fp32_to_fp16(b);
        else ((float *)k)[i] = a, ((float *)v)[i] = b;
    }
    int32_t *pos = malloc(ns * sizeof *pos), p[24], lo[24];
    for (int i = 0; i < ns; i++) pos[i] = (i * 7) % ns; /* slots out of position order, as after eviction */
    const float *q[24];
    float *sc[2][24], *o[2][24];
    for (int r = 0; r < n; r++) {
        float *qr = malloc(hd * sizeof *qr);
        for (int c = 0; c < hd; c++) qr[c] = unif();
        q[r] = qr;
        for (int s = 0; s < 2; s++) sc[s][r] = malloc(ns * sizeof(float)), o[s][r] = calloc(hd, sizeof(float));
        p[r] = ns - 1 - (r % 5) * 3;                  /* causal ends */
        lo[r] = r % 3 == 2 ? ns / 4 : INT32_MIN;      /* some windows */
    }
    rk_att_rows rw[2] = {{n, q, sc[0], o[0], p, lo}, {n, q, sc[1], o[1], p, lo}};
    rk_avx2_att_scores(hd, f16, ns, k, pos, 0.125f, &rw[0]);
    rk_avx512_att_scores(hd, f16, ns, k, pos, 0.125f, &rw[1]);
    int same = 1;
    for (int r = 0; r < n; r++) nudge(sc[1][r], ns), same &= !memcmp(sc[0][r], sc[1][r], ns * sizeof(float));
    char shape[64];
    snprintf(shape, sizeof shape, "rows=%d slots=%d hd=%d %s", n, ns, hd, f16 ? "f16" : "f32");
    report("att_scores", shape, same);
    for (int r = 0; r < n; r++) /* weights: exp of the scores, zeros where masked and at some slots */
        for (int s = 0; s < ns; s++) {
            const float w = sc[0][r][s] == -INFINITY || s % 97 == 5 ? 0.0f : expf(sc[0][r][s]) * 0.01f;
            sc[0][r][s] = sc[1][r][s] = w;
        }
    rk_avx2_att_values(nd, f16, ns, v, hd, &rw[0]);
    rk_avx512_att_values(nd, f16, ns, v, hd, &rw[1]);
    same = 1;
    for (int r = 0; r < n; r++) nudge(o[1][r], nd), same &= !memcmp(o[0][r], o[1][r], nd * sizeof(float));
    snprintf(shape, sizeof shape, "rows=%d slots=%d dims=%d %s", n, ns, nd, f16 ? "f16" : "f32");
    report("att_values", shape, same);
    for (int r = 0; r < n; r++) {
        free((void *)q[r]);
        for (int s = 0; s < 2; s++) free(sc[s][r]), free(o[s][r]);
    }
    free(k), free(v), free(pos);
}

static void softmax_case(int n) {
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y), mx = -INFINITY;
    for (int i = 0; i < n; i++) {
        x[i] = i % 11 == 3 ? -INFINITY : 30.0f * unif();
        if (x[i] > mx) mx = x[i];
    }
    memcpy(y, x, n * sizeof *x);
    double s0 = rk_avx2_softmax_exp(x, n, mx), s1 = rk_avx512_softmax_exp(y, n, mx);
    nudge(y, n);
    if (perturb) s1 = nextafter(s1, INFINITY);
    char shape[64];
    snprintf(shape, sizeof shape, "n=%d", n);
    report("softmax_exp", shape, !memcmp(x, y, n * sizeof *x) && !memcmp(&s0, &s1, sizeof s0));
    free(x), free(y);
}

static void swiglu_case(int n) {
    float *a = malloc(n * sizeof *a), *a2 = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    for (int i = 0; i < n; i++) a[i] = unif() * (i % 7 == 0 ? 200.0f : i % 3 == 0 ? 20.0f : 3.0f), b[i] = unif();
    if (n > 4) a[1] = INFINITY, a[2] = -INFINITY, a[3] = -0.0f, a[4] = 88.9f;
    memcpy(a2, a, n * sizeof *a);
    rk_avx2_swiglu(a, b, n);
    rk_avx512_swiglu(a2, b, n);
    nudge(a2, n);
    char shape[64];
    snprintf(shape, sizeof shape, "n=%d", n);
    report("swiglu", shape, !memcmp(a, a2, n * sizeof *a));
    free(a), free(a2), free(b);
}
#endif

int main(int argc, char **argv) {
#if defined(RK_HAVE_VNNI)
    perturb = argc > 1 && !strcmp(argv[1], "--perturb");
    rk_quant_init();
    if (!rk_quant_avx512_active()) {
        printf("this CPU has no AVX512-VNNI tier (kernels: %s): nothing to compare\n", rk_quant_features());
        return 77;
    }
    /* rows: 1-3 (decode groups), 6-8, 12, 13, 16, 24; head dims with every remainder of 16 */
    static const int rows[] = {1, 2, 3, 5, 6, 7, 8, 12, 13, 16, 24};
    static const int hds[] = {8, 24, 40, 64, 128, 256};
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++)
        for (size_t j = 0; j < sizeof hds / sizeof *hds; j++)
            attention_case(rows[i], 301 + (int)i, hds[j], hds[j], (int)(i + j) % 2);
    attention_case(6, 1000, 128, 48, 1); /* a decode step's value slices */
    attention_case(6, 1000, 128, 16, 0);
    attention_case(16, 2048, 128, 128, 1);
    for (int n = 1; n <= 40; n++) softmax_case(n);
    softmax_case(2047), softmax_case(8192);
    for (int n = 1; n <= 40; n++) swiglu_case(n);
    swiglu_case(8960), swiglu_case(100003);
    printf("%d/%d cases passed\n", n_ok, n_cases);
    return n_ok == n_cases ? 0 : 1;
#else
    (void)argc, (void)argv;
    printf("this build has no AVX512-VNNI tier: nothing to compare\n");
    return 77;
#endif
}
