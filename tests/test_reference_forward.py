"""Checks of the tiny GGUF generator and of the numpy reference forward pass.

The reference (tests/reference_forward.py) is what the C engine is tested
against, so here it is itself checked against llama.cpp (llama-cpp-python),
on tiny random models of every weight type and on SmolLM2-135M when present.

Tolerances (relative to max|reference logit|; logits here are O(1..20)):

* F32 weights, F32 KV cache: llama.cpp then computes everything in float32, so
  the only difference is float32 vs float64 rounding (~1e-6 observed).  1e-4.
* F32 weights, default F16 KV cache: K/V and the Q·K / P·V operands are
  rounded to f16 (2^-11 relative): ~7e-4 observed.  2.5e-3.
* F16 weights: the CPU matmul also converts activations to f16: ~1.1e-3. 4e-3.
* BF16 weights: activations converted to bf16 (8-bit mantissa, 2^-9): ~7e-3. 2e-2.
* Q4_0/Q4_1/Q5_0/Q5_1/Q8_0: llama.cpp quantises activations to Q8_0/Q8_1
  (per 32 values, step amax/127) before every matmul; compounded over 2
  layers: max ~3e-2, rms ~2% observed.  max 8e-2 and rms 5e-2.
* Q4_K/Q5_K/Q6_K: activations go to Q8_K (one scale per 256 values, coarser):
  max ~3.5e-2, rms ~2.7% observed.  max 1e-1 and rms 6e-2.
A wrong block layout or a wrong convention (NeoX rope, ignored rope factors,
wrong GQA mapping) gives errors of order 1 (rms ~100% for a wrong dequantiser),
far above these bounds.  Convention-sensitive options are also checked with F32
weights and an F32 KV cache, where the bound is 1e-4.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

import gguf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))
sys.path.insert(0, str(ROOT / "tests"))

import tiny_gguf  # noqa: E402
from tiny_gguf import SUPPORTED_TYPES, write_tiny_llama  # noqa: E402
from reference_forward import GGUFModel, reference_logits  # noqa: E402

GGML_TYPE_F32 = 0
SMOLLM2_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# (max relative error, rms relative error) per weight type, F32 KV cache; see module docstring
TOL = {
    "F32": (1e-4, 1e-4),
    "F16": (4e-3, 4e-3),
    "BF16": (2e-2, 2e-2),
    **{t: (8e-2, 5e-2) for t in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")},
    **{t: (1e-1, 6e-2) for t in ("Q4_K", "Q5_K", "Q6_K")},
}

TOKENS = [int(t) for t in np.random.default_rng(0).integers(3, 384, 24)]


def llama_cpp_logits(path, tokens, *, f32_kv=True, n_ctx=64):
    llama_cpp = pytest.importorskip("llama_cpp")
    kv = dict(type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32) if f32_kv else {}
    m = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=n_ctx, n_batch=n_ctx,
                        flash_attn=False, verbose=False, **kv)
    try:
        m.eval(list(tokens))
        return np.array(m.scores[:len(tokens)], dtype=np.float64)
    finally:
        m.close()


def errors(ref, other):
    d = np.abs(ref - other)
    return d.max() / np.abs(ref).max(), np.sqrt((d ** 2).mean() / (ref ** 2).mean())


# ---------------------------------------------------------------------------
# generator checks (no llama.cpp needed)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("qtype,rms_bound", [("Q4_K", 0.12), ("Q5_K", 0.06), ("Q6_K", 0.04)])
def test_k_quant_encoders_match_gguf_dequantiser(qtype, rms_bound):
    # our own K-quant packers must be the exact inverse layout of gguf-py's dequantiser
    x = np.random.default_rng(1).standard_normal((6, 512)).astype(np.float32)
    enc = tiny_gguf.encode(x, qtype)
    assert enc.dtype == np.uint8 and enc.shape == (6, 2 * gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][1])
    back = gguf.quants.dequantize(enc, gguf.GGMLQuantizationType[qtype])
    assert back.shape == x.shape
    assert np.sqrt(np.mean((back - x) ** 2)) < rms_bound


@pytest.mark.parametrize("wtype", SUPPORTED_TYPES)
def test_tiny_file_layout(tmp_path, wtype):
    p = write_tiny_llama(tmp_path / "m.gguf", weight_type=wtype, tied=False, llama3_rope_factors=True,
                         rope_scaling_linear=2.0)
    assert p.stat().st_size < 2 * 1024 * 1024
    r = gguf.GGUFReader(str(p))
    meta = {k: f.contents() for k, f in r.fields.items()
            if not k.startswith("GGUF.") and k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                                       "tokenizer.ggml.token_type")}
    n_embd = meta["llama.embedding_length"]
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == 2 and meta["llama.attention.head_count"] == 4
    assert meta["llama.attention.head_count_kv"] == 2
    assert meta["llama.rope.dimension_count"] == n_embd // 4
    assert meta["llama.rope.scaling.type"] == "linear" and meta["llama.rope.scaling.factor"] == 2.0
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "default"
    assert meta["llama.vocab_size"] == 384 == len(r.get_field("tokenizer.ggml.tokens").data)
    ts = {t.name: t for t in r.tensors}
    assert ts["token_embd.weight"].tensor_type.name == wtype
    assert list(ts["token_embd.weight"].shape) == [n_embd, 384]           # ne: fastest dim first
    assert list(ts["blk.0.attn_k.weight"].shape) == [n_embd, n_embd // 2]  # GQA: 2 of 4 heads
    assert list(ts["blk.1.ffn_down.weight"].shape) == [meta["llama.feed_forward_length"], n_embd]
    assert ts["blk.1.ffn_norm.weight"].tensor_type.name == "F32"
    assert ts["rope_freqs.weight"].tensor_type.name == "F32"
    assert list(ts["rope_freqs.weight"].shape) == [n_embd // 4 // 2]
    assert "output.weight" in ts
    assert "output.weight" not in {t.name for t in gguf.GGUFReader(
        str(write_tiny_llama(tmp_path / "t.gguf", weight_type=wtype))).tensors}


def test_llama31_rope_factors_shape_and_range():
    f = tiny_gguf.llama31_rope_factors(64, 10000.0, original_context=512)
    assert f.shape == (32,) and f[0] == 1.0 and f[-1] == 8.0
    assert np.all(np.diff(f) >= 0)


def test_reference_is_causal_and_sane(tmp_path):
    p = write_tiny_llama(tmp_path / "m.gguf", weight_type="Q4_K")
    full = reference_logits(p, TOKENS)
    assert full.shape == (len(TOKENS), 384) and full.dtype == np.float64
    np.testing.assert_allclose(reference_logits(p, TOKENS[:7]), full[:7], rtol=1e-12, atol=1e-12)
    # random weights scaled so logits are O(1..10) and the softmax is not saturated
    assert 1.0 < full.std() < 10.0
    probs = np.exp(full - full.max(-1, keepdims=True))
    assert (probs / probs.sum(-1, keepdims=True)).max(-1).mean() < 0.9
    m = GGUFModel(p)
    assert (m.n_head, m.n_head_kv, m.head_dim, m.n_vocab) == (4, 2, 64, 384)


# ---------------------------------------------------------------------------
# reference vs llama.cpp
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("wtype", SUPPORTED_TYPES)
@pytest.mark.parametrize("cfg", [
    dict(),                                  # GQA 4/2, tied
    dict(n_kv_heads=4, tied=False),          # MHA, separate output.weight
], ids=["gqa-tied", "mha-untied"])
def test_reference_matches_llama_cpp(tmp_path, wtype, cfg):
    p = write_tiny_llama(tmp_path / "m.gguf", weight_type=wtype, seed=3, **cfg)
    ref = reference_logits(p, TOKENS)
    max_rel, rms_rel = errors(ref, llama_cpp_logits(p, TOKENS))
    tol_max, tol_rms = TOL[wtype]
    assert max_rel < tol_max and rms_rel < tol_rms, (wtype, cfg, max_rel, rms_rel)


# Exact dequantisation checks (tiny_gguf.write_dequant_probe): logits are
# rmsnorm(token_embd[tok]) @ output.T with everything else exactly zero/one.
# "embd": ggml's row dequantisation (get_rows) vs gguf-py's: float32 rounding only.
# "output": ggml's quantised dot product with activations that 8-bit quantisation
# represents exactly; what remains is f16 rounding of the activation scale d
# (2^-11 = 4.9e-4; ~3.2e-4 observed for Q8_0/Q4_0/Q5_0), plus the f16 block sum
# s of Q8_1 for Q4_1/Q5_1 (~9.5e-4 observed), f16/bf16 activations for F16
# (~3e-4) / BF16 (~3e-3); Q8_K scales are f32 (K-quants ~2e-7).  A dequantiser
# off by one quantisation step anywhere would exceed these bounds.
PROBE_TOL = {"embd": dict.fromkeys(SUPPORTED_TYPES, 1e-5),
             "output": {**dict.fromkeys(SUPPORTED_TYPES, 1e-5),
                        "F16": 1.5e-3, "Q8_0": 1.5e-3, "Q4_0": 1.5e-3, "Q5_0": 1.5e-3,
                        "Q4_1": 3e-3, "Q5_1": 3e-3, "BF16": 1e-2}}


@pytest.mark.parametrize("where", ["embd", "output"])
@pytest.mark.parametrize("wtype", SUPPORTED_TYPES)
def test_dequantisation_matches_llama_cpp_exactly(tmp_path, wtype, where):
    p = tiny_gguf.write_dequant_probe(tmp_path / "probe.gguf", wtype, where)
    toks = list(range(3, 40))
    ref = reference_logits(p, toks)
    max_rel, _ = errors(ref, llama_cpp_logits(p, toks))
    assert max_rel < PROBE_TOL[where][wtype], (wtype, where, max_rel)


@pytest.mark.parametrize("cfg", [
    dict(n_kv_heads=1),                                   # MQA
    dict(n_heads=8, n_kv_heads=2, n_embd=256),            # GQA group 4
    dict(rope_scaling_linear=4.0),
    dict(llama3_rope_factors=True),
    dict(llama3_rope_factors=True, rope_scaling_linear=2.0, rope_freq_base=500000.0),
    dict(rms_eps=1e-6, n_layers=3, vocab="spm"),
    dict(embd_type="Q8_0", output_type="Q6_K", tied=False, n_embd=256),
], ids=["mqa", "gqa4", "linear", "llama3", "llama3-linear-base", "eps-spm", "mixed-types"])
def test_conventions_match_llama_cpp_f32(tmp_path, cfg):
    # F32 matrices + F32 KV cache: llama.cpp is float32 end to end, so a tight bound
    # catches any convention slip (rope pairing/scaling/factors, GQA mapping, eps).
    p = write_tiny_llama(tmp_path / "m.gguf", weight_type="F32", seed=5, **cfg)
    ref = reference_logits(p, TOKENS)
    max_rel, rms_rel = errors(ref, llama_cpp_logits(p, TOKENS))
    if "embd_type" in cfg:   # quantised embedding/output matrices: Q8_K activations for the Q6_K output
        assert max_rel < 1e-1 and rms_rel < 6e-2, (max_rel, rms_rel)
    else:
        assert max_rel < 1e-4, (cfg, max_rel)


def test_f32_with_default_f16_kv_cache(tmp_path):
    # llama.cpp's default KV cache is f16: ~7e-4 relative observed, hence 2.5e-3
    p = write_tiny_llama(tmp_path / "m.gguf", weight_type="F32", llama3_rope_factors=True)
    ref = reference_logits(p, TOKENS)
    max_rel, _ = errors(ref, llama_cpp_logits(p, TOKENS, f32_kv=False))
    assert max_rel < 2.5e-3


def test_wrong_convention_is_detected(tmp_path, monkeypatch):
    # guard against a vacuous comparison: NeoX-style pairing must fail the F32 bound by far
    import reference_forward as rf
    p = write_tiny_llama(tmp_path / "m.gguf", weight_type="F32")
    ll = llama_cpp_logits(p, TOKENS)

    normal_rope = rf.rope

    def neox_rope(x, positions, m, ff):
        # NeoX pairs (i, i + n_rot/2): gather them next to each other, rotate, scatter back
        half = m.n_rot // 2
        g = np.stack([np.arange(half), np.arange(half) + half], axis=-1).ravel()
        y = x.copy()
        y[..., g] = normal_rope(x[..., g], positions, m, ff)
        return y

    monkeypatch.setattr(rf, "rope", neox_rope)
    max_rel, _ = errors(rf.reference_logits(p, TOKENS), ll)
    assert max_rel > 1e-2


# ---------------------------------------------------------------------------
# the real SmolLM2-135M-Instruct Q4_1 file (skipped unless present)
# ---------------------------------------------------------------------------

def _smollm2():
    from conftest import smollm2_or_skip

    return Path(smollm2_or_skip())


def _dequantized_copy(src: Path, dst: Path, n_layers: int) -> Path:
    """Copy of a llama GGUF with all tensors dequantised to F32 and only the first n_layers."""
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), "llama")
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        if k == "general.file_type":
            w.add_uint32(k, int(gguf.LlamaFileType.ALL_F32))
        elif k == "llama.block_count":
            w.add_uint32(k, n_layers)
        elif f.types[0] == gguf.GGUFValueType.ARRAY:
            w.add_key_value(k, f.contents(), f.types[0], sub_type=f.types[-1])
        else:
            w.add_key_value(k, f.contents(), f.types[0])
    for t in r.tensors:
        if t.name.startswith("blk.") and int(t.name.split(".")[1]) >= n_layers:
            continue
        w.add_tensor(t.name, gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def _smollm2_tokens(path):
    llama_cpp = pytest.importorskip("llama_cpp")
    m = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        toks = m.tokenize(b"The quick brown fox jumps over the lazy dog because it wanted to see "
                          b"what was on the other side", add_bos=False)
    finally:
        m.close()
    return toks[:16]


def test_smollm2_q4_1_matches_llama_cpp():
    # Q4_1 matrices (Q8_1 activations) over 30 layers, tied Q8_0 output:
    # observed max ~5% of max|logit| (~31) and rms ~4.3%.
    path = _smollm2()
    toks = _smollm2_tokens(path)
    ref = reference_logits(path, toks)
    ll = llama_cpp_logits(path, toks)
    max_rel, rms_rel = errors(ref, ll)
    assert max_rel < 0.1 and rms_rel < 0.08, (max_rel, rms_rel)
    assert (ref.argmax(-1) == ll.argmax(-1)).mean() >= 0.8


def test_smollm2_dequantized_f32_matches_llama_cpp_tightly(tmp_path):
    # Same weights dequantised to F32 (first 6 layers): llama.cpp is then float32
    # end to end, so real-model conventions (rope pairing of the permuted Q/K,
    # GQA 9/3, tied output, rope base 1e5) are checked to ~1e-6 relative.
    path = _smollm2()
    toks = _smollm2_tokens(path)
    f32 = _dequantized_copy(path, tmp_path / "smol_f32.gguf", n_layers=6)
    max_rel, _ = errors(reference_logits(f32, toks), llama_cpp_logits(f32, toks))
    assert max_rel < 1e-4, max_rel
