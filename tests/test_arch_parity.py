"""Architectures beyond llama (qwen2, qwen3, gemma3) against llama.cpp itself, on tiny random GGUFs written by
models/tiny_gguf.py (llama.cpp runs random weights when keys and tensors are complete).

What each file exercises: qwen2: Q/K/V biases added before RoPE, NEOX RoPE (pairs (i, i + n_rot/2)),
rope base 1e6, GQA groups of 2 and 3, tied and untied output; qwen3: an explicit head dim with
n_heads * head_dim != n_embd, per-head Q/K RMSNorm before RoPE, GQA 4:1; gemma3: 7 layers with a
sliding window of 8 on layers 0-4 and 6 (layer 5 global) over 40 tokens, so the window slides, and in
sessions with a small batch the sliding-window layers' rings wrap; the window layers' own RoPE base, linear
scaling of the global layers, GELU-tanh through ggml's f16 table, post-norms, scaled embeddings, and a
final logit softcap. Tolerances as in
test_llamacpp_parity.py (which explains them): with F32 weights both engines compute the same float
operations up to summation order, so every row agrees to ~1e-6 of the logit scale; with quantised
weights the first row agrees to float rounding and later rows within 3e-2 (8-bit activation
quantisation amplifies last-bit differences), with the same predicted token almost everywhere. The
decode test feeds the same tokens one at a time after a prefix (the KV-cache path) and compares with
llama.cpp's prefill."""

from __future__ import annotations

import numpy as np
import pytest

import engine

llama_cpp = pytest.importorskip("llama_cpp")

TOKENS = [1, 17, 250, 3, 99, 42, 42, 7, 300, 5, 12, 200, 8, 150, 64, 33, 77, 260, 90, 4]

CASES = {
    "qwen2": dict(arch="qwen2", rope_freq_base=1e6, rms_eps=1e-6),
    "qwen2-untied-gqa3": dict(arch="qwen2", tied=False, n_heads=6, n_kv_heads=2, n_embd=96, rope_freq_base=1e6),
    "qwen3": dict(arch="qwen3", head_dim=48, rope_freq_base=1e6, rms_eps=1e-6),
    "qwen3-gqa4": dict(arch="qwen3", head_dim=32, n_heads=4, n_kv_heads=1, tied=False),
    # Mistral-Nemo-like llama: attention.key_length != n_embd / n_heads (rope.dimension_count = key_length)
    "llama-key-length": dict(arch="llama", head_dim=48, rope_freq_base=1e6),
}


GEMMA = dict(arch="gemma3", n_embd=128, n_heads=4, n_kv_heads=1, n_layers=7, sliding_window=8)
GEMMA_CASES = {
    "gemma3-no-window": dict(GEMMA, head_dim=48, sliding_window=0),
    "gemma3-window": dict(GEMMA, head_dim=48),
    "gemma3-window-bases": dict(GEMMA, head_dim=32, rope_freq_base=1e6, rope_freq_base_swa=5000.0),
    "gemma3-linear4": dict(GEMMA, head_dim=32, rope_scaling_linear=4.0),
    "gemma3-softcap": dict(GEMMA, head_dim=32, final_logit_softcap=30.0),
}
LONG = [int(t) for t in np.random.default_rng(1).integers(3, 380, 40)]


def llamacpp_logits(path, tokens, n_ctx=64):
    llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False,
                          type_k=0, type_v=0, flash_attn=False, n_threads=2)
    llm.eval(tokens)
    return np.asarray(llm.scores[: len(tokens)], dtype=np.float32)


def rel_rows(got, ref):
    return np.abs(got - ref).max(axis=1) / np.abs(ref).max()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("wtype", ["F32", "Q8_0"])
def test_logits_agree_with_llamacpp(tiny_gguf, case, wtype):
    path = tiny_gguf(weight_type=wtype, **CASES[case])
    ref = llamacpp_logits(path, TOKENS)
    with engine.Model(path) as m, m.session(n_ctx=64, kv_type="f32") as s:
        assert m.arch == CASES[case]["arch"]
        got = s.eval(TOKENS, logits="all")
    err = rel_rows(got, ref)
    if wtype == "F32":
        assert err.max() < 1e-5, err
        assert (got.argmax(1) == ref.argmax(1)).all()
    else:
        assert err[0] < 1e-4 and err.max() < 3e-2, err
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9


