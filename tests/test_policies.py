"""The score-based eviction policies (h2o, tova, snapkv, pyramidkv, adakv) against a numpy reference.

The reference (tests/policy_ref.py) recomputes the statistics in float64 from the model's
q/k/v, scores, allocates and applies evict.c's keep-set rule. The engine must keep exactly the
reference's positions in every (layer, kv-head). Float32 and float64 scores can only disagree at a
near tie, so every case first asserts that the reference's smallest relative gap at a selection
boundary is far above float32 noise (the data were chosen so; the equality is never loosened).
"""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine import EngineError
from policy_ref import DEFAULTS, Decoder, Selection, budget_tokens, prefix_reference, pyramid_budget, select_layer
from reference_forward import reference_logits

N_PROMPT = 80
TOKS = [int(t) for t in np.random.default_rng(1).integers(3, 380, 120)]
PROMPT, MORE = TOKS[:N_PROMPT], TOKS[N_PROMPT:N_PROMPT + 8]
POLICIES = ["snapkv", "pyramidkv", "adakv", "h2o", "tova"]
# 8 of 80 (below 2·window: the protected window shrinks to 4), 20, 48 (< 2·window), 70 (>= 2·window)
BUDGETS = [0.1, 0.25, 48, 70]
MIN_GAP = 1e-5
WINDOW = 32


@pytest.fixture(scope="module")
def paths(tiny_gguf):
    return {
        "gqa": tiny_gguf(weight_type="F32", n_heads=4, n_kv_heads=2, n_layers=3),
        "mha": tiny_gguf(weight_type="F32", n_heads=4, n_kv_heads=4),
    }


@pytest.fixture(scope="module")
def models(paths):
    ms = {k: engine.Model(p) for k, p in paths.items()}
    yield ms
    for m in ms.values():
        m.close()


def positions(s, m):
    return {(il, g): s.kv_positions(il, g) for il in range(m.n_layers) for g in range(m.n_kv_heads)}


def assert_same_keep(got: dict, ref):
    assert ref.min_gap > MIN_GAP, f"near tie in the reference data (gap {ref.min_gap:.2e}): choose other data"
    for key, want in ref.keep.items():
        assert got[key].tolist() == want.tolist(), f"layer {key[0]}, kv-head {key[1]}"


def test_reference_decoder_matches_reference_forward(paths):
    """The incremental float64 decoder used for decoding and streaming equals reference_forward."""
    for p in paths.values():
        d = Decoder(p)
        got = np.concatenate([d.eval(PROMPT[:50]), d.eval(PROMPT[50:53]), d.eval(PROMPT[53:60])])
        np.testing.assert_allclose(got, reference_logits(p, PROMPT[:60]), rtol=0, atol=1e-10)


