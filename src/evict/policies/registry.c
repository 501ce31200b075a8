/* registry.c: the one list of eviction policies. Adding a policy = its file + one line here. */
#include <string.h>

#include "policy.h"

extern const rk_policy_i rk_policy_full;
extern const rk_policy_i rk_policy_streaming;
extern const rk_policy_i rk_policy_h2o;
extern const rk_policy_i rk_policy_tova;
extern const rk_policy_i rk_policy_snapkv;
extern const rk_policy_i rk_policy_pyramidkv;
extern const rk_policy_i rk_policy_adakv;
extern const rk_policy_i rk_policy_lacache;
extern const rk_policy_i rk_policy_restkv;
extern const rk_policy_i rk_policy_topk;

static const rk_policy_i *const policies[] = {
    &rk_policy_full,
    &rk_policy_streaming,
    &rk_policy_h2o,
    &rk_policy_tova,
    &rk_policy_snapkv,
    &rk_policy_pyramidkv,
    &rk_policy_adakv,
    &rk_policy_lacache,
    &rk_policy_restkv,
    &rk_policy_topk,
};

#define N_POLICIES ((int32_t)(sizeof policies / sizeof policies[0]))

const rk_policy_i *rk_policy_find(const char *name) {
    for (int32_t i = 0; i < N_POLICIES; i++)
        if (!strcmp(policies[i]->name, name)) return policies[i];
    return NULL;
}

const char *rk_policy_name(int32_t i) { return i >= 0 && i < N_POLICIES ? policies[i]->name : NULL; }
