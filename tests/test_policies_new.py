"""KNorm and Expected Attention (kvpress baselines) against a float64 numpy reference.

The reference (tests/policy_ref_new.py) transcribes kvpress's KnormPress and ExpectedAttentionPress
and evict.c's keep-set rule; the engine must keep exactly the reference's positions in every
(layer, kv-head). As in test_policies.py, every case first asserts that the reference's smallest
relative gap at a selection boundary is far above float32 noise (the equality is never loosened).
"""

from __future__ import annotations

import numpy as np
import pytest

import engine
from policy_ref import budget_tokens
from policy_ref_new import (NewDecoder, expected_attention_scores, keep_slots_sinks, knorm_scores,
                            kvpress_avg_rope, prefix_reference_new, to_hf)
from reference_forward import GGUFModel, reference_logits, rope
# the tiny models, their fixtures and the keep-set comparison of the existing policies' tests
from test_policies import MIN_GAP, assert_same_keep, models, paths, positions  # noqa: F401

N_PROMPT = 80
TOKS = [int(t) for t in np.random.default_rng(1).integers(3, 380, 120)]
PROMPT, MORE = TOKS[:N_PROMPT], TOKS[N_PROMPT:N_PROMPT + 8]
# no repeated token: a key norm does not depend on the position (RoPE rotates), so in layer 0 a repeated
# token is an exact KNorm tie, which float32 may break either way
DISTINCT = [int(t) for t in np.random.default_rng(9).choice(np.arange(3, 380), 100, replace=False)]
POLICIES = ["knorm", "expected_attention"]
BUDGETS = [0.1, 0.25, 48, 70]


def compressed(m, policy, budget, prompt=PROMPT, n_batch=512, split=None, **params):
    with m.session(n_ctx=128, kv_type="f32", n_threads=1, n_batch=n_batch) as s:
        s.set_eviction(policy=policy, budget=budget, **params)
        if split:
            s.eval(prompt[:split], logits=None)
            s.eval(prompt[split:], logits=None)
        else:
            s.eval(prompt, logits=None)
        s.compress()
        assert s.next_pos == s.n_past == len(prompt)
        return positions(s, m)


@pytest.mark.parametrize("arch", ["gqa", "mha"])
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("policy", POLICIES)
def test_prefix_keep_sets_equal_reference(paths, models, policy, budget, arch):
    m = models[arch]
    got = compressed(m, policy, budget)
    ref = prefix_reference_new(paths[arch], PROMPT, policy, budget)
    assert_same_keep(got, ref)
    B = budget_tokens(budget, N_PROMPT)
    for (il, g), pos in got.items():
        assert len(pos) == B and list(pos) == sorted(set(pos))
        if policy == "expected_attention":  # the n_sink first positions are kept (kvpress pads them max + 1)
            assert set(range(4)) <= set(pos.tolist())


@pytest.mark.parametrize("params", [
    dict(window=128),             # every prompt query: kvpress's query set exactly (deviation 1 vanishes)
    dict(window=8),               # a short ring
    dict(n_sink=0),               # no sinks: every query and key counts
    dict(n_sink=12, window=16),   # more sinks than half the budget of 0.1 (8): sinks first, then scores
])
def test_expected_attention_window_and_sinks(paths, models, params):
    for budget in (0.1, 0.25):
        got = compressed(models["gqa"], "expected_attention", budget, **params)
        assert_same_keep(got, prefix_reference_new(paths["gqa"], PROMPT, "expected_attention", budget, **params))
        if params.get("n_sink") == 12 and budget == 0.1:
            assert all(p.tolist() == list(range(8)) for p in got.values())


@pytest.mark.parametrize("params", [
    dict(n_future_positions=64),
    dict(use_covariance=0),
    dict(use_vnorm=0),
    dict(epsilon=0.01),
])
def test_expected_attention_kvpress_knobs(paths, models, params):
    """kvpress's other knobs (constants before the policy interface v2 declared them: skipped there)."""
    try:
        got = compressed(models["gqa"], "expected_attention", 0.25, **params)
    except engine.EngineError as e:
        pytest.skip(f"this build does not declare {list(params)}: {e}")
    ref = prefix_reference_new(paths["gqa"], PROMPT, "expected_attention", 0.25, **params)
    assert_same_keep(got, ref)
    default = prefix_reference_new(paths["gqa"], PROMPT, "expected_attention", 0.25).keep
    assert any(ref.keep[k].tolist() != default[k].tolist() for k in ref.keep)  # the knob matters


