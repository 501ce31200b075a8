"""Attention kernels (src/cpu/attention.c, attention_avx2.c) over every tile shape they cut a GQA
group into: scores by 4 keys x 1-3 query rows or 2 keys x 6 rows, value sums by 1-3 rows x 8-32
dimensions or 6 rows x 8-16, a short last tile of keys, value chunks of 64 slots, decode score
blocks of 256 slots. Whatever the cut, a query row gets the same bits: a prefill batch, the batch
fed in pieces or through a smaller n_batch, and single-token decode steps agree exactly, on the AVX2 kernels and (in an
RK_CPU=scalar child) on their portable twins, for f16 and f32 caches; the two kernel sets agree
to rounding. Sliding-window layers (a ring, masked slots between visible ones) too. Where the CPU
has the AVX512-VNNI tier, its 512-bit score, value and softmax kernels (attention_avx512.c: row
pairs in the halves of a register, value tiles of up to 6 rows x 64 dimensions) and SwiGLU
(glu_avx512.c) must give the AVX2 kernels' bits exactly: the whole forward pass against an
RK_CPU=avx2 child."""
from __future__ import annotations

import numpy as np
import pytest

import engine
from subproc import run_python_json

# (n_heads, n_kv_heads, head_dim): groups 1-8 and 13 (6 + 6 + 1 rows), head dims with every
# remainder of 32 (8, 24, 40: value tiles of 1-3 chunks) and one not a multiple of 8 (portable path)
SHAPES = [(2, 2, 64), (4, 2, 24), (3, 1, 40), (4, 1, 32), (5, 1, 8), (6, 1, 64), (7, 1, 16), (8, 1, 24),
          (13, 1, 8), (12, 2, 128), (6, 2, 20)]
N_PROMPT, N_TAIL = 301, 6  # 301: two decode score blocks and a short one, a short tile of keys


def shape_id(s):
    return "h{}-kv{}-d{}".format(*s)


def model_path(tiny_gguf, shape):
    n_heads, n_kv, hd = shape
    return tiny_gguf(weight_type="F32", n_heads=n_heads, n_kv_heads=n_kv, head_dim=hd, n_embd=64, n_layers=1,
                     seed=3)


def tokens(n, seed=0):
    return [int(t) for t in np.random.default_rng(seed).integers(0, 384, n)]


def runs(path: str, kv_type: str, small_batch: bool = True) -> dict[str, np.ndarray]:
    """the tail's logits: after one prefill batch, after the same tokens fed in pieces of 7, as
    decode steps, and (small_batch) through a session of n_batch 7. A window layer's ring holds
    n_swa - 1 + n_batch slots, so its slot order (the order of the sums) depends on n_batch:
    sessions of different n_batch agree only without window layers."""
    prompt, tail = tokens(N_PROMPT), tokens(N_TAIL, 1)
    out = {}
    with engine.Model(path, n_threads=2) as m:
        with m.session(n_ctx=320, n_batch=320, kv_type=kv_type) as s:
            out["batch"] = s.eval(prompt + tail, logits="all")[N_PROMPT - 1:-1]
        with m.session(n_ctx=320, n_batch=320, kv_type=kv_type) as s:
            seq = prompt + tail
            out["pieces"] = np.concatenate([s.eval(seq[i:i + 7], logits="all") for i in range(0, len(seq), 7)])[
                N_PROMPT - 1:-1]
        if small_batch:
            with m.session(n_ctx=320, n_batch=7, kv_type=kv_type) as s:
                out["n_batch7"] = s.eval(prompt + tail, logits="all")[N_PROMPT - 1:-1]
        with m.session(n_ctx=320, n_batch=320, kv_type=kv_type) as s:
            steps = [s.eval(prompt, logits="last")] + [s.eval([t]) for t in tail[:-1]]
            out["decode"] = np.stack(steps)
    return out


def check(out: dict[str, np.ndarray]) -> list[str]:
    ref = out["batch"]
    assert np.isfinite(ref).all()
    return [k for k, v in out.items() if not np.array_equal(v, ref)]


