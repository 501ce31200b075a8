"""Numpy reference of the eviction policies h2o, tova, snapkv, pyramidkv and adakv.

Written from the policies' definitions (the top comments of src/evict/policies/*.c,
eviction-policies.md c.2-c.6) and the keep-set rule of src/evict/evict.c, not from the
C code: float64 throughout, plain loops where they read more clearly.

    ref = prefix_reference(path, tokens, "snapkv", budget=0.1)
    ref.keep[(layer, kv_head)]      # sorted kept positions
    ref.counts[(layer, kv_head)]    # tokens that buffer keeps
    ref.min_gap                     # smallest relative score gap at any selection boundary

* ``prefix_reference`` scores a prompt compressed once (prefix schedule) from the
  q/k/v of ``reference_forward.reference_logits(..., capture=...)``.
* ``Decoder`` is a float64 re-implementation of the engine's per-(layer, kv-head)
  KV buffers: eval appends and attends (a query sees the slots whose position is
  <= its own), keeps the accumulated-attention statistics and the last `window`
  queries as the engine does, and compresses with the same rules. It gives the
  logits after a compression and simulates the streaming schedule token by token.

A selection is only reproducible in float32 if the scores it compares are not
(nearly) tied: every selection records the relative gap between the last score
taken and the first score left (and AdaKV the gap at its global top-T cut);
``min_gap`` is the smallest of them, which tests assert to be well above float32
noise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reference_forward import GGUFModel, reference_logits, rms_norm, rope, silu

DEFAULTS = dict(window=32, kernel=5, pyramid_beta=20.0, ada_floor=0.2, ada_base="snapkv")

# which statistics each policy scores with, and what the shared code protects
POLICIES = {
    "h2o": dict(stats="acc", keep_window=False, keep_last=False),
    "tova": dict(stats="window", keep_window=False, keep_last=True),
    "snapkv": dict(stats="window", keep_window=True, keep_last=False),
    "pyramidkv": dict(stats="window", keep_window=True, keep_last=False),
    "adakv": dict(stats="window", keep_window=True, keep_last=False),
}


def budget_tokens(budget: float, n: int) -> int:
    """Tokens kept per head: a fraction (as a float32, like the C field) of n, floored, at least 1; or a count."""
    b = float(np.float32(budget))
    if b > 1.0:
        return int(b)
    return max(1, int(b * n + 1e-4))


def rel_gap(a: float, b: float) -> float:
    """Relative distance of two scores (inf when one side is empty)."""
    if a is None or b is None:
        return np.inf
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


# ---------------------------------------------------------------- statistics


def window_attention(q_win, win_pos, keys, positions, group):
    """A[h][i, j]: softmax of window query i (head h) over the slots j of kv-head h // group it
    may see (position <= win_pos[i]), 0 elsewhere. q_win [n_win, H, d]; keys[g] [n_g, d]."""
    n_heads, d = q_win.shape[1], q_win.shape[2]
    out = []
    for h in range(n_heads):
        g = h // group
        s = q_win[:, h, :] @ keys[g].T / np.sqrt(d)
        visible = positions[g][None, :] <= np.asarray(win_pos)[:, None]
        mx = np.where(visible, s, -np.inf).max(axis=1, keepdims=True)
        p = np.where(visible, np.exp(s - np.where(np.isfinite(mx), mx, 0.0)), 0.0)
        tot = p.sum(axis=1, keepdims=True)
        out.append(p / np.where(tot > 0, tot, 1.0))  # a query that sees no slot: all 0
    return out


def avg_pool(x, k):
    """torch avg_pool1d(kernel k, stride 1, padding k//2, count_include_pad): zero padded, divisor k."""
    half = k // 2
    xp = np.concatenate([np.zeros(half), x, np.zeros(half)])
    return np.array([xp[j:j + k].sum() / k for j in range(len(x))])


def snapkv_scores(A, positions, win_pos, group, kernel):
    """Per kv-head: mean over the group of pool(Σ_i A[h,i,j] / #window queries seeing j)."""
    win_pos = np.asarray(win_pos)
    out = []
    for g, pos in enumerate(positions):
        seen = (win_pos[:, None] >= pos[None, :]).sum(axis=0)
        per_head = []
        for h in range(g * group, (g + 1) * group):
            a = np.where(seen > 0, A[h].sum(axis=0) / np.maximum(seen, 1), 0.0)
            per_head.append(avg_pool(a, kernel))
        out.append(np.mean(per_head, axis=0))
    return out


def tova_scores(A, positions, group):
    """Mean over all query heads of the last window query's attention on each position (0 from a
    head whose kv-head does not hold it), the same for every kv-head holding the position."""
    n_heads = len(A)
    per_pos = {}
    for h in range(n_heads):
        for j, p in enumerate(positions[h // group]):
            per_pos[int(p)] = per_pos.get(int(p), 0.0) + A[h][-1, j]
    return [np.array([per_pos[int(p)] / n_heads for p in pos]) for pos in positions]


def h2o_scores(acc, cnt):
    """Per kv-head: mean over its query heads of acc / cnt. acc[g] [group, n_g], cnt[g] [n_g]."""
    return [np.where(c > 0, a.mean(axis=0) / np.maximum(c, 1), 0.0) for a, c in zip(acc, cnt)]


# ---------------------------------------------------------------- budgets


def protected_window(window, budget):
    return min(window, budget // 2)


def pyramid_budget(B, window, L, n_layers, beta, layer):
    """PyramidKV (KVCache-Factory) per-head budget of one layer, with w' = min(w, B//2)."""
    w = protected_window(window, B)
    b = B - w
    if L <= B or L < 2 * b or n_layers < 2:
        return B
    mn = int(np.floor(b / beta))
    mx = 2 * b - mn
    if mx >= L - w:
        mx = L - w
        mn = 2 * b - mx
    steps = (mx - mn) // (n_layers - 1)
    return mx - layer * steps + w


def adakv_budgets(scores, positions, B, window, alpha, normalise):
    """AdaKV per-head budgets of one layer (H' = n_kv_heads) and the gap at the global top-T cut."""
    alpha = float(np.float32(alpha))
    w = protected_window(window, B)
    base = B - w
    floor_ = int(base * alpha)
    Hk = len(scores)
    T = Hk * base
    prefix = [max(len(p) - w, 0) for p in positions]
    entries = []  # (score, position, head) of every prefix slot
    for g in range(Hk):
        s = np.asarray(scores[g][:prefix[g]], dtype=np.float64)
        if normalise and np.isfinite(s.sum()) and s.sum() > 0:
            s = s / s.sum()
        entries += [(float(s[j]), int(positions[g][j]), g) for j in range(prefix[g])]
    total = len(entries)
    gap = np.inf
    if total > T:
        entries.sort(key=lambda e: (-e[0], -e[1], e[2]))
        count = [0] * Hk
        for e in entries[:T]:
            count[e[2]] += 1
        gap = rel_gap(entries[T - 1][0], entries[T][0])
    else:
        count = prefix[:]
    x = [c * (1.0 - alpha) for c in count]
    r = [float(np.round(v)) for v in x]  # half to even
    rem = [v - rv for v, rv in zip(x, r)]
    cap = [min(max(int(rv) + floor_, 0), prefix[g]) for g, rv in enumerate(r)]
    target = min(total, T)
    order = sorted(range(Hk), key=lambda g: (-rem[g], g))  # most rounded down first, ties: lower head
    if sum(cap) < target:
        while sum(cap) < target:
            moved = False
            for g in order:
                if sum(cap) < target and cap[g] < prefix[g]:
                    cap[g] += 1
                    moved = True
            if not moved:
                break
    elif sum(cap) > target:
        order = order[::-1]  # most rounded up first
        while sum(cap) > target:
            moved = False
            for g in order:
                if sum(cap) > target and cap[g] > 0:
                    cap[g] -= 1
                    moved = True
            if not moved:
                break
    return [c + w for c in cap], gap


# ---------------------------------------------------------------- keep-set rule


def keep_slots(pos, scores, c, *, window, keep_window, keep_last):
    """evict.c's rule for one buffer keeping c of its n tokens: protect the newest
    min(window, c//2) (keep_window) or at least the newest one (keep_last), then take the
    highest scores, ties to the newer position. Returns (kept slot mask, relative gap)."""
    n = len(pos)
    c = max(c, 1)
    keep = np.zeros(n, dtype=bool)
    if c >= n:
        keep[:] = True
        return keep, np.inf
    w = min(window, c // 2) if keep_window else 0
    if keep_last and w < 1:
        w = 1
    for j in sorted(range(n), key=lambda j: -pos[j])[:min(w, c)]:
        keep[j] = True
    rest = sorted((j for j in range(n) if not keep[j]), key=lambda j: (-scores[j], -pos[j]))
    take = c - int(keep.sum())
    for j in rest[:take]:
        keep[j] = True
    gap = np.inf
    if 0 < take < len(rest):
        gap = rel_gap(scores[rest[take - 1]], scores[rest[take]])
    return keep, gap


@dataclass
class Selection:
    keep: dict = field(default_factory=dict)     # (layer, kv_head) -> sorted kept positions
    counts: dict = field(default_factory=dict)   # (layer, kv_head) -> tokens kept
    min_gap: float = np.inf


def select_layer(policy, params, layer, n_layers, B, L, positions, A=None, win_pos=None, acc=None, cnt=None,
                 group=1, scores=None):
    """Scores, budgets and keep masks of one layer: (masks per kv-head, budgets, smallest gap).
    `scores` (per kv-head) replaces the policy's own, e.g. restkv scores for adakv's restkv base."""
    rule = POLICIES[policy]
    if scores is not None:
        pass
    elif policy == "h2o":
        scores = h2o_scores(acc, cnt)
    elif policy == "tova":
        scores = tova_scores(A, positions, group)
    elif policy == "adakv" and params["ada_base"] != "snapkv":
        raise NotImplementedError("the numpy reference has no restkv scores")
    else:
        scores = snapkv_scores(A, positions, win_pos, group, params["kernel"])
    Hk = len(positions)
    gap = np.inf
    if policy == "pyramidkv":
        budgets = [pyramid_budget(B, params["window"], L, n_layers, params["pyramid_beta"], layer)] * Hk
    elif policy == "adakv":
        budgets, gap = adakv_budgets(scores, positions, B, params["window"], params["ada_floor"],
                                     params["ada_base"] == "restkv")
    else:
        budgets = [B] * Hk
    masks = []
    for g in range(Hk):
        m, gg = keep_slots(positions[g], scores[g], budgets[g], window=params["window"],
                           keep_window=rule["keep_window"], keep_last=rule["keep_last"])
        masks.append(m)
        gap = min(gap, gg)
    return masks, budgets, gap


# ---------------------------------------------------------------- prefix schedule from reference_forward


_CAPTURES: dict = {}


def _capture(path: str, tokens: tuple) -> dict:
    """reference_forward's per-layer q/k/v of a prompt (cached: tests score one prompt many ways)."""
    if (path, tokens) not in _CAPTURES:
        cap: dict = {}
        reference_logits(path, list(tokens), capture=cap)
        _CAPTURES[(path, tokens)] = cap
    return _CAPTURES[(path, tokens)]


def prefix_reference(path, tokens, policy, budget, **params) -> Selection:
    """Keep-sets after evaluating `tokens` with the full cache and compressing once."""
    params = {**DEFAULTS, **params}
    cap = _capture(str(path), tuple(int(t) for t in tokens))
    n = len(tokens)
    n_layers = len(cap["q"])
    n_heads, n_kv = cap["q"][0].shape[1], cap["k"][0].shape[1]
    group = n_heads // n_kv
    B = budget_tokens(budget, n)
    all_pos = np.arange(n)
    nw = min(params["window"], n)
    win_pos = all_pos[n - nw:]
    sel = Selection()
    for il in range(n_layers):
        q, k = cap["q"][il], cap["k"][il]
        positions = [all_pos] * n_kv
        keys = [k[:, g, :] for g in range(n_kv)]
        A = acc = cnt = None
        if POLICIES[policy]["stats"] == "window":
            A = window_attention(q[n - nw:], win_pos, keys, positions, group)
        else:  # attention of every query, summed per key, and how many queries saw each key
            full = window_attention(q, all_pos, keys, positions, group)
            acc = [np.stack([full[h].sum(axis=0) for h in range(g * group, (g + 1) * group)]) for g in range(n_kv)]
            cnt = [(n - all_pos).astype(np.float64)] * n_kv
        masks, budgets, gap = select_layer(policy, params, il, n_layers, B, n, positions, A, win_pos, acc, cnt, group)
        sel.min_gap = min(sel.min_gap, gap)
        for g in range(n_kv):
            sel.keep[(il, g)] = np.sort(all_pos[masks[g]])
            sel.counts[(il, g)] = int(masks[g].sum())
    return sel


# ---------------------------------------------------------------- incremental float64 engine


class Decoder:
    """Per-(layer, kv-head) KV buffers, evaluated and compressed as the engine does, in float64.

    eval(tokens) processes them in forward passes like rk_session_eval (at most n_batch, and under
    the streaming schedule no more than budget + slack + 1 − used), appending every token's K/V
    before the attention of the pass; after each pass the streaming schedule compresses to the
    budget when a buffer holds more than budget + slack."""

    def __init__(self, path, *, policy="full", budget=1.0, schedule="prefix", slack=0, n_ctx=None,
                 n_batch=512, **params):
        m = self.m = GGUFModel(path)
        self.policy, self.budget, self.schedule, self.slack = policy, budget, schedule, slack
        self.params = {**DEFAULTS, **params}
        self.n_ctx, self.n_batch = n_ctx, n_batch
        self.group = m.n_head // m.n_head_kv
        self.ff = m.weight("rope_freqs.weight") if "rope_freqs.weight" in m.tensors else None
        self.w = {}
        for il in range(m.n_layer):
            for name in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate",
                         "ffn_up", "ffn_down"):
                self.w[(il, name)] = m.weight(f"blk.{il}.{name}.weight")
        self.out_norm = m.weight("output_norm.weight")
        self.out = m.weight("output.weight" if "output.weight" in m.tensors else "token_embd.weight")
        L, Hk, d = m.n_layer, m.n_head_kv, m.head_dim
        self.pos = [[np.zeros(0, dtype=np.int64) for _ in range(Hk)] for _ in range(L)]
        self.k = [[np.zeros((0, d)) for _ in range(Hk)] for _ in range(L)]
        self.v = [[np.zeros((0, d)) for _ in range(Hk)] for _ in range(L)]
        self.acc = [[np.zeros((self.group, 0)) for _ in range(Hk)] for _ in range(L)]
        self.cnt = [[np.zeros(0) for _ in range(Hk)] for _ in range(L)]
        self.win = []  # (position, [q per layer [H, d]]) of the last `window` evaluated tokens
        self.next_pos = 0
        self.min_gap = np.inf
        self.n_evictions = 0

    def max_used(self):
        return max(len(p) for row in self.pos for p in row)

    def _streaming(self):
        return self.schedule == "streaming" and self.policy != "full"

    def eval(self, tokens):
        tokens = [int(t) for t in tokens]
        out, i = [], 0
        while i < len(tokens):
            nb = min(len(tokens) - i, self.n_batch)
            if self._streaming():
                room = max(1, budget_tokens(self.budget, self.n_ctx) + self.slack + 1 - self.max_used())
                nb = min(nb, room)
            out.append(self._forward(tokens[i:i + nb]))
            i += nb
            if self._streaming():
                B = budget_tokens(self.budget, self.n_ctx)
                if self.max_used() > B + self.slack:
                    self.compress_to(B)
        return np.concatenate(out)

    def _forward(self, tokens):
        m, G = self.m, self.group
        n, d = len(tokens), m.head_dim
        pos = np.arange(self.next_pos, self.next_pos + n)
        x = m.embedding_rows(tokens)
        qs = []
        for il in range(m.n_layer):
            w = lambda name: self.w[(il, name)]  # noqa: E731
            h = rms_norm(x, w("attn_norm"), m.eps)
            q = (h @ w("attn_q").T).reshape(n, m.n_head, d)
            k = (h @ w("attn_k").T).reshape(n, m.n_head_kv, d)
            v = (h @ w("attn_v").T).reshape(n, m.n_head_kv, d)
            q, k = rope(q, pos.astype(np.float64), m, self.ff), rope(k, pos.astype(np.float64), m, self.ff)
            qs.append(q)
            for g in range(m.n_head_kv):
                self.pos[il][g] = np.concatenate([self.pos[il][g], pos])
                self.k[il][g] = np.concatenate([self.k[il][g], k[:, g, :]])
                self.v[il][g] = np.concatenate([self.v[il][g], v[:, g, :]])
                self.acc[il][g] = np.concatenate([self.acc[il][g], np.zeros((G, n))], axis=1)
                self.cnt[il][g] = np.concatenate([self.cnt[il][g], np.zeros(n)])
            attn = np.empty((n, m.n_head, d))
            for hq in range(m.n_head):
                g = hq // G
                P = self.pos[il][g]
                s = q[:, hq, :] @ self.k[il][g].T / np.sqrt(d)
                visible = P[None, :] <= pos[:, None]
                s = np.where(visible, s, -np.inf)
                a = np.exp(s - s.max(axis=1, keepdims=True))
                a /= a.sum(axis=1, keepdims=True)
                self.acc[il][g][hq % G] += a.sum(axis=0)
                if hq % G == 0:
                    self.cnt[il][g] += visible.sum(axis=0)
                attn[:, hq, :] = a @ self.v[il][g]
            x = x + attn.reshape(n, -1) @ w("attn_output").T
            h = rms_norm(x, w("ffn_norm"), m.eps)
            x = x + (silu(h @ w("ffn_gate").T) * (h @ w("ffn_up").T)) @ w("ffn_down").T
        for t in range(n):
            self.win.append((int(pos[t]), [qs[il][t] for il in range(m.n_layer)]))
        self.win = self.win[-self.params["window"]:]
        self.next_pos += n
        return rms_norm(x, self.out_norm, m.eps) @ self.out.T

    def compress(self):
        """Prefix schedule: compress every buffer to the budget of the tokens cached now."""
        self.compress_to(budget_tokens(self.budget, self.max_used()))

    def compress_to(self, B):
        m, G = self.m, self.group
        L = self.max_used()
        win_pos = [p for p, _ in self.win]
        for il in range(m.n_layer):
            positions = self.pos[il]
            A = None
            if POLICIES[self.policy]["stats"] == "window":
                q_win = np.stack([qq[il] for _, qq in self.win])
                A = window_attention(q_win, win_pos, self.k[il], positions, G)
            masks, _, gap = select_layer(self.policy, self.params, il, m.n_layer, B, L, positions, A, win_pos,
                                         self.acc[il], self.cnt[il], G)
            self.min_gap = min(self.min_gap, gap)
            self.keep(il, masks)
        self.n_evictions += 1

    def keep(self, il, masks):
        """Compacts layer il's buffers to the slots masks[g] marks (slot order kept)."""
        for g, mk in enumerate(masks):
            self.pos[il][g] = self.pos[il][g][mk]
            self.k[il][g] = self.k[il][g][mk]
            self.v[il][g] = self.v[il][g][mk]
            self.acc[il][g] = self.acc[il][g][:, mk]
            self.cnt[il][g] = self.cnt[il][g][mk]

    def keep_positions(self, keep: dict):
        """Compacts every buffer to the given positions ((layer, kv_head) -> positions)."""
        for il in range(self.m.n_layer):
            self.keep(il, [np.isin(self.pos[il][g], keep[(il, g)]) for g in range(self.m.n_head_kv)])

    def selection(self) -> Selection:
        sel = Selection(min_gap=self.min_gap)
        for il in range(self.m.n_layer):
            for g in range(self.m.n_head_kv):
                sel.keep[(il, g)] = np.sort(self.pos[il][g])
                sel.counts[(il, g)] = len(self.pos[il][g])
        return sel
