/*
 * restkv_pool.c: ReST-KV's spatial smoothing of one query head's prefix scores r[0..P) (restkv.c step 5;
 * docs/eviction-policies.md b.7), in the three forms the reference code's `pooling` flag names:
 *   adaptive  kernel and shift from the drift of the paired top-R sets of the window attention,
 *             replicate padding (the published method; definition in restkv.c's header);
 *   avgpool   F.avg_pool1d(r, k0, padding=k0//2, stride 1): zero padding, divisor always k0;
 *   maxpool   F.max_pool1d(r, k0, padding=k0//2, stride 1). torch pads a max pool with -inf, the spec
 *             says zero; both give the same max because scores are >= 0 and every window holds j.
 * The fourth choice, none, needs no code (restkv.c copies r).
 */
#include <math.h>
#include <stdint.h>

#include "restkv_pool.h"

typedef struct {
    float   a;
    int32_t slot;
} key_t_;

/* per-thread scratch, in bytes: [cap + 1] prefix sums, [cap] (A, slot) keys, [cap + 1] counts or indices */
size_t rk_restkv_pool_scratch(int32_t cap) {
    const size_t bytes = (size_t)(cap + 1) * (sizeof(double) + sizeof(int32_t)) + (size_t)cap * sizeof(key_t_);
    return (bytes + sizeof(double) - 1) / sizeof(double) * sizeof(double); /* the next thread's doubles align */
}

/* that layout for n <= cap slots (it fits the scratch of cap) */
static void split(void *scratch, int32_t n, double **cum, key_t_ **keys, int32_t **ints) {
    *cum = scratch;
    *keys = (key_t_ *)(*cum + n + 1);
    *ints = (int32_t *)(*keys + n);
}

/* (a, slot) total order: x before y when x ranks higher */
static int higher(key_t_ x, key_t_ y) { return x.a > y.a || (x.a == y.a && x.slot > y.slot); }

/* sum of the slots of the R highest-ranked keys (quickselect; reorders k) */
static int64_t top_r_slot_sum(key_t_ *k, int32_t n, int32_t R) {
    int32_t lo = 0, hi = n - 1, want = R - 1; /* put the R highest in k[0..R) */
    while (lo < hi) {
        const key_t_ pivot = k[lo + (hi - lo) / 2];
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (higher(k[i], pivot)) i++;
            while (higher(pivot, k[j])) j--;
            if (i <= j) {
                const key_t_ t = k[i];
                k[i++] = k[j];
                k[j--] = t;
            }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else break;
    }
    int64_t sum = 0;
    for (int32_t i = 0; i < R; i++) sum += k[i].slot;
    return sum;
}

/* the drift t: mean rank-wise slot difference of the top-R sets of A[i] and A[i + w/2] */
static double drift(const rk_policy_view *v, int32_t h, key_t_ *keys) {
    const int W = v->n_win, h2 = W / 2;
    const int32_t cap = v->cap, n = v->n_used[h / v->group];
    const float *A = v->win_attn + (size_t)h * W * cap;
    int32_t R = v->budget - W;
    if (R > n) R = n;
    if (R < 1 || h2 < 1) return 0;
    int64_t diff = 0;
    for (int i = 0; i < h2; i++)
        for (int half = 0; half < 2; half++) {
            const float *Ai = A + (size_t)(i + half * h2) * cap;
            for (int32_t sl = 0; sl < n; sl++) keys[sl] = (key_t_){Ai[sl], sl};
            const int64_t s = top_r_slot_sum(keys, n, R);
            diff += half ? -s : s;
        }
    return (double)diff / ((double)h2 * (double)R);
}

/* out[sl] = (sum of r over [sl + shift - half_k, sl + shift + half_k]) / (2 half_k + 1), the indices outside
 * the prefix counting as copies of r[0] / r[P-1] (replicate) or as zeros. A direct sum, or prefix sums with
 * a count of the infinite scores only for kernels over 1025, where a direct sum would cost P k. */
