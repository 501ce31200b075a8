/* device.c: which compute devices this build has, and what a "cuda" request finds. */
#include <stdio.h>

#include "error.h"
#include "restkv.h"

#ifdef RK_HAVE_CUDA
int32_t rk_cuda_device_count(char *why, size_t why_size); /* src/cuda/device_cuda.cu */
int32_t rk_has_cuda(void) { return 1; }
#else
int32_t rk_has_cuda(void) { return 0; }
#endif

rk_status rk_device_check(int32_t device) {
    if (device == RK_DEVICE_CPU) return RK_OK;
    if (device != RK_DEVICE_CUDA) return rk_fail(RK_ERR_ARG, "unknown device %d", device);
#ifdef RK_HAVE_CUDA
    char why[256] = "";
    if (rk_cuda_device_count(why, sizeof why) <= 0)
        return rk_fail(RK_ERR_NO_CUDA, "device 'cuda' requested, but no CUDA device is usable (%s)", why);
    /* the kernels are written and checked against their CPU twins only on a machine with a GPU */
    return rk_fail(RK_ERR_UNSUPPORTED,
                   "device 'cuda' requested (%s), but the CUDA forward pass is not implemented yet; use device 'cpu'",
                   why);
#else
    return rk_fail(RK_ERR_NO_CUDA, "device 'cuda' requested, but this build of restkv-engine has no CUDA backend");
#endif
}
