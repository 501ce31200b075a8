"""Multi-token matmul kernels (vec_dot_tile): a prefill batch goes through kernels
that meet each unpacked weight block with four tokens at once, the rest of the
batch (and decode) through the single-token vec_dot. Both must give the same
bits for every output, so logits may not depend on how tokens are batched or
split over threads. Checked for every quantised weight type, with block counts
odd and even, on both kernel sets (AVX2 here, portable C in an RK_CPU=scalar
child), and on SmolLM2 (Q4_1 matrices, Q8_0 output) when it is present."""
from __future__ import annotations

import json

import numpy as np
import pytest

import engine
from subproc import run_python_json

# 23 tokens: five groups of RK_DOT_ROWS = 4 tokens and a remainder of three
TOKENS = [1, 17, 250, 3, 99, 42, 42, 7, 300, 5, 12, 200, 64, 65, 66, 383, 0, 2, 150, 151, 9, 8, 77]

QUANT_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]

# (weight type, extra tiny_gguf arguments): the default shapes have an even
# number of blocks per row; the odd ones exercise the kernels' last lone block
CASES = [(t, {}) for t in QUANT_TYPES] + [
    ("Q4_0", dict(n_embd=96, n_ff=160)),               # 3 and 5 blocks of 32
    ("Q4_1", dict(n_embd=96, n_ff=160)),
    ("Q5_0", dict(n_embd=96, n_ff=160)),
    ("Q5_1", dict(n_embd=96, n_ff=160)),
    ("Q8_0", dict(n_embd=96, n_ff=160)),
    ("Q4_1", dict(output_type="Q8_0")),                # SmolLM2's mix
    ("Q4_K", dict(n_ff=768, output_type="Q6_K")),      # 3 super-blocks in w_down
    ("Q5_K", dict(n_ff=768)),
    ("Q6_K", dict(n_ff=768, output_type="Q8_0")),
    # w_down rows of 513 blocks: longer than the AVX2 tiles' scale table (512 blocks)
    ("Q4_1", dict(n_ff=16416, n_layers=1)),
    ("Q8_0", dict(n_ff=16416, n_layers=1)),
]


def case_id(case):
    t, kw = case
    return t + "".join(f"-{k}={v}" for k, v in sorted(kw.items()))


def logits_by_batching(path: str, tokens) -> dict[str, np.ndarray]:
    """all-token logits for one prefill batch, batches of 1, 5 and 6, and 1 to 3 threads"""
    out = {}
    with engine.Model(path) as m:
        for name, n_batch, n_threads in [("whole", 64, 1), ("whole_t2", 64, 2), ("whole_t3", 64, 3),
                                         ("b1", 1, 1), ("b5_t3", 5, 3), ("b6_t2", 6, 2)]:
            with m.session(n_ctx=64, n_threads=n_threads, n_batch=n_batch) as s:
                out[name] = s.eval(tokens, logits="all")
    return out


def assert_all_equal(out: dict[str, np.ndarray]) -> None:
    ref = out["whole"]
    assert np.isfinite(ref).all()
    for name, v in out.items():
        np.testing.assert_array_equal(v, ref, err_msg=f"{name} differs from one whole batch")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_batched_prefill_is_bit_identical_to_token_by_token(tiny_gguf, case):
    t, kw = case
    assert_all_equal(logits_by_batching(tiny_gguf(weight_type=t, **kw), TOKENS))


def test_decode_after_batched_prefill_matches(tiny_gguf):
    """a prefill batch then single-token steps: the same bits as all single steps"""
    path = tiny_gguf(weight_type="Q4_1")
    with engine.Model(path) as m:
        with m.session(n_ctx=64, n_batch=64) as s:
            s.eval(TOKENS[:16], logits=None)
            a = np.stack([s.eval([tok]) for tok in TOKENS[16:]])
        with m.session(n_ctx=64, n_batch=1) as s:
            s.eval(TOKENS[:16], logits=None)
            b = np.stack([s.eval([tok]) for tok in TOKENS[16:]])
    np.testing.assert_array_equal(a, b)


