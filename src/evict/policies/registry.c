/* registry.c: the one list of eviction policies, in the order the API lists them. Adding a policy = its
 * file (which declares everything about it, policy.h) + one line here (+ the file in CMakeLists.txt). */
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
extern const rk_policy_i rk_policy_knorm;
extern const rk_policy_i rk_policy_expected_attention;

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
    &rk_policy_knorm,
    &rk_policy_expected_attention,
};

#define N_POLICIES ((int32_t)(sizeof policies / sizeof policies[0]))

int32_t rk_policy_registry_size(void) { return N_POLICIES; }

const rk_policy_i *rk_policy_at(int32_t i) { return i >= 0 && i < N_POLICIES ? policies[i] : NULL; }

const rk_policy_i *rk_policy_lookup(const char *name) {
    for (int32_t i = 0; i < N_POLICIES; i++)
        if (!strcmp(policies[i]->name, name)) return policies[i];
    return NULL;
}
