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

int rk_repack_supported(const rk_weight *w) {
    const rk_type_traits *tr = rk_get_type_traits(w->type);
    return tr && tr->vec_dot_packed && w->n_out % RK_PACK_ROWS == 0 && w->n_in % QK == 0 && repack_enabled();
}

/* the 8 rows' blocks b of group g, gathered: rows[r] = block b of row 8g + r */
static void gather(const rk_weight *w, int64_t g, int64_t b, const uint8_t *rows[RK_PACK_ROWS]) {
    const size_t bs = (size_t)rk_get_type_traits(w->type)->type_size;
    for (int r = 0; r < RK_PACK_ROWS; r++)
        rows[r] = (const uint8_t *)w->data + (size_t)(g * RK_PACK_ROWS + r) * w->row_bytes + (size_t)b * bs;
}

void rk_repack(const rk_weight *w, void *dst) {
    const int64_t nb = w->n_in / QK, ng = w->n_out / RK_PACK_ROWS;
    const uint8_t *rows[RK_PACK_ROWS];
    for (int64_t g = 0; g < ng; g++)
        for (int64_t b = 0; b < nb; b++) {
            gather(w, g, b, rows);
            const size_t i = (size_t)(g * nb + b);
            if (w->type == RK_TYPE_Q4_0) {
                blk_q4_0x8 *o = (blk_q4_0x8 *)dst + i;
                for (int r = 0; r < RK_PACK_ROWS; r++) {
                    const blk_q4_0 *x = (const blk_q4_0 *)rows[r];
                    o->d[r] = x->d;
                    for (int c = 0; c < 4; c++) memcpy(o->qs + 32 * c + 4 * r, x->qs + 4 * c, 4);
                }
            } else if (w->type == RK_TYPE_Q4_1) {
                blk_q4_1x8 *o = (blk_q4_1x8 *)dst + i;
                for (int r = 0; r < RK_PACK_ROWS; r++) {
                    const blk_q4_1 *x = (const blk_q4_1 *)rows[r];
                    o->d[r] = x->d;
                    o->m[r] = x->m;
                    for (int c = 0; c < 4; c++) memcpy(o->qs + 32 * c + 4 * r, x->qs + 4 * c, 4);
                }
            } else { /* Q8_0 */
                blk_q8_0x8 *o = (blk_q8_0x8 *)dst + i;
                for (int r = 0; r < RK_PACK_ROWS; r++) {
                    const blk_q8_0 *x = (const blk_q8_0 *)rows[r];
                    o->d[r] = x->d;
                    for (int c = 0; c < 8; c++) memcpy(o->qs + 32 * c + 4 * r, x->qs + 4 * c, 4);
                }
            }
        }
}

void rk_packed_row_to_float(const rk_weight *w, int64_t row, float *dst) {
    const int64_t nb = w->n_in / QK, g = row / RK_PACK_ROWS;
    const int r = (int)(row % RK_PACK_ROWS);
    for (int64_t b = 0; b < nb; b++) {
        const size_t i = (size_t)(g * nb + b);
        float *y = dst + b * QK;
        if (w->type == RK_TYPE_Q4_0 || w->type == RK_TYPE_Q4_1) {
            const int one = w->type == RK_TYPE_Q4_1;
            const blk_q4_0x8 *o0 = (const blk_q4_0x8 *)w->packed + i;
            const blk_q4_1x8 *o1 = (const blk_q4_1x8 *)w->packed + i;
            const float d = rk_fp16_to_fp32(one ? o1->d[r] : o0->d[r]), m = one ? rk_fp16_to_fp32(o1->m[r]) : 0.0f;
            const uint8_t *qs = one ? o1->qs : o0->qs;
            for (int j = 0; j < 16; j++) {
                const uint8_t q = qs[32 * (j / 4) + 4 * r + j % 4];
                /* the legacy formats' dequantisation: d * (q - 8) for Q4_0, d * q + m for Q4_1 */
                y[j] = one ? d * (float)(q & 0xF) + m : d * (float)((q & 0xF) - 8);
                y[j + 16] = one ? d * (float)(q >> 4) + m : d * (float)((q >> 4) - 8);
            }
        } else {
            const blk_q8_0x8 *o = (const blk_q8_0x8 *)w->packed + i;
            const float d = rk_fp16_to_fp32(o->d[r]);
            for (int j = 0; j < QK; j++) y[j] = d * (float)o->qs[32 * (j / 4) + 4 * r + j % 4];
        }
    }
}

/* the whole pages inside [p, p + n): file pages already copied, no longer needed in memory */
static void drop_pages(const void *p, size_t n) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t b = ((uintptr_t)p + page - 1) & ~(page - 1), e = ((uintptr_t)p + n) & ~(page - 1);
    if (e > b) madvise((void *)b, e - b, MADV_DONTNEED); /* a private, unwritten file mapping: re-read on access */
}

static rk_weight *each_weight(rk_model *m, int i) {
    if (i == 0) return &m->tok_embd;
    if (i == 1) return &m->output;
    i -= 2;
    if (i >= 7 * m->n_layers) return NULL;
    rk_layer *L = &m->layers[i / 7];
    rk_weight *ws[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
    return ws[i % 7];
}

rk_status rk_model_repack(rk_model *m) {
    size_t total = 0;
    rk_weight *w;
    for (int i = 0; (w = each_weight(m, i)); i++)
        if (!(i == 1 && m->output.data == m->tok_embd.data) && rk_repack_supported(w))
            total += (size_t)w->n_out * w->row_bytes;
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
    for (int i = 0; (w = each_weight(m, i)); i++) {
        if (i == 1 && m->output.data == m->tok_embd.data) {
            m->output.packed = m->tok_embd.packed; /* tied: packed once */
            continue;
        }
        if (!rk_repack_supported(w)) continue;
        const size_t bytes = (size_t)w->n_out * w->row_bytes;
        rk_repack(w, p);
        w->packed = p;
        p += bytes;
        if (m->gguf->mapped) drop_pages(w->data, bytes);
    }
    return RK_OK;
}
