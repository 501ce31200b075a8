/* backend.c: which backend serves a device (the parity harness also asks by name). */
#include <string.h>

#include "backend.h"
#include "error.h"

extern const rk_backend_i rk_backend_cpu, rk_backend_cpu_portable;

rk_status rk_backend_for_device(int32_t device, const rk_backend_i **out) {
    *out = NULL;
    /* CUDA: device.c says why there is none (no CUDA in this build, no usable GPU, or its
     * forward pass not written yet) */
    rk_status st = rk_device_check(device);
    if (st) return st;
    *out = &rk_backend_cpu;
    return RK_OK;
}

const rk_backend_i *rk_backend_by_name(const char *name) {
    if (!name) return NULL;
    if (strcmp(name, "cpu") == 0) return &rk_backend_cpu;
    if (strcmp(name, "cpu-portable") == 0) return &rk_backend_cpu_portable;
    const rk_backend_i *be = NULL;
    if (strcmp(name, "cuda") == 0) return rk_backend_for_device(RK_DEVICE_CUDA, &be) ? NULL : be;
    rk_fail(RK_ERR_ARG, "unknown backend '%s' (cpu, cpu-portable, cuda)", name);
    return NULL;
}
