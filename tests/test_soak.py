"""Long-running use: a streaming session's memory stays flat and its values finite (a short soak;
tools/soak.py runs the million-token one), and two sessions on one model in two threads give
exactly what they give one after the other."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np
import pytest

import engine
from engine import Eviction

_spec = importlib.util.spec_from_file_location("soak", Path(__file__).resolve().parents[1] / "tools" / "soak.py")
soak_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(soak_mod)


@pytest.fixture(scope="module")
def model(tiny_gguf):
    with engine.Model(tiny_gguf(weight_type="Q4_0")) as m:
        yield m


def test_short_soak_is_flat_and_finite(model):
    toks = np.random.default_rng(1).integers(0, model.n_vocab, 4096).astype(np.int32)
    res = soak_mod.soak(model, toks, 30_000, budget=64, policy="restkv", slack=16, piece=256, progress=False)
    assert res["tokens"] == 30_000 and len(res["rows"]) >= 10
    assert soak_mod.verdict(res, speed=False) == []  # rates of millisecond tenths: the load's, not ours
    assert all(r["n_past"] == r["tokens"] for r in res["rows"])
    # the cache really is bounded: at most budget + slack entries per (layer, kv-head)
    assert max(r["kv_bytes_alloc"] for r in res["rows"]) == res["rows"][0]["kv_bytes_alloc"]


def test_verdict_catches_growth_and_nan():
    rows = [{"kv_bytes_used": 100, "kv_bytes_alloc": 100, "rss_bytes": 1000, "tokens_per_second": 10.0}
            for _ in range(5)]
    assert soak_mod.verdict({"rows": rows, "non_finite": 0}) == []
    grown = [dict(r) for r in rows]
    grown[-1]["rss_bytes"] = 1100
    assert "rss_bytes grew" in soak_mod.verdict({"rows": grown, "non_finite": 0})[0]
    assert "not finite" in soak_mod.verdict({"rows": rows, "non_finite": 3})[0]
    over = [dict(r) for r in rows]
    over[2]["kv_bytes_used"] = 101
    assert "above the 100 allocated" in soak_mod.verdict({"rows": over, "non_finite": 0})[0]
    slow = [dict(r) for r in rows]
    slow[-1]["tokens_per_second"] = 4.0
    assert "tokens/s fell" in soak_mod.verdict({"rows": slow, "non_finite": 0})[0]


def run_stream(model, toks, policy):
    with model.session(n_ctx=97, n_threads=1) as s:
        s.set_eviction(Eviction(policy=policy, budget=64, schedule="streaming", slack=32, window=16))
        return np.concatenate([s.logprobs(toks[i:i + 100], score_first=i > 0) for i in range(0, len(toks), 100)])


def test_two_sessions_in_two_threads_equal_sequential(model):
    rng = np.random.default_rng(2)
    streams = [(rng.integers(0, model.n_vocab, 1500).astype(np.int32), "restkv"),
               (rng.integers(0, model.n_vocab, 1500).astype(np.int32), "h2o")]
    sequential = [run_stream(model, t, p) for t, p in streams]
    for _ in range(3):
        out = [None, None]

        def worker(i):
            out[i] = run_stream(model, *streams[i])

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for got, want in zip(out, sequential):
            np.testing.assert_array_equal(got, want)
    assert not np.array_equal(sequential[0][:100], sequential[1][:100])


def test_gemma_soak_is_flat_per_layer_type(tiny_gguf):
    """A model with sliding-window layers: the window layers' rings and the global layers' buffers
    each stay at their size while the stream runs far past both."""
    path = tiny_gguf(arch="gemma3", n_embd=128, n_heads=4, n_kv_heads=1, n_layers=6, sliding_window=16,
                     head_dim=32, swa_pattern=3, weight_type="Q4_0")
    with engine.Model(path) as m:
        toks = np.random.default_rng(3).integers(0, m.n_vocab, 4096).astype(np.int32)
        res = soak_mod.soak(m, toks, 6_000, budget=48, policy="snapkv", slack=16, piece=128, progress=False)
    rows = res["rows"]
    assert soak_mod.verdict(res, speed=False) == []  # rates of millisecond tenths: the load's, not ours
    assert rows[0]["kv_bytes_alloc_window"] > 0 and rows[0]["kv_bytes_alloc_global"] > 0
    for key in ("kv_bytes_alloc_window", "kv_bytes_alloc_global", "kv_bytes_used_window"):
        assert {r[key] for r in rows} == {rows[0][key]}, key
    # the global layers never hold more than budget + slack entries
    assert max(r["kv_bytes_used_global"] for r in rows) <= rows[0]["kv_bytes_alloc_global"]
    # a grown window ring is caught
    grown = [dict(r) for r in rows]
    grown[-1]["kv_bytes_alloc_window"] *= 2
    assert "kv_bytes_alloc_window grew" in soak_mod.verdict({**res, "rows": grown})[0]