@pytest.mark.parametrize("kv_type", ["f16", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_decode_and_batches_agree_bit_for_bit(tiny_gguf, shape, kv_type):
    assert check(runs(model_path(tiny_gguf, shape), kv_type)) == []


CHILD = """
import json, sys
import numpy as np
import engine
from test_attention_tiles import runs, check
assert engine.cpu_features() == 'scalar', engine.cpu_features()
res = {}
for path in json.loads(sys.argv[1]):
    out = runs(path, 'f16')
    res[path] = dict(bad=check(out), logits=out['batch'].tolist())
print(json.dumps(res))
"""


def test_portable_twins_agree_with_themselves_and_with_avx2(tiny_gguf):
    paths = [model_path(tiny_gguf, s) for s in SHAPES]
    import json
    got = run_python_json(CHILD, json.dumps(paths), env={"RK_CPU": "scalar"})
    for shape, path in zip(SHAPES, paths):
        r = got[path]
        assert r["bad"] == [], f"{shape_id(shape)}: scalar kernels, {r['bad']} differ from one batch"
        here = runs(path, "f16")["batch"]
        scalar = np.array(r["logits"], np.float32)
        # the twins sum the dot products in double: the same attention to rounding
        assert np.abs(scalar - here).max() <= 1e-4 * np.abs(here).max() + 1e-5, shape_id(shape)


@pytest.mark.parametrize("kv_type", ["f16", "f32"])
def test_sliding_window_ring_agrees_bit_for_bit(tiny_gguf, kv_type):
    """gemma3 window layers: a ring of slots whose positions wrap, so masked slots (weight 0) sit
    between visible ones, and every row of a prefill job has its own window"""
    path = tiny_gguf(arch="gemma3", n_embd=128, n_heads=6, n_kv_heads=1, n_layers=3, sliding_window=40,
                     head_dim=32, weight_type="F32", seed=5)
    assert check(runs(path, kv_type, small_batch=False)) == []


@pytest.mark.parametrize("kv_type", ["f16", "f32"])
def test_wrapped_ring_agrees_bit_for_bit(tiny_gguf, kv_type):
    """a ring of n_swa - 1 + 16 slots that wraps many times over the prompt: a decode step's
    visible slots are then two stretches of the ring (its end and its start), a prefill job's
    too; the runs the kernels skip between them must not change a bit"""
    path = tiny_gguf(arch="gemma3", n_embd=128, n_heads=6, n_kv_heads=1, n_layers=3, sliding_window=40,
                     head_dim=32, weight_type="F32", seed=5)
    prompt, tail = tokens(N_PROMPT), tokens(N_TAIL, 1)
    out = {}
    with engine.Model(path, n_threads=2) as m:
        with m.session(n_ctx=320, n_batch=16, kv_type=kv_type) as s:
            out["batch"] = s.eval(prompt + tail, logits="all")[N_PROMPT - 1:-1]
        with m.session(n_ctx=320, n_batch=16, kv_type=kv_type) as s:
            seq = prompt + tail
            out["pieces"] = np.concatenate([s.eval(seq[i:i + 7], logits="all") for i in range(0, len(seq), 7)])[
                N_PROMPT - 1:-1]
        with m.session(n_ctx=320, n_batch=16, kv_type=kv_type) as s:
            steps = [s.eval(prompt, logits="last")] + [s.eval([t]) for t in tail[:-1]]
            out["decode"] = np.stack(steps)
    assert check(out) == []


AVX2_CHILD = """
import json, sys
import numpy as np
import engine
from test_attention_tiles import runs
assert engine.cpu_features() == 'avx2 fma f16c', engine.cpu_features()
res = {}
for path in json.loads(sys.argv[1]):
    for kv in ('f16', 'f32'):
        res[path + ':' + kv] = {k: v.tolist() for k, v in runs(path, kv, small_batch=False).items()}
print(json.dumps(res))
"""


def test_avx512_kernels_give_the_avx2_bits(tiny_gguf):
    if "avx512vnni" not in engine.cpu_features().split():
        pytest.skip("no AVX512-VNNI tier on this CPU: the AVX2 kernels run everywhere")
    import json
    paths = [model_path(tiny_gguf, s) for s in SHAPES] + [
        tiny_gguf(arch="gemma3", n_embd=128, n_heads=6, n_kv_heads=1, n_layers=3, sliding_window=40, head_dim=32,
                  weight_type="F32", seed=5)]
    got = run_python_json(AVX2_CHILD, json.dumps(paths), env={"RK_CPU": "avx2"})
    for path in paths:
        for kv in ("f16", "f32"):
            here = runs(path, kv, small_batch=False)
            for k, v in here.items():
                assert np.array_equal(v, np.array(got[path + ":" + kv][k], np.float32)), (path, kv, k)
