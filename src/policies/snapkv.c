/* snapkv.c: placeholder until the policy lands (scoring fails with a clear message). */
#include "../error.h"
#include "../policy.h"

static rk_status score(const rk_policy_view *v, float *scores) {
    (void)v;
    (void)scores;
    return rk_fail(RK_ERR_UNSUPPORTED, "policy 'snapkv' is not implemented yet");
}

const rk_policy_i rk_policy_snapkv = {"snapkv", 0, 0, 0, 0, score, NULL};

rk_status rk_snapkv_scores(const rk_policy_view *v, float *scores) { return score(v, scores); }
