/*
 * fuzz_gguf.c: fuzz target for the GGUF parser and the model loader.
 *
 * Each input is loaded as a model from memory; a file that loads has its metadata
 * read back through every rk_model_meta_* accessor (indices one past each end
 * included) and is then run (a session, two tokens, log-probabilities, a
 * compression), since mutated
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

/* every key/value through the accessors the tokenizer uses; out-of-range indices must fail with a message */
static void walk_meta(rk_model *m) {
    int64_t n = rk_model_meta_count(m);
    for (int64_t i = -1; i <= n; i++) {
        const char *key; int32_t t, at; int64_t an;
        if (rk_model_meta_info(m, i, &key, &t, &at, &an) != RK_OK) { require_message("info"); continue; }
        if (rk_model_meta_find(m, key) != i) abort();
        if (t == RK_META_STRING) {
            const char *s; uint64_t len;
            if (rk_model_meta_str(m, i, &s, &len) != RK_OK) abort();
            volatile char c = 0; for (uint64_t k = 0; k < len; k++) c ^= s[k]; (void)c;
        } else if (t == RK_META_ARRAY && at == RK_META_STRING) {
            uint64_t total;
            if (rk_model_meta_strs(m, i, NULL, 0, NULL, 0, &total) != RK_OK) abort();
            char *buf = malloc(total ? total : 1); int64_t *off = malloc((size_t)(an + 1) * 8);
            if (rk_model_meta_strs(m, i, buf, total, off, an + 1, NULL) != RK_OK) abort();
            if (off[an] != (int64_t)total) abort();
            free(buf); free(off);
        } else if (t != RK_META_ARRAY || at != RK_META_ARRAY) {
            size_t cap = 8 * (size_t)(t == RK_META_ARRAY ? an + 1 : 1);
            void *buf = malloc(cap);
            if (rk_model_meta_data(m, i, buf, cap) != RK_OK) require_message("data");
            free(buf);
        } else if (rk_model_meta_data(m, i, NULL, 0) == RK_OK) abort();
    }
}

static void exercise(rk_model *m) {
    walk_meta(m);
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
    if (rk_session_set_eviction(s, "restkv", "budget=0.5,window=2") == RK_OK) {
        if (rk_session_compress(s) != RK_OK) require_message("rk_session_compress");
    } else {
        require_message("rk_session_set_eviction");
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
