"""The window attention the scoring policies read (src/cpu/window_attention.c): the AVX2 path
(window_attention_avx2.c, eight window queries per vector) gives the portable loop's bits, so every
policy keeps the same entries either way; windows below, at and above its 32-query pass, and not a
multiple of its 8 lanes."""

from __future__ import annotations

import pytest

from subproc import run_python_json

CODE = """
import hashlib, json, sys
import numpy as np
import engine
from engine.eviction import Eviction
m = engine.Model(sys.argv[1], n_threads=2)
ids = np.random.default_rng(1).integers(3, m.n_vocab, 300).astype(np.int32)
out = {}
for w in (5, 32, 40, 77):
    for pol in ("snapkv", "restkv", "tova", "expected_attention"):
        h = hashlib.sha256()
        with m.session(n_ctx=320) as s:
            s.set_eviction(Eviction(policy=pol, budget=0.3, window=w))
            s.eval(ids, logits=None)
            s.compress()
            for il in range(m.n_layers):
                for g in range(m.n_kv_heads):
                    h.update(np.asarray(s.kv_positions(il, g)).tobytes())
        out[f"{pol}/{w}"] = h.hexdigest()
print(json.dumps([engine.cpu_features(), out]))
"""


def test_avx2_window_attention_keeps_what_the_portable_loop_keeps(tiny_gguf):
    gguf = tiny_gguf(weight_type="Q8_0")
    features, fast = run_python_json(CODE, gguf)
    if "avx2" not in features:
        pytest.skip(f"no AVX2 here ({features}): only the portable loop runs")
    scalar, portable = run_python_json(CODE, gguf, env={"RK_CPU": "scalar"})
    assert "avx2" not in scalar and fast == portable
    assert len(set(fast.values())) > 4  # the windows and policies keep different sets
