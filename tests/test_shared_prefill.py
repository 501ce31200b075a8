"""One prefill shared by several eviction configurations (rk_session_copy_state, engine.eval.shared_prefill):
bit for bit the figures of separate runs, and clear refusals where sharing would be wrong."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

import engine
from engine.errors import EngineError
from engine.eval.lambada import LambadaItem, lambada, lambada_many
from engine.eval.protocols import perplexity, perplexity_many
from engine.eviction import Eviction

N_CTX = 64

CONFIGS = [
    None,
    Eviction(policy="streaming", budget=0.25),
    Eviction(policy="h2o", budget=0.25),
    Eviction(policy="tova", budget=0.25),
    Eviction(policy="snapkv", budget=0.25, window=8),
    Eviction(policy="snapkv", budget=0.1, window=8, positions="shift"),
    Eviction(policy="pyramidkv", budget=0.25, window=8),
    Eviction(policy="adakv", budget=0.25, window=8, ada_base="restkv"),
    Eviction(policy="lacache", budget=0.25),
    Eviction(policy="restkv", budget=0.25, window=8),
    Eviction(policy="restkv", budget=5, window=8),
    Eviction(policy="topk", budget=0.25),
    Eviction(policy="full", budget=1.0),
]


@pytest.fixture(scope="module")
def gqa(tiny_gguf):
    with engine.Model(tiny_gguf(weight_type="Q8_0")) as m:
        yield m


def tokens(m, n, seed=3):
    return np.random.default_rng(seed).integers(3, m.n_vocab, n).astype(np.int32)


def test_perplexity_many_equals_separate_runs(gqa):
    toks = tokens(gqa, 4 * N_CTX)
    many = perplexity_many(gqa, toks, CONFIGS, n_ctx=N_CTX, progress=False)
    assert len(many) == len(CONFIGS)
    for ev, res in zip(CONFIGS, many):
        alone = perplexity(gqa, toks, n_ctx=N_CTX, progress=False, eviction=ev)
        # everything but the timings, bit for bit
        a, b = asdict(alone), asdict(res)
        for k in ("seconds", "tokens_per_second"):
            a.pop(k), b.pop(k)
        assert a == b, ev
    # and the configurations really differ (a shared state that leaked between them would show here)
    assert len({r.ppl for r in many}) >= len(CONFIGS) - 3


def test_lambada_many_equals_separate_runs(gqa):
    rng = np.random.default_rng(5)
    items = [LambadaItem(list(rng.integers(3, gqa.n_vocab, int(rng.integers(12, 40)))),
                         list(rng.integers(3, gqa.n_vocab, int(rng.integers(1, 3))))) for _ in range(12)]
    many = lambada_many(gqa, items, CONFIGS, progress=False)
    for ev, res in zip(CONFIGS, many):
        alone = lambada(gqa, items, eviction=ev, progress=False)
        a, b = asdict(alone), asdict(res)
        for k in ("seconds", "tokens_per_second"):
            a.pop(k), b.pop(k)
        assert a == b, ev


def prefilled(m, ev, ids, n_ctx=N_CTX):
    s = m.session(n_ctx=n_ctx)
    if ev is not None:
        s.set_eviction(ev)
    s.eval(ids, logits=None)
    return s


def test_copy_state_then_compress_matches_own_prefill(gqa):
    ids = tokens(gqa, 40)
    src = prefilled(gqa, Eviction(policy="h2o", budget=1.0, window=8), ids)
    for ev in (Eviction(policy="h2o", budget=0.3, window=8), Eviction(policy="restkv", budget=0.3, window=8)):
        dst = gqa.session(n_ctx=N_CTX)
        dst.set_eviction(ev)
        dst.copy_state_from(src)
        own = prefilled(gqa, ev, ids)
        assert dst.n_past == own.n_past == 40 and dst.next_pos == own.next_pos
        dst.compress(), own.compress()
        for il in range(gqa.n_layers):
            for g in range(2):
                np.testing.assert_array_equal(dst.kv_positions(il, g), own.kv_positions(il, g))
        nxt = tokens(gqa, 6, seed=9)
        np.testing.assert_array_equal(dst.logprobs(nxt, score_first=True), own.logprobs(nxt, score_first=True))
        assert src.n_past == 40  # the source is untouched


@pytest.mark.parametrize("src_ev, dst_ev, dst_kw, message", [
    (Eviction(policy="snapkv", budget=1.0, window=8), Eviction(policy="h2o", budget=0.5, window=8), {},
     "accumulated attention"),
    (Eviction(policy="h2o", budget=1.0, window=8), Eviction(policy="snapkv", budget=0.5, window=16), {},
     "last 16 queries"),
    (None, Eviction(policy="snapkv", budget=0.5, window=8), {}, "last 8 queries"),
    (None, Eviction(policy="topk", budget=0.5), {}, "top-k sparse attention"),
    (None, None, {"n_ctx": 2 * N_CTX}, "n_ctx"),
    (None, None, {"kv_type": "f32"}, "KV type"),
])
def test_copy_state_refuses_what_cannot_be_shared(gqa, src_ev, dst_ev, dst_kw, message):
    src = prefilled(gqa, src_ev, tokens(gqa, 20))
    dst = gqa.session(**{"n_ctx": N_CTX, **dst_kw})
    if dst_ev is not None:
        dst.set_eviction(dst_ev)
    dst.eval(tokens(gqa, 5, seed=11), logits=None)
    with pytest.raises(EngineError, match=message):
        dst.copy_state_from(src)
    # the destination is unchanged and still usable
    assert dst.n_past == 5
    dst.eval(tokens(gqa, 3, seed=12), logits=None)
    assert dst.n_past == 8


def test_copy_state_refuses_other_models_and_non_sessions(gqa, tiny_gguf):
    with engine.Model(tiny_gguf(weight_type="Q8_0")) as other:
        src = prefilled(other, None, tokens(other, 10))
        dst = gqa.session(n_ctx=N_CTX)
        with pytest.raises(EngineError, match="different models"):
            dst.copy_state_from(src)
    with pytest.raises(EngineError, match="the same session"):
        dst.copy_state_from(dst)
    with pytest.raises(EngineError, match="needs a Session"):
        dst.copy_state_from("not a session")
    src.close()
    with pytest.raises(EngineError, match="closed"):
        dst.copy_state_from(src)
