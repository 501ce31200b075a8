"""Numpy reference, from first principles, of the ``restkv`` and ``lacache`` eviction policies and of the
shared keep-set rule (src/evict/evict.c), plus a float64 session that evicts as the engine does.

Everything is float64 and written for clarity. The definitions are those of docs/eviction-policies.md
(b.4-b.8, b.11, b.12, b.14 for ReST-KV, with the ablation choices restkv_distance / restkv_smoothing /
restkv_pooling / restkv_metric; c.7 for LaCache) as pinned down in the top comments of
src/evict/policies/restkv.c and src/evict/policies/lacache.c.

    ref = RefSession(path, n_ctx=64, policy="restkv", budget=24, window=8, schedule="streaming", slack=8)
    ref.eval(tokens)                 # batches, forward passes and compressions as the engine makes them
    ref.positions(layer, kv_head)    # original positions kept, in slot order
    ref.log                          # per compression and (layer, kv-head): scores, keep-set, margin
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from reference_forward import GGUFModel, rms_norm, rope, silu

# ---------------------------------------------------------------- shared keep-set rule (evict.c)


def keep_set(pos, scores, c, *, n_sink=4, window=32, keep_sinks=False, keep_window=False, keep_last=False):
    """Slots (indices into pos) that one (layer, kv-head) buffer keeps with budget c, and the margin of the
    score-decided part: (lowest score kept by score) - (highest score dropped), inf when nothing was decided
    by score. Rule: protect sinks (pos < n_sink), then the newest min(window, c // 2) (at least 1 with
    keep_last); fill the rest of c with the highest scores, ties to the newer position."""
    n = len(pos)
    if c >= n:
        return list(range(n)), math.inf
    keep = np.zeros(n, bool)
    kept = 0
    if keep_sinks:
        for sl in range(n):
            if pos[sl] < n_sink and kept < c:
                keep[sl] = True
                kept += 1
    w = min(window, c // 2) if keep_window else 0
    if keep_last and w < 1:
        w = 1
    taken = 0
    for sl in sorted(range(n), key=lambda s: -pos[s]):
        if taken >= w or kept >= c:
            break
        if not keep[sl]:
            keep[sl] = True
            kept += 1
            taken += 1
    rest = [sl for sl in range(n) if not keep[sl]]
    sc = {sl: (-math.inf if np.isnan(scores[sl]) else scores[sl]) for sl in rest}
    rest.sort(key=lambda s: (-sc[s], -pos[s]))
    chosen, dropped = rest[: c - kept], rest[c - kept:]
    for sl in chosen:
        keep[sl] = True
    margin = math.inf
    if chosen and dropped:
        lo, hi = sc[chosen[-1]], sc[dropped[0]]
        if math.isinf(lo) or math.isinf(hi):    # infinities compare exactly in float32 and float64
            margin = math.inf if lo != hi or lo == math.inf else 0.0
        else:
            margin = (lo - hi) / max(abs(lo), abs(hi), 1e-300)
    return [sl for sl in range(n) if keep[sl]], margin


# ---------------------------------------------------------------- ReST-KV


def ema_weights(w: int, alpha: float) -> np.ndarray:
    """b.5: (1-a)^(w-1) for the oldest query, a (1-a)^(w-1-i) for query i >= 1 (oldest first)."""
    return np.array([(1.0 if i == 0 else alpha) * (1.0 - alpha) ** (w - 1 - i) for i in range(w)])


def query_weights(w: int, alpha: float, smoothing: str = "ema") -> np.ndarray:
    """b.6, oldest first: ema; inv-ema = the EMA run newest -> oldest (ema's weights reversed); mean;
    last = the newest query alone."""
    if smoothing == "ema":
        return ema_weights(w, alpha)
    if smoothing == "inv-ema":
        return ema_weights(w, alpha)[::-1].copy()
    if smoothing == "mean":
        return np.full(w, 1.0 / w)
    if smoothing == "last":
        return np.eye(w)[w - 1]
    raise ValueError(smoothing)


def wo_head(wo: np.ndarray, h: int, d: int) -> np.ndarray:
    """W_o^(h): columns h*d..(h+1)*d of W_o [n_embd, n_heads*d]."""
    return wo[:, h * d:(h + 1) * d]


def gram(wo: np.ndarray, n_heads: int, d: int) -> np.ndarray:
    """G_h = W_o^(h)T W_o^(h), [n_heads, d, d] (b.14)."""
    return np.stack([wo_head(wo, h, d).T @ wo_head(wo, h, d) for h in range(n_heads)])


def window_attention(qw: np.ndarray, win_pos, K: np.ndarray, pos) -> np.ndarray:
    """A[i, slot]: softmax of q_i . k / sqrt(d) over the slots with pos <= win_pos[i]; 0 elsewhere."""
    d = K.shape[1]
    pos = np.asarray(pos)
    A = np.zeros((len(win_pos), len(pos)))
    for i, p in enumerate(win_pos):
        vis = pos <= p
        z = K[vis] @ qw[i] / math.sqrt(d)
        e = np.exp(z - z.max())
        A[i, vis] = e / e.sum()
    return A


def aws_kernel(A: np.ndarray, budget: int, k0: int, beta: float):
    """b.7: drift t of the paired top-R sets (R = budget - w, ties by slot: key (A, slot)), kernel, shift,
    and the relative gap between the R-th and (R+1)-th largest weights (inf for an exact tie of masked
    zeros, which both sides break by slot), below which float32 could pick another set."""
    w, n = A.shape
    h2, R = w // 2, min(budget - w, n)
    t, gap = 0.0, math.inf
    if R >= 1 and h2 >= 1:
        diff = 0
        for i in range(h2):
            for row, sign in ((A[i], 1), (A[i + h2], -1)):
                order = np.lexsort((np.arange(n), row))     # ascending by (A, slot)
                diff += sign * int(order[n - R:].sum())
                if R < n:
                    a_in, a_out = row[order[n - R]], row[order[n - R - 1]]
                    if not (a_in == a_out == 0.0):
                        gap = min(gap, (a_in - a_out) / max(abs(a_in), abs(a_out)))
        t = diff / (h2 * R)
    k = max(k0, 2 * math.floor(abs(t) / beta) + 1)
    s = math.floor(t / beta) if t > 0 else math.floor(t / beta) + 1
    return t, k, s, gap


def aws_pool(r: np.ndarray, k: int, s: int) -> np.ndarray:
    """out[j] = mean of r[clamp(j + s + u, 0, P-1)] for u in [-k//2, k//2] (replicate padding)."""
    P = len(r)
    out = np.empty(P)
    for j in range(P):
        idx = np.clip(np.arange(j + s - k // 2, j + s + k // 2 + 1), 0, P - 1)
        vals = r[idx]
        out[j] = math.inf if np.isinf(vals).any() else vals.sum() / k
    return out


def zero_pad_pool(r: np.ndarray, k: int, op: str) -> np.ndarray:
    """F.avg_pool1d / F.max_pool1d(r, k, padding=k//2, stride=1) with ZERO padding (b.7's avgpool, maxpool;
    count_include_pad: the divisor is always k)."""
    x = np.concatenate([np.zeros(k // 2), np.asarray(r, float), np.zeros(k // 2)])
    win = [x[j:j + k] for j in range(len(r))]
    return np.array([w.sum() / k if op == "avgpool" else w.max() for w in win])


def odds_norm(abar: float, x: np.ndarray, Wh: np.ndarray | None, G: np.ndarray | None,
              distance: str = "wo") -> float:
    """abar/(1-abar) dist(x): ||W_o^(h) x|| directly (Wh) or through the Gram matrix (G) for wo, ||x|| for
    value, 1 for none."""
    if abar >= 1.0:
        return math.inf
    if distance == "none":
        nrm = 1.0
    elif distance == "value":
        nrm = float(np.linalg.norm(x))
    else:
        nrm = np.linalg.norm(Wh @ x) if Wh is not None else math.sqrt(max(float(x @ G @ x), 0.0))
    return abar / (1.0 - abar) * nrm


@dataclass
class HeadInfo:
    t: float
    k: int
    s: int
    P: int
    top_r_gap: float
    max_gap: float = math.inf    # maxpool: the smallest relative lead of a window's max over its runner-up


def max_lead(r: np.ndarray, k: int) -> float:
    """The smallest relative gap, over the maxpool windows of r (zero padded), between the max and the
    largest other entry: above float32 noise, the engine's pool picks the same entry for every window, so
    equal pooled scores here are equal there too (ties the keep-set rule breaks the same way)."""
    x = np.concatenate([np.zeros(k // 2), np.asarray(r, float), np.zeros(k // 2)])
    gap = math.inf
    for j in range(len(r)):
        top = np.sort(x[j:j + k])[::-1]
        if len(top) > 1 and not math.isinf(top[0]):
            gap = min(gap, (top[0] - top[1]) / max(abs(top[0]), 1e-300))
    return gap


def _scores_after(A, win_pos, V, pos, P, om, dist):
    """Steps 2-4 and 7 as published: r over the prefix, and the window tokens' scores."""
    abar = om @ A[:, :P]                                     # 2
    obar = abar @ V[:P] if P else np.zeros(V.shape[1])       # 3: prefix only, not renormalised
    r = np.array([dist(abar[j], obar - V[j]) for j in range(P)])   # 4
    win = []
    for j in range(P, len(pos)):                             # 7: weights restricted to the queries that see j
        sees = np.asarray(win_pos) >= pos[j]
        wsum = om[sees].sum()
        win.append(dist(float(om[sees] @ A[sees, j] / wsum), obar - V[j]) if wsum > 0 else math.inf)
    return r, win


def _scores_before(A, win_pos, V, pos, P, om, dist):
    """b.8 'before': r_ij = A_ij/(1-A_ij) dist(o_i - v_j), o_i = A_i . V (query i's full output, window
    included); r_j = sum_i om_i r_ij, renormalised over the queries that see j for window tokens. Terms with
    om_i = 0 or A_ij = 0 are 0."""
    O = A @ V
    out = []
    for j in range(len(pos)):
        sees = [i for i in range(len(win_pos)) if win_pos[i] >= pos[j] and om[i] > 0]
        wsum = sum(om[i] for i in sees)
        s = sum(om[i] * dist(A[i, j], O[i] - V[j]) for i in sees if A[i, j] > 0)
        out.append(s if j < P else (s / wsum if wsum > 0 else math.inf))
    return np.array(out[:P]), out[P:]


def restkv_head_scores(A, win_pos, V, pos, *, Wh=None, G=None, budget, alpha, beta, k0, distance="wo",
                       smoothing="ema", pooling="adaptive", metric="after"):
    """Scores of one query head over the slots of its kv-head (restkv.c steps 1-5, 7, with its ablation
    choices), and the AWS info."""
    w, n = A.shape
    pos = np.asarray(pos)
    om = query_weights(w, alpha, smoothing)                  # 1
    P = int((pos < win_pos[0]).sum())
    assert (pos[:P] < win_pos[0]).all(), "slots are in position order"

    def dist(a, x):
        return odds_norm(a, x, Wh, G, distance)

    r, win = (_scores_before if metric == "before" else _scores_after)(A, win_pos, V, pos, P, om, dist)
    t, k, s, gap = aws_kernel(A, budget, k0, beta)           # 5
    out = np.empty(n)
    max_gap = math.inf
    if not P or pooling == "none":
        out[:P] = r
    elif pooling == "adaptive":
        out[:P] = aws_pool(r, k, s)
    else:
        out[:P] = zero_pad_pool(r, k0, pooling)
        max_gap = max_lead(r, k0) if pooling == "maxpool" else math.inf
    out[P:] = win
    return out, HeadInfo(t, k, s, P, gap, max_gap)


# ---------------------------------------------------------------- LaCache


def lacache_ladder(n_layers: int, span: int, overlap: int):
    """(Bk, A, R) of c.7: Bk = 1 + ceil((N-S)/(S-O)), A = min(ceil(S/(S-O)), Bk), R = Bk - A."""
    bk = max(1, 1 + math.ceil((n_layers - span) / (span - overlap)))
    a = min(math.ceil(span / (span - overlap)), bk)
    return bk, a, bk - a


def lacache_keep(il, pos, c, *, n_layers, span, overlap, n_sink, window):
    """Slots layer il keeps (lacache.c rule): protected sinks and newest window, then ladder passes over the
    rest, oldest first; each pass compacts as many Bk-blocks as needed, keeping offsets
    il % (R+1) .. +A-1 of each block (a partial last block keeps its newest would-be-dropped tokens)."""
    n = len(pos)
    if c >= n:
        return list(range(n))
    bk, a, r = lacache_ladder(n_layers, span, overlap)
    o = il % (r + 1)
    prot = [sl for sl in range(n) if pos[sl] < n_sink][:c]
    w = min(window, c // 2)
    newest = [sl for sl in sorted(range(n), key=lambda s: -pos[s]) if sl not in prot]
    prot += newest[:min(w, c - len(prot))]
    L = [sl for sl in range(n) if sl not in prot]
    drop = n - c
    while drop > 0:
        if r == 0 or len(L) < bk:                       # fallback: the oldest go
            L = L[drop:]
            drop = 0
            break
        nb = min(math.ceil(drop / r), len(L) // bk)
        # as in the original: cursor + (il % (R+1)) + Bk*j + k for j < nb, k < A; the rest of the blocks is
        # dropped, oldest first, up to `drop`
        kept = {L[bk * j + o + kk] for j in range(nb) for kk in range(a)}
        region = L[: nb * bk]
        dropped = [x for x in region if x not in kept][:drop]
        drop -= len(dropped)
        L = [x for x in L if x not in set(dropped)]
    return sorted(set(prot) | set(L))


# ---------------------------------------------------------------- a float64 session that evicts


@dataclass
class Compression:
    layer: int
    kv_head: int
    budget: int
    positions_before: list
    kept: list                   # positions kept
    margin: float
    scores: np.ndarray | None = None
    heads: list = field(default_factory=list)   # HeadInfo of the group's query heads


class RefSession:
    """Mirror of an engine session with original positions: per-(layer, kv-head) caches, the last `window`
    queries, prefix/streaming schedules, batches split as session.c does (n_batch = min(512, n_ctx))."""

    def __init__(self, path, *, n_ctx, policy, budget, window=32, n_sink=4, kernel=5, slack=0,
                 schedule="prefix", ema_alpha=0.3, aws_beta=2000.0, lacache_span=16, lacache_overlap=0,
                 use_gram=False, restkv_distance="wo", restkv_smoothing="ema", restkv_pooling="adaptive",
                 restkv_metric="after"):
        self.m = GGUFModel(path)
        m = self.m
        self._w = {}
        self.n_ctx, self.policy, self.budget, self.window = n_ctx, policy, budget, window
        self.n_sink, self.kernel, self.slack, self.schedule = n_sink, kernel, slack, schedule
        self.alpha, self.beta, self.span, self.overlap = ema_alpha, aws_beta, lacache_span, lacache_overlap
        self.use_gram = use_gram
        self.variant = dict(distance=restkv_distance, smoothing=restkv_smoothing, pooling=restkv_pooling,
                            metric=restkv_metric)
        self.group = m.n_head // m.n_head_kv
        self.ff = self.w("rope_freqs.weight") if "rope_freqs.weight" in m.tensors else None
        # cache[il][g] = dict(pos=list, k=list of arrays, v=list of arrays)
        self.cache = [[dict(pos=[], k=[], v=[]) for _ in range(m.n_head_kv)] for _ in range(m.n_layer)]
        self.qwin = []      # [(pos, [q_layer [n_head, d] for each layer])], oldest first, at most window
        self.next_pos = 0
        self.log: list[list[Compression]] = []

    def w(self, name):
        if name not in self._w:
            self._w[name] = self.m.weight(name)
        return self._w[name]

    # -- budget, as evict.c
    def budget_tokens(self, n):
        if self.budget > 1.0:
            return int(self.budget)
        return max(1, int(self.budget * n + 1e-4))

    def max_used(self):
        return max(len(c["pos"]) for row in self.cache for c in row)

    def room(self):
        used = self.max_used()
        room = self.n_ctx - used
        if self.schedule == "streaming":
            room = max(1, min(room, self.budget_tokens(self.n_ctx) + self.slack + 1 - used))
        return room

    def eval(self, tokens):
        tokens = list(tokens)
        nb_max = min(512, self.n_ctx)
        i = 0
        while i < len(tokens):
            nb = min(len(tokens) - i, nb_max, self.room())
            self.forward(tokens[i:i + nb])
            i += nb
            if self.schedule == "streaming":
                b = self.budget_tokens(self.n_ctx)
                if self.max_used() > b + self.slack:
                    self.compress_to(b)

    def compress(self):
        self.compress_to(self.budget_tokens(self.max_used()))

    def forward(self, tokens):
        m = self.m
        n, d = len(tokens), m.head_dim
        if self.policy == "lacache":     # position-only policy: no numerics needed
            for row in self.cache:
                for c in row:
                    c["pos"] += range(self.next_pos, self.next_pos + n)
                    c["k"] += [None] * n
                    c["v"] += [None] * n
            self.next_pos += n
            return
        pos = np.arange(self.next_pos, self.next_pos + n, dtype=np.float64)
        x = m.embedding_rows(tokens)
        qs = []
        for il in range(m.n_layer):
            p = f"blk.{il}."
            h = rms_norm(x, self.w(p + "attn_norm.weight"), m.eps)
            q = (h @ self.w(p + "attn_q.weight").T).reshape(n, m.n_head, d)
            k = (h @ self.w(p + "attn_k.weight").T).reshape(n, m.n_head_kv, d)
            v = (h @ self.w(p + "attn_v.weight").T).reshape(n, m.n_head_kv, d)
            q, k = rope(q, pos, m, self.ff), rope(k, pos, m, self.ff)
            for g in range(m.n_head_kv):
                c = self.cache[il][g]
                for t in range(n):
                    c["pos"].append(self.next_pos + t)
                    c["k"].append(k[t, g])
                    c["v"].append(v[t, g])
            qs.append(q)
            attn = np.empty((n, m.n_head, d))
            for hq in range(m.n_head):
                c = self.cache[il][hq // self.group]
                K, V, cp = np.array(c["k"]), np.array(c["v"]), np.array(c["pos"])
                for t in range(n):
                    vis = cp <= self.next_pos + t
                    z = K[vis] @ q[t, hq] / math.sqrt(d)
                    e = np.exp(z - z.max())
                    attn[t, hq] = (e / e.sum()) @ V[vis]
            x = x + attn.reshape(n, -1) @ self.w(p + "attn_output.weight").T
            hh = rms_norm(x, self.w(p + "ffn_norm.weight"), m.eps)
            x = x + (silu(hh @ self.w(p + "ffn_gate.weight").T) * (hh @ self.w(p + "ffn_up.weight").T)) \
                @ self.w(p + "ffn_down.weight").T
        for t in range(n):
            self.qwin.append((self.next_pos + t, [qs[il][t] for il in range(m.n_layer)]))
        self.qwin = self.qwin[-self.window:]
        self.next_pos += n

    def layer_scores(self, il, budget):
        """Per kv-head: (scores over its slots, [HeadInfo of its query heads])."""
        m, d = self.m, self.m.head_dim
        if self.policy != "restkv":
            raise ValueError(self.policy)
        win_pos = [p for p, _ in self.qwin]
        wo = self.w(f"blk.{il}.attn_output.weight")
        G = gram(wo, m.n_head, d) if self.use_gram else None
        out = []
        for g in range(m.n_head_kv):
            c = self.cache[il][g]
            K, V, pos = np.array(c["k"]), np.array(c["v"]), c["pos"]
            per_head, infos = [], []
            for hq in range(g * self.group, (g + 1) * self.group):
                qw = np.array([qq[il][hq] for _, qq in self.qwin])
                A = window_attention(qw, win_pos, K, pos)
                sc, info = restkv_head_scores(
                    A, win_pos, V, pos, Wh=None if self.use_gram else wo_head(wo, hq, d),
                    G=G[hq] if self.use_gram else None, budget=budget, alpha=self.alpha, beta=self.beta,
                    k0=self.kernel, **self.variant)
                per_head.append(sc)
                infos.append(info)
            out.append((np.mean(per_head, axis=0), infos))           # 6: group mean
        return out

    def compress_to(self, budget):
        m = self.m
        entries = []
        for il in range(m.n_layer):
            scored = self.layer_scores(il, budget) if self.policy == "restkv" else None
            for g in range(m.n_head_kv):
                c = self.cache[il][g]
                pos = c["pos"]
                if self.policy == "restkv":
                    sc, infos = scored[g]
                    keep, margin = keep_set(pos, sc, budget, window=self.window, keep_window=True)
                elif self.policy == "lacache":
                    sc, infos, margin = None, [], math.inf
                    keep = lacache_keep(il, pos, budget, n_layers=m.n_layer, span=self.span,
                                        overlap=self.overlap, n_sink=self.n_sink, window=self.window)
                else:
                    raise ValueError(self.policy)
                entries.append(Compression(il, g, budget, list(pos), [pos[s] for s in keep], margin, sc, infos))
                for key in ("pos", "k", "v"):
                    c[key] = [c[key][s] for s in keep]
        self.log.append(entries)

    def positions(self, il, g):
        return list(self.cache[il][g]["pos"])


def with_quantized_wo(src, dst, qtype: str = "Q4_0"):
    """Copy of the GGUF at src with every blk.N.attn_output.weight re-encoded as qtype (gguf-py's quantizer),
    the rest unchanged: a model whose only quantised matrix is W_o, so that layer 0's q, k, v stay exact and
    its ReST-KV scores test the engine's dequantised Gram matrices."""
    import gguf

    rd = gguf.GGUFReader(str(src))
    wr = gguf.GGUFWriter(str(dst), "llama")
    for f in rd.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        sub = f.types[1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        wr.add_key_value(f.name, f.contents(), f.types[0], sub)
    qt = gguf.GGMLQuantizationType[qtype]
    for t in rd.tensors:
        data = np.array(t.data)
        if t.name.endswith("attn_output.weight"):
            wr.add_tensor(t.name, gguf.quants.quantize(data.astype(np.float32), qt), raw_dtype=qt)
        else:
            wr.add_tensor(t.name, data, raw_dtype=None if t.tensor_type in (gguf.GGMLQuantizationType.F32,
                                                                         gguf.GGMLQuantizationType.F16) else t.tensor_type)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return dst