@pytest.mark.parametrize("policy", POLICIES)
def test_prefill_in_small_batches_gives_the_same_keep_sets(paths, models, policy):
    """The window ring across batch boundaries gives the statistics of one pass."""
    got = compressed(models["gqa"], policy, 0.25, n_batch=7, split=30)
    assert_same_keep(got, prefix_reference_new(paths["gqa"], PROMPT, policy, 0.25))


@pytest.mark.parametrize("arch, policy", [("gqa", p) for p in POLICIES] + [("mha", "expected_attention")])
def test_decoding_after_compression_attends_to_the_kept_set(paths, models, arch, policy):
    m = models[arch]
    ref = prefix_reference_new(paths[arch], PROMPT, policy, 0.25)
    d = NewDecoder(paths[arch])
    d.eval(PROMPT)
    d.keep_positions(ref.keep)
    want = d.eval(MORE)
    with m.session(n_ctx=128, kv_type="f32", n_threads=1) as s:
        s.set_eviction(policy=policy, budget=0.25)
        s.eval(PROMPT, logits=None)
        s.compress()
        assert_same_keep(positions(s, m), ref)
        got = s.eval(MORE, logits="all")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    full = reference_logits(paths[arch], PROMPT + MORE)[N_PROMPT:]
    assert np.abs(got - full).max() > 1e-3  # the compression did change what the new tokens see


@pytest.mark.parametrize("arch", ["gqa", "mha"])
@pytest.mark.parametrize("policy", POLICIES)
def test_streaming_schedule_matches_per_token_simulation(paths, models, policy, arch):
    """Streaming, slack 0, n_ctx = budget + 1: an eviction after every token, each on buffers an
    earlier eviction left (different slots per kv-head), with the statistics of the ring at that
    step and the future positions after the newest token."""
    m, B, toks = models[arch], 16, DISTINCT
    d = NewDecoder(paths[arch], policy=policy, budget=B, schedule="streaming", slack=0, n_ctx=B + 1)
    want = d.eval(toks)
    ref = d.selection()
    assert d.n_evictions == len(toks) - B
    with m.session(n_ctx=B + 1, kv_type="f32", n_threads=1) as s:
        s.set_eviction(policy=policy, budget=B, schedule="streaming", slack=0)
        got = s.eval(toks, logits="all")
        kept = positions(s, m)
    assert_same_keep(kept, ref)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


# ---------------------------------------------------------------- kvpress semantics on hand-made cases


def test_knorm_keeps_the_smallest_key_norms(paths, models):
    """Straight from the definition: each buffer keeps the c keys of smallest L2 norm (the model's
    float64 keys, no reference machinery), whatever their position (no window, no sinks)."""
    from policy_ref import _capture

    k = _capture(paths["gqa"], tuple(PROMPT))["k"]
    got = compressed(models["gqa"], "knorm", 0.1)
    for (il, g), pos in got.items():
        norms = np.linalg.norm(k[il][:, g, :], axis=-1)
        assert pos.tolist() == sorted(np.argsort(norms)[:8].tolist())
    # hand-made keys: norms 5, 1, 0.5, 10, 1 -> a budget of 2 keeps slots 1 and 2 ... and 3 of 3 ties to
    # the newer position (slot 4, norm 1, over slot 1)
    keys = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 0.5], [6.0, 8.0], [0.0, 1.0]])
    s = knorm_scores([keys])[0]
    rule = dict(n_sink=4, window=32, keep_sinks=False, keep_window=False, keep_last=False)
    assert np.flatnonzero(keep_slots_sinks(np.arange(5), s, 2, **rule)[0]).tolist() == [2, 4]
    assert np.flatnonzero(keep_slots_sinks(np.arange(5), s, 3, **rule)[0]).tolist() == [1, 2, 4]


class _M:  # the hyper-parameters the RoPE helpers read
    def __init__(self, d, base=10000.0):
        self.head_dim = self.n_rot = d
        self.freq_base, self.freq_scale = base, 1.0


