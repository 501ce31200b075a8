#!/usr/bin/env python3
"""Write tiny random Llama-architecture GGUF files for tests.

The files follow the layout that llama.cpp's ``convert_hf_to_gguf.py`` writes
for architecture ``llama`` (same metadata keys, tensor names, F32 norms), so
both llama.cpp and our engine load them.  The weights are random; only the
shapes, types and conventions matter.  ``tests/reference_forward.py`` computes
the forward pass of such a file with numpy.

Library use::

    from tiny_gguf import write_tiny_llama        # with models/ on sys.path
    write_tiny_llama("t.gguf", weight_type="Q4_K", n_heads=4, n_kv_heads=2)

Command line::

    python models/tiny_gguf.py --out t.gguf --type Q4_K --kv-heads 2

Conventions worth knowing:

* GGUF shapes (``ne``) are listed fastest dimension first: a projection from
  ``n_in`` to ``n_out`` has ``ne = [n_in, n_out]`` and is the numpy array
  ``[n_out, n_in]`` (one row per output).
* Q/K rows are already in llama.cpp's order: RoPE rotates adjacent pairs
  ``(2i, 2i+1)`` of each head (the converter permutes HF weights into that
  order; random weights need no permutation).
* Norm weights and ``rope_freqs.weight`` are F32; every 2-D matrix uses
  ``weight_type`` (``token_embd``/``output`` may be overridden).
* K-quants (Q4_K, Q5_K, Q6_K) need row lengths that are multiples of 256, so
  the default sizes depend on the type: n_embd=256/n_ff=512 for 256-element
  block types, n_embd=128/n_ff=256 otherwise (keeps F32 files under 2 MB).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                   "Q4_K", "Q5_K", "Q6_K")

# general.file_type written by llama.cpp for a file whose matrices are all of a type
_FILE_TYPE = {
    "F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
    "BF16": gguf.LlamaFileType.MOSTLY_BF16, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    "Q5_0": gguf.LlamaFileType.MOSTLY_Q5_0, "Q5_1": gguf.LlamaFileType.MOSTLY_Q5_1,
    "Q4_K": gguf.LlamaFileType.MOSTLY_Q4_K_M, "Q5_K": gguf.LlamaFileType.MOSTLY_Q5_K_M,
    "Q6_K": gguf.LlamaFileType.MOSTLY_Q6_K,
}

QK_K = 256


def block_size(weight_type: str) -> int:
    """Elements per quantisation block of a type (1 for float types)."""
    return gguf.GGML_QUANT_SIZES[QT[weight_type]][0]


# --------------------------------------------------------------------------
# K-quant encoders.  gguf-py 0.19 can dequantise K-quants but not quantise
# them, so these are small round-to-nearest encoders of our own.  They are not
# llama.cpp's optimised search; they only need to produce valid blocks whose
# dequantised values resemble the input.  The byte layouts are those of
# ggml's block_q4_K / block_q5_K / block_q6_K (checked against
# gguf.quants.dequantize in tests/test_reference_forward.py).
# --------------------------------------------------------------------------

def _f16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float16)


def _pack_6bit_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Pack 8 six-bit scales and 8 six-bit mins per block into 12 bytes (Q4_K/Q5_K)."""
    sc = sc.astype(np.uint8)
    mn = mn.astype(np.uint8)
    out = np.zeros((sc.shape[0], 12), dtype=np.uint8)
    # bytes 0..3: scales 0..3 (6 bits), top 2 bits = bits 4..5 of scales 4..7
    out[:, 0:4] = (sc[:, 0:4] & 0x3F) | ((sc[:, 4:8] >> 4) << 6)
    # bytes 4..7: mins 0..3 (6 bits), top 2 bits = bits 4..5 of mins 4..7
    out[:, 4:8] = (mn[:, 0:4] & 0x3F) | ((mn[:, 4:8] >> 4) << 6)
    # bytes 8..11: low nibble = low 4 bits of scales 4..7, high nibble = of mins 4..7
    out[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((mn[:, 4:8] & 0x0F) << 4)
    return out


def _affine_k(x: np.ndarray, nmax: int):
    """Shared Q4_K/Q5_K step: per 32-element sub-block value = d*sc*q - dmin*m."""
    nb = x.shape[0]
    sub = x.reshape(nb, 8, 32)
    lo = np.minimum(sub.min(axis=-1), 0.0)           # the offset must be >= 0
    hi = sub.max(axis=-1)
    scale = (hi - lo) / nmax                          # per sub-block step
    offs = -lo                                        # per sub-block offset
    d = _f16(scale.max(axis=-1) / 63.0)
    dmin = _f16(offs.max(axis=-1) / 63.0)
    df = d.astype(np.float32)[:, None]
    dminf = dmin.astype(np.float32)[:, None]
    sc = np.clip(np.rint(np.divide(scale, df, out=np.zeros_like(scale), where=df > 0)), 0, 63)
    mn = np.clip(np.rint(np.divide(offs, dminf, out=np.zeros_like(offs), where=dminf > 0)), 0, 63)
    step = (df * sc)[..., None]
    base = (dminf * mn)[..., None]
    q = np.divide(sub + base, step, out=np.zeros_like(sub), where=step > 0)
    q = np.clip(np.rint(q), 0, nmax).astype(np.uint8)  # [nb, 8, 32]
    head = np.concatenate([d.view(np.uint8).reshape(nb, 2), dmin.view(np.uint8).reshape(nb, 2),
                           _pack_6bit_scales(sc, mn)], axis=1)
    return head, q


def _nibbles(q: np.ndarray) -> np.ndarray:
    """[nb, 8, 32] values 0..15 -> 128 bytes: byte 32c+l = sub 2c (low) | sub 2c+1 (high)."""
    nb = q.shape[0]
    pairs = q.reshape(nb, 4, 2, 32)
    return (pairs[:, :, 0, :] | (pairs[:, :, 1, :] << 4)).reshape(nb, 128)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """[nb*256] float -> [nb, 144] uint8 block_q4_K: d, dmin, scales[12], qs[128]."""
    head, q = _affine_k(x.reshape(-1, QK_K), 15)
    return np.concatenate([head, _nibbles(q)], axis=1)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    """[nb*256] float -> [nb, 176] uint8 block_q5_K: d, dmin, scales[12], qh[32], qs[128]."""
    head, q = _affine_k(x.reshape(-1, QK_K), 31)
    nb = q.shape[0]
    # bit 4 of element l of sub-block j lives in bit j of qh[l]
    hi = (q >> 4) & 1                                          # [nb, 8, 32]
    qh = np.zeros((nb, 32), dtype=np.uint8)
    for j in range(8):
        qh |= hi[:, j, :] << j
    return np.concatenate([head, qh, _nibbles(q & 0x0F)], axis=1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """[nb*256] float -> [nb, 210] uint8 block_q6_K: ql[128], qh[64], scales[16] (int8), d."""
    blocks = x.reshape(-1, QK_K)
    nb = blocks.shape[0]
    sub = blocks.reshape(nb, 16, 16)
    scale = np.abs(sub).max(axis=-1) / 32.0                   # q in -32..31
    d = _f16(scale.max(axis=-1) / 127.0)
    df = d.astype(np.float32)[:, None]
    sc = np.clip(np.rint(np.divide(scale, df, out=np.zeros_like(scale), where=df > 0)), 0, 127)
    step = (df * sc)[..., None]
    q = np.divide(sub, step, out=np.zeros_like(sub), where=step > 0)
    q = (np.clip(np.rint(q), -32, 31) + 32).astype(np.uint8).reshape(nb, QK_K)
    # Each half of 128 elements: ql[64h+l] = elem 128h+l (low) | elem 128h+64+l (high nibble);
    # qh[32h+l] bits 2k..2k+1 = high two bits of elem 128h+32k+l.
    halves = q.reshape(nb, 2, 128)
    lo = halves & 0x0F
    ql = (lo[:, :, :64] | (lo[:, :, 64:] << 4)).reshape(nb, 128)
    hi = (halves >> 4).reshape(nb, 2, 4, 32)
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(nb, 64)
    return np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), d.view(np.uint8).reshape(nb, 2)],
                          axis=1)