@pytest.mark.parametrize("case", sorted(GEMMA_CASES))
@pytest.mark.parametrize("wtype", ["F32", "Q8_0"])
def test_gemma3_agrees_with_llamacpp(tiny_gguf, case, wtype):
    """one batch, then batches of 5 (a ring of 8 - 1 + 5 slots that wraps) then decode steps"""
    path = tiny_gguf(weight_type=wtype, **GEMMA_CASES[case])
    ref = llamacpp_logits(path, LONG)
    with engine.Model(path) as m:
        assert m.arch == "gemma3"
        with m.session(n_ctx=64, kv_type="f32") as s:
            whole = s.eval(LONG, logits="all")
        with m.session(n_ctx=64, kv_type="f32", n_batch=5) as s:
            pieces = np.vstack([s.eval(LONG[:23], logits="all")] + [s.eval([t], logits="last") for t in LONG[23:]])
    # the softcap maps logits of scale ~140 (N(0, 1) embeddings, tied) into (-30, 30): the same
    # absolute differences are ~5x larger relative to the capped scale
    f32_limit = 1e-4 if "softcap" in case else 1e-5
    for got in (whole, pieces):
        err = rel_rows(got, ref)
        if wtype == "F32":
            assert err.max() < f32_limit, err
            assert (got.argmax(1) == ref.argmax(1)).all()
        else:
            assert err[0] < 1e-4 and err.max() < 3e-2, err
            assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9


def test_gemma3_window_layers_hold_only_the_window(tiny_gguf):
    """the sliding-window layers' buffers are rings of n_swa - 1 + n_batch slots: after 40 tokens each
    holds 12 (8 - 1 + 5) and the global layer all 40; the window matters (a file without it differs)"""
    path = tiny_gguf(weight_type="F32", **GEMMA_CASES["gemma3-window"])
    with engine.Model(path) as m, m.session(n_ctx=64, kv_type="f32", n_batch=5) as s:
        s.eval(LONG, logits=None)
        counts = [s.kv_count(il, 0) for il in range(7)]
        assert counts == [12, 12, 12, 12, 12, 40, 12]
        assert sorted(s.kv_positions(0, 0)) == list(range(28, 40))
    plain = tiny_gguf(weight_type="F32", **GEMMA_CASES["gemma3-no-window"])
    with engine.Model(plain) as a, engine.Model(path) as b:
        assert np.abs(a.session(n_ctx=64).eval(LONG, logits="all")
                      - b.session(n_ctx=64).eval(LONG, logits="all")).max() > 1e-2


@pytest.mark.parametrize("case", ["qwen2", "qwen3"])
def test_decode_after_prefix_agrees_with_llamacpp_prefill(tiny_gguf, case):
    path = tiny_gguf(weight_type="F32", **CASES[case])
    ref = llamacpp_logits(path, TOKENS)
    with engine.Model(path) as m, m.session(n_ctx=64, kv_type="f32") as s:
        first = s.eval(TOKENS[:7], logits="all")
        rows = [s.eval([t], logits="last") for t in TOKENS[7:]]
    got = np.vstack([first, *rows])
    assert rel_rows(got, ref).max() < 1e-5


def test_qwen2_without_biases_is_not_llama(tiny_gguf):
    # the same weights read as llama (adjacent-pair RoPE) give other logits: the pairing is the arch's
    q = tiny_gguf(weight_type="F32", arch="qwen3", head_dim=32)
    l = tiny_gguf(weight_type="F32", arch="llama", head_dim=32)
    with engine.Model(q) as mq, engine.Model(l) as ml:
        a = mq.session(n_ctx=64).eval(TOKENS, logits="all")
        b = ml.session(n_ctx=64).eval(TOKENS, logits="all")
    assert np.abs(a - b).max() > 1e-2
