/* error.h: the thread-local last-error message behind rk_last_error(). */
#ifndef RK_ERROR_H
#define RK_ERROR_H

#include "restkv.h"

/* Records a printf-style message for rk_last_error() and returns `status`,
 * so that failures read `return rk_fail(RK_ERR_ARG, "n_ctx must be > 0, got %d", n);` */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
rk_status rk_fail(rk_status status, const char *fmt, ...);
void rk_clear_error(void);

#endif