_K_ENCODERS = {"Q4_K": quantize_q4_k, "Q5_K": quantize_q5_k, "Q6_K": quantize_q6_k}


def encode(w: np.ndarray, weight_type: str) -> np.ndarray:
    """Encode a float matrix [rows, n_in] for GGUFWriter.add_tensor(raw_dtype=...)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if weight_type == "F32":
        return w
    if weight_type == "F16":
        return w.astype(np.float16)
    bs, ts = gguf.GGML_QUANT_SIZES[QT[weight_type]]
    if w.shape[-1] % bs:
        raise ValueError(f"{weight_type} needs row lengths that are multiples of {bs}, got {w.shape[-1]}")
    if weight_type in _K_ENCODERS:
        out = _K_ENCODERS[weight_type](w.reshape(-1))
        return out.reshape(w.shape[0], w.shape[1] // bs * ts)
    return gguf.quants.quantize(w, QT[weight_type])


# --------------------------------------------------------------------------
# Tokenizers: small but valid vocabularies that llama.cpp accepts.
# --------------------------------------------------------------------------

def _gpt2_byte_chars() -> list[str]:
    """GPT-2's reversible byte -> printable unicode map, indexed by byte value."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = {}
    extra = 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


_COMMON = ("th he in er an re on at en nd ti es or te of ed is it al ar st to nt ng se ha as ou io le ve"
           " co me de hi ri ro ic ne ea ra ce li ch ll be ma si om ur").split()


