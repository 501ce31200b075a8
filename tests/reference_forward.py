"""Numpy reference forward pass for GGUF Llama-family models (architecture ``llama``).

This is the independent reference the C engine is tested against, so it is
written to be short and obviously correct rather than fast: float64 math,
weights dequantised from the very bytes in the file by ``gguf.quants``.

    from reference_forward import reference_logits
    logits = reference_logits("model.gguf", [1, 42, 7])   # [n_tokens, n_vocab] float64

Conventions (llama.cpp, arch ``llama``):

* A weight with GGUF shape ``ne = [n_in, n_out]`` is the numpy array
  ``[n_out, n_in]``; a projection is ``y = x @ W.T``.
* RoPE is llama.cpp's "normal" (non-NeoX) mode: within each head, elements
  ``(2i, 2i+1)`` are rotated by ``theta_i = p * base**(-2i/n_rot)``, where
  ``p = pos / linear_factor`` and ``theta_i /= rope_freqs[i]`` when the file
  has ``rope_freqs.weight``.  The HF->GGUF converter permutes the Q/K rows so
  that this equals HF's rotate-half form.
* Query head ``h`` reads KV head ``h // (n_head / n_head_kv)`` (GQA).
* No ``output.weight`` means tied embeddings: logits use ``token_embd.weight``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

import gguf


class GGUFModel:
    """Hyper-parameters plus lazily dequantised float64 weights of a llama GGUF."""

    def __init__(self, path):
        self.path = Path(path)
        self.reader = gguf.GGUFReader(str(self.path))
        self.tensors = {t.name: t for t in self.reader.tensors}
        arch = self.meta("general.architecture")
        if arch != "llama":
            raise ValueError(f"{path}: architecture {arch!r}, expected 'llama'")
        self.n_layer = int(self.meta("llama.block_count"))
        self.n_embd = int(self.meta("llama.embedding_length"))
        self.n_head = int(self.meta("llama.attention.head_count"))
        self.n_head_kv = int(self.meta("llama.attention.head_count_kv", self.n_head))
        self.head_dim = int(self.meta("llama.attention.key_length", self.n_embd // self.n_head))
        self.n_rot = int(self.meta("llama.rope.dimension_count", self.head_dim))
        self.eps = float(self.meta("llama.attention.layer_norm_rms_epsilon"))
        self.freq_base = float(self.meta("llama.rope.freq_base", 10000.0))
        scaling = self.meta("llama.rope.scaling.type", "none")
        factor = float(self.meta("llama.rope.scaling.factor", 1.0) or 1.0)
        if scaling not in ("none", "linear") and factor != 1.0:
            raise NotImplementedError(f"rope scaling {scaling!r} is not implemented in the reference")
        self.freq_scale = 1.0 / factor if scaling == "linear" else 1.0
        self.n_vocab = int(self.tensors["token_embd.weight"].shape[1])

    def meta(self, key: str, default=None):
        field = self.reader.get_field(key)
        return default if field is None else field.contents()

    def weight(self, name: str) -> np.ndarray:
        """Dequantised tensor as float64 in numpy order ([n_out, n_in] for matrices)."""
        t = self.tensors[name]
        return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)

    def embedding_rows(self, tokens: Sequence[int]) -> np.ndarray:
        """Rows of token_embd.weight (each row is dequantised independently)."""
        t = self.tensors["token_embd.weight"]
        return gguf.quants.dequantize(t.data[np.asarray(tokens)], t.tensor_type).astype(np.float64)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x: np.ndarray, positions: np.ndarray, m: GGUFModel, freq_factors) -> np.ndarray:
    """Normal-mode RoPE on x [n_tokens, n_heads, head_dim]: rotates pairs (2i, 2i+1), i < n_rot/2."""
    i = np.arange(m.n_rot // 2)
    inv_freq = m.freq_base ** (-2.0 * i / m.n_rot)
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors
    theta = (positions * m.freq_scale)[:, None] * inv_freq[None, :]      # [n_tokens, n_rot/2]
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    out = x.copy()
    x0, x1 = x[..., 0:m.n_rot:2], x[..., 1:m.n_rot:2]
    out[..., 0:m.n_rot:2] = x0 * cos - x1 * sin
    out[..., 1:m.n_rot:2] = x0 * sin + x1 * cos
    return out


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def forward(m: GGUFModel, tokens: Sequence[int], capture: dict | None = None) -> np.ndarray:
    """Logits; with `capture` a dict, also stores per layer the post-RoPE q [n, n_head, d],
    k and v [n, n_head_kv, d] (lists indexed by layer) and W_o [n_embd, n_head*d]."""
    n = len(tokens)
    pos = np.arange(n, dtype=np.float64)
    ff = m.weight("rope_freqs.weight") if "rope_freqs.weight" in m.tensors else None
    group = m.n_head // m.n_head_kv
    causal = np.triu(np.full((n, n), -np.inf), k=1)                     # key j > query i masked

    x = m.embedding_rows(tokens)                                        # [n, n_embd]
    for il in range(m.n_layer):
        p = f"blk.{il}."
        h = rms_norm(x, m.weight(p + "attn_norm.weight"), m.eps)
        q = (h @ m.weight(p + "attn_q.weight").T).reshape(n, m.n_head, m.head_dim)
        k = (h @ m.weight(p + "attn_k.weight").T).reshape(n, m.n_head_kv, m.head_dim)
        v = (h @ m.weight(p + "attn_v.weight").T).reshape(n, m.n_head_kv, m.head_dim)
        q, k = rope(q, pos, m, ff), rope(k, pos, m, ff)
        if capture is not None:
            for name, val in (("q", q), ("k", k), ("v", v), ("wo", m.weight(p + "attn_output.weight"))):
                capture.setdefault(name, []).append(val)
        attn = np.empty((n, m.n_head, m.head_dim))
        for hq in range(m.n_head):
            hk = hq // group
            s = q[:, hq, :] @ k[:, hk, :].T / np.sqrt(m.head_dim) + causal  # [n_q, n_k]
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            attn[:, hq, :] = (s / s.sum(axis=-1, keepdims=True)) @ v[:, hk, :]
        x = x + attn.reshape(n, -1) @ m.weight(p + "attn_output.weight").T
        h = rms_norm(x, m.weight(p + "ffn_norm.weight"), m.eps)
        g = h @ m.weight(p + "ffn_gate.weight").T
        u = h @ m.weight(p + "ffn_up.weight").T
        x = x + (silu(g) * u) @ m.weight(p + "ffn_down.weight").T
    x = rms_norm(x, m.weight("output_norm.weight"), m.eps)
    out_name = "output.weight" if "output.weight" in m.tensors else "token_embd.weight"
    return x @ m.weight(out_name).T                                     # [n, n_vocab]


def reference_logits(path, tokens: Sequence[int], capture: dict | None = None) -> np.ndarray:
    """Logits [len(tokens), n_vocab] (float64) for tokens at positions 0..n-1 (see forward for capture)."""
    tokens = [int(t) for t in tokens]
    if not tokens:
        raise ValueError("need at least one token")
    return forward(GGUFModel(path), tokens, capture)


if __name__ == "__main__":
    import sys
    if len(sys.argv) < 3:
        sys.exit("usage: python tests/reference_forward.py MODEL.gguf TOKEN [TOKEN ...]")
    lg = reference_logits(sys.argv[1], [int(t) for t in sys.argv[2:]])
    np.set_printoptions(precision=4, suppress=True, linewidth=120)
    for i, row in enumerate(lg):
        print(i, "argmax", int(row.argmax()), row[:8])