def test_expected_attention_averaged_rope_in_gguf_layout():
    """kvpress's averaged rotation (HF rotate-half layout, R = cos*Id + sin*P averaged over
    positions q_len..q_len+n_future-1) equals, under the GGUF row permutation, the mean of our
    pairwise rotations: so mu' . k and k' Sigma' k are the same in either layout."""
    rng = np.random.default_rng(0)
    d, q_len, F = 8, 37, 512
    m = _M(d)
    perm = np.concatenate([np.arange(0, d, 2), np.arange(1, d, 2)])  # to_hf(x) == x[..., perm]
    mu = rng.normal(size=(1, d))
    A = rng.normal(size=(d, d))
    cov = A @ A.T
    assert to_hf(mu, d).tolist() == mu[:, perm].tolist()
    mu_hf, cov_hf = kvpress_avg_rope(mu[:, perm], cov[perm][:, perm][None], q_len, F, m, None)
    # ours: the mean over the future positions of the pairwise rotation R(p) (columns = R(p) e_j)
    Rbar = np.mean([rope(np.eye(d)[None], np.array([float(p)]), m, None)[0].T for p in range(q_len, q_len + F)],
                   axis=0)
    mu_ours, cov_ours = mu @ Rbar.T, Rbar @ cov @ Rbar.T
    np.testing.assert_allclose(mu_hf, mu_ours[:, perm], atol=1e-12)
    np.testing.assert_allclose(cov_hf[0], cov_ours[perm][:, perm], atol=1e-12)
    # the averaged rotation shrinks: high frequencies average out over 512 positions, pair 0 most
    assert abs(Rbar[0, 0]) < 0.01 and abs(Rbar[-1, -1]) > 0.9


def test_expected_attention_hand_made_scores():
    """One query head, d = 2, queries at positions where RoPE is undone exactly: the score is
    softmax(k . mu'/sqrt(d) + k' Sigma' k / (2d)) over the non-sink keys times ||v||, the sinks max + 1,
    and the queries at sink positions are left out of the statistics."""
    m = _M(2, base=1e9)  # pair 0 has frequency 1: rotation by the position itself
    q_pos = np.array([0, 5, 6])
    q_pre = np.array([[[100.0, -100.0]], [[1.0, 0.0]], [[3.0, 0.0]]])  # the first is a sink position
    q_post = np.stack([rope(q_pre[i:i + 1], q_pos[i:i + 1].astype(float), m, None)[0] for i in range(3)])
    keys = [np.array([[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])]
    values = [np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [1.0, 0.0]])]
    pos = [np.arange(4)]
    kw = dict(n_sink=1, n_future_positions=1, use_vnorm=True, epsilon=0.0)
    # mean (2, 0), variance 1 along x; one future position (7): Rbar = R(7)
    c, s_ = np.cos(7.0), np.sin(7.0)
    R = np.array([[c, -s_], [s_, c]])
    mu, cov = R @ np.array([2.0, 0.0]), R @ np.diag([1.0, 0.0]) @ R.T
    k = keys[0][1:]
    z = k @ mu / np.sqrt(2) + np.einsum("ni,ij,nj->n", k, cov, k) / 4
    a = np.exp(z) / np.exp(z).sum()
    want = a * np.array([2.0, 5.0, 1.0])
    got = expected_attention_scores(q_post, q_pos, keys, values, pos, m, None, use_covariance=True, **kw)[0]
    np.testing.assert_allclose(got[1:], want, rtol=1e-12)
    assert got[0] == want.max() + 1
    # without the covariance term only the mean counts
    got = expected_attention_scores(q_post, q_pos, keys, values, pos, m, None, use_covariance=False, **kw)[0]
    z = k @ mu / np.sqrt(2)
    np.testing.assert_allclose(got[1:], np.exp(z) / np.exp(z).sum() * np.array([2.0, 5.0, 1.0]), rtol=1e-12)


def test_expected_attention_keeps_sinks_not_the_window(paths, models):
    """kvpress protects the n_sink first tokens and no recent window: at budget 0.1 on this prompt
    some buffer drops the newest token, and every buffer keeps positions 0..3."""
    got = compressed(models["gqa"], "expected_attention", 0.1)
    assert all(set(range(4)) <= set(p.tolist()) for p in got.values())
    assert any(N_PROMPT - 1 not in p.tolist() for p in got.values())
    assert GGUFModel(paths["gqa"]).n_rot == GGUFModel(paths["gqa"]).head_dim  # to_hf's assumption