@pytest.mark.parametrize("arch", ["gqa", "mha"])
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("policy", POLICIES)
def test_prefix_keep_sets_equal_reference(paths, models, policy, budget, arch):
    m = models[arch]
    ref = prefix_reference(paths[arch], PROMPT, policy, budget)
    with m.session(n_ctx=128, kv_type="f32", n_threads=1) as s:
        s.set_eviction(policy=policy, budget=budget)
        s.eval(PROMPT, logits=None)
        s.compress()
        got = positions(s, m)
        assert s.next_pos == s.n_past == N_PROMPT  # original positions continue
    assert_same_keep(got, ref)

    B = budget_tokens(budget, N_PROMPT)
    for il in range(m.n_layers):
        counts = [len(got[(il, g)]) for g in range(m.n_kv_heads)]
        if policy == "adakv":
            assert sum(counts) == m.n_kv_heads * B  # the layer's budget, exactly, however it is shared
        elif policy == "pyramidkv":
            c = pyramid_budget(B, WINDOW, N_PROMPT, m.n_layers, 20.0, il)
            assert counts == [min(c, N_PROMPT)] * m.n_kv_heads
        else:
            assert counts == [B] * m.n_kv_heads
        for g, c in enumerate(counts):
            pos = got[(il, g)]
            assert list(pos) == sorted(set(pos))  # slot order = position order, no duplicates
            if policy in ("snapkv", "pyramidkv", "adakv"):  # the newest min(w, c/2) are protected
                assert set(range(N_PROMPT - min(WINDOW, c // 2), N_PROMPT)) <= set(pos.tolist())
            if policy == "tova":  # the newest token is protected, and a layer keeps one set
                assert pos[-1] == N_PROMPT - 1
                assert pos.tolist() == got[(il, 0)].tolist()


@pytest.mark.parametrize("policy", ["h2o", "snapkv", "tova"])
def test_prefill_in_small_batches_gives_the_same_keep_sets(paths, models, policy):
    """Statistics gathered over several forward passes (acc over every query, the ring of window
    queries across batch boundaries) equal those of one pass."""
    m = models["gqa"]
    ref = prefix_reference(paths["gqa"], PROMPT, policy, 0.25)
    with m.session(n_ctx=128, kv_type="f32", n_threads=1, n_batch=7) as s:
        s.set_eviction(policy=policy, budget=0.25)
        s.eval(PROMPT[:30], logits=None)
        s.eval(PROMPT[30:], logits=None)
        s.compress()
        assert_same_keep(positions(s, m), ref)


def test_pyramid_schedule_and_layer_average(paths, models):
    """Layer budgets of the 3-layer model: c_l = max − l·steps + w', mean over layers >= B by < (N−1)/2."""
    m = models["gqa"]
    cases = {8: [12, 8, 4], 20: [30, 20, 10], 48: [71, 48, 25], 70: [80, 70, 60]}
    for B, want in cases.items():
        with m.session(n_ctx=128, kv_type="f32", n_threads=1) as s:
            s.set_eviction(policy="pyramidkv", budget=B)
            s.eval(PROMPT, logits=None)
            s.compress()
            got = [s.kv_count(il, 0) for il in range(m.n_layers)]
        assert got == want == [pyramid_budget(B, WINDOW, N_PROMPT, 3, 20.0, il) for il in range(3)]
        assert B <= np.mean(got) < B + (m.n_layers - 1) / 2
    # uniform fallback when B < L < 2(B − w): 100 < 120 < 2·(100 − 32)
    assert [pyramid_budget(100, WINDOW, 120, 3, 20.0, il) for il in range(3)] == [100, 100, 100]
    assert [pyramid_budget(8, WINDOW, 80, 1, 20.0, 0)] == [8]  # one layer: nothing to distribute


@pytest.mark.parametrize("arch, policy", [("gqa", p) for p in POLICIES] + [("mha", "snapkv")])
def test_decoding_after_compression_attends_to_the_kept_set(paths, models, arch, policy):
    """The logits of tokens evaluated after compress() equal a float64 reference that attends over
    the kept tokens (plus the new ones) only."""
    m = models[arch]
    ref = prefix_reference(paths[arch], PROMPT, policy, 0.25)
    d = Decoder(paths[arch])
    d.eval(PROMPT)
    d.keep_positions(ref.keep)
    want = d.eval(MORE)
    with m.session(n_ctx=128, kv_type="f32", n_threads=1) as s:
        s.set_eviction(policy=policy, budget=0.25)
        s.eval(PROMPT, logits=None)
        s.compress()
        assert_same_keep(positions(s, m), ref)
        got = s.eval(MORE, logits="all")
        assert s.next_pos == s.n_past == N_PROMPT + len(MORE)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    full = reference_logits(paths[arch], PROMPT + MORE)[N_PROMPT:]
    assert np.abs(got - full).max() > 1e-3  # the compression did change what the new tokens see


@pytest.mark.parametrize("arch", ["gqa", "mha"])
@pytest.mark.parametrize("policy", ["h2o", "tova"])
def test_streaming_schedule_matches_per_token_simulation(paths, models, policy, arch):
    """Streaming with slack 0 on n_ctx = budget + 1: the first budget + 1 tokens in one pass, then
    one token per pass, each followed by an eviction to the budget. For H2O the accumulated
    attention of every query (prefill and each step) is carried with the kept tokens."""
    m, B, toks = models[arch], 16, TOKS[:100]
    d = Decoder(paths[arch], policy=policy, budget=B, schedule="streaming", slack=0, n_ctx=B + 1)
    want = d.eval(toks)
    ref = d.selection()
    assert d.n_evictions == len(toks) - B
    with m.session(n_ctx=B + 1, kv_type="f32", n_threads=1) as s:
        s.set_eviction(policy=policy, budget=B, schedule="streaming", slack=0)
        got = s.eval(toks, logits="all")
        kept = positions(s, m)
        assert s.next_pos == s.n_past == len(toks)
    assert_same_keep(kept, ref)  # min_gap covers every eviction step
    for (il, g), pos in kept.items():
        assert len(pos) == B
        if policy == "tova":
            assert pos[-1] == len(toks) - 1 and pos.tolist() == kept[(il, 0)].tolist()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_tova_with_heads_holding_different_positions(paths, models):
    """After a per-head compression (snapkv), TOVA's layer score gives a position 0 attention from
    the query heads whose kv-head dropped it; each kv-head keeps its own top set."""
    m = models["gqa"]
    d = Decoder(paths["gqa"], policy="snapkv", budget=0.5)
    d.eval(PROMPT)
    d.compress()
    d.policy, d.budget, d.win = "tova", 20, []  # set_eviction starts a new observation window
    d.eval(MORE)
    d.compress()
    ref = d.selection()
    with m.session(n_ctx=128, kv_type="f32", n_threads=1) as s:
        s.set_eviction(policy="snapkv", budget=0.5)
        s.eval(PROMPT, logits=None)
        s.compress()
        before = positions(s, m)
        assert any(before[(il, 0)].tolist() != before[(il, 1)].tolist() for il in range(m.n_layers))
        s.set_eviction(policy="tova", budget=20)
        s.eval(MORE, logits=None)
        s.compress()
        assert_same_keep(positions(s, m), ref)


def test_adakv_shares_the_layer_budget_unevenly(paths, models):
    m = models["mha"]
    with m.session(n_ctx=128, kv_type="f32", n_threads=1) as s:
        s.set_eviction(policy="adakv", budget=0.25, ada_floor=0.5)
        s.eval(PROMPT, logits=None)
        s.compress()
        counts = [[s.kv_count(il, g) for g in range(m.n_kv_heads)] for il in range(m.n_layers)]
    ref = prefix_reference(paths["mha"], PROMPT, "adakv", 0.25, ada_floor=0.5)
    assert ref.min_gap > MIN_GAP
    assert counts == [[ref.counts[(il, g)] for g in range(m.n_kv_heads)] for il in range(m.n_layers)]
    for row in counts:
        assert sum(row) == 20 * m.n_kv_heads and len(set(row)) > 1
        # floor: every head gets at least int(base·α) scored tokens plus its window (w' = 10)
        assert min(row) >= int(10 * 0.5) + 10


def test_adakv_restkv_base(paths, models):
    """ada_base="restkv" ranks and allocates with restkv's scores, each head's normalised by its sum.
    The restkv scores come from the restkv helper's numpy reference (tests/policy_ref_restkv.py)."""
    m, B = models["gqa"], 20
    with m.session(n_ctx=128, kv_type="f32", n_threads=1) as s:
        s.set_eviction(policy="adakv", budget=B, ada_base="restkv")
        s.eval(PROMPT, logits=None)
        try:
            s.compress()
        except EngineError as e:
            pytest.skip(f"rk_restkv_scores is not available yet: {e}")
        got = positions(s, m)
    for il in range(m.n_layers):
        counts = [len(got[(il, g)]) for g in range(m.n_kv_heads)]
        assert sum(counts) == B * m.n_kv_heads
        for g in range(m.n_kv_heads):
            assert set(range(N_PROMPT - min(WINDOW, counts[g] // 2), N_PROMPT)) <= set(got[(il, g)].tolist())
    try:
        from policy_ref_restkv import RefSession
        rs = RefSession(paths["gqa"], n_ctx=128, policy="restkv", budget=B)
        rs.eval(PROMPT)
        layers = [rs.layer_scores(il, B) for il in range(m.n_layers)]
    except (ImportError, AttributeError, TypeError) as e:
        pytest.skip(f"no numpy restkv scores to compare with: {e}")
    ref = Selection()
    params = {**DEFAULTS, "ada_base": "restkv"}
    all_pos = np.arange(N_PROMPT)
    for il, scored in enumerate(layers):
        ref.min_gap = min([ref.min_gap] + [h.top_r_gap for _, infos in scored for h in infos])
        masks, _, gap = select_layer("adakv", params, il, m.n_layers, B, N_PROMPT, [all_pos] * m.n_kv_heads,
                                     scores=[sc for sc, _ in scored])
        ref.min_gap = min(ref.min_gap, gap)
        for g, mk in enumerate(masks):
            ref.keep[(il, g)] = all_pos[mk]
    assert_same_keep(got, ref)
