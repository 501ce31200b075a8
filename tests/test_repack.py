"""Weights re-laid out at load (src/cpu/repack.c): with AVX2, Q4_0/Q4_1/Q5_0/Q8_0 and
Q4_K/Q5_K/Q6_K matrices of a height divisible by 8 are stored as interleaved 8-row blocks
and multiplied by the kernels of quant_avx2_packed.c (4-token prefill tiles: quant_vnni_packed.c
where the CPU has AVX512-VNNI). The bytes are the file's, moved; only
the order of the float sums changes, so logits stay close to the row layout's (RK_REPACK=0,
in a child process) without being equal, and within float rounding of the exact (float64)
dot products of tests/quant_ref.py. A tied embedding is looked up in the packed matrix (its
rows moved back, then the type's own dequantisation)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import engine
import quant_ref as ref
from subproc import run_python_json
from test_quant import accumulation_tol, random_row

PACKED_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]

TOKENS = [1, 17, 250, 3, 99, 42, 42, 7, 300, 5, 12, 200, 64, 65, 66, 383, 0, 2, 150]

pytestmark = pytest.mark.skipif(engine.cpu_features() == "scalar", reason="repacking is for the AVX2 kernels")


def matrix_bytes(path: str) -> dict[str, int]:
    from gguf import GGUFReader

    return {t.name: int(t.n_bytes) for t in GGUFReader(path).tensors if len(t.shape) == 2}


def logits(path: str, tokens, repack: bool) -> tuple[np.ndarray, int]:
    """all-token logits (prefill of all but the last 3 tokens, then 3 decode steps) and repacked_bytes,
    in a child process with RK_REPACK set"""
    code = (
        "import json, numpy as np\n"
        "import engine\n"
        "path, toks = sys.argv[1], json.loads(sys.argv[2])\n"
        "with engine.Model(path, n_threads=2) as m, m.session(n_ctx=64) as s:\n"
        "    a = s.eval(toks[:-3], logits='all')\n"
        "    b = np.stack([s.eval([t]) for t in toks[-3:]])\n"
        "    print(json.dumps({'logits': np.concatenate([a, b]).tolist(), 'repacked': m.repacked_bytes}))\n")
    out = run_python_json(code, path, json.dumps(list(tokens)), env={"RK_REPACK": "1" if repack else "0"})
    return np.array(out["logits"], np.float32), out["repacked"]


@pytest.mark.parametrize("wtype", PACKED_TYPES)
def test_repacked_close_to_row_layout(tiny_gguf, wtype):
    path = tiny_gguf(weight_type=wtype)  # tied: the embedding lookup reads the repacked rows
    packed, n_packed = logits(path, TOKENS, True)
    rows, n_rows = logits(path, TOKENS, False)
    assert n_rows == 0
    # every matrix is repacked, the tied token_embd once
    assert n_packed == sum(matrix_bytes(path).values())
    assert np.isfinite(packed).all()
    # the same products summed in another order; an activation may then round to the next
    # 8-bit step (test_forward.py's bound for quantised types: 5e-2 of the largest logit)
    assert np.abs(packed - rows).max() <= 5e-2 * np.abs(rows).max()
    assert not np.array_equal(packed, rows), "RK_REPACK=0 should have changed the kernels"


def test_only_supported_shapes_and_types_are_repacked(tiny_gguf):
    # 388 rows: not a multiple of 8, so token_embd (tied output) stays in the file's layout
    path = tiny_gguf(weight_type="Q4_1", n_vocab=388)
    sizes = matrix_bytes(path)
    with engine.Model(path) as m:
        assert m.repacked_bytes == sum(v for k, v in sizes.items() if k != "token_embd.weight")
        with m.session(n_ctx=32) as s:
            assert np.isfinite(s.eval(TOKENS[:8], logits="all")).all()
    # untied: output.weight is repacked; token_embd.weight, only looked up, stays as stored
    path = tiny_gguf(weight_type="Q8_0", tied=False)
    sizes = matrix_bytes(path)
    with engine.Model(path) as m:
        assert m.repacked_bytes == sum(v for k, v in sizes.items() if k != "token_embd.weight")
    with engine.Model(tiny_gguf(weight_type="Q5_1")) as m:  # no packed kernels for Q5_1
        assert m.repacked_bytes == 0


def test_smollm2_repacked(smollm2, monkeypatch):
    """Q4_1 matrices and the tied 49152-row Q8_0 embedding/output: every matrix repacked, and
    logits as close to the row layout's as the portable kernels are (on SmolLM2 any two kernel
    sets differ by up to ~1 in logits of ~30: 30 layers amplify last-bit differences wherever an
    activation crosses an 8-bit rounding step; the ctx-512 perplexity moved by 0.03%)"""
    tokens = [1] + [(i * 7919 + 13) % 49152 for i in range(20)]
    packed, n_packed = logits(smollm2, tokens, True)
    rows, _ = logits(smollm2, tokens, False)
    monkeypatch.setenv("RK_CPU", "scalar")
    scalar, n_scalar = logits(smollm2, tokens, True)
    assert n_packed == sum(matrix_bytes(smollm2).values()) and n_scalar == 0
    assert np.abs(packed - rows).max() <= 5e-2 * np.abs(rows).max()
    assert np.abs(packed - rows).mean() <= 1.5 * np.abs(scalar - rows).mean()


def rmsnorm(x: np.ndarray) -> np.ndarray:
    """rk_rmsnorm with unit weights, bit for bit: squares summed in double in order, then float32"""
    total = 0.0
    for v in x.astype(np.float64):
        total += v * v
    scale = np.float32(1) / np.sqrt(np.float32(total / x.size) + np.float32(1e-5))
    return x.astype(np.float32) * scale


def dot_probe(tmp_path, wtype: str, n_vocab: int, n_embd: int, tied: bool, seed: int):
    """A 1-layer model whose logits are a matrix W of random wtype blocks (every bit pattern of
    the quants, scales of both signs over three decades) times rmsnorm(token_embd[tok]): all
    layer matrices are zero, norm weights one. Untied: W is output.weight, and the F32 embedding
    has integers in -127..127 with +-127 first in every 32 (so each block's largest): the 8-bit
    quantisation of the normalised row gives back those integers. Tied: W is token_embd as well,
    so each token's row is looked up in the packed copy. Returns (path, W's rows, activations)."""
    from gguf import GGUFReader
    from test_quant import dequant
    from tiny_gguf import write_tiny_llama

    rng = np.random.default_rng(seed)
    emb = rng.integers(-127, 128, (n_vocab, n_embd)).astype(np.float32)
    emb[:, ::32] = rng.choice([-127.0, 127.0], (n_vocab, n_embd // 32))

    def transform(name: str, arr: np.ndarray) -> np.ndarray:
        if name.endswith("norm.weight"):
            return np.ones_like(arr)
        if name == "token_embd.weight" and not tied:
            return emb
        return np.zeros_like(arr)  # the layer's matrices; W is replaced below

    path = tmp_path / f"probe_{wtype}_{tied}.gguf"
    write_tiny_llama(path, weight_type="F32", n_vocab=n_vocab, n_embd=n_embd, n_ff=n_embd, n_layers=1,
                     n_heads=4, n_kv_heads=4, tied=tied, embd_type=wtype if tied else "F32", output_type=wtype,
                     seed=seed, _transform=transform)
    t = getattr(ref, wtype)
    rows = [random_row(t, n_embd, rng) for _ in range(n_vocab)]
    name = "token_embd.weight" if tied else "output.weight"
    w = next(x for x in GGUFReader(str(path)).tensors if x.name == name)
    assert w.n_bytes == sum(map(len, rows))
    with open(path, "r+b") as f:
        f.seek(w.data_offset)
        f.write(b"".join(rows))
    # the looked-up rows as the engine's own dequantisation gives them (test_quant.py checks it)
    x = np.stack([dequant(t, row) for row in rows]) if tied else emb
    return str(path), rows, np.stack([rmsnorm(v) for v in x])


@pytest.mark.parametrize("tied", [False, True], ids=["output", "tied"])
@pytest.mark.parametrize("wtype", PACKED_TYPES)
def test_packed_kernels_match_exact_dot_products(tmp_path, wtype, tied):
    """Every logit of a probe model is one packed dot product: it must be the exact (float64)
    value on the engine's own 8-bit activations up to float rounding (test_quant.py's bound for
    the row kernels), and a token's logits the same bits whether it went through the kernels 4
    tokens at a time (a prefill batch) or alone (a decode step). Where the CPU has AVX512-VNNI
    the 4-token tiles are quant_vnni_packed.c's and single tokens the AVX2 kernels': the two
    must agree bit for bit."""
    t = getattr(ref, wtype)
    n_embd = 768 if ref.FORMATS[t][1] == 256 else 160  # 3 super-blocks / 5 blocks per row
    path, rows, act = dot_probe(tmp_path, wtype, n_vocab=392, n_embd=n_embd, tied=tied, seed=500 + t)
    toks = list(range(3, 26))  # 5 groups of 4 tokens and 3 alone
    with engine.Model(path, n_threads=2) as m:
        assert m.repacked_bytes == len(rows) * len(rows[0])  # W, the only quantised matrix
        with m.session(n_ctx=64) as s:
            batch = s.eval(toks, logits="all")
        with m.session(n_ctx=64) as s:
            single = np.stack([s.eval([tok]) for tok in toks])
    np.testing.assert_array_equal(batch, single)
    for i, tok in enumerate(toks):
        for r in range(0, len(rows), 7):  # a spread of rows: every lane of the 8-row groups
            want, mag = ref.vec_dot(t, rows[r], act[tok])
            assert abs(batch[i, r] - want) <= accumulation_tol(n_embd, mag), (wtype, tok, r, batch[i, r], want)
