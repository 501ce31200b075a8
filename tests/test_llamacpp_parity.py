"""Logits and perplexity against llama.cpp itself (through llama-cpp-python), same files, same inputs.

Our matmuls quantise activations exactly as llama.cpp's CPU backend does, so on
tiny models most logit rows agree to float rounding (~1e-6). A few rows may
differ by ~1e-2..1e-1: a last-bit difference in a float sum (summation order
differs between any two SIMD kernels) occasionally moves a value across an 8-bit
rounding boundary of the next layer's activation quantisation, and that step is
amplified downstream, and through the KV cache to every later position. So the
test asks: the first position agrees to float rounding, every position agrees
far more closely than either engine agrees with the float64 reference (3e-2 vs
5e-2 of the logit scale), and the predicted token is the same almost everywhere.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import engine

llama_cpp = pytest.importorskip("llama_cpp")

TYPES = ["F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]
TOKENS = [1, 17, 250, 3, 99, 42, 42, 7, 300, 5, 12, 200, 8, 150, 64, 33]


def llamacpp_logits(path, tokens, n_ctx=64, kv_f32=True):
    kv = 0 if kv_f32 else 1  # GGML_TYPE_F32 / F16
    llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False,
                          type_k=kv, type_v=kv, flash_attn=False, n_threads=2)
    llm.eval(tokens)
    return np.asarray(llm.scores[: len(tokens)], dtype=np.float32)


@pytest.mark.parametrize("wtype", TYPES)
def test_logits_agree_with_llamacpp(tiny_gguf, wtype):
    path = tiny_gguf(weight_type=wtype, n_kv_heads=2, tied=False)
    ref = llamacpp_logits(path, TOKENS)
    with engine.Model(path) as m, m.session(n_ctx=64, kv_type="f32") as s:
        got = s.eval(TOKENS, logits="all")
    row_err = np.abs(got - ref).max(axis=1) / np.abs(ref).max()
    same_top1 = (got.argmax(1) == ref.argmax(1)).mean()
    if wtype == "F16":  # llama.cpp rounds activations to f16 for F16 matmuls; we keep f32
        assert row_err.max() < 3e-3, row_err
        return
    assert row_err[0] < 1e-4, row_err
    assert row_err.max() < 3e-2, row_err
    assert same_top1 >= 0.9, same_top1


def test_perplexity_first_chunks_agree_with_llamacpp(smollm2, wikitext_path):
    """SmolLM2 Q4_1, 2 chunks of 512 with llama-perplexity's protocol, both engines in this run."""
    text = open(wikitext_path, encoding="utf-8").read()[:40000]
    from engine.eval.protocols import perplexity

    with engine.Model(smollm2, n_threads=2) as m:
        toks = m.tokenize(text)
        ours = perplexity(m, toks, n_ctx=512, n_chunks=2, progress=False).ppl
    llm = llama_cpp.Llama(model_path=smollm2, n_ctx=512, n_batch=512, logits_all=True, verbose=False,
                          flash_attn=False, n_threads=2)
    assert llm.tokenize(text.encode(), add_bos=True, special=False) == toks
    nll, n = 0.0, 0
    for c in range(2):
        chunk = toks[c * 512:(c + 1) * 512]
        llm.reset()
        llm.eval(chunk)
        lg = np.asarray(llm.scores[256:511], dtype=np.float64)
        mx = lg.max(1)
        lse = mx + np.log(np.exp(lg - mx[:, None]).sum(1))
        nll += float((lse - lg[np.arange(255), chunk[257:512]]).sum())
        n += 255
    theirs = math.exp(nll / n)
    assert abs(ours / theirs - 1) < 0.01, (ours, theirs)
