"""Logits of the C engine against the numpy reference forward pass on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from reference_forward import reference_logits

TOKENS = [1, 17, 250, 3, 99, 42, 42, 7, 300, 5, 12, 200]


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| relative to the largest reference logit (logits are O(1..10) here)."""
    return float(np.abs(a - b).max() / np.abs(b).max())


# Per-format tolerances against the float64 reference. Float weights use f32
# activations and an f32 KV cache in this test, so only float32 rounding separates
# us from the reference (1e-4). Quantised types multiply against activations
# quantised to 8 bits per block (Q8_0/Q8_1 per 32, Q8_K per 256), exactly as
# llama.cpp does; measured on these tiny models, llama.cpp itself lands 1.7e-2 to
# 3.3e-2 (max |diff| / max |logit|) from the float64 reference, so 5e-2 is the
# bound here; layout or scale bugs give O(1) errors. The tight check of the
# quantised paths is test_llamacpp_parity.py (same activation quantisation).
QUANT_TOL = 5e-2
TOLERANCE = {"F32": 1e-4, "F16": 1e-4, "BF16": 1e-4, "Q8_0": QUANT_TOL, "Q4_0": QUANT_TOL, "Q4_1": QUANT_TOL,
             "Q5_0": QUANT_TOL, "Q5_1": QUANT_TOL, "Q4_K": QUANT_TOL, "Q5_K": QUANT_TOL, "Q6_K": QUANT_TOL}


@pytest.mark.parametrize("wtype", list(TOLERANCE))
@pytest.mark.parametrize("shape", ["gqa_tied", "mha_untied"])
def test_logits_match_reference(tiny_gguf, wtype, shape):
    kv_heads, tied = (2, True) if shape == "gqa_tied" else (4, False)
    path = tiny_gguf(weight_type=wtype, n_kv_heads=kv_heads, tied=tied)
    ref = reference_logits(path, TOKENS)
    with engine.Model(path, n_threads=2) as m, m.session(n_ctx=64, kv_type="f32") as s:
        got = s.eval(TOKENS, logits="all")
    assert got.shape == ref.shape
    assert rel_err(got, ref) < TOLERANCE[wtype], f"{wtype} {shape}: rel err {rel_err(got, ref):.2e}"


@pytest.mark.parametrize("kwargs", [dict(rope_scaling_linear=4.0), dict(llama3_rope_factors=True),
                                    dict(rope_freq_base=500000.0, n_heads=8, n_kv_heads=1)],
                         ids=["linear_rope", "llama3_rope", "base5e5_mqa"])
def test_rope_variants(tiny_gguf, kwargs):
    path = tiny_gguf(weight_type="F32", **kwargs)
    toks = list(range(3, 3 + 40))  # positions long enough for low frequencies to matter
    ref = reference_logits(path, toks)
    with engine.Model(path) as m, m.session(n_ctx=64, kv_type="f32") as s:
        got = s.eval(toks, logits="all")
    assert rel_err(got, ref) < 1e-4


def test_f16_kv_cache_close_to_f32(tiny_gguf):
    path = tiny_gguf(weight_type="F32")
    ref = reference_logits(path, TOKENS)
    with engine.Model(path) as m, m.session(n_ctx=64) as s:  # default f16 KV, as llama.cpp
        got = s.eval(TOKENS, logits="all")
    assert rel_err(got, ref) < 3e-3  # f16 keys/values: 11-bit mantissa


def test_batching_and_threads_do_not_change_results(tiny_gguf):
    """Prefill in one batch, in small batches, token by token, 1 or 3 threads: same logits."""
    path = tiny_gguf(weight_type="Q4_1")
    with engine.Model(path) as m:
        with m.session(n_ctx=64, n_threads=1) as s:
            full = s.eval(TOKENS, logits="all")
        with m.session(n_ctx=64, n_threads=3, n_batch=5) as s:
            batched = s.eval(TOKENS, logits="all")
        with m.session(n_ctx=64, n_threads=2) as s:
            stepwise = np.stack([s.eval([t]) for t in TOKENS])
    # same arithmetic per row regardless of how rows are grouped or split over threads
    np.testing.assert_array_equal(full, batched)
    np.testing.assert_allclose(full, stepwise, rtol=0, atol=1e-5)


def test_logprobs_equal_log_softmax_of_logits(tiny_gguf):
    path = tiny_gguf(weight_type="Q8_0")
    with engine.Model(path) as m:
        with m.session(n_ctx=64) as s:
            logits = s.eval(TOKENS, logits="all").astype(np.float64)
        with m.session(n_ctx=64, n_batch=4) as s:
            lp, am = s.logprobs(TOKENS, return_argmax=True)
    ls = logits - logits.max(1, keepdims=True)
    ls -= np.log(np.exp(ls).sum(1, keepdims=True))
    want = ls[np.arange(len(TOKENS) - 1), TOKENS[1:]]
    np.testing.assert_allclose(lp, want, atol=1e-4)
    np.testing.assert_array_equal(am, logits[:-1].argmax(1))


def test_reset_and_continuation(tiny_gguf):
    path = tiny_gguf(weight_type="Q4_0")
    with engine.Model(path) as m, m.session(n_ctx=32) as s:
        a = s.eval(TOKENS)
        assert s.n_past == len(TOKENS)
        s.reset()
        assert s.n_past == 0 and s.kv_bytes_used == 0
        s.eval(TOKENS[:5], logits=None)
        b = s.eval(TOKENS[5:])
        np.testing.assert_allclose(a, b, atol=1e-5)
        assert s.kv_bytes_used > 0 and s.kv_bytes_used <= s.kv_bytes_alloc


def test_logprobs_in_pieces_equal_one_call(tiny_gguf):
    """score_first chains pieces: every prediction once, identical to a single call."""
    path = tiny_gguf(weight_type="Q4_1")
    toks = TOKENS * 3
    with engine.Model(path) as m:
        with m.session(n_ctx=64) as s:
            whole = s.logprobs(toks)
        with m.session(n_ctx=64) as s:
            parts = [s.logprobs(toks[:5])]
            for a, b in ((5, 6), (6, 20), (20, len(toks))):
                parts.append(s.logprobs(toks[a:b], score_first=True))
            assert s.n_past == len(toks)
        np.testing.assert_allclose(np.concatenate(parts), whole, rtol=0, atol=1e-5)
        with m.session(n_ctx=64) as s, pytest.raises(engine.EngineError, match="no token evaluated"):
            s.logprobs([1, 2], score_first=True)
