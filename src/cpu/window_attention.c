/* window_attention.c: the attention of the observation-window queries over one layer's f32 keys,
 * which the scoring policies read (backend.h rk_window_args); threads split the query heads. */
#include <math.h>

#include "backend_cpu.h"

static void window_attention_task(void *ctx, int ith, int nth) {
    const rk_window_args *a = ctx;
    const int D = a->head_dim, dq = a->n_heads * D, group = a->n_heads / a->n_kv_heads;
    const float scale = 1.0f / sqrtf((float)D);
    long b, e;
    rk_split_range(a->n_heads, ith, nth, 1, &b, &e);
    for (long h = b; h < e; h++) {
        const int g = (int)h / group;
        const float *K = a->k + (size_t)g * a->cap * D;
        const int32_t *pos = a->pos + (size_t)g * a->cap;
        for (int i = 0; i < a->n_win; i++) {
            const float *q = a->q + (size_t)i * dq + (size_t)h * D;
            float *out = a->out + ((size_t)h * a->n_win + i) * a->cap;
            float mx = -INFINITY;
            for (int sl = 0; sl < a->n_used[g]; sl++) {
                if (pos[sl] > a->win_pos[i]) { out[sl] = -INFINITY; continue; }
                float d = 0;
                for (int k = 0; k < D; k++) d += q[k] * K[(size_t)sl * D + k];
                out[sl] = d * scale;
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
}

void rk_cpu_window_attention(rk_backend_ctx *c, const rk_window_args *a) {
    rk_pool_run(c->pool, window_attention_task, (void *)a);
}
