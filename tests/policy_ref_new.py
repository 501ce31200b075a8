"""Numpy references of the eviction policies knorm and expected_attention (kvpress baselines).

Written from kvpress (NVIDIA/kvpress @ 8bb29b9, kvpress/presses/knorm_press.py and
expected_attention_press.py) and the keep-set rule of src/evict/evict.c, not from the C code:
float64 throughout. Expected Attention is transcribed line by line from kvpress in the HF
(rotate-half) layout: our GGUF q/k rotate adjacent pairs (2i, 2i+1), which the HF->GGUF
converter produced by permuting the rows, so q and k are permuted back (``to_hf``) before the
transcription; dot products do not change under a common permutation.

    ref = prefix_reference_new(path, tokens, "expected_attention", budget=0.1, window=32, n_sink=4)
    ref.keep[(layer, kv_head)]    # sorted kept positions
    ref.min_gap                   # smallest relative score gap at a selection boundary

Deviations from kvpress that our per-(layer, kv-head) buffers require (see the top comment of
src/evict/policies/expected_attention.c), reproduced here:
  1. the query statistics come from the last `window` evaluated tokens (the engine's ring), minus
     those at positions < n_sink (kvpress: every prefill query but the first n_sink). With window >=
     the prompt length this is kvpress's query set exactly;
  2. pre-RoPE queries = the post-RoPE ones rotated back by their positions (kvpress recomputes them
     from the hidden states: get_prerope_query_states);
  4. the future positions start after the newest evaluated token (q_len at a prefill);
  5. sinks are positions < n_sink, the softmax runs over each kv-head's own non-sink slots.

``StreamingDecoder`` runs the same scoring on policy_ref.Decoder's float64 buffers (streaming
schedule, and compressions after earlier ones).
"""
from __future__ import annotations

import numpy as np

from policy_ref import Decoder, Selection, _capture, budget_tokens, rel_gap
from reference_forward import rope

NEW_DEFAULTS = dict(window=32, n_sink=4)
# kvpress ExpectedAttentionPress defaults (constants in the C file until the policy v2 interface)
EA_DEFAULTS = dict(n_future_positions=512, use_covariance=True, use_vnorm=True, epsilon=0.0)

# what the shared code protects (rk_policy_i keep_window / keep_sinks / keep_last)
NEW_POLICIES = {
    "knorm": dict(keep_window=False, keep_sinks=False, keep_last=False),
    "expected_attention": dict(keep_window=False, keep_sinks=True, keep_last=False),
}


# ---------------------------------------------------------------- KNorm


def knorm_scores(keys):
    """kvpress KnormPress.score: -keys.norm(dim=-1), per kv-head. keys[g] [n_g, d]."""
    return [-np.linalg.norm(k, axis=-1) for k in keys]


# ---------------------------------------------------------------- Expected Attention, kvpress in HF layout


def to_hf(x, n_rot):
    """GGUF pair layout (2i, 2i+1) -> HF rotate-half layout (i, i + n_rot/2) on the last axis."""
    assert x.shape[-1] == n_rot, "the reference assumes full rotary dims"
    return np.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)


