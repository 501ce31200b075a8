/*
 * generate.c: how a local application embeds restkv-engine from C.
 *
 *   restkv-generate MODEL.gguf [-n N_TOKENS] [-t THREADS] [--temp T] [--seed S] [TOKEN_ID ...]
 *
 * Loads the model, evaluates the prompt (token ids; start from BOS when none
 * are given), then samples N tokens and prints their text as they come.
 * Text -> ids is the Python package's job (engine.Model.tokenize); e.g.
 *   python -c "import engine; print(*engine.Model('m.gguf').tokenize('Once upon a time'))"
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "restkv.h"

static int sample(const float *logits, int n_vocab, float temp, unsigned *rng) {
    int best = 0;
    for (int i = 1; i < n_vocab; i++)
        if (logits[i] > logits[best]) best = i;
    if (temp <= 0) return best;
    double sum = 0;
    for (int i = 0; i < n_vocab; i++) sum += exp((logits[i] - logits[best]) / temp);
    *rng = *rng * 1103515245u + 12345u;
    double r = (double)(*rng >> 8) / (double)(1u << 24) * sum, acc = 0;
    for (int i = 0; i < n_vocab; i++) {
        acc += exp((logits[i] - logits[best]) / temp);
        if (acc >= r) return i;
    }
    return best;
}

/* A whole decimal integer in [lo, hi], or 0 (and nothing stored). */
static int parse_int(const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return 0;
    *out = (int)v;
    return 1;
}

/* A finite number >= 0 (e.g. "0.8"), or 0 (and nothing stored). */
static int parse_float(const char *s, float *out) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !(v >= 0 && v < 1e30)) return 0;
    *out = (float)v;
    return 1;
}

static void print_piece(const rk_model *m, int id) {
    char buf[256];
    int n = rk_model_token_piece(m, id, buf, sizeof buf, 0);
    if (n > 0) fwrite(buf, 1, n < (int)sizeof buf ? (size_t)n : sizeof buf, stdout);
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fprintf(stderr, "usage: %s MODEL.gguf [-n N_TOKENS] [-t THREADS] [--temp T] [--seed S] [TOKEN_ID ...]\n",
                argv[0]);
        return 2;
    }
    int n_gen = 64, n_threads = 0;
    float temp = 0.0f;
    unsigned seed = 1;
    int32_t prompt[4096];
    int n_prompt = 0;
    for (int i = 2; i < argc; i++) {
        const char *arg = argv[i], *val = i + 1 < argc ? argv[i + 1] : "";
        int ok, v = 0;
        if (!strcmp(arg, "-n")) ok = parse_int(val, 0, 1 << 24, &n_gen), i++;
        else if (!strcmp(arg, "-t")) ok = parse_int(val, 0, 0x7fffffff, &n_threads), i++; /* the library checks it */
        else if (!strcmp(arg, "--temp")) ok = parse_float(val, &temp), i++;
        else if (!strcmp(arg, "--seed")) ok = parse_int(val, 0, 0x7fffffff, &v), seed = (unsigned)v, i++;
        else if ((ok = n_prompt < 4096 && parse_int(arg, -0x7fffffff - 1, 0x7fffffff, &v))) prompt[n_prompt++] = v;
        if (!ok) { /* token ids are checked by the library (rk_session_eval) */
            fprintf(stderr, "error: bad argument '%s%s%s' (see --help)\n", arg, arg[0] == '-' ? " " : "",
                    arg[0] == '-' ? val : "");
            return 2;
        }
    }

    rk_model *model = NULL;
    rk_model_params mp = rk_model_default_params();
    mp.n_threads = n_threads;
    if (rk_model_load(&model, argv[1], &mp) != RK_OK) {
        fprintf(stderr, "error: %s\n", rk_last_error());
        return 1;
    }
    if (n_prompt == 0) prompt[n_prompt++] = rk_model_bos(model) >= 0 ? rk_model_bos(model) : 0;

    rk_session *sess = NULL;
    rk_session_params sp = rk_session_default_params();
    sp.n_ctx = n_prompt + n_gen;
    if (rk_session_init(&sess, model, &sp) != RK_OK) {
        fprintf(stderr, "error: %s\n", rk_last_error());
        rk_model_free(model);
        return 1;
    }
    const int n_vocab = rk_model_n_vocab(model);
    float *logits = malloc(sizeof(float) * (size_t)n_vocab);
    int status = 0;
    for (int i = 0; i < n_prompt; i++) print_piece(model, prompt[i]);
    if (!logits || rk_session_eval(sess, prompt, n_prompt, logits, RK_LOGITS_LAST) != RK_OK) {
        fprintf(stderr, "\nerror: %s\n", logits ? rk_last_error() : "out of memory");
        status = 1;
    }
    for (int i = 0; i < n_gen && !status; i++) {
        int32_t t = sample(logits, n_vocab, temp, &seed);
        if (t == rk_model_eos(model)) break;
        print_piece(model, t);
        if (i + 1 < n_gen && rk_session_eval(sess, &t, 1, logits, RK_LOGITS_LAST) != RK_OK) {
            fprintf(stderr, "\nerror: %s\n", rk_last_error());
            status = 1;
        }
    }
    printf("\n");
    free(logits);
    rk_session_free(sess);
    rk_model_free(model);
    return status;
}
