/*
 * driver.c: a standalone fuzzing driver for compilers without libFuzzer (gcc).
 * It replays the corpus, then mutates corpus files at random (bit flips,
 * interesting integers over 1/2/4/8-byte fields, insertions, deletions,
 * truncations, copied chunks) and feeds each to LLVMFuzzerTestOneInput, until
 * -max_total_time seconds or -runs inputs. It takes libFuzzer's flags that
 * tests/fuzz/run.sh passes, so either build runs the same way. A sanitizer
 * report kills the process; the input that caused it is saved first
 * (crash-input.gguf) through the sanitizer's death callback.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
void __sanitizer_set_death_callback(void (*callback)(void));

typedef struct {
    uint8_t *data;
    size_t size;
} blob;

static blob *corpus;
static size_t n_corpus, cap_corpus;
static const uint8_t *cur;
static size_t cur_size;

static void save_current(void) {
    FILE *f = fopen("crash-input.gguf", "wb");
    if (f) {
        fwrite(cur, 1, cur_size, f);
        fclose(f);
        fprintf(stderr, "driver: the input that crashed is in crash-input.gguf\n");
    }
}

static void add_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (n < 0 || n > (64 << 20)) {
        fclose(f);
        return;
    }
    uint8_t *d = malloc((size_t)n + 1);
    if (!d || fread(d, 1, (size_t)n, f) != (size_t)n) {
        free(d);
        fclose(f);
        return;
    }
    fclose(f);
    if (n_corpus == cap_corpus) {
        cap_corpus = cap_corpus ? 2 * cap_corpus : 64;
        corpus = realloc(corpus, cap_corpus * sizeof *corpus);
    }
    corpus[n_corpus++] = (blob){d, (size_t)n};
}

static void add_path(const char *path) {
    struct stat st;
    if (stat(path, &st)) return;
    if (!S_ISDIR(st.st_mode)) {
        add_file(path);
        return;
    }
    DIR *d = opendir(path);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", path, e->d_name);
        add_file(p);
    }
    closedir(d);
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static const uint64_t interesting[] = {0, 1, 2, 3, 4, 7, 8, 16, 31, 32, 64, 127, 128, 255, 256, 1023, 4096, 32768,
                                       65535, 65536, 0x7fffffffu, 0x80000000u, 0xffffffffu, 0x100000000ull,
                                       0x7fffffffffffffffull, 0x8000000000000000ull, 0xffffffffffffffffull};

/* one mutation of buf (capacity cap) in place; returns the new size */
static size_t mutate(uint8_t *buf, size_t size, size_t cap) {
    size_t pos = size ? rnd() % size : 0;
    switch (rnd() % 7) {
    case 0: /* bit flip */
        if (size) buf[pos] ^= (uint8_t)(1u << (rnd() % 8));
        return size;
    case 1: { /* interesting integer over a 1/2/4/8-byte field */
        size_t w = (size_t)1 << (rnd() % 4);
        if (pos + w > size) return size;
        uint64_t v = interesting[rnd() % (sizeof interesting / sizeof *interesting)];
        if (rnd() % 4 == 0) v += rnd() % 3 - 1;
        memcpy(buf + pos, &v, w); /* little-endian, as GGUF */
        return size;
    }
    case 2: /* random byte */
        if (size) buf[pos] = (uint8_t)rnd();
        return size;
    case 3: { /* delete a run */
        size_t n = 1 + rnd() % 16;
        if (pos + n > size) n = size - pos;
        memmove(buf + pos, buf + pos + n, size - pos - n);
        return size - n;
    }
    case 4: { /* insert a run of random bytes */
        size_t n = 1 + rnd() % 16;
        if (size + n > cap) return size;
        memmove(buf + pos + n, buf + pos, size - pos);
        for (size_t i = 0; i < n; i++) buf[pos + i] = (uint8_t)rnd();
        return size + n;
    }
    case 5: /* truncate */
        return pos;
    default: { /* copy a chunk from elsewhere in the input */
        if (!size) return size;
        size_t from = rnd() % size, n = 1 + rnd() % 32;
        if (from + n > size) n = size - from;
        if (pos + n > size) n = size - pos;
        memmove(buf + pos, buf + from, n);
        return size;
    }
    }
}

int main(int argc, char **argv) {
    double max_time = 60;
    long long max_runs = -1;
    for (int i = 1; i < argc; i++) {
        if (!strncmp(argv[i], "-max_total_time=", 16)) max_time = atof(argv[i] + 16);
        else if (!strncmp(argv[i], "-runs=", 6)) max_runs = atoll(argv[i] + 6);
        else if (!strncmp(argv[i], "-seed=", 6)) rng_state = (uint64_t)atoll(argv[i] + 6) * 2 + 1;
        else if (argv[i][0] == '-') continue; /* other libFuzzer flags do not apply */
        else add_path(argv[i]);
    }
    if (!n_corpus) {
        fprintf(stderr, "driver: no corpus files given\n");
        return 2;
    }
    __sanitizer_set_death_callback(save_current);
    size_t max_size = 0;
    for (size_t i = 0; i < n_corpus; i++) {
        cur = corpus[i].data;
        cur_size = corpus[i].size;
        LLVMFuzzerTestOneInput(cur, cur_size);
        if (corpus[i].size > max_size) max_size = corpus[i].size;
    }
    size_t cap = max_size + 4096;
    uint8_t *buf = malloc(cap);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long long runs = 0;
    double secs = 0;
    for (;;) {
        if (max_runs >= 0 && runs >= max_runs) break;
        if ((runs & 63) == 0) {
            clock_gettime(CLOCK_MONOTONIC, &t);
            secs = (double)(t.tv_sec - t0.tv_sec) + 1e-9 * (double)(t.tv_nsec - t0.tv_nsec);
            if (secs >= max_time) break;
        }
        const blob *b = &corpus[rnd() % n_corpus];
        size_t size = b->size;
        memcpy(buf, b->data, size);
        for (int k = 1 + (int)(rnd() % 8); k > 0; k--) size = mutate(buf, size, cap);
        /* an exact-size copy, so the sanitizer sees any read past the end */
        uint8_t *in = malloc(size ? size : 1);
        memcpy(in, buf, size);
        cur = in;
        cur_size = size;
        LLVMFuzzerTestOneInput(in, size);
        free(in);
        runs++;
    }
    clock_gettime(CLOCK_MONOTONIC, &t);
    secs = (double)(t.tv_sec - t0.tv_sec) + 1e-9 * (double)(t.tv_nsec - t0.tv_nsec);
    printf("driver: DONE %zu corpus files replayed, %lld mutated inputs in %.0f s (%.0f exec/s), 0 crashes\n",
           n_corpus, runs, secs, secs > 0 ? runs / secs : 0.0);
    free(buf);
    return 0;
}
