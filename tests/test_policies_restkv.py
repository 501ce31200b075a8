"""ReST-KV and LaCache keep-sets against the float64 numpy reference (tests/policy_ref_restkv.py).

Every comparison is exact: the engine's kept positions of each (layer, kv-head) must EQUAL the reference's.
Where the choice depends on scores, the reference's margin (lowest score kept by score vs highest dropped,
relative) is asserted to be clear of float32-vs-float64 noise first, so that a failure means a different
rule, never a near tie.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import engine
from policy_ref_restkv import (RefSession, aws_pool, ema_weights, gram, lacache_keep, lacache_ladder,
                               restkv_head_scores, window_attention, with_quantized_wo, wo_head)

MARGIN = 1e-4   # relative score gap that float32 noise (~1e-6 here) cannot cross


def toks(n, seed=1):
    return [int(t) for t in np.random.default_rng(seed).integers(3, 380, n)]


@pytest.fixture(scope="module")
def gqa(tiny_gguf):
    return tiny_gguf(weight_type="F32", n_heads=4, n_kv_heads=2)


@pytest.fixture(scope="module")
def mha(tiny_gguf):
    return tiny_gguf(weight_type="F32", n_heads=4, n_kv_heads=4, seed=3)


def engine_positions(s, n_layers, n_kv_heads):
    return [[list(s.kv_positions(il, g)) for g in range(n_kv_heads)] for il in range(n_layers)]


def check_log(entries, s):
    for e in entries:
        assert e.margin > MARGIN, f"near tie at layer {e.layer} kv-head {e.kv_head}: choose another case"
    for e in entries:
        assert list(s.kv_positions(e.layer, e.kv_head)) == e.kept, (e.layer, e.kv_head)


# ---------------------------------------------------------------- Gram matrices


def test_gram_form_equals_direct_norm():
    rng = np.random.default_rng(0)
    H, d, C = 3, 8, 24
    wo = rng.standard_normal((C, H * d))
    G = gram(wo, H, d)
    for h in range(H):
        assert np.allclose(G[h], G[h].T)
        for _ in range(5):
            x = rng.standard_normal(d)
            direct = np.linalg.norm(wo[:, h * d:(h + 1) * d] @ x)
            assert math.isclose(math.sqrt(x @ G[h] @ x), direct, rel_tol=1e-12)
            # the expanded form of b.14: obar'G obar - 2 (G obar)'v + v'G v
            o, v = rng.standard_normal(d), rng.standard_normal(d)
            assert math.isclose(o @ G[h] @ o - 2 * (G[h] @ o) @ v + v @ G[h] @ v,
                                np.linalg.norm(wo_head(wo, h, d) @ (o - v)) ** 2, rel_tol=1e-9)


def test_reference_scores_same_with_gram_or_direct_norm(gqa):
    ref = RefSession(gqa, n_ctx=64, policy="restkv", budget=20, window=8)
    ref.eval(toks(48))
    direct = ref.layer_scores(1, 20)
    ref.use_gram = True
    via_gram = ref.layer_scores(1, 20)
    for (a, _), (b, _) in zip(direct, via_gram):
        np.testing.assert_allclose(a, b, rtol=1e-9)


def test_restkv_gram_from_quantized_wo(gqa, tmp_path):
    """Only W_o quantised (Q4_0): layer 0's q, k, v are exact, so its keep-sets test the engine's Gram
    matrices of the dequantised W_o against the reference's direct ||W_o^(h) x|| on gguf-py's dequantisation
    (layer 1 sees the Q8 activation rounding of the W_o matmul and is not compared)."""
    path = str(with_quantized_wo(gqa, tmp_path / "wo_q4_0.gguf", "Q4_0"))
    differs = 0
    with engine.Model(path) as m:
        for seed, budget in [(1, 0.5), (1, 20), (2, 12), (3, 20)]:
            t = toks(64, seed)
            with m.session(n_ctx=128, kv_type="f32") as s:
                s.set_eviction(policy="restkv", budget=budget, window=8)
                s.eval(t, logits=None)
                s.compress()
                ref = RefSession(path, n_ctx=128, policy="restkv", budget=budget, window=8)
                ref.eval(t)
                ref.compress()
                check_log([e for e in ref.log[-1] if e.layer == 0], s)
            f32 = RefSession(gqa, n_ctx=128, policy="restkv", budget=budget, window=8)
            f32.eval(t)
            f32.compress()
            differs += any(a.kept != b.kept for a, b in zip(ref.log[-1], f32.log[-1]) if a.layer == 0)
    assert differs  # the quantised W_o changes choices: the comparison can tell the two apart


# ---------------------------------------------------------------- ReST-KV, prefix schedule

PREFIX_CASES = [  # (budget, window): fractions, absolute, below 2 w, a budget under the window
    (0.5, 8), (16, 8), (12, 8), (40, 8), (0.25, 8), (0.3, 32),
]


@pytest.mark.parametrize("which", ["gqa", "mha"])
@pytest.mark.parametrize("budget, window", PREFIX_CASES)
def test_restkv_prefix_keep_sets_equal_reference(request, which, budget, window):
    path = request.getfixturevalue(which)
    t = toks(64)
    with engine.Model(path) as m, m.session(n_ctx=128, kv_type="f32") as s:
        s.set_eviction(policy="restkv", budget=budget, window=window)
        s.eval(t, logits=None)
        s.compress()
        ref = RefSession(path, n_ctx=128, policy="restkv", budget=budget, window=window)  # direct ||W_o x||
        ref.eval(t)
        ref.compress()
        c = ref.budget_tokens(64)
        assert all(s.kv_count(il, g) == c for il in range(m.n_layers) for g in range(m.n_kv_heads))
        check_log(ref.log[-1], s)


def test_restkv_fewer_queries_than_window_scores_window_tokens_only(gqa):
    """24 tokens with window 32: n_win = 24, nothing is older than the window (P = 0), so every score comes
    from the window-token rule (EMA renormalised over the queries that see the token)."""
    t = toks(24, seed=5)
    with engine.Model(gqa) as m, m.session(n_ctx=64, kv_type="f32") as s:
        s.set_eviction(policy="restkv", budget=10)
        s.eval(t, logits=None)
        s.compress()
        ref = RefSession(gqa, n_ctx=64, policy="restkv", budget=10)
        ref.eval(t)
        ref.compress()
        assert all(h.P == 0 for e in ref.log[-1] for h in e.heads)
        check_log(ref.log[-1], s)
        # protected: the newest min(32, 10 // 2) = 5; the other 5 chosen by score, not simply the newest
        kept = ref.log[-1][0].kept
        assert kept[-5:] == list(range(19, 24)) and kept[:5] != list(range(14, 19))


def test_window_token_rule_in_reference():
    """The window-token score is the prefix formula with the EMA restricted and renormalised to the queries
    that see the token; with every query seeing it, it is the plain EMA."""
    rng = np.random.default_rng(2)
    n, d, w = 12, 4, 4
    K, V = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    q = rng.standard_normal((w, d))
    pos, win_pos = list(range(n)), list(range(n - w, n))
    A = window_attention(q, win_pos, K, pos)
    Wh = rng.standard_normal((6, d))
    sc, info = restkv_head_scores(A, win_pos, V, pos, Wh=Wh, budget=6, alpha=0.3, beta=2000, k0=5)
    om = ema_weights(w, 0.3)
    assert info.P == n - w and math.isclose(om.sum(), 1.0)
    abar = om @ A[:, :info.P]
    obar = abar @ V[:info.P]
    for j in range(info.P, n):
        sees = np.arange(w) >= j - (n - w)
        a = (om[sees] @ A[sees, j]) / om[sees].sum()
        assert math.isclose(sc[j], a / (1 - a) * np.linalg.norm(Wh @ (obar - V[j])), rel_tol=1e-12)


# ---------------------------------------------------------------- adaptive pooling


def torch_style_pool(r, k, s):
    """The original's F.pad(r, (k//2 - s, k//2 + s), 'replicate') + avg_pool1d(k, stride 1), a negative
    pad cropping as torch does."""
    left, right = k // 2 - s, k // 2 + s
    x = np.asarray(r, float)
    x = x[-left:] if left < 0 else np.concatenate([np.full(left, x[0]), x])
    x = x[:len(x) + right] if right < 0 else np.concatenate([x, np.full(right, x[-1])])
    return np.array([x[j:j + k].mean() for j in range(len(x) - k + 1)])


@pytest.mark.parametrize("k, s", [(5, 0), (5, 1), (5, -2), (7, 3), (9, -4), (1, 1), (3, -1), (21, 10)])
def test_reference_pool_is_the_codes_pad_and_avgpool(k, s):
    r = np.random.default_rng(k * 31 + s).random(17)
    np.testing.assert_allclose(aws_pool(r, k, s), torch_style_pool(r, k, s), rtol=1e-12)


@pytest.mark.parametrize("which, beta, seed", [("gqa", 0.5, 4), ("mha", 0.5, 17)])
def test_restkv_small_beta_varies_kernel_and_shift(request, which, beta, seed):
    path = request.getfixturevalue(which)
    t = toks(64, seed=seed)
    infos = []
    for budget in (24, 40):
        with engine.Model(path) as m, m.session(n_ctx=128, kv_type="f32") as s:
            s.set_eviction(policy="restkv", budget=budget, window=8, aws_beta=beta)
            s.eval(t, logits=None)
            s.compress()
            ref = RefSession(path, n_ctx=128, policy="restkv", budget=budget, window=8, aws_beta=beta)
            ref.eval(t)
            ref.compress()
            infos += [h for e in ref.log[-1] for h in e.heads]
            # t depends on top-R sets of float32 weights: their boundaries must be clear too
            assert min(h.top_r_gap for h in infos) > MARGIN
            check_log(ref.log[-1], s)
    kernels, shifts = {h.k for h in infos}, {h.s for h in infos}
    assert max(kernels) >= 15 and len(kernels) >= 4, kernels
    assert len(shifts) >= 5 and min(shifts) <= -5 and max(shifts) >= 2, shifts


# ---------------------------------------------------------------- ReST-KV, streaming (decode-time)


@pytest.mark.parametrize("which, seed", [("gqa", 6), ("mha", 13)])
def test_restkv_streaming_bounded_and_equal_to_simulation(request, which, seed):
    """Decode-time ReST-KV (b.12): the streaming schedule scores with the buffered last-w queries whenever a
    buffer passes budget + slack; the float64 simulation evicts by the same rules and must keep the same
    positions after every eval, memory staying bounded."""
    path = request.getfixturevalue(which)
    budget, slack, window = 24, 8, 8
    t = toks(90, seed=seed)
    with engine.Model(path) as m, m.session(n_ctx=64, kv_type="f32") as s:
        s.set_eviction(policy="restkv", budget=budget, window=window, schedule="streaming", slack=slack)
        ref = RefSession(path, n_ctx=64, policy="restkv", budget=budget, window=window,
                         schedule="streaming", slack=slack)
        row = 2 * m.head_dim * 4 + 4
        chunks = [t[:70]] + [[x] for x in t[70:]]  # a prefill, then token by token (decode-time eviction)
        for chunk in chunks:
            n_log = len(ref.log)
            s.eval(chunk, logits=None)
            ref.eval(chunk)
            for entries in ref.log[n_log:]:
                assert min(e.margin for e in entries) > MARGIN, "near tie: choose another case"
            counts = [s.kv_count(il, g) for il in range(m.n_layers) for g in range(m.n_kv_heads)]
            assert max(counts) <= budget + slack
            assert s.kv_bytes_used <= m.n_layers * m.n_kv_heads * (budget + slack) * row
            assert engine_positions(s, m.n_layers, m.n_kv_heads) == \
                [[ref.positions(il, g) for g in range(m.n_kv_heads)] for il in range(m.n_layers)]
        assert s.n_past == 90 and len(ref.log) >= 6    # 3 compressions in the prefill, then every 9 tokens
        # scored, not recency: tokens older than the newest budget + slack survive
        assert min(min(ref.positions(il, g)) for il in range(m.n_layers) for g in range(m.n_kv_heads)) < 58


# ---------------------------------------------------------------- LaCache


def test_ladder_constants():
    assert lacache_ladder(32, 16, 0) == (2, 1, 1)    # even layers keep even tokens, odd layers odd (c.7)
    assert lacache_ladder(32, 9, 3) == (5, 2, 3)     # layer i keeps {i mod 4, i mod 4 + 1} of 5
    assert lacache_ladder(30, 16, 0) == (2, 1, 1)    # SmolLM2
    assert lacache_ladder(2, 16, 0) == (1, 1, 0)     # nothing to free: fallback
    assert lacache_ladder(6, 2, 0) == (3, 1, 2)
    assert lacache_ladder(6, 3, 1) == (3, 2, 1)


def original_ladder(il, seq_len, cache_size, cursor, n_layers, span, overlap):
    """LaCache's ppl/lacache/kv_cache.py index list for one compression without startover."""
    bk, a, r = lacache_ladder(n_layers, span, overlap)
    nb = math.ceil((seq_len - cache_size) / r)
    mid = [cursor + il % (r + 1) + bk * j + k for j in range(nb) for k in range(a)]
    return list(range(cursor)) + mid + list(range(cursor + bk * nb, seq_len))


