/*
 * gram.c: the W_o Gram matrices ReST-KV scores with, computed on first need (rk_wo_gram_prepare,
 * called by the prepare hook of the policies that score with them, when such a policy is set). Register tiles over (a, b) keep their sums in registers across a block of rows
 * instead of reading and writing the accumulator once per row and product (SmolLM2-135M, 30 layers:
 * 245 ms with the plain loop, 134 ms with the portable tiles, 79 ms with AVX2+FMA, on a loaded
 * 2-core machine). Bit-identical to the plain loop:
 * every product of two floats is exact in double (24 + 24 significant bits), so a fused
 * multiply-add rounds exactly as a multiply then add, and each entry still adds its products in
 * row order.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "gram.h"
#include "model.h"
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

/* wo_gram: G_h[a][b] = sum over the n_embd rows r of W_o[r][h*d + a] * W_o[r][h*d + b], accumulated in
 * double (upper triangle, then mirrored). Cost n_layers * n_embd * n_heads * d^2 / 2 multiply-adds:
 * about 0.3 G for SmolLM2-135M, 4.4 MB of result. Reads the rows as the file stores them (w->data;
 * a repacked matrix keeps them there), so the result is the one computed at load before. */
static rk_status compute_wo_gram(const rk_model *m, float **out_gram) {
    const size_t d = (size_t)m->head_dim, H = (size_t)m->n_heads, dd = d * d;
    float *gram = malloc((size_t)m->n_layers * H * dd * sizeof(float));
    double *acc = malloc((H * dd + RK_GRAM_ROWS * d) * sizeof(double)); /* + rk_gram_accumulate's scratch */
    float *row = malloc(RK_GRAM_ROWS * H * d * sizeof(float));           /* a block of dequantised rows */
    rk_status st = RK_OK;
    if (!gram || !acc || !row) {
        st = rk_fail(RK_ERR_OOM, "cannot allocate the W_o Gram matrices");
        goto done;
    }
    for (int il = 0; il < m->n_layers; il++) {
        const rk_weight *w = &m->layers[il].wo;
        const rk_type_traits *tr = rk_get_type_traits(w->type);
        if (!tr || !tr->to_float) {
            st = rk_fail(RK_ERR_UNSUPPORTED, "%s: cannot dequantise '%s' for the W_o Gram matrices", m->gguf->path,
                         w->name);
            goto done;
        }
        memset(acc, 0, H * dd * sizeof(double));
        for (int64_t r0 = 0; r0 < w->n_out; r0 += RK_GRAM_ROWS) { /* register tiles, same bits */
            const int64_t nr = w->n_out - r0 < RK_GRAM_ROWS ? w->n_out - r0 : RK_GRAM_ROWS;
            for (int64_t r = 0; r < nr; r++)
                tr->to_float((const uint8_t *)w->data + (size_t)(r0 + r) * w->row_bytes, row + (size_t)r * H * d,
                             w->n_in);
            rk_gram_accumulate(acc, row, nr, H, d, acc + H * dd);
        }
        float *o = gram + (size_t)il * H * dd;
        for (size_t h = 0; h < H; h++)
            for (size_t a = 0; a < d; a++)
                for (size_t b = a; b < d; b++) o[h * dd + a * d + b] = o[h * dd + b * d + a] = (float)acc[h * dd + a * d + b];
    }
done:
    free(acc);
    free(row);
    if (st) free(gram);
    else *out_gram = gram;
    return st;
}

static pthread_mutex_t gram_lock = PTHREAD_MUTEX_INITIALIZER;

rk_status rk_wo_gram_prepare(rk_model *m) {
    rk_status st = RK_OK;
    pthread_mutex_lock(&gram_lock);
    if (!m->wo_gram) {
        float *g = NULL;
        st = compute_wo_gram(m, &g);
        if (!st) m->wo_gram = g;
    }
    pthread_mutex_unlock(&gram_lock);
    return st;
}
