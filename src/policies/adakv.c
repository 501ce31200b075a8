/* adakv.c: placeholder until the policy lands (scoring fails with a clear message). */
#include "../error.h"
#include "../policy.h"

static rk_status score(const rk_policy_view *v, float *scores) {
    (void)v;
    (void)scores;
    return rk_fail(RK_ERR_UNSUPPORTED, "policy 'adakv' is not implemented yet");
}

const rk_policy_i rk_policy_adakv = {"adakv", 0, 0, 0, 0, score, NULL};
