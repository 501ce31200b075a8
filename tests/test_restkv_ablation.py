"""ReST-KV's ablation choices (restkv_distance, restkv_smoothing, restkv_pooling, restkv_metric; issue 14
item 6) against the float64 numpy reference (tests/policy_ref_restkv.py), the way test_policies_restkv.py
checks the published method: the engine's kept positions of every (layer, kv-head) must EQUAL the
reference's, with the reference's score margin clear of float32 noise first.

A max pool repeats a window's maximum over neighbouring slots, so its keep-sets cut through exact ties (both
sides break them by position). There the check asks that every window's maximum leads its runner-up
clearly (so the engine's pool picks the same entries and its tied scores are tied too) and measures the
margin from the tied boundary score to the nearest different one.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import engine
from policy_ref_restkv import RefSession, query_weights, restkv_head_scores, window_attention, zero_pad_pool
from test_policies_restkv import MARGIN, check_log, engine_positions, gqa, mha, toks  # noqa: F401

CHOICES = {
    "restkv_distance": ("wo", "value", "none"),
    "restkv_smoothing": ("ema", "mean", "inv-ema", "last"),
    "restkv_pooling": ("adaptive", "avgpool", "maxpool", "none"),
    "restkv_metric": ("after", "before"),
}

# every non-default choice alone, then combinations (the 'before' metric with each distance, a wider
# fixed pool); the defaults themselves are test_policies_restkv.py's and the golden digests'
VARIANTS = [{k: v} for k, vs in CHOICES.items() for v in vs[1:]] + [
    dict(restkv_metric="before", restkv_distance="value", restkv_smoothing="mean"),
    dict(restkv_metric="before", restkv_distance="none", restkv_pooling="none"),
    dict(restkv_metric="before", restkv_smoothing="inv-ema", restkv_pooling="avgpool"),
    dict(restkv_distance="none", restkv_smoothing="last", restkv_pooling="maxpool"),
    dict(restkv_distance="value", restkv_pooling="avgpool", kernel=7),
    dict(restkv_smoothing="mean", restkv_pooling="maxpool", kernel=3),
]

# (model, budget, window, tokens, seed): a fraction with every window token protected; a token budget below
# 2 w (window tokens compete with the prefix, step 7); fewer tokens than the window (no prefix: step 7
# alone). Seeds chosen so that no variant has a near tie.
CASES = [("gqa", 0.5, 8, 64, 2), ("mha", 12, 8, 64, 1), ("gqa", 10, 32, 24, 1)]


def vid(v):
    return ",".join(f"{k.replace('restkv_', '')}={x}" for k, x in v.items())


def rest_margin(e, window):
    """Margin of the score-decided part of compression entry e that tolerates exact ties at the boundary:
    (lowest kept by score - highest dropped) relative, or, when those are equal, the relative gap from that
    score to the nearest different one among the slots ranked by score."""
    c, pos = e.budget, e.positions_before
    if c >= len(pos):
        return math.inf
    newest = set(sorted(pos)[len(pos) - min(window, c // 2):])
    rest = [(e.scores[sl], p) for sl, p in enumerate(pos) if p not in newest]
    kept = set(e.kept)
    lo = min(s for s, p in rest if p in kept)
    hi = max(s for s, p in rest if p not in kept)
    if lo != hi:
        return math.inf if math.isinf(lo) else (lo - hi) / max(abs(lo), abs(hi), 1e-300)
    if math.isinf(lo):
        return math.inf
    return min((abs(s - lo) / max(abs(s), abs(lo), 1e-300) for s, _ in rest if s != lo), default=math.inf)


def check_log_ties(entries, s, window):
    for e in entries:
        assert min(h.max_gap for h in e.heads) > MARGIN, "a max pool window without a clear winner"
        assert rest_margin(e, window) > MARGIN, f"near tie at layer {e.layer} kv-head {e.kv_head}"
    for e in entries:
        assert list(s.kv_positions(e.layer, e.kv_head)) == e.kept, (e.layer, e.kv_head)


@pytest.mark.parametrize("variant", VARIANTS, ids=vid)
@pytest.mark.parametrize("which, budget, window, n, seed", CASES)
def test_variant_prefix_keep_sets_equal_reference(request, which, budget, window, n, seed, variant):
    path = request.getfixturevalue(which)
    t = toks(n, seed)
    with engine.Model(path) as m, m.session(n_ctx=128, kv_type="f32") as s:
        s.set_eviction(policy="restkv", budget=budget, window=window, **variant)
        s.eval(t, logits=None)
        s.compress()
        ref = RefSession(path, n_ctx=128, policy="restkv", budget=budget, window=window, **variant)
        ref.eval(t)
        ref.compress()
        if variant.get("restkv_pooling") == "maxpool":
            check_log_ties(ref.log[-1], s, window)
        else:
            check_log(ref.log[-1], s)


def test_variant_streaming_equal_to_simulation(gqa):
    """The decode-time path (b.12) with every component swapped: after each eval the engine keeps what the
    float64 simulation keeps."""
    variant = dict(restkv_metric="before", restkv_distance="value", restkv_smoothing="inv-ema",
                   restkv_pooling="avgpool")
    kw = dict(policy="restkv", budget=24, window=8, schedule="streaming", slack=8, **variant)
    t = toks(80, seed=1)
    with engine.Model(gqa) as m, m.session(n_ctx=64, kv_type="f32") as s:
        s.set_eviction(**kw)
        ref = RefSession(gqa, n_ctx=64, **kw)
        for chunk in [t[:60]] + [[x] for x in t[60:]]:
            n_log = len(ref.log)
            s.eval(chunk, logits=None)
            ref.eval(chunk)
            for entries in ref.log[n_log:]:
                assert min(e.margin for e in entries) > MARGIN, "near tie: choose another case"
            assert engine_positions(s, m.n_layers, m.n_kv_heads) == \
                [[ref.positions(il, g) for g in range(m.n_kv_heads)] for il in range(m.n_layers)]
        assert len(ref.log) >= 4


@pytest.mark.parametrize("name", list(CHOICES))
def test_each_choice_changes_the_keep_sets(gqa, name):
    """No choice is ignored: on one case every value of each parameter keeps other tokens than every other
    value (and the engine equals the reference for each, above)."""
    t = toks(64)
    kept = {}
    with engine.Model(gqa) as m:
        for value in CHOICES[name]:
            with m.session(n_ctx=128, kv_type="f32") as s:
                s.set_eviction(policy="restkv", budget=0.5, window=8, **{name: value})
                s.eval(t, logits=None)
                s.compress()
                kept[value] = engine_positions(s, m.n_layers, m.n_kv_heads)
    values = list(kept)
    for i, a in enumerate(values):
        for b in values[i + 1:]:
            assert kept[a] != kept[b], (name, a, b)


def test_defaults_spelled_out_equal_omitted(mha):
    t = toks(64)
    got = []
    with engine.Model(mha) as m:
        for variant in ({}, {k: vs[0] for k, vs in CHOICES.items()}):
            with m.session(n_ctx=128, kv_type="f32") as s:
                s.set_eviction(policy="restkv", budget=20, window=8, **variant)
                s.eval(t, logits=None)
                s.compress()
                got.append(engine_positions(s, m.n_layers, m.n_kv_heads))
    assert got[0] == got[1]


def test_parameters_in_the_tables_and_options():
    from engine.eviction import POLICIES, cli_options

    params = {p.name: p for p in POLICIES["restkv"].params}
    for name, values in CHOICES.items():
        assert params[name].type == "choice" and params[name].choices == values
        assert params[name].default == values[0]
        assert engine.Eviction().as_dict()[name] == values[0]
    opts = {o[0]: o for o in cli_options()}
    assert opts["--restkv-pooling"][4] == CHOICES["restkv_pooling"]
    assert "restkv_distance" not in {p.name for p in POLICIES["adakv"].params}  # AdaKV keeps the defaults


@pytest.mark.parametrize("name", list(CHOICES))
def test_unknown_choice_is_a_clear_error(gqa, name):
    with pytest.raises(engine.EngineError, match=f"unknown {name} 'bogus'.*{CHOICES[name][1]}"):
        engine.Eviction(policy="restkv", budget=0.5, **{name: "bogus"}).check()
    with engine.Model(gqa) as m, m.session(n_ctx=64) as s:
        with pytest.raises(engine.EngineError, match=f"unknown {name}"):
            s.set_eviction(policy="restkv", budget=0.5, **{name: "bogus"})
        s.eval(toks(40), logits=None)   # the session is left as it was (no eviction set), still usable
        assert s.kv_count(0, 0) == 40


# ---------------------------------------------------------------- the reference's own definitions


def test_reference_weights():
    w, a = 6, 0.3
    ema = query_weights(w, a, "ema")
    assert math.isclose(ema.sum(), 1.0) and np.argmax(ema) == w - 1
    inv = query_weights(w, a, "inv-ema")
    assert np.allclose(inv, ema[::-1]) and np.argmax(inv) == 0
    assert np.allclose(query_weights(w, a, "mean"), 1 / w)
    assert list(query_weights(w, a, "last")) == [0, 0, 0, 0, 0, 1]


def test_reference_fixed_pools_are_torch_avg_and_max_pool():
    """avgpool / maxpool = F.avg_pool1d / F.max_pool1d(k, padding=k//2, stride 1), zero padded, divisor k."""
    r = np.random.default_rng(3).random(9)
    k = 5
    pad = np.concatenate([np.zeros(2), r, np.zeros(2)])
    np.testing.assert_allclose(zero_pad_pool(r, k, "avgpool"), [pad[j:j + k].sum() / k for j in range(9)])
    np.testing.assert_allclose(zero_pad_pool(r, k, "maxpool"), [pad[j:j + k].max() for j in range(9)])
    assert zero_pad_pool(r, 5, "avgpool")[0] == r[:3].sum() / 5            # count_include_pad


def test_reference_variant_formulas():
    """One head by hand: value distance, attention odds, the 'before' metric, window tokens renormalised."""
    rng = np.random.default_rng(2)
    n, d, w = 12, 4, 4
    K, V, q = rng.standard_normal((n, d)), rng.standard_normal((n, d)), rng.standard_normal((w, d))
    pos, win_pos = list(range(n)), list(range(n - w, n))
    A = window_attention(q, win_pos, K, pos)
    P = n - w
    kw = dict(budget=6, alpha=0.3, beta=2000, k0=5, pooling="none")
    om = query_weights(w, 0.3, "mean")
    abar = om @ A[:, :P]
    obar = abar @ V[:P]
    sc, _ = restkv_head_scores(A, win_pos, V, pos, distance="value", smoothing="mean", **kw)
    for j in range(P):
        assert math.isclose(sc[j], abar[j] / (1 - abar[j]) * np.linalg.norm(obar - V[j]), rel_tol=1e-12)
    sc, _ = restkv_head_scores(A, win_pos, V, pos, distance="none", smoothing="last", **kw)
    for j in range(n):
        sees = [i for i in range(w) if win_pos[i] >= j]
        a = A[w - 1, j]                    # the newest query sees every slot: renormalising changes nothing
        assert sees and math.isclose(sc[j], a / (1 - a), rel_tol=1e-12)
    Wh = rng.standard_normal((6, d))
    sc, _ = restkv_head_scores(A, win_pos, V, pos, Wh=Wh, metric="before", smoothing="mean", **kw)
    O = A @ V
    for j in range(n):
        sees = [i for i in range(w) if win_pos[i] >= j]
        rij = [A[i, j] / (1 - A[i, j]) * np.linalg.norm(Wh @ (O[i] - V[j])) for i in sees]
        assert math.isclose(sc[j], sum(rij) / (w if j < P else len(sees)), rel_tol=1e-12)