def _child_results(paths: dict[str, str]) -> dict:
    """runs logits_by_batching in a child with RK_CPU=scalar; returns its checks and logits"""
    code = (
        "import json, numpy as np\n"
        "import engine, test_gemm\n"
        "assert engine.cpu_features() == 'scalar', engine.cpu_features()\n"
        "res = {}\n"
        "for key, path in json.loads(sys.argv[1]).items():\n"
        "    out = test_gemm.logits_by_batching(path, test_gemm.TOKENS)\n"
        "    ref = out['whole']\n"
        "    res[key] = {'bad': [n for n, v in out.items() if not np.array_equal(v, ref)],\n"
        "                'finite': bool(np.isfinite(ref).all()), 'logits': ref.tolist()}\n"
        "print(json.dumps(res))\n")
    return run_python_json(code, json.dumps(paths), env={"RK_CPU": "scalar"})


def test_scalar_kernels_batched_prefill_is_bit_identical(tiny_gguf):
    paths = {case_id(c): tiny_gguf(weight_type=c[0], **c[1]) for c in CASES}
    res = _child_results(paths)
    for key, path in paths.items():
        r = res[key]
        assert r["finite"], key
        assert r["bad"] == [], f"{key}: scalar kernels, {r['bad']} differ from one whole batch"
        # the portable and AVX2 kernels sum floats in different orders, and an
        # activation may then round to the next 8-bit step: close, not equal
        # (5e-2 of the largest logit, test_forward.py's bound for quantised types)
        with engine.Model(path) as m, m.session(n_ctx=64, n_batch=64) as s:
            here = s.eval(TOKENS, logits="all")
        scalar = np.array(r["logits"], np.float32)
        assert np.abs(scalar - here).max() <= 5e-2 * np.abs(here).max(), key


def test_smollm2_batched_prefill_is_bit_identical(smollm2):
    """real shapes: 576/1536-wide Q4_1 matrices, the 49152-row Q8_0 output"""
    tokens = [1] + [(i * 7919 + 13) % 49152 for i in range(37)]
    with engine.Model(smollm2) as m:
        with m.session(n_ctx=64, n_threads=2, n_batch=64) as s:
            whole = s.eval(tokens, logits="all")
        with m.session(n_ctx=64, n_threads=2, n_batch=1) as s:
            single = s.eval(tokens, logits="all")
        with m.session(n_ctx=64, n_threads=1, n_batch=7) as s:
            b7 = s.eval(tokens, logits="all")
    assert np.isfinite(whole).all()
    np.testing.assert_array_equal(whole, single)
    np.testing.assert_array_equal(whole, b7)


@pytest.mark.parametrize("kv_type", ["f16", "f32"])
def test_decode_attention_matches_batch_over_long_cache(tiny_gguf, kv_type):
    """Decode attention runs in three passes (scores by slot blocks of 256, softmax by head,
    values by 32-wide slices of the head dimension); a batch goes through attend_rows. Over a
    cache of several slot blocks, with head_dim 64 (two slices) and GQA, both give the same
    logits, and the accumulated-attention statistics H2O keeps are the same: compressing
    afterwards keeps the same slots, so the next logits agree too."""
    # f32 weights: no 8-bit activation step to absorb a last-bit difference
    path = tiny_gguf(weight_type="F32", n_heads=2, n_kv_heads=1, n_embd=128)  # head_dim 64
    rng = np.random.default_rng(1)
    prompt, tail = rng.integers(0, 384, 600).tolist(), rng.integers(0, 384, 12).tolist()
    with engine.Model(path, n_threads=2) as m:
        out = []
        for step in (True, False):
            with m.session(n_ctx=640, n_batch=600, kv_type=kv_type) as s:
                s.set_eviction(policy="h2o", budget=0.25)
                s.eval(prompt, logits=None)
                got = np.stack([s.eval([t]) for t in tail]) if step else s.eval(tail, logits="all")
                s.compress()
                out.append((got, s.eval([5, 6, 7], logits="all")))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])
