/* window_attention.c: the attention of the observation-window queries over one layer's f32 keys,
 * which the scoring policies read (backend.h rk_window_args); threads split the query heads. With
 * AVX2 the dots run in window_attention_avx2.c, with the same bits. */
#include <math.h>
#include <stdlib.h>

#include "backend_cpu.h"
#include "quant.h"

#if defined(RK_HAVE_X86)
#define QB 32
void rk_avx2_window_scores(const float *q, size_t q_stride, int nq, const float *K, int n, int D, float scale,
                           float *out, size_t out_stride, float *qt);
#endif

/* out rows of head h: the scaled dots of its queries with every slot in use */
static void raw_scores(const rk_window_args *a, long h, const float *K, float scale, float *qt) {
    const int D = a->head_dim, dq = a->n_heads * D, n = a->n_used[h / (a->n_heads / a->n_kv_heads)];
#if defined(RK_HAVE_X86)
    if (qt) {
        for (int i0 = 0; i0 < a->n_win; i0 += QB)
            rk_avx2_window_scores(a->q + (size_t)i0 * dq + (size_t)h * D, (size_t)dq,
                                  a->n_win - i0 < QB ? a->n_win - i0 : QB, K, n, D, scale,
                                  a->out + ((size_t)h * a->n_win + i0) * a->cap, (size_t)a->cap, qt);
        return;
    }
#endif
    (void)qt;
    for (int i = 0; i < a->n_win; i++) {
        const float *q = a->q + (size_t)i * dq + (size_t)h * D;
        float *out = a->out + ((size_t)h * a->n_win + i) * a->cap;
        for (int sl = 0; sl < n; sl++) {
            float d = 0;
            for (int k = 0; k < D; k++) d += q[k] * K[(size_t)sl * D + k];
            out[sl] = d * scale;
        }
    }
}

static void window_attention_task(void *ctx, int ith, int nth) {
    const rk_window_args *a = ctx;
    const int D = a->head_dim, group = a->n_heads / a->n_kv_heads;
    const float scale = 1.0f / sqrtf((float)D);
    float *qt = NULL;
#if defined(RK_HAVE_X86)
    if (rk_quant_avx2_active()) qt = malloc((size_t)D * QB * sizeof(float)); /* NULL: the portable loop */
#endif
    long b, e;
    rk_split_range(a->n_heads, ith, nth, 1, &b, &e);
    for (long h = b; h < e; h++) {
        const int g = (int)h / group;
        const float *K = a->k + (size_t)g * a->cap * D;
        const int32_t *pos = a->pos + (size_t)g * a->cap;
        raw_scores(a, h, K, scale, qt);
        for (int i = 0; i < a->n_win; i++) {
            float *out = a->out + ((size_t)h * a->n_win + i) * a->cap;
            float mx = -INFINITY;
            for (int sl = 0; sl < a->n_used[g]; sl++) {
                if (pos[sl] > a->win_pos[i]) { out[sl] = -INFINITY; continue; }
                if (out[sl] > mx) mx = out[sl];
            }
            double sum = 0;
            for (int sl = 0; sl < a->n_used[g]; sl++) {
                out[sl] = out[sl] == -INFINITY ? 0.0f : expf(out[sl] - mx);
                sum += out[sl];
            }
            const float inv = sum > 0 ? (float)(1.0 / sum) : 0.0f;
            for (int sl = 0; sl < a->n_used[g]; sl++) out[sl] *= inv;
        }
    }
    free(qt);
}

void rk_cpu_window_attention(rk_backend_ctx *c, const rk_window_args *a) {
    rk_pool_run(c->pool, window_attention_task, (void *)a);
}
