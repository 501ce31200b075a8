"""The shared eviction machinery: settings validation, budgets, protection, schedules, positions, memory."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine import EngineError

TOKS = [int(t) for t in np.random.default_rng(7).integers(3, 380, 300)]


@pytest.fixture(scope="module")
def model(tiny_gguf):
    with engine.Model(tiny_gguf(weight_type="F32", n_heads=4, n_kv_heads=2)) as m:
        yield m


def all_positions(s, m):
    return [[s.kv_positions(il, g) for g in range(m.n_kv_heads)] for il in range(m.n_layers)]


@pytest.mark.parametrize("bad, msg", [
    (dict(policy="nope"), "unknown policy 'nope'"),
    (dict(budget=0.0), "budget"),
    (dict(budget=-3), "budget"),
    (dict(budget=1.5), "integer >= 2"),
    (dict(budget=float("nan")), "budget"),
    (dict(window=0), "window"),
    (dict(kernel=4), "kernel must be odd"),
    (dict(slack=-1), "slack"),
    (dict(ema_alpha=0.0), "ema_alpha"),
    (dict(ada_base="x"), "ada_base"),
    (dict(lacache_span=4, lacache_overlap=4), "lacache"),
    (dict(schedule="later"), "unknown schedule"),
    (dict(positions="moved"), "unknown positions"),
    (dict(policy="streaming", budget=200, schedule="streaming"), r"n_ctx >= budget \+ slack \+ 1"),
])
def test_bad_settings_are_clear_errors_and_change_nothing(model, bad, msg):
    with model.session(n_ctx=128) as s:
        s.set_eviction(policy="streaming", budget=16)
        with pytest.raises(EngineError, match=msg):
            s.set_eviction(**bad)
        assert s.eviction.policy == "streaming"  # the previous settings still apply
        s.eval(TOKS[:40], logits=None)
        s.compress()
        assert s.kv_count(0, 0) == 16


def test_shift_refused_for_ragged_policies(model):
    with model.session(n_ctx=64) as s:
        for p in ("adakv", "pyramidkv"):
            with pytest.raises(EngineError, match="positions=shift"):
                s.set_eviction(policy=p, budget=0.5, positions="shift")


@pytest.mark.parametrize("budget, kept", [(0.25, 20), (0.1, 8), (12, 12), (2, 2), (1.0, 80), (500, 80)])
def test_budget_is_exact_and_sinks_then_newest_kept(model, budget, kept):
    with model.session(n_ctx=128) as s:
        s.set_eviction(policy="streaming", budget=budget)
        s.eval(TOKS[:80], logits=None)
        s.compress()
        assert s.next_pos == s.n_past == 80  # original positions continue
        want = sorted(set(range(min(4, kept))) | set(range(80 - (kept - min(4, kept)), 80)))
        for row in all_positions(s, model):
            for pos in row:
                assert list(pos) == want


def test_prefix_budget_one_is_bit_identical_to_full(model):
    with model.session(n_ctx=128) as a, model.session(n_ctx=128) as b:
        b.set_eviction(policy="streaming", budget=1.0)
        a.eval(TOKS[:60], logits=None)
        b.eval(TOKS[:60], logits=None)
        b.compress()
        np.testing.assert_array_equal(a.logprobs(TOKS[60:100]), b.logprobs(TOKS[60:100]))


def test_compress_changes_what_later_tokens_see(model):
    with model.session(n_ctx=128) as a, model.session(n_ctx=128) as b:
        b.set_eviction(policy="streaming", budget=0.25)
        for s in (a, b):
            s.eval(TOKS[:60], logits=None)
        b.compress()
        assert b.kv_bytes_used < a.kv_bytes_used / 3
        assert not np.allclose(a.eval(TOKS[60:61]), b.eval(TOKS[60:61]))


def test_streaming_schedule_bounds_the_cache(model):
    budget, slack = 24, 5
    with model.session(n_ctx=budget + slack + 1) as s:
        s.set_eviction(policy="streaming", budget=budget, schedule="streaming", slack=slack)
        alloc = s.kv_bytes_alloc
        for i in range(0, 300, 7):
            s.eval(TOKS[i:i + 7], logits=None)
            assert s.kv_count(0, 0) <= budget + slack
            assert s.kv_bytes_alloc == alloc
        assert s.n_past == 300 and s.next_pos == 300
        pos = s.kv_positions(1, 1)
        assert list(pos[:4]) == [0, 1, 2, 3] and pos[-1] == 299 and list(pos) == sorted(pos)


def test_streaming_slack_zero_equals_per_token_eviction(model):
    """One eval of many tokens evicts exactly as feeding them one by one (batches are cut at the budget)."""
    with model.session(n_ctx=17) as a, model.session(n_ctx=17) as b:
        for s in (a, b):
            s.set_eviction(policy="streaming", budget=16, schedule="streaming")
        la = a.logprobs(TOKS[:60])
        lb = []
        for i in range(59):  # one token at a time
            lg = b.eval([TOKS[i]]).astype(np.float64)
            lb.append(lg[TOKS[i + 1]] - lg.max() - np.log(np.exp(lg - lg.max()).sum()))
        b_pos = all_positions(b, model)
        np.testing.assert_allclose(la, lb, rtol=0, atol=1e-5)
        assert all_positions(a, model)[0][0].tolist() == list(range(4)) + list(range(48, 60))
        assert b_pos[0][0].tolist() == list(range(4)) + list(range(47, 59))  # b saw tokens 0..58


def test_shift_positions_rerotate_keys(tiny_gguf):
    """With one layer, K/V depend only on each token, so after a shift the cache must equal a fresh
    prefill of the kept tokens at positions 0..n-1: the next logits then agree."""
    path = tiny_gguf(weight_type="F32", n_layers=1)
    toks = TOKS[:50]
    with engine.Model(path) as m, m.session(n_ctx=64, kv_type="f32") as s, m.session(n_ctx=64, kv_type="f32") as f:
        s.set_eviction(policy="streaming", budget=20, positions="shift")
        s.eval(toks, logits=None)
        s.compress()
        assert s.next_pos == 20 and list(s.kv_positions(0, 0)) == list(range(20))
        kept = toks[:4] + toks[-16:]
        got = s.eval([7, 8])
        want = f.eval(kept + [7, 8])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_compress_needs_observation_queries(model):
    with model.session(n_ctx=64) as s:
        s.set_eviction(policy="snapkv", budget=0.5)
        with pytest.raises(EngineError, match="evaluate some first"):
            s.compress()


def test_reset_keeps_settings_and_clears_state(model):
    with model.session(n_ctx=64) as s:
        s.set_eviction(policy="streaming", budget=8)
        s.eval(TOKS[:40], logits=None)
        s.compress()
        s.reset()
        assert s.kv_bytes_used == 0 and s.next_pos == 0
        s.eval(TOKS[:40], logits=None)
        s.compress()
        assert s.kv_count(1, 0) == 8


def test_topk_attention_keeps_whole_cache(model):
    with model.session(n_ctx=128) as full, model.session(n_ctx=128) as one, model.session(n_ctx=128) as sp:
        one.set_eviction(policy="topk", budget=1.0)
        sp.set_eviction(policy="topk", budget=0.1)
        a, b, c = (s.eval(TOKS[:60], logits="all") for s in (full, one, sp))
        np.testing.assert_array_equal(a, b)            # every key kept: identical
        assert not np.allclose(a[20:], c[20:])         # 10% of the keys: different
        assert sp.kv_bytes_used == full.kv_bytes_used  # nothing evicted


def test_memory_flat_over_100k_token_stream(tiny_gguf):
    """A streaming session over 100k tokens: KV bytes bounded and allocation constant, RSS flat."""
    def rss_kb():
        with open("/proc/self/statm") as f:
            import os
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    path = tiny_gguf(weight_type="Q8_0")
    rng = np.random.default_rng(0)
    budget, slack = 64, 64
    with engine.Model(path) as m, m.session(n_ctx=budget + slack + 1) as s:
        s.set_eviction(policy="streaming", budget=budget, schedule="streaming", slack=slack)
        alloc = s.kv_bytes_alloc
        bound = alloc * (budget + slack) // (budget + slack + 1)
        rss = []
        n = 0
        while n < 100_000:
            s.eval(rng.integers(3, m.n_vocab, 500), logits=None)
            n += 500
            assert s.kv_bytes_used <= bound and s.kv_bytes_alloc == alloc
            if n % 10_000 == 0:
                rss.append(rss_kb())
        lg = s.eval([5])
        assert np.isfinite(lg).all() and s.n_past == 100_001
    assert max(rss[1:]) - rss[1] < 2048, rss  # flat after warm-up (KiB)
