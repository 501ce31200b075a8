"""Weights re-laid out at load (src/cpu/repack.c): with AVX2, Q4_0/Q4_1/Q8_0 matrices of a
height divisible by 8 are stored as interleaved 8-row blocks and multiplied by the
kernels of quant_avx2_packed.c. The bytes are the file's, moved; only the order of
the float sums changes, so logits stay close to the row layout's (RK_REPACK=0, in a
child process) without being equal. A tied embedding is looked up in the packed
matrix (its rows moved back, then the type's own dequantisation)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import engine
from subproc import run_python_json

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


@pytest.mark.parametrize("wtype", ["Q4_0", "Q4_1", "Q8_0"])
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
    with engine.Model(tiny_gguf(weight_type="Q4_K")) as m:
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
