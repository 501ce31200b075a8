/*
 * threadpool.h: one persistent pool per session. rk_pool_run(fn) runs
 * fn(ctx, ith, nth) on every thread (the caller is thread 0) and returns when
 * all are done. Workers spin briefly between jobs, because a decode step
 * dispatches a few hundred small jobs and a condition-variable wake-up each
 * time would cost more than the work; after that they sleep.
 */
#ifndef RK_THREADPOOL_H
#define RK_THREADPOOL_H

typedef void (*rk_task_fn)(void *ctx, int ith, int nth);
typedef struct rk_pool rk_pool;

/* n_threads >= 1; returns NULL on failure (the caller reports it) */
rk_pool *rk_pool_create(int n_threads);
void     rk_pool_free(rk_pool *pool);
int      rk_pool_size(const rk_pool *pool);
void     rk_pool_run(rk_pool *pool, rk_task_fn fn, void *ctx);

/* Splits [0, n) into nth near-equal ranges, aligned to `align`; range of thread ith. */
void rk_split_range(long n, int ith, int nth, long align, long *begin, long *end);

#endif
