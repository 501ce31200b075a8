"""Sliding-window layers (gemma3) in the KV cache and under eviction: a window layer holds a ring of
n_swa - 1 + n_batch slots and is never evicted from; budgets, compression and the streaming schedule
act on the global layers only; a streaming session runs in bounded memory; positions=shift is
refused (the window layers could not follow the re-numbering); copy_state_from carries the rings."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine import EngineError

GEMMA = dict(arch="gemma3", n_embd=128, n_heads=4, n_kv_heads=1, n_layers=7, sliding_window=8, head_dim=32,
             weight_type="F32")
WINDOW_LAYERS = [0, 1, 2, 3, 4, 6]


def ids(n, seed=0):
    return [int(t) for t in np.random.default_rng(seed).integers(3, 380, n)]


@pytest.fixture(scope="module")
def gemma(tiny_gguf):
    return tiny_gguf(**GEMMA)


def test_layer_kinds(gemma):
    with engine.Model(gemma) as m:
        assert m.layer_windows == [8, 8, 8, 8, 8, 0, 8]


def test_prefix_compression_touches_global_layers_only(gemma):
    with engine.Model(gemma) as m, m.session(n_ctx=128, n_batch=16) as s:
        s.set_eviction(policy="snapkv", budget=0.25)
        s.eval(ids(100), logits=None)
        ring = {il: sorted(s.kv_positions(il, 0)) for il in WINDOW_LAYERS}
        s.compress()
        assert s.kv_count(5, 0) == 25  # the global layer: 25% of 100
        for il in WINDOW_LAYERS:  # untouched: the last 8 - 1 + 16 positions
            assert sorted(s.kv_positions(il, 0)) == ring[il] == list(range(100 - 23, 100))
        before = s.kv_bytes_used_window
        s.eval(ids(5, 1), logits=None)
        assert s.kv_bytes_used_window == before  # a full ring: overwrites


def test_streaming_runs_in_bounded_memory(gemma):
    with engine.Model(gemma) as m, m.session(n_ctx=64, n_batch=8) as s:
        s.set_eviction(policy="streaming", budget=32, schedule="streaming", slack=4)
        seen_global, seen_window = set(), set()
        for i in range(40):  # 2000 tokens through a 64-slot cache
            s.eval(ids(50, i), logits=None)
            seen_global.add(s.kv_bytes_used_global)
            seen_window.add(s.kv_bytes_used_window)
        assert s.n_past == 2000
        assert max(seen_global) <= s.kv_bytes_alloc_global
        assert len(seen_window) == 1  # the rings are full from the first call on
        assert s.kv_count(5, 0) <= 32 + 4 + 8


def test_shift_positions_refused(gemma):
    with engine.Model(gemma) as m, m.session(n_ctx=64) as s:
        with pytest.raises(EngineError, match="positions=shift"):
            s.set_eviction(policy="streaming", budget=16, positions="shift")


def test_copy_state_carries_the_rings(gemma):
    with engine.Model(gemma) as m, m.session(n_ctx=128, n_batch=8) as a, m.session(n_ctx=128, n_batch=8) as b:
        a.eval(ids(60), logits=None)
        b.copy_state_from(a)
        x, y = a.eval(ids(9, 5), logits="all"), b.eval(ids(9, 5), logits="all")
        assert np.array_equal(x, y)


def test_window_layers_keep_their_window_in_a_small_session(gemma):
    """a streaming session whose global buffers are smaller than the window (6 slots, window 8):
    the window layers still hold n_swa - 1 + n_batch positions, so they see what the model sees"""
    with engine.Model(gemma) as m, m.session(n_ctx=6, n_batch=6) as s:
        s.set_eviction(policy="streaming", budget=4, schedule="streaming", slack=1)
        s.eval(ids(100), logits=None)
        assert s.kv_count(0, 0) == 8 - 1 + 6
        assert sorted(s.kv_positions(0, 0)) == list(range(100 - 13, 100))
        assert s.kv_count(5, 0) <= 6
