/* full.c: no eviction (the full cache): neither RK_POLICY_EVICTS nor RK_POLICY_MASKS_ATTN, so the
 * shared code never compresses and never asks for scores. */
#include "policy.h"

const rk_policy_i rk_policy_full = {
    .name = "full",
    .help = "keeps every entry (no eviction)",
};