static void box_mean(const double *r, int32_t P, double shift, double half_k, int replicate, double *cum,
                     int32_t *ninf, double *out) {
    const double k = 2 * half_k + 1;
    const int direct = k <= 1025;
    if (!direct) {
        cum[0] = 0;
        ninf[0] = 0;
        for (int32_t sl = 0; sl < P; sl++) {
            const int inf = isinf(r[sl]);
            cum[sl + 1] = cum[sl] + (inf ? 0.0 : r[sl]);
            ninf[sl + 1] = ninf[sl] + inf;
        }
    }
    for (int32_t sl = 0; sl < P; sl++) {
        const double lo = sl + shift - half_k, hi = sl + shift + half_k;
        const double nlo = replicate && lo < 0 ? fmin(-lo, k) : 0;             /* copies of r[0] */
        const double nhi = replicate && hi > P - 1 ? fmin(hi - (P - 1), k) : 0; /* copies of r[P-1] */
        const int32_t a = lo < 0 ? 0 : lo > P - 1 ? P : (int32_t)lo;
        const int32_t b = hi > P - 1 ? P - 1 : hi < 0 ? -1 : (int32_t)hi;
        double sum = 0;
        int infs = 0;
        if (nlo > 0) { if (isinf(r[0])) infs = 1; else sum += nlo * r[0]; }
        if (nhi > 0) { if (isinf(r[P - 1])) infs = 1; else sum += nhi * r[P - 1]; }
        if (b >= a && direct) {
            for (int32_t u = a; u <= b; u++) {
                if (isinf(r[u])) infs = 1;
                else sum += r[u];
            }
        } else if (b >= a) {
            sum += cum[b + 1] - cum[a];
            if (ninf[b + 1] - ninf[a]) infs = 1;
        }
        out[sl] = infs ? INFINITY : sum / k;
    }
}

void rk_restkv_pool_adaptive(const rk_policy_view *v, int32_t h, const rk_restkv_cfg *c, const double *r,
                             int32_t P, void *scratch, double *out) {
    double *cum;
    key_t_ *keys;
    int32_t *ninf;
    split(scratch, v->n_used[h / v->group], &cum, &keys, &ninf);
    const double t = drift(v, h, keys);
    const double beta = c->aws_beta, q = floor(fabs(t) / beta);
    const double half_k = fmax(floor(c->kernel / 2), q > 1e15 ? 1e15 : q); /* k = max(k0, 2q + 1) */
    double shift = t > 0 ? floor(t / beta) : floor(t / beta) + 1;
    if (shift > half_k + 1) shift = half_k + 1; /* s lies in [-q, max(q, 1)]; this only bounds absurd beta */
    if (shift < -half_k) shift = -half_k;
    box_mean(r, P, shift, half_k, 1, cum, ninf, out);
}

/* running max over [sl - half, sl + half] within the prefix: a deque of indices with decreasing r, so a
 * kernel of any size costs O(P) */
static void sliding_max(const double *r, int32_t P, int64_t half, int32_t *dq, double *out) {
    int32_t head = 0, tail = 0, next = 0;
    for (int32_t sl = 0; sl < P; sl++) {
        const int64_t hi = sl + half < P - 1 ? sl + half : P - 1;
        for (; next <= hi; next++) {
            while (tail > head && r[dq[tail - 1]] <= r[next]) tail--;
            dq[tail++] = next;
        }
        while (dq[head] < sl - half) head++;
        out[sl] = r[dq[head]];
    }
}

void rk_restkv_pool_fixed(const double *r, int32_t P, int32_t k0, int max, void *scratch, double *out) {
    double *cum;
    key_t_ *keys;
    int32_t *idx;
    split(scratch, P, &cum, &keys, &idx);
    if (max) sliding_max(r, P, k0 / 2, idx, out);
    else box_mean(r, P, 0, k0 / 2, 0, cum, idx, out);
}
