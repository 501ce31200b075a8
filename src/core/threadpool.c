/* threadpool.c: persistent worker threads with spin-then-sleep waiting. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "threadpool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#define SPIN_ITERS 20000 /* roughly 0.1-1 ms of pause instructions before sleeping */
#define YIELD_EVERY 256  /* pauses between sched_yield() calls while spinning */

struct worker {
    struct rk_pool *pool;
    int ith;
    pthread_t thread;
};

struct rk_pool {
    int n;
    struct worker *workers;
    rk_task_fn fn;
    void *ctx;
    atomic_uint gen;       /* bumped once per job */
    atomic_int pending;    /* workers still running the current job */
    atomic_int sleeping;
    atomic_int stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

static void *worker_main(void *arg) {
    struct worker *w = arg;
    struct rk_pool *p = w->pool;
    unsigned seen = 0; /* gen at pool creation: a job may be posted before this thread first runs */
    for (;;) {
        int spins = 0;
        while (atomic_load(&p->gen) == seen && !atomic_load(&p->stop)) {
            if (++spins < SPIN_ITERS) {
                /* yield now and then: on an oversubscribed machine the thread that
                 * would post the next job may be waiting for this core */
                if (spins % YIELD_EVERY == 0) sched_yield();
                else cpu_relax();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleeping, 1);
            while (atomic_load(&p->gen) == seen && !atomic_load(&p->stop)) pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->sleeping, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) return NULL;
        seen = atomic_load(&p->gen);
        p->fn(p->ctx, w->ith, p->n);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_release);
    }
}

rk_pool *rk_pool_create(int n_threads) {
    if (n_threads < 1) return NULL;
    struct rk_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->workers = calloc((size_t)n_threads, sizeof *p->workers);
    if (!p->workers) {
        free(p);
        return NULL;
    }
    for (int i = 1; i < n_threads; i++) {
        p->workers[i].pool = p;
        p->workers[i].ith = i;
        if (pthread_create(&p->workers[i].thread, NULL, worker_main, &p->workers[i]) != 0) {
            p->n = i; /* join only those started */
            rk_pool_free(p);
            return NULL;
        }
    }
    return p;
}

void rk_pool_free(rk_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->workers[i].thread, NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->workers);
    free(p);
}

int rk_pool_size(const rk_pool *p) { return p->n; }

void rk_pool_run(rk_pool *p, rk_task_fn fn, void *ctx) {
    if (p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store(&p->pending, p->n - 1);
    atomic_fetch_add(&p->gen, 1); /* seq_cst: publishes fn/ctx and orders against `sleeping` below */
    if (atomic_load(&p->sleeping) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    fn(ctx, 0, p->n);
    for (int spins = 1; atomic_load_explicit(&p->pending, memory_order_acquire) > 0; spins++) {
        if (spins % YIELD_EVERY == 0) sched_yield(); /* a descheduled worker needs this core */
        else cpu_relax();
    }
}

void rk_split_range(long n, int ith, int nth, long align, long *begin, long *end) {
    long chunks = (n + align - 1) / align;
    long per = chunks / nth, extra = chunks % nth;
    long b = ith * per + (ith < extra ? ith : extra);
    long e = b + per + (ith < extra);
    *begin = b * align < n ? b * align : n;
    *end = e * align < n ? e * align : n;
}