def bpe_vocab(n_vocab: int):
    """gpt2-style vocab: 3 specials, 256 byte tokens, then merged tokens."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    byte_chars = _gpt2_byte_chars()
    n_merges = n_vocab - len(specials) - 256
    if n_merges < 0:
        raise ValueError(f"bpe vocab needs n_vocab >= {len(specials) + 256}")
    tokens = specials + byte_chars
    have = set(tokens)
    merges: list[str] = []
    space = byte_chars[ord(" ")]  # 'Ġ'

    def candidates():
        for c in "abcdefghijklmnopqrstuvwxyz":
            yield space, c
        for bg in _COMMON:
            yield bg[0], bg[1]
        for bg in _COMMON:
            yield space, bg
        for a in "abcdefghijklmnopqrstuvwxyz":
            for b in "abcdefghijklmnopqrstuvwxyz":
                yield a, b
        for a in "abcdefghijklmnopqrstuvwxyz":
            for bg in _COMMON:
                yield space + a, bg

    for a, b in candidates():
        if len(merges) == n_merges:
            break
        if a in have and b in have and a + b not in have:
            merges.append(f"{a} {b}")
            tokens.append(a + b)
            have.add(a + b)
    if len(merges) != n_merges:
        raise ValueError(f"n_vocab={n_vocab} too large for the built-in merge list")
    types = [gguf.TokenType.CONTROL] * len(specials) + [gguf.TokenType.NORMAL] * (n_vocab - len(specials))
    return tokens, types, merges


def spm_vocab(n_vocab: int):
    """llama-style (SentencePiece) vocab: <unk> <s> </s>, 256 byte tokens, scored pieces."""
    base = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + \
        [gguf.TokenType.BYTE] * 256
    pieces = ["\u2581"] + list("etaoinshrdlcumwfgypbvkjxqz") + \
        ["\u2581" + c for c in "abcdefghijklmnopqrstuvwxyz"] + _COMMON + \
        ["\u2581" + bg for bg in _COMMON] + \
        [a + b for a in "abcdefghijklmnopqrstuvwxyz" for b in "abcdefghijklmnopqrstuvwxyz"]
    seen = set(base)
    uniq = [p for p in pieces if not (p in seen or seen.add(p))]
    n_pieces = n_vocab - len(base)
    if n_pieces < 0 or n_pieces > len(uniq):
        raise ValueError(f"spm vocab needs {len(base)} <= n_vocab <= {len(base) + len(uniq)}")
    tokens = base + uniq[:n_pieces]
    types += [gguf.TokenType.NORMAL] * n_pieces
    scores = [0.0] * len(base) + [-float(i) for i in range(n_pieces)]
    return tokens, types, scores


# --------------------------------------------------------------------------

def llama31_rope_factors(n_rot: int, base: float, factor: float = 8.0, low_freq_factor: float = 1.0,
                        high_freq_factor: float = 4.0, original_context: int = 8192) -> np.ndarray:
    """Llama 3.1 frequency factors (what the converter stores in rope_freqs.weight).

    Frequencies are later *divided* by these factors: 1 for short wavelengths,
    ``factor`` for long ones, smooth in between.
    """
    freqs = 1.0 / base ** (np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
    low_wavelen = original_context / low_freq_factor
    high_wavelen = original_context / high_freq_factor
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_tiny_llama(path, *, weight_type: str = "F32", n_vocab: int = 384, n_embd: int | None = None,
                     n_layers: int = 2, n_heads: int = 4, n_kv_heads: int = 2, n_ff: int | None = None,
                     tied: bool = True, rope_freq_base: float = 10000.0,
                     rope_scaling_linear: float | None = None,
                     llama3_rope_factors: bool | Sequence[float] = False,
                     rms_eps: float = 1e-5, n_ctx_train: int = 512, seed: int = 0, vocab: str = "bpe",
                     embd_type: str | None = None, output_type: str | None = None,
                     name: str | None = None, arch: str = "llama", head_dim: int | None = None,
                     sliding_window: int = 0, swa_pattern: int | None = None,
                     rope_freq_base_swa: float | None = None, final_logit_softcap: float | None = None,
                     _transform=None) -> Path:
    """Write a random Llama-family GGUF and return its path.

    arch: "llama"; "qwen2" (Q/K/V biases, NEOX RoPE, qwen2 pre-tokenizer); "qwen3" (explicit
        head_dim through key_length, per-head Q/K RMSNorm, no biases).
        "gemma3" (sliding-window layers, GELU-tanh FFN, Q/K norms, post-norms, embeddings scaled
        by sqrt(n_embd), SPM vocab without a space prefix; tied).
    head_dim: (qwen3, gemma3, llama) writes attention.key_length/value_length, so n_heads * head_dim
        may differ from n_embd.
    sliding_window, swa_pattern, rope_freq_base_swa, final_logit_softcap: gemma3's keys (written
        when given; sliding_window 0 = no window key).

    weight_type: type of every matrix (see SUPPORTED_TYPES); embd_type / output_type
        override it for token_embd.weight / output.weight.
    n_embd, n_ff: default 256/512 for 256-element block types (K-quants), else 128/256.
    n_kv_heads: == n_heads gives MHA, a divisor of it GQA.
    tied: no output.weight; llama.cpp then reuses token_embd.weight.
    rope_scaling_linear: writes rope.scaling.type=linear and .factor (positions / factor).
    llama3_rope_factors: True -> Llama 3.1 factors (factor 8, low 1, high 4, original
        context n_ctx_train) in rope_freqs.weight; a sequence of n_rot/2 floats writes those.
    vocab: "bpe" (gpt2 tokenizer, like SmolLM2) or "spm" (llama/SentencePiece tokenizer).
    """
    weight_type = weight_type.upper()
    embd_type = (embd_type or weight_type).upper()
    output_type = (output_type or weight_type).upper()
    for t in (weight_type, embd_type, output_type):
        if t not in SUPPORTED_TYPES:
            raise ValueError(f"unsupported type {t!r}; choose from {', '.join(SUPPORTED_TYPES)}")
    big = max(block_size(t) for t in (weight_type, embd_type, output_type)) == QK_K
    n_embd = n_embd or (256 if big else 128)
    n_ff = n_ff or 2 * n_embd
    if arch not in ("llama", "qwen2", "qwen3", "gemma3"):
        raise ValueError(f"arch must be llama, qwen2, qwen3 or gemma3, got {arch!r}")
    if arch == "gemma3":
        vocab, tied = "spm", True
    explicit_hd = head_dim is not None
    if n_heads % n_kv_heads or (not explicit_hd and n_embd % n_heads):
        raise ValueError("n_embd must be divisible by n_heads (or give head_dim) and n_heads by n_kv_heads")
    head_dim = head_dim or n_embd // n_heads
    if head_dim % 2:
        raise ValueError("head_dim must be even for RoPE")
    n_rot = head_dim
    n_embd_kv = head_dim * n_kv_heads
    n_q = head_dim * n_heads

    rng = np.random.default_rng(seed)

    def mat(n_out: int, n_in: int, std: float | None = None) -> np.ndarray:
        # N(0, 1/sqrt(n_in)): outputs keep about the scale of the (normalised) inputs
        return rng.standard_normal((n_out, n_in), dtype=np.float32) * np.float32(
            std if std is not None else 1.0 / math.sqrt(n_in))

    def norm_w(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), arch)

    # --- metadata, in the order convert_hf_to_gguf.py writes it ---
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name or f"tiny-{arch}-{weight_type.lower()}")
    w.add_block_count(n_layers)
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv_heads)
    w.add_rope_freq_base(float(rope_freq_base))
    w.add_layer_norm_rms_eps(float(rms_eps))
    if rope_scaling_linear is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rope_scaling_linear))
    w.add_file_type(_FILE_TYPE[weight_type])
    w.add_vocab_size(n_vocab)
    w.add_rope_dimension_count(n_rot)
    if explicit_hd:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if sliding_window:
        w.add_sliding_window(int(sliding_window))
    if swa_pattern is not None:
        w.add_uint32(f"{arch}.attention.sliding_window_pattern", int(swa_pattern))
    if rope_freq_base_swa is not None:
        w.add_float32(f"{arch}.rope.freq_base_swa", float(rope_freq_base_swa))
    if final_logit_softcap is not None:
        w.add_float32(f"{arch}.final_logit_softcapping", float(final_logit_softcap))

    if vocab == "bpe":
        tokens, types, merges = bpe_vocab(n_vocab)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2" if arch.startswith("qwen") else "default")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_pad_token_id(2)
        w.add_add_bos_token(False)
    elif vocab == "spm":
        tokens, types, scores = spm_vocab(n_vocab)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        if arch == "gemma3":
            w.add_add_space_prefix(False)
    else:
        raise ValueError(f"vocab must be 'bpe' or 'spm', got {vocab!r}")
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    # --- tensors ---
    def add(name_: str, arr: np.ndarray, t: str) -> None:
        if _transform is not None:          # used by write_dequant_probe()
            arr = _transform(name_, arr)
        data = encode(arr, t)
        w.add_tensor(name_, data, raw_dtype=None if t in ("F32", "F16") else QT[t])

    # Embedding std 3/sqrt(n_embd): tied logits (normalised x . embedding) come out ~N(0, 3).
    # gemma3: N(0, 1) rows, so that the sqrt(n_embd) scale of the looked-up row matters
    add("token_embd.weight", mat(n_vocab, n_embd, 1.0 if arch == "gemma3" else 3.0 / math.sqrt(n_embd)), embd_type)
    if llama3_rope_factors is not False and llama3_rope_factors is not None:
        if llama3_rope_factors is True:
            ff = llama31_rope_factors(n_rot, rope_freq_base, original_context=n_ctx_train)
        else:
            ff = np.asarray(llama3_rope_factors, dtype=np.float32)
            if ff.shape != (n_rot // 2,):
                raise ValueError(f"rope factors need n_rot/2 = {n_rot // 2} values")
        w.add_tensor("rope_freqs.weight", ff.astype(np.float32))
    for i in range(n_layers):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", norm_w(n_embd), "F32")
        add(p + "attn_q.weight", mat(n_q, n_embd), weight_type)
        add(p + "attn_k.weight", mat(n_embd_kv, n_embd), weight_type)
        add(p + "attn_v.weight", mat(n_embd_kv, n_embd), weight_type)
        if arch == "qwen2":  # N(0, 0.1) biases, added before RoPE
            for t, n in (("q", n_q), ("k", n_embd_kv), ("v", n_embd_kv)):
                add(p + f"attn_{t}.bias", (0.1 * rng.standard_normal(n)).astype(np.float32), "F32")
        if arch in ("qwen3", "gemma3"):
            add(p + "attn_q_norm.weight", norm_w(head_dim), "F32")
            add(p + "attn_k_norm.weight", norm_w(head_dim), "F32")
        add(p + "attn_output.weight", mat(n_embd, n_q), weight_type)
        if arch == "gemma3":
            add(p + "post_attention_norm.weight", norm_w(n_embd), "F32")
        add(p + "ffn_norm.weight", norm_w(n_embd), "F32")
        add(p + "ffn_gate.weight", mat(n_ff, n_embd), weight_type)
        add(p + "ffn_up.weight", mat(n_ff, n_embd), weight_type)
        add(p + "ffn_down.weight", mat(n_embd, n_ff), weight_type)
        if arch == "gemma3":
            add(p + "post_ffw_norm.weight", norm_w(n_embd), "F32")
    add("output_norm.weight", norm_w(n_embd), "F32")
    if not tied:
        add("output.weight", mat(n_vocab, n_embd, 3.0 / math.sqrt(n_embd)), output_type)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_dequant_probe(path, weight_type: str, where: str = "output", *, n_vocab: int = 300,
                        n_embd: int = 256, seed: int = 0) -> Path:
    """A 1-layer model whose logits isolate one quantised matrix, for exact kernel tests.

    All layer matrices are F32 zeros (attention and FFN add exactly 0) and all
    norm weights are 1, so ``logits = rmsnorm(token_embd[tok]) @ output.T``.

    where="embd": token_embd.weight is ``weight_type`` (exercises the row
        dequantisation / get_rows path), output.weight is F32.
    where="output": token_embd.weight is F32 with entries in {-1, 0, +1}, so
        every normalised row is {-a, 0, +a}: llama.cpp's 8-bit activation
        quantisation (Q8_0/Q8_1/Q8_K) represents it exactly, and the logits test
        the quantised dot product of output.weight (``weight_type``) against the
        dequantised weights up to f16 rounding of the activation scale
        (about 3e-4 relative for Q8_0-style types, 1e-3 for Q4_1/Q5_1, ~1e-7 for
        K-quants whose Q8_K scale is f32).
    """
    if where not in ("embd", "output"):
        raise ValueError("where must be 'embd' or 'output'")
    rng = np.random.default_rng(seed + 1)

    def transform(name: str, arr: np.ndarray) -> np.ndarray:
        if name.endswith("norm.weight"):
            return np.ones_like(arr)
        if name.startswith("blk."):
            return np.zeros_like(arr)
        if name == "token_embd.weight" and where == "output":
            return rng.integers(-1, 2, arr.shape).astype(np.float32)
        if name == "token_embd.weight":
            return rng.standard_normal(arr.shape).astype(np.float32)
        return (rng.standard_normal(arr.shape) / math.sqrt(arr.shape[1])).astype(np.float32)  # output

    return write_tiny_llama(
        path, weight_type="F32", n_vocab=n_vocab, n_embd=n_embd, n_ff=n_embd, n_layers=1, n_heads=4,
        n_kv_heads=4, tied=False, seed=seed,
        embd_type=weight_type if where == "embd" else "F32",
        output_type=weight_type if where == "output" else "F32",
        name=f"dequant-probe-{where}-{weight_type.lower()}", _transform=transform)



def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog=prog or "tiny_gguf.py", description="Write a tiny random Llama GGUF (architecture 'llama') for tests.")
    ap.add_argument("--out", required=True, help="output .gguf path")
    ap.add_argument("--type", default="F32", type=str.upper, choices=SUPPORTED_TYPES, help="type of the weight matrices")
    ap.add_argument("--embd-type", type=str.upper, choices=SUPPORTED_TYPES, help="type of token_embd.weight (default --type)")
    ap.add_argument("--output-type", type=str.upper, choices=SUPPORTED_TYPES, help="type of output.weight (default --type)")
    ap.add_argument("--vocab-size", type=int, default=384)
    ap.add_argument("--embd", type=int, help="n_embd (default 256 for K-quants, else 128)")
    ap.add_argument("--ff", type=int, help="n_ff (default 2*n_embd)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2, help="== --heads for MHA, a divisor for GQA")
    ap.add_argument("--untied", action="store_true", help="write a separate output.weight")
    ap.add_argument("--rope-base", type=float, default=10000.0)
    ap.add_argument("--rope-linear", type=float, metavar="FACTOR", help="linear RoPE scaling factor")
    ap.add_argument("--llama3-rope", action="store_true", help="write Llama 3.1 rope_freqs.weight")
    ap.add_argument("--rms-eps", type=float, default=1e-5)
    ap.add_argument("--ctx-train", type=int, default=512)
    ap.add_argument("--vocab", choices=("bpe", "spm"), default="bpe")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        out = write_tiny_llama(
            a.out, weight_type=a.type, embd_type=a.embd_type, output_type=a.output_type,
            n_vocab=a.vocab_size, n_embd=a.embd, n_ff=a.ff, n_layers=a.layers, n_heads=a.heads,
            n_kv_heads=a.kv_heads, tied=not a.untied, rope_freq_base=a.rope_base,
            rope_scaling_linear=a.rope_linear, llama3_rope_factors=a.llama3_rope, rms_eps=a.rms_eps,
            n_ctx_train=a.ctx_train, seed=a.seed, vocab=a.vocab)
    except ValueError as e:
        print(f"tiny_gguf: error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
