/*
 * fuzz_gguf.c: fuzz target for the GGUF parser and the model loader.
 *
 * Each input is loaded as a model from memory; a file that loads is then run
 * (a session, two tokens, log-probabilities, a compression), since mutated
 * tensor data or hyper-parameters can pass the loader. A rejection must carry a
 * message: an empty one is reported as a crash. Built with libFuzzer under
 * clang, or with driver.c (a standalone mutator) under gcc; both with
 * AddressSanitizer and UndefinedBehaviorSanitizer (tests/fuzz/run.sh).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "restkv.h"

static void require_message(const char *what) {
    const char *e = rk_last_error();
    if (!e || !e[0]) {
        fprintf(stderr, "fuzz_gguf: %s failed without a message\n", what);
        abort();
    }
}

static void exercise(rk_model *m) {
    rk_session_params sp = rk_session_default_params();
    sp.n_ctx = 16;
    sp.n_threads = 1;
    rk_session *s = NULL;
    if (rk_session_init(&s, m, &sp) != RK_OK) {
        require_message("rk_session_init");
        return;
    }
    const int32_t nv = rk_model_n_vocab(m);
    int32_t toks[4] = {0, nv > 1 ? 1 : 0, nv - 1, nv / 2};
    float lp[4];
    if (rk_session_logprobs(s, toks, 4, lp, NULL) != RK_OK) require_message("rk_session_logprobs");
    rk_evict_params ep = rk_evict_default_params();
    strcpy(ep.policy, "restkv");
    ep.budget = 0.5f;
    ep.window = 2;
    if (rk_session_set_evict(s, &ep) == RK_OK) {
        if (rk_session_compress(s) != RK_OK) require_message("rk_session_compress");
    } else {
        require_message("rk_session_set_evict");
    }
    rk_session_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    rk_model_params mp = rk_model_default_params();
    mp.n_threads = 1;
    rk_model *m = NULL;
    if (rk_model_load_buffer(&m, data, size, "fuzz.gguf", &mp) != RK_OK) {
        require_message("rk_model_load_buffer");
        return 0;
    }
    exercise(m);
    rk_model_free(m);
    return 0;
}
