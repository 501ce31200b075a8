/* device.c: which compute devices this build has. CUDA arrives with its own backend. */
#include "restkv.h"

int32_t rk_has_cuda(void) { return 0; }
