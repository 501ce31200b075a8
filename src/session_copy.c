/*
 * session_copy.c: rk_session_copy_state, so one prefill can serve several
 * eviction configurations (a sweep compresses the same prefix once per policy
 * and budget instead of prefilling it again each time).
 */
#include <string.h>

#include "error.h"
#include "session.h"

static rk_status check_compatible(const rk_session *dst, const rk_session *src) {
    if (!dst || !src) return rk_fail(RK_ERR_ARG, "rk_session_copy_state: NULL session");
    if (dst == src) return rk_fail(RK_ERR_ARG, "rk_session_copy_state: source and destination are the same session");
    if (dst->model != src->model)
        return rk_fail(RK_ERR_ARG, "rk_session_copy_state: the sessions are on different models");
    if (dst->n_ctx != src->n_ctx || dst->kv.capacity != src->kv.capacity || dst->kv.type != src->kv.type)
        return rk_fail(RK_ERR_ARG,
                       "rk_session_copy_state: the sessions differ in n_ctx (%d vs %d) or KV type (%s vs %s)",
                       dst->n_ctx, src->n_ctx, dst->kv.type == RK_TYPE_F16 ? "f16" : "f32",
                       src->kv.type == RK_TYPE_F16 ? "f16" : "f32");
    /* an attention mask (RK_POLICY_MASKS_ATTN, "topk") changes the prefill's own outputs: only the same
     * setting may share it */
    if (dst->ev.topk != src->ev.topk || dst->ev.topk_frac != src->ev.topk_frac)
        return rk_fail(RK_ERR_ARG, "rk_session_copy_state: top-k sparse attention differs between the sessions "
                                   "(it changes the prefill itself, which then cannot be shared)");
    /* the destination's policy scores with statistics the source must have gathered */
    if (dst->ev.win && src->ev.win != dst->ev.win)
        return rk_fail(RK_ERR_ARG,
                       "rk_session_copy_state: the destination's policy needs the last %d queries, the source "
                       "kept %d (configure the source with the same window and a scoring policy)",
                       dst->ev.win, src->ev.win);
    if (dst->ev.acc && !src->ev.acc)
        return rk_fail(RK_ERR_ARG,
                       "rk_session_copy_state: the destination's policy needs accumulated attention, which the "
                       "source did not gather (configure the source with a policy whose rk_policy_info.gathers has "
                                   "RK_NEED_ACC, e.g. h2o)");
    return RK_OK;
}

static rk_status copy_state(rk_session *dst, const rk_session *src) {
    rk_status st = check_compatible(dst, src);
    if (st) return st;
    const rk_model *m = src->model;
    const size_t C = (size_t)src->kv.capacity;
    dst->be->kv_copy(dst->bctx, &dst->kv, &src->kv);
    dst->n_past = src->n_past;
    dst->next_pos = src->next_pos;
    memcpy(dst->a.last_h, src->a.last_h, (size_t)m->n_embd * sizeof(float));
    if (dst->ev.win) {
        const size_t dq = (size_t)m->n_heads * m->head_dim;
        memcpy(dst->ev.q_win, src->ev.q_win, (size_t)m->n_layers * dst->ev.win * dq * sizeof(float));
        memcpy(dst->ev.q_win_pos, src->ev.q_win_pos, (size_t)dst->ev.win * sizeof(int32_t));
        dst->ev.q_win_head = src->ev.q_win_head;
        dst->ev.q_win_n = src->ev.q_win_n;
    } else {
        dst->ev.q_win_head = dst->ev.q_win_n = 0;
    }
    if (dst->ev.acc) {
        memcpy(dst->ev.acc, src->ev.acc, (size_t)m->n_layers * m->n_heads * C * sizeof(float));
        memcpy(dst->ev.acc_cnt, src->ev.acc_cnt, (size_t)m->n_layers * m->n_kv_heads * C * sizeof(float));
    }
    return RK_OK;
}

rk_status rk_session_copy_state(rk_session *dst, const rk_session *src) {
    if (!dst || !src) return rk_fail(RK_ERR_ARG, "rk_session_copy_state: NULL session");
    if (dst == src) return check_compatible(dst, src);
    /* the source is read, but a forward pass in another thread would change it under the copy */
    rk_session *from = (rk_session *)src;
    rk_status st = rk_session_enter(dst, "rk_session_copy_state");
    if (st) return st;
    if ((st = rk_session_enter(from, "rk_session_copy_state (source)"))) {
        rk_session_leave(dst);
        return st;
    }
    st = copy_state(dst, src);
    rk_session_leave(from);
    rk_session_leave(dst);
    return st;
}
