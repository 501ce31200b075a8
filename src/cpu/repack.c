/* repack.c: the interleaved 8-row layouts of repack.h (portable C; the kernels are in quant_avx2_packed.c). */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "error.h"
#include "quant.h"
#include "quant_avx2.h"
#include "repack.h"

static int repack_enabled(void) {
    const char *env = getenv("RK_REPACK");
    return !(env && strcmp(env, "0") == 0);
}

/* The layouts are one pattern: a file block is a run of `halves` f16 fields at byte
 * `h_off` and `qs` other bytes at `q_off` (Q6_K: its quants first, d last); its packed
 * form puts half k of row r at halves[8 k + r], then byte run bytes 4c..4c+3 of row r
 * at [32 c + 4 r]. */
typedef struct { int h_off, halves, q_off, qs; } block_shape;

static block_shape shape_of(int32_t type) {
    switch (type) {
    case RK_TYPE_Q4_0: return (block_shape){0, 1, 2, QK / 2};
    case RK_TYPE_Q4_1: return (block_shape){0, 2, 4, QK / 2};
    case RK_TYPE_Q5_0: return (block_shape){0, 1, 2, 4 + QK / 2};
    case RK_TYPE_Q4_K: return (block_shape){0, 2, 4, 12 + QK_K / 2};
    case RK_TYPE_Q5_K: return (block_shape){0, 2, 4, 12 + QK_K / 8 + QK_K / 2};
    case RK_TYPE_Q6_K: return (block_shape){QK_K / 2 + QK_K / 4 + QK_K / 16, 1, 0, QK_K / 2 + QK_K / 4 + QK_K / 16};
    default: return (block_shape){0, 1, 2, QK}; /* Q8_0 */
    }
}

/* row r's block: from the file layout into a packed block (to_packed), or back */
static void move_block(block_shape sh, uint8_t *dst, const uint8_t *src, int r, int to_packed) {
    const size_t ph = 2 * RK_PACK_ROWS * (size_t)sh.halves; /* where the packed chunks start */
    for (int k = 0; k < sh.halves; k++) {
        const size_t p = 2 * ((size_t)RK_PACK_ROWS * k + r), f = (size_t)sh.h_off + 2 * (size_t)k;
        memcpy(dst + (to_packed ? p : f), src + (to_packed ? f : p), 2);
    }
    for (int c = 0; c < sh.qs / 4; c++) {
        const size_t p = ph + 32 * (size_t)c + 4 * (size_t)r, f = (size_t)sh.q_off + 4 * (size_t)c;
        memcpy(dst + (to_packed ? p : f), src + (to_packed ? f : p), 4);
    }
}

int rk_repack_supported(const rk_weight *w) {
    const rk_type_traits *tr = rk_get_type_traits(w->type);
    if (!tr || !tr->vec_dot_packed || w->n_out % RK_PACK_ROWS || w->n_in % tr->blck || !repack_enabled()) return 0;
    const block_shape sh = shape_of(w->type);
    return 2 * sh.halves + sh.qs == tr->type_size; /* a kernel without its shape here stays unpacked */
}

void rk_repack(const rk_weight *w, void *dst) {
    const block_shape sh = shape_of(w->type);
    const rk_type_traits *tr = rk_get_type_traits(w->type);
    const size_t bs = (size_t)tr->type_size, nb = (size_t)(w->n_in / tr->blck);
    for (int64_t row = 0; row < w->n_out; row++) {
        const uint8_t *src = (const uint8_t *)w->data + (size_t)row * w->row_bytes;
        uint8_t *group = (uint8_t *)dst + (size_t)(row / RK_PACK_ROWS) * RK_PACK_ROWS * w->row_bytes;
        for (size_t b = 0; b < nb; b++)
            move_block(sh, group + b * RK_PACK_ROWS * bs, src + b * bs, (int)(row % RK_PACK_ROWS), 1);
    }
}

void rk_packed_row_to_float(const rk_weight *w, int64_t row, float *dst) {
    const rk_type_traits *tr = rk_get_type_traits(w->type);
    const block_shape sh = shape_of(w->type);
    const size_t bs = (size_t)tr->type_size, nb = (size_t)(w->n_in / tr->blck);
    const uint8_t *group = (const uint8_t *)w->packed + (size_t)(row / RK_PACK_ROWS) * RK_PACK_ROWS * w->row_bytes;
    /* one block in the file layout (at most 210 bytes), then the type's own dequantisation */
    _Alignas(8) uint8_t blk[256];
    for (size_t b = 0; b < nb; b++) {
        move_block(sh, blk, group + b * RK_PACK_ROWS * bs, (int)(row % RK_PACK_ROWS), 0);
        tr->to_float(blk, dst + b * (size_t)tr->blck, tr->blck);
    }
}

/* the whole pages inside [p, p + n): file pages already copied, no longer needed in memory */
static void drop_pages(const void *p, size_t n) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t b = ((uintptr_t)p + page - 1) & ~(page - 1), e = ((uintptr_t)p + n) & ~(page - 1);
    if (e > b) madvise((void *)b, e - b, MADV_DONTNEED); /* a private, unwritten file mapping: re-read on access */
}

/* the matrices a forward pass multiplies: output (token_embd itself when tied), then each
 * layer's seven; token_embd on its own is only looked up, row by row, and stays as stored */
static rk_weight *multiplied(rk_model *m, int i) {
    if (i == 0) return &m->output;
    i -= 1;
    if (i >= 7 * m->n_layers) return NULL;
    rk_layer *L = &m->layers[i / 7];
    rk_weight *ws[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
    return ws[i % 7];
}

rk_status rk_model_repack(rk_model *m) {
    size_t total = 0;
    rk_weight *w;
    for (int i = 0; (w = multiplied(m, i)); i++)
        if (rk_repack_supported(w)) total += (size_t)w->n_out * w->row_bytes;
    if (!total) return RK_OK;
    /* 2 MiB-aligned and marked for transparent huge pages where the kernel offers them:
     * a decode step streams every weight once, and 4 KiB pages would cost a TLB miss each */
    const size_t huge = (size_t)2 << 20;
    if (posix_memalign(&m->packed, total >= huge ? huge : 64, total)) {
        m->packed = NULL;
        return rk_fail(RK_ERR_OOM, "cannot allocate %zu bytes for the repacked weights", total);
    }
#ifdef MADV_HUGEPAGE
    if (total >= huge) madvise(m->packed, total, MADV_HUGEPAGE);
#endif
    m->packed_bytes = total;
    uint8_t *p = m->packed;
    for (int i = 0; (w = multiplied(m, i)); i++) {
        if (!rk_repack_supported(w)) continue;
        const size_t bytes = (size_t)w->n_out * w->row_bytes;
        rk_repack(w, p);
        w->packed = p;
        p += bytes;
        if (m->gguf->mapped) drop_pages(w->data, bytes);
    }
    if (m->output.data == m->tok_embd.data) m->tok_embd.packed = m->output.packed; /* tied: looked up there */
    return RK_OK;
}
