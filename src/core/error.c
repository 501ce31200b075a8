/* error.c: status strings and the thread-local last-error message. */
#include <stdarg.h>
#include <stdio.h>

#include "error.h"

static _Thread_local char last_error[1024];

rk_status rk_fail(rk_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

void rk_clear_error(void) { last_error[0] = '\0'; }

const char *rk_last_error(void) { return last_error; }

const char *rk_status_str(int32_t status) {
    switch (status) {
    case RK_OK:              return "ok";
    case RK_ERR_ARG:         return "invalid argument";
    case RK_ERR_IO:          return "i/o error";
    case RK_ERR_FORMAT:      return "malformed file";
    case RK_ERR_UNSUPPORTED: return "unsupported";
    case RK_ERR_OOM:         return "out of memory";
    case RK_ERR_NO_CUDA:     return "built without CUDA";
    case RK_ERR_CTX_FULL:    return "context full";
    case RK_ERR_INTERNAL:    return "internal error";
    case RK_ERR_BUSY:        return "session busy";
    default:                 return "unknown status";
    }
}