def hf_cos_sin(positions, m, ff):
    """HF LlamaRotaryEmbedding: emb = cat(freqs, freqs); cos, sin [n_pos, head_dim]."""
    i = np.arange(m.n_rot // 2)
    inv_freq = m.freq_base ** (-2.0 * i / m.n_rot)
    if ff is not None:
        inv_freq = inv_freq / ff
    freqs = (np.asarray(positions, dtype=np.float64) * m.freq_scale)[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb), np.sin(emb)


def kvpress_avg_rope(mu, cov, q_len, n_future, m, ff):
    """ExpectedAttentionPress.apply_avg_rope, transcribed: mu [H, d], cov [H, d, d] or None."""
    head_dim = m.head_dim
    position_ids = np.arange(q_len, q_len + n_future)
    cos, sin = hf_cos_sin(position_ids, m, ff)
    Id = np.eye(head_dim)
    P = np.zeros((head_dim, head_dim))
    P[head_dim // 2:, :head_dim // 2], P[:head_dim // 2, head_dim // 2:] = np.eye(head_dim // 2), -np.eye(head_dim // 2)
    R = cos[:, :, None] * Id + sin[:, :, None] * P        # cos.unsqueeze(1) * Id + sin.unsqueeze(1) * P
    R = R.mean(axis=0)
    mu = mu @ R.T
    if cov is not None:
        cov = R @ cov @ R.T
    return mu, cov


def kvpress_query_statistics(q_pre_hf, q_len, m, ff, n_future, use_covariance):
    """ExpectedAttentionPress.get_query_statistics on pre-RoPE queries [N, H, d] (sinks already removed)."""
    qs = np.transpose(q_pre_hf, (1, 0, 2))                  # [H, N, d], kvpress's [b, n, s, d] without b
    mu = qs.mean(axis=1, keepdims=True)
    cov = None
    if use_covariance:
        c = qs - mu
        cov = np.einsum("nsi,nsj->nij", c, c) / qs.shape[1]
    mu = mu[:, 0, :]
    return kvpress_avg_rope(mu, cov, q_len, n_future, m, ff)


def expected_attention_scores(q_post, q_pos, keys, values, positions, m, ff, *, n_sink, n_future_positions,
                              use_covariance, use_vnorm, epsilon):
    """Per kv-head scores of ExpectedAttentionPress.score on our buffers.

    q_post [n_win, H, d]: the window's post-RoPE queries (GGUF layout) at positions q_pos;
    keys / values / positions: per kv-head buffers (post-RoPE keys, GGUF layout)."""
    q_pos = np.asarray(q_pos)
    use = q_pos >= n_sink                                   # kvpress: hidden_states[:, n_sink:]
    if not use.any():                                       # deviation 1: a prompt of <= n_sink tokens
        use[:] = True
    q_pre = rope(q_post[use], -q_pos[use].astype(np.float64), m, ff)   # deviation 2: un-rotate
    q_len = int(q_pos[-1]) + 1                              # deviation 4
    mean_query, cov_query = kvpress_query_statistics(to_hf(q_pre, m.n_rot), q_len, m, ff, n_future_positions,
                                                     use_covariance)
    H, d = mean_query.shape
    Hk = len(keys)
    G = H // Hk
    out = []
    for g in range(Hk):
        pos = np.asarray(positions[g])
        ns = pos >= n_sink                                  # deviation 5: keys[:, :, n_sink:]
        k = to_hf(keys[g][ns], m.n_rot)                     # [n, d]
        per_head = []
        for h in range(g * G, (g + 1) * G):
            s = k @ mean_query[h] / np.sqrt(d)
            if use_covariance:
                s = s + np.einsum("ni,ij,nj->n", k, cov_query[h], k) / d / 2
            s = np.exp(s - s.max()) if len(s) else s
            per_head.append(s / s.sum() if len(s) else s)  # F.softmax(scores, dim=-1)
        sc = np.mean(per_head, axis=0)                      # scores.mean(dim=2) over the group
        if use_vnorm:
            sc = (sc + epsilon) * np.linalg.norm(values[g][ns], axis=-1)
        full = np.empty(len(pos))
        full[ns] = sc
        full[~ns] = (sc.max() if len(sc) else 0.0) + 1      # F.pad(..., value=scores.max() + 1)
        out.append(full)
    return out


# ---------------------------------------------------------------- keep-set rule with sinks


def keep_slots_sinks(pos, scores, c, *, n_sink, window, keep_sinks, keep_window, keep_last):
    """evict.c's rule for one buffer keeping c of its n tokens: the first n_sink positions (keep_sinks,
    in slot order, up to c), the newest min(window, c//2) (keep_window) or the newest (keep_last), then
    the highest scores, ties to the newer position. Returns (kept mask, relative gap at the cut)."""
    n = len(pos)
    c = max(c, 1)
    keep = np.zeros(n, dtype=bool)
    if c >= n:
        keep[:] = True
        return keep, np.inf
    kept = 0
    if keep_sinks:
        for j in range(n):
            if pos[j] < n_sink and kept < c:
                keep[j] = True
                kept += 1
    w = min(window, c // 2) if keep_window else 0
    if keep_last and w < 1:
        w = 1
    taken = 0
    for j in sorted(range(n), key=lambda j: -pos[j]):
        if taken >= w or kept >= c:
            break
        if not keep[j]:
            keep[j] = True
            kept += 1
            taken += 1
    rest = sorted((j for j in range(n) if not keep[j]), key=lambda j: (-scores[j], -pos[j]))
    take = c - kept
    for j in rest[:take]:
        keep[j] = True
    gap = np.inf
    if 0 < take < len(rest):
        gap = rel_gap(scores[rest[take - 1]], scores[rest[take]])
    return keep, gap


def score_layer(policy, params, m, ff, positions, keys, values, q_win=None, win_pos=None):
    if policy == "knorm":
        return knorm_scores(keys)
    if policy == "expected_attention":
        ea = {**EA_DEFAULTS, **{k: params[k] for k in EA_DEFAULTS if k in params}}
        return expected_attention_scores(q_win, win_pos, keys, values, positions, m, ff, n_sink=params["n_sink"], **ea)
    raise ValueError(policy)


def select_layer_new(policy, params, B, positions, scores):
    rule = NEW_POLICIES[policy]
    masks, gap = [], np.inf
    for g in range(len(positions)):
        mk, gg = keep_slots_sinks(np.asarray(positions[g]), scores[g], B, n_sink=params["n_sink"],
                                  window=params["window"], **rule)
        masks.append(mk)
        gap = min(gap, gg)
    return masks, gap


# ---------------------------------------------------------------- prefix schedule


def prefix_reference_new(path, tokens, policy, budget, **params) -> Selection:
    """Keep-sets after evaluating `tokens` with the full cache and compressing once."""
    from reference_forward import GGUFModel

    params = {**NEW_DEFAULTS, **params}
    m = GGUFModel(path)
    ff = m.weight("rope_freqs.weight") if "rope_freqs.weight" in m.tensors else None
    cap = _capture(str(path), tuple(int(t) for t in tokens))
    n = len(tokens)
    n_kv = cap["k"][0].shape[1]
    B = budget_tokens(budget, n)
    all_pos = np.arange(n)
    nw = min(params["window"], n)
    win_pos = all_pos[n - nw:]
    sel = Selection()
    for il in range(len(cap["q"])):
        q, k, v = cap["q"][il], cap["k"][il], cap["v"][il]
        positions = [all_pos] * n_kv
        keys = [k[:, g, :] for g in range(n_kv)]
        values = [v[:, g, :] for g in range(n_kv)]
        scores = score_layer(policy, params, m, ff, positions, keys, values, q[n - nw:], win_pos)
        masks, gap = select_layer_new(policy, params, B, positions, scores)
        sel.min_gap = min(sel.min_gap, gap)
        for g in range(n_kv):
            sel.keep[(il, g)] = np.sort(all_pos[masks[g]])
            sel.counts[(il, g)] = int(masks[g].sum())
    return sel


# ---------------------------------------------------------------- incremental (streaming, repeated compression)


class NewDecoder(Decoder):
    """policy_ref.Decoder (float64 per-(layer, kv-head) buffers, the engine's window ring) compressing
    with knorm / expected_attention."""

    def __init__(self, path, **kw):
        super().__init__(path, **kw)
        self.params = {**NEW_DEFAULTS, **self.params}

    def compress_to(self, B):
        if self.policy not in NEW_POLICIES:
            return super().compress_to(B)
        win_pos = np.array([p for p, _ in self.win])
        for il in range(self.m.n_layer):
            q_win = np.stack([qq[il] for _, qq in self.win])
            scores = score_layer(self.policy, self.params, self.m, self.ff, self.pos[il], self.k[il], self.v[il],
                                 q_win, win_pos)
            masks, gap = select_layer_new(self.policy, self.params, B, self.pos[il], scores)
            self.min_gap = min(self.min_gap, gap)
            self.keep(il, masks)
        self.n_evictions += 1