@pytest.mark.parametrize("span, overlap, n, c", [(2, 0, 60, 40), (3, 1, 60, 44), (3, 1, 61, 50)])
def test_lacache_reference_is_the_original_ladder_in_one_pass(span, overlap, n, c):
    """When one pass suffices and the drop count fills whole blocks, the rule is the original's index list
    (cursor at the sinks)."""
    bk, a, r = lacache_ladder(6, span, overlap)
    assert (n - c) % r == 0
    for il in range(6):
        got = lacache_keep(il, list(range(n)), c, n_layers=6, span=span, overlap=overlap, n_sink=4, window=8)
        assert got == original_ladder(il, n, c, 4, 6, span, overlap)


@pytest.fixture(scope="module")
def six_layers(tiny_gguf):
    return tiny_gguf(weight_type="F32", n_layers=6, n_heads=4, n_kv_heads=2, n_embd=64)


@pytest.mark.parametrize("span, overlap", [(2, 0), (3, 1), (16, 0)])
@pytest.mark.parametrize("budget", [0.75, 40, 0.5, 23, 0.2, 12])
def test_lacache_prefix_keep_sets_equal_reference(six_layers, span, overlap, budget):
    n = 60
    with engine.Model(six_layers) as m, m.session(n_ctx=64) as s:
        s.set_eviction(policy="lacache", budget=budget, window=8, lacache_span=span, lacache_overlap=overlap)
        s.eval(toks(n), logits=None)
        s.compress()
        c = budget if budget > 1 else int(budget * n + 1e-4)
        per_layer = []
        for il in range(m.n_layers):
            want = lacache_keep(il, list(range(n)), c, n_layers=6, span=span, overlap=overlap, n_sink=4, window=8)
            assert len(want) == c
            for g in range(m.n_kv_heads):
                assert list(s.kv_positions(il, g)) == want, (il, g)
            per_layer.append(tuple(want))
        if lacache_ladder(6, span, overlap)[2] > 0:
            assert len(set(per_layer)) > 1       # a ladder: layers keep different tokens
        assert all(set(range(4)) <= set(p) for p in per_layer)           # sinks
        assert all(set(range(n - min(8, c // 2), n)) <= set(p) for p in per_layer)  # newest


def test_lacache_streaming_equal_to_simulation(six_layers):
    t = toks(100, seed=9)
    kw = dict(policy="lacache", budget=24, window=4, schedule="streaming", slack=5, lacache_span=3,
              lacache_overlap=1)
    with engine.Model(six_layers) as m, m.session(n_ctx=40) as s:
        s.set_eviction(**kw)
        ref = RefSession(six_layers, n_ctx=40, **kw)
        for chunk in [t[:50], t[50:53]] + [[x] for x in t[53:]]:
            s.eval(chunk, logits=None)
            ref.eval(chunk)
            assert max(s.kv_count(il, g) for il in range(6) for g in range(2)) <= 24 + 5
            assert engine_positions(s, 6, 2) == [[ref.positions(il, g) for g in range(2)] for il in range(6)]
        assert len(ref.log) > 5 and min(ref.positions(0, 0)[4:]) < 60


def test_lacache_shift_positions_same_counts(six_layers):
    with engine.Model(six_layers) as m, m.session(n_ctx=64) as s:
        s.set_eviction(policy="lacache", budget=0.5, window=8, lacache_span=3, lacache_overlap=1, positions="shift")
        s.eval(toks(60), logits=None)
        s.compress()
        assert all(list(s.kv_positions(il, g)) == list(range(30)) for il in range(6) for g in range(2))
        assert s.next_pos == 30
        s.eval(toks(5, seed=2), logits=None)
        assert s.kv_count(0, 0) == 35
