"""The architecture table (src/model/arch.c): the llama row reads what the GGUF says, an architecture
without a row is refused naming the supported ones, per-layer values (RoPE base and scaling, no
window for llama) come out as the file says, and the row's optional tensors (Q/K/V/O biases) are
used when present, as llama.cpp's llama loader does.

Tiny GGUFs come from models/tiny_gguf.py (the tiny_gguf fixture); variants it cannot write (an
extra key, extra tensors) are made by copying one with gguf-py (rewrite below, byte-identical
when nothing is changed)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

import engine
from engine import EngineError
from reference_forward import GGUFModel, reference_logits, rms_norm, rope, silu

TOKENS = [1, 17, 250, 3, 99, 42, 42, 7, 300, 5, 12, 200, 8, 150, 64, 33]
RK_ERR_UNSUPPORTED = -4  # src/restkv.h


def rewrite(src, dst, *, set_kv: dict | None = None, add_tensors: dict | None = None) -> str:
    """Copy of GGUF src with keys set ({key: (value, GGUFValueType)}) and F32 tensors added."""
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), r.get_field("general.architecture").contents())
    set_kv = dict(set_kv or {})
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in set_kv:
            continue
        vtype = f.types[0]
        w.add_key_value(name, f.contents(), vtype, sub_type=f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    for name, (val, vtype) in set_kv.items():
        w.add_key_value(name, val, vtype)
    for t in r.tensors:
        w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    for name, arr in (add_tensors or {}).items():
        w.add_tensor(name, np.asarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(dst)


def logits(path, tokens=TOKENS, n_ctx=64):
    with engine.Model(str(path), n_threads=2) as m, m.session(n_ctx=n_ctx, kv_type="f32") as s:
        return s.eval(tokens, logits="all")


def rel_err(got, ref):
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def test_rewrite_copies_exactly(tiny_gguf, tmp_path):
    src = tiny_gguf(weight_type="F32", tied=False)
    assert Path(rewrite(src, tmp_path / "copy.gguf")).read_bytes() == Path(src).read_bytes()


# --- the llama row reads the file's values (every layer gets them: one wrong layer breaks the match) ---

@pytest.mark.parametrize("kw", [
    {},
    {"rope_freq_base": 500000.0},
    {"rope_freq_base": 1e6, "rope_scaling_linear": 4.0},
    {"rope_scaling_linear": 2.0, "llama3_rope_factors": True},
    {"rms_eps": 1e-6, "n_kv_heads": 1},
], ids=["default", "base5e5", "base1e6-linear4", "linear2-llama3", "eps-mqa"])
def test_llama_row_reads_the_file(tiny_gguf, kw):
    path = tiny_gguf(weight_type="F32", **kw)
    assert rel_err(logits(path), reference_logits(path, TOKENS)) < 1e-4


def test_rope_keys_change_the_result(tiny_gguf):
    """the keys are really read: the same weights with another base / scaling give other logits"""
    a = logits(tiny_gguf(weight_type="F32"))
    b = logits(tiny_gguf(weight_type="F32", rope_freq_base=500000.0))
    c = logits(tiny_gguf(weight_type="F32", rope_scaling_linear=4.0))
    assert np.array_equal(a[0], b[0])  # position 0: RoPE is the identity there
    assert rel_err(b, a) > 1e-3 and rel_err(c, a) > 1e-3


def test_old_scale_linear_key(tiny_gguf, tmp_path):
    """<arch>.rope.scale_linear (the factor's older name, no scaling.type) = linear scaling"""
    new = tiny_gguf(weight_type="F32", rope_scaling_linear=4.0)
    plain = tiny_gguf(weight_type="F32")
    old = rewrite(plain, tmp_path / "old.gguf", set_kv={"llama.rope.scale_linear": (4.0, gguf.GGUFValueType.FLOAT32)})
    assert np.array_equal(logits(old), logits(new))


def test_llama_ignores_sliding_window_key(tiny_gguf, tmp_path):
    """Mistral: llama.cpp's llama loader reads no window key, so every layer is global (0) and a
    file that holds llama.attention.sliding_window computes exactly what it computes without it"""
    plain = tiny_gguf(weight_type="F32")
    swa = rewrite(plain, tmp_path / "swa.gguf",
                  set_kv={"llama.attention.sliding_window": (4, gguf.GGUFValueType.UINT32)})
    toks = TOKENS * 2  # 32 positions, 8 windows' worth
    assert np.array_equal(logits(swa, toks), logits(plain, toks))


def test_desc_names_the_architecture(tiny_gguf):
    with engine.Model(tiny_gguf(weight_type="F32"), n_threads=1) as m:
        assert m.desc.startswith("llama, 2 layers")


# --- an architecture without a row ---

@pytest.mark.parametrize("arch", ["mamba", "bloom", "gemma"])  # 5 bytes, as "llama": the data stays aligned
def test_unknown_architecture_refused(tiny_gguf, tmp_path, arch):
    good = Path(tiny_gguf(weight_type="Q4_0")).read_bytes()
    i = good.index(b"general.architecture") + len(b"general.architecture")  # u32 type, u64 length, bytes
    n = int.from_bytes(good[i + 4:i + 12], "little")
    assert good[i + 12:i + 12 + n] == b"llama"
    bad = good[:i + 4] + len(arch).to_bytes(8, "little") + arch.encode() + good[i + 12 + n:]
    p = tmp_path / "bad.gguf"
    p.write_bytes(bad)
    with pytest.raises(EngineError) as ei:
        engine.Model(str(p))
    msg = str(ei.value)
    assert ei.value.status == RK_ERR_UNSUPPORTED, msg
    assert f"architecture '{arch}' is not supported (supported: llama, qwen2, qwen3, gemma3)" in msg, msg
    assert "bad.gguf" in msg, msg


# --- optional tensors of the row: Q/K/V/O biases ---

def biased_reference(path, tokens):
    """reference_forward.forward plus the biases (llama.cpp: q, k, v biases before RoPE, o bias after W_o)"""
    m = GGUFModel(path)
    n = len(tokens)
    pos = np.arange(n, dtype=np.float64)
    group = m.n_head // m.n_head_kv
    causal = np.triu(np.full((n, n), -np.inf), k=1)
    x = m.embedding_rows(tokens)
    for il in range(m.n_layer):
        p = f"blk.{il}."
        h = rms_norm(x, m.weight(p + "attn_norm.weight"), m.eps)
        q = (h @ m.weight(p + "attn_q.weight").T + m.weight(p + "attn_q.bias")).reshape(n, m.n_head, m.head_dim)
        k = (h @ m.weight(p + "attn_k.weight").T + m.weight(p + "attn_k.bias")).reshape(n, m.n_head_kv, m.head_dim)
        v = (h @ m.weight(p + "attn_v.weight").T + m.weight(p + "attn_v.bias")).reshape(n, m.n_head_kv, m.head_dim)
        q, k = rope(q, pos, m, None), rope(k, pos, m, None)
        attn = np.empty((n, m.n_head, m.head_dim))
        for hq in range(m.n_head):
            s = q[:, hq, :] @ k[:, hq // group, :].T / np.sqrt(m.head_dim) + causal
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            attn[:, hq, :] = (s / s.sum(axis=-1, keepdims=True)) @ v[:, hq // group, :]
        x = x + attn.reshape(n, -1) @ m.weight(p + "attn_output.weight").T + m.weight(p + "attn_output.bias")
        h = rms_norm(x, m.weight(p + "ffn_norm.weight"), m.eps)
        x = x + (silu(h @ m.weight(p + "ffn_gate.weight").T) * (h @ m.weight(p + "ffn_up.weight").T)) \
            @ m.weight(p + "ffn_down.weight").T
    x = rms_norm(x, m.weight("output_norm.weight"), m.eps)
    out = "output.weight" if "output.weight" in m.tensors else "token_embd.weight"
    return x @ m.weight(out).T


@pytest.fixture(scope="module")
def biased(tiny_gguf, tmp_path_factory):
    plain = tiny_gguf(weight_type="F32", tied=False)
    d, dkv, rng = 128, 64, np.random.default_rng(7)  # tiny F32 defaults: n_embd 128, 2 of 4 heads of 32
    biases = {f"blk.{i}.{t}.bias": 0.5 * rng.standard_normal(n)
              for i in range(2) for t, n in (("attn_q", d), ("attn_k", dkv), ("attn_v", dkv), ("attn_output", d))}
    return plain, rewrite(plain, tmp_path_factory.mktemp("arch") / "biased.gguf", add_tensors=biases)


def test_biases_are_used(biased):
    plain, path = biased
    got, ref = logits(path), biased_reference(path, TOKENS)
    assert rel_err(got, ref) < 1e-4
    assert rel_err(got, logits(plain)) > 1e-2  # they matter at this size


def test_biases_kv_path(biased):
    """token by token through the KV cache = one batch (the cached K/V carry their biases)"""
    _, path = biased
    with engine.Model(path, n_threads=2) as m, m.session(n_ctx=64, kv_type="f32") as s:
        s.eval(TOKENS[:9])
        rest = np.stack([s.eval([t], logits="last") for t in TOKENS[9:]]).reshape(len(TOKENS) - 9, -1)
    assert rel_err(rest, biased_reference(path, TOKENS)[9:]) < 1e-4


def test_biases_match_llamacpp(biased):
    llama_cpp = pytest.importorskip("llama_cpp")
    _, path = biased
    llm = llama_cpp.Llama(model_path=path, n_ctx=64, n_batch=64, logits_all=True, verbose=False,
                          type_k=0, type_v=0, flash_attn=False, n_threads=2)
    llm.eval(TOKENS)
    ref = np.asarray(llm.scores[: len(TOKENS)], dtype=np.float32)
    assert rel_err(logits(path), ref) < 1e-4
