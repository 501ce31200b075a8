/*
 * gram.c: the W_o Gram matrices ReST-KV scores with, computed at model load (model.c,
 * compute_wo_gram). Register tiles over (a, b) keep their sums in registers across a block of rows
 * instead of reading and writing the accumulator once per row and product (SmolLM2-135M, 30 layers:
 * 245 ms with the plain loop, 134 ms with the portable tiles, 79 ms with AVX2+FMA, on a loaded
 * 2-core machine). Bit-identical to the plain loop:
 * every product of two floats is exact in double (24 + 24 significant bits), so a fused
 * multiply-add rounds exactly as a multiply then add, and each entry still adds its products in
 * row order.
 */
#include "gram.h"
#include "quant.h" /* rk_quant_avx2_active: AVX2+FMA+F16C present and not RK_CPU=scalar */

#if defined(RK_HAVE_X86) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define RK_GRAM_AVX2 1
#endif

/* The tiles below read x[r*d + a] from a block of rows of one head, converted to double and stored
 * contiguously (n_rows x d) so they stay in L1 and broadcasts are plain loads. */

/* the plain loop: any d */
static void gram_plain(double *g, const double *x, int64_t n_rows, size_t d) {
    for (int64_t r = 0; r < n_rows; r++, x += d)
        for (size_t a = 0; a < d; a++) {
            const double xa = x[a];
            double *ga = g + a * d;
            for (size_t b = a; b < d; b++) ga[b] += xa * x[b];
        }
}

/* 4 x 4 tiles (a0 and b0 multiples of 4, b0 >= a0); the entries of a diagonal tile below the
 * diagonal are computed but not stored */
static void gram_tiles_portable(double *g, const double *x, int64_t n_rows, size_t d) {
    for (size_t a0 = 0; a0 < d; a0 += 4)
        for (size_t b0 = a0; b0 < d; b0 += 4) {
            double t[4][4];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) t[i][j] = g[(a0 + i) * d + b0 + j];
            const double *xr = x;
            for (int64_t r = 0; r < n_rows; r++, xr += d)
                for (int i = 0; i < 4; i++)
                    for (int j = 0; j < 4; j++) t[i][j] += xr[a0 + i] * xr[b0 + j];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++)
                    if (b0 + j >= a0 + i) g[(a0 + i) * d + b0 + j] = t[i][j];
        }
}

#ifdef RK_GRAM_AVX2
/* 4 x 8 tiles in 8 ymm accumulators (a0 multiple of 4, b0 multiple of 8, b0 + 8 > a0) */
__attribute__((target("avx2,fma"))) static void gram_tiles_avx2(double *g, const double *x, int64_t n_rows,
                                                                 size_t d) {
    for (size_t a0 = 0; a0 < d; a0 += 4)
        for (size_t b0 = a0 & ~(size_t)7; b0 < d; b0 += 8) {
            __m256d t[4][2];
            for (int i = 0; i < 4; i++) {
                t[i][0] = _mm256_loadu_pd(g + (a0 + i) * d + b0);
                t[i][1] = _mm256_loadu_pd(g + (a0 + i) * d + b0 + 4);
            }
            const double *xr = x;
            for (int64_t r = 0; r < n_rows; r++, xr += d) {
                const __m256d xb0 = _mm256_loadu_pd(xr + b0), xb1 = _mm256_loadu_pd(xr + b0 + 4);
                for (int i = 0; i < 4; i++) {
                    const __m256d xa = _mm256_broadcast_sd(xr + a0 + i);
                    t[i][0] = _mm256_fmadd_pd(xa, xb0, t[i][0]);
                    t[i][1] = _mm256_fmadd_pd(xa, xb1, t[i][1]);
                }
            }
            for (int i = 0; i < 4; i++) {
                double v[8];
                _mm256_storeu_pd(v, t[i][0]);
                _mm256_storeu_pd(v + 4, t[i][1]);
                for (int j = 0; j < 8; j++)
                    if (b0 + j >= a0 + i) g[(a0 + i) * d + b0 + j] = v[j];
            }
        }
}
#endif

void rk_gram_accumulate(double *acc, const float *rows, int64_t n_rows, size_t H, size_t d, double *scratch) {
    const size_t stride = H * d;
    for (size_t h = 0; h < H; h++) {
        double *g = acc + h * d * d;
        for (int64_t r = 0; r < n_rows; r++)
            for (size_t a = 0; a < d; a++) scratch[(size_t)r * d + a] = rows[(size_t)r * stride + h * d + a];
#ifdef RK_GRAM_AVX2
        if (d % 8 == 0 && rk_quant_avx2_active()) {
            gram_tiles_avx2(g, scratch, n_rows, d);
            continue;
        }
#endif
        if (d % 4 == 0)
            gram_tiles_portable(g, scratch, n_rows, d);
        else
            gram_plain(g, scratch, n_rows, d);
    }
}
