/*
 * device_cuda.cu: the CUDA side of device selection. Built only where a CUDA
 * compiler works (ENGINE_CUDA=AUTO or ON); the runtime is linked statically, so
 * the library loads on machines without a GPU or driver and says why here.
 */
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>

extern "C" int32_t rk_cuda_device_count(char *why, size_t why_size) {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        snprintf(why, why_size, "cudaGetDeviceCount: %s", cudaGetErrorString(err));
        cudaGetLastError(); /* clear the sticky error for a later attempt */
        return 0;
    }
    if (n == 0) {
        snprintf(why, why_size, "no CUDA device is visible");
        return 0;
    }
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess)
        snprintf(why, why_size, "%s, compute capability %d.%d", prop.name, prop.major, prop.minor);
    else
        snprintf(why, why_size, "%d device(s)", n);
    return n;
}
