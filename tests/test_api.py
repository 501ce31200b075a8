"""Behaviour of the public Python API (engine.Model / engine.Session) over the C core.

Covers: model and session facts, KV accounting, lifetimes (close, context managers,
GC), and bad arguments: each raises EngineError with a message naming the problem
and leaves the session exactly as it was (same n_past, same logits afterwards).
"""

from __future__ import annotations

import gc
import os
import threading

import numpy as np
import pytest

import engine
from engine import EngineError, Model, Session
from engine._native import ffi, lib

TINY = dict(n_vocab=384, n_layers=2, n_heads=4, n_kv_heads=2, n_embd=128, n_ff=256, n_ctx_train=512)
PREFIX = [5, 17, 42, 99]
NEXT = 7


@pytest.fixture(scope="module")
def tiny_path(tiny_gguf):
    return tiny_gguf()  # F32, bpe vocab, the sizes in TINY (write_tiny_llama's defaults)


@pytest.fixture(scope="module")
def model(tiny_path):
    with Model(tiny_path) as m:
        yield m


def fresh_logits(model, prefix=PREFIX, nxt=NEXT, **kw):
    """Logits of `nxt` after `prefix`, from a brand-new session with the same call pattern."""
    with model.session(n_ctx=kw.pop("n_ctx", 32), **kw) as s:
        s.eval(prefix)
        return s.eval([nxt])


def expected_params(n_vocab, n_layers, n_heads, n_kv_heads, n_embd, n_ff, tied=True):
    head_dim = n_embd // n_heads
    per_layer = (2 * n_embd                                   # attn_norm, ffn_norm
                 + n_embd * n_embd * 2                        # q, o
                 + n_embd * n_kv_heads * head_dim * 2         # k, v
                 + 3 * n_embd * n_ff)                         # gate, up, down
    return n_vocab * n_embd * (1 if tied else 2) + n_layers * per_layer + n_embd


# ---------------------------------------------------------------- facts

def test_model_properties(model, tiny_path):
    assert model.n_vocab == TINY["n_vocab"]
    assert model.n_layers == TINY["n_layers"]
    assert model.n_heads == TINY["n_heads"]
    assert model.n_kv_heads == TINY["n_kv_heads"]
    assert model.n_embd == TINY["n_embd"]
    assert model.head_dim == TINY["n_embd"] // TINY["n_heads"]
    assert model.n_ctx_train == TINY["n_ctx_train"]
    n = expected_params(**{k: TINY[k] for k in ("n_vocab", "n_layers", "n_heads", "n_kv_heads", "n_embd", "n_ff")})
    assert model.n_params == n
    assert model.weight_bytes == 4 * n  # all F32
    assert isinstance(model.desc, str) and "llama" in model.desc and "2 layers" in model.desc
    assert model.path == tiny_path and model.device == "cpu"
    assert model.desc in repr(model)


def test_model_properties_quantised(tiny_gguf):
    with Model(tiny_gguf(weight_type="Q8_0", tied=False)) as m:
        n = expected_params(384, 2, 4, 2, 128, 256, tied=False)
        assert m.n_params == n
        # Q8_0: 34 bytes per 32 weights for the matrices, the norms stay F32
        norms = 2 * 2 * 128 + 128
        assert m.weight_bytes == (n - norms) // 32 * 34 + norms * 4
        assert "Q8_0" in m.desc


def test_smollm2_properties(smollm2):
    with Model(smollm2) as m:
        assert (m.n_vocab, m.n_layers, m.n_heads, m.n_kv_heads, m.head_dim) == (49152, 30, 9, 3, 64)
        assert m.n_ctx_train == 8192
        assert 130e6 < m.n_params < 140e6
        assert 0 < m.weight_bytes < os.path.getsize(smollm2)
        assert "Q4_1" in m.desc


def test_session_properties(model):
    with model.session(n_ctx=40, n_threads=2) as s:
        assert s.n_ctx == 40
        assert s.n_threads == 2
        assert s.n_past == 0
        assert s.model is model
    with model.session(n_ctx=8, n_threads=1) as s:
        assert s.n_threads == 1
    with model.session() as s:  # defaults: the trained context, the model's threads (all cores)
        assert s.n_ctx == model.n_ctx_train
        assert s.n_threads == min(max(os.sysconf("SC_NPROCESSORS_ONLN"), 1), 256)


def test_model_threads_are_session_default(tiny_path):
    with Model(tiny_path, n_threads=3) as m, m.session(n_ctx=8) as s:
        assert s.n_threads == 3
        with m.session(n_ctx=8, n_threads=1) as s1:
            assert s1.n_threads == 1


@pytest.mark.parametrize("kv_type,elt", [("f16", 2), ("f32", 4)])
def test_kv_bytes(model, kv_type, elt):
    per_token = model.n_layers * model.n_kv_heads * (2 * model.head_dim * elt + 4)  # K, V, position
    with model.session(n_ctx=32, kv_type=kv_type) as s:
        assert s.kv_bytes_alloc == 32 * per_token
        assert s.kv_bytes_used == 0
        s.eval(PREFIX)
        assert s.kv_bytes_used == len(PREFIX) * per_token
        s.eval([NEXT])
        assert s.kv_bytes_used == (len(PREFIX) + 1) * per_token
        s.eval([1, 2, 3], logits=None)
        assert s.kv_bytes_used == (len(PREFIX) + 4) * per_token
        assert s.n_past == len(PREFIX) + 4
        assert s.kv_bytes_alloc == 32 * per_token
        s.reset()
        assert s.kv_bytes_used == 0 and s.n_past == 0
        assert s.kv_bytes_alloc == 32 * per_token


def test_eval_logit_modes(model):
    ref = fresh_logits(model)
    with model.session(n_ctx=32) as s:
        assert s.eval(PREFIX, logits=None) is None
        last = s.eval([NEXT], logits="last")
        assert last.shape == (model.n_vocab,) and last.dtype == np.float32
        np.testing.assert_array_equal(last, ref)
    with model.session(n_ctx=32) as s:
        allr = s.eval(PREFIX + [NEXT], logits="all")
        assert allr.shape == (len(PREFIX) + 1, model.n_vocab)
        np.testing.assert_array_equal(allr[-1], ref)
    with model.session(n_ctx=32) as s:  # numpy input of another integer dtype
        s.eval(np.array(PREFIX, dtype=np.int64))
        np.testing.assert_array_equal(s.eval(np.array([NEXT], dtype=np.uint16)), ref)


def test_reset_replays_identically(model):
    with model.session(n_ctx=32) as s:
        s.eval([3, 4, 5, 6, 7, 8])
        s.reset()
        s.eval(PREFIX)
        np.testing.assert_array_equal(s.eval([NEXT]), fresh_logits(model))


def test_has_cuda_and_cpu_features():
    assert isinstance(engine.has_cuda(), bool)
    assert engine.has_cuda() == bool(lib.rk_has_cuda())
    feats = engine.cpu_features()
    assert isinstance(feats, str) and feats.strip()
    assert feats == engine.cpu_features()
    words = feats.split()
    assert all(w.replace("_", "").replace(".", "").isalnum() and w.islower() for w in words), feats
    assert words == ["scalar"] or "scalar" not in words, feats
    # never claims an x86 extension the CPU lacks
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
        if flags is not None:
            for w in set(words) & {"avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl"}:
                assert w in flags, (w, feats)
            if "avx512vnni" in words:  # /proc/cpuinfo spells it avx512_vnni
                assert {"avx512_vnni", "avx512f", "avx512bw", "avx512vl"} <= set(flags), feats


# ---------------------------------------------------------------- lifetimes

def test_context_managers_close(tiny_path):
    with Model(tiny_path) as m:
        with m.session(n_ctx=8) as s:
            s.eval([1, 2])
        with pytest.raises(EngineError, match="session is closed"):
            s.eval([3])
        with pytest.raises(EngineError, match="session is closed"):
            s.n_past
        assert m.n_vocab == TINY["n_vocab"]
    with pytest.raises(EngineError, match="model is closed"):
        m.n_vocab
    with pytest.raises(EngineError, match="model is closed"):
        m.session()
    assert "closed" in repr(m)


def test_close_twice(tiny_path):
    m = Model(tiny_path)
    s = m.session(n_ctx=8)
    s.close()
    s.close()
    m.close()
    m.close()
    with pytest.raises(EngineError, match="model"):
        m.desc
    with pytest.raises(EngineError, match="model"):
        m.generate("hi", max_tokens=2)


def test_model_close_closes_its_sessions(tiny_path):
    m = Model(tiny_path)
    s1 = m.session(n_ctx=8)
    s2 = Session(m, n_ctx=8)  # built directly, not through model.session()
    s1.eval([1])
    m.close()
    for s in (s1, s2):
        with pytest.raises(EngineError, match="session is closed"):
            s.eval([1])
        with pytest.raises(EngineError, match="session is closed"):
            s.reset()
        s.close()  # still fine


def test_session_keeps_model_alive(tiny_path):
    m = Model(tiny_path)
    s = m.session(n_ctx=16)
    ref = fresh_logits(m, n_ctx=16)
    del m
    gc.collect()
    s.eval(PREFIX)
    np.testing.assert_array_equal(s.eval([NEXT]), ref)
    assert s.model.n_vocab == TINY["n_vocab"]
    s.close()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm")
def test_gc_frees_sessions(model):
    # each session allocates a few MB (KV + scratch for 512-token batches): a leak shows at once
    def churn(n):
        for i in range(n):
            s = model.session(n_ctx=512, n_threads=2)
            s.eval([1, 2, 3], logits=None)
            if i % 2:
                s.close()  # the other half is left to the garbage collector
            del s
        gc.collect()

    churn(10)
    before = _rss_bytes()
    churn(80)
    grown = _rss_bytes() - before
    assert grown < 32 << 20, f"RSS grew by {grown >> 20} MiB over 80 sessions"


def test_gc_frees_models(tiny_path):
    for _ in range(20):
        m = Model(tiny_path)
        m.session(n_ctx=8).eval([1])
        del m
    gc.collect()


# ---------------------------------------------------------------- bad arguments

BAD_TOKENS = [
    pytest.param([-1], "token id -1", lib.RK_ERR_ARG, id="negative-id"),
    pytest.param([TINY["n_vocab"]], f"token id {TINY['n_vocab']}", lib.RK_ERR_ARG, id="id-n_vocab"),
    pytest.param([1, 2, 10**6], "token id 1000000 at index 2", lib.RK_ERR_ARG, id="id-large"),
    pytest.param([2**32 + 3], "token id 4294967299", None, id="id-beyond-int32"),
    pytest.param(np.array([2**40], dtype=np.int64), "token id 1099511627776", None, id="np-id-beyond-int32"),
    pytest.param([], "at least one token", lib.RK_ERR_ARG, id="empty"),
    pytest.param(np.zeros(0, dtype=np.int32), "at least one token", lib.RK_ERR_ARG, id="empty-np"),
    pytest.param([[1, 2], [3, 4]], "1-D", None, id="2-D-list"),
    pytest.param(np.ones((2, 2), dtype=np.int32), "1-D", None, id="2-D-array"),
    pytest.param([1.0, 2.0], "integers", None, id="float-list"),
    pytest.param(np.array([1.5]), "integers", None, id="float-array"),
    pytest.param([True, False], "integers", None, id="bools"),
    pytest.param(["a"], "integers", None, id="strings"),
    pytest.param(None, "sequence", None, id="None"),
    pytest.param(5, "sequence", None, id="scalar"),
]


@pytest.fixture
def used_session(model):
    """A session that has evaluated PREFIX; checks after the test that nothing changed."""
    s = model.session(n_ctx=32)
    s.eval(PREFIX)
    state = (s.n_past, s.kv_bytes_used)
    yield s
    assert (s.n_past, s.kv_bytes_used) == state
    np.testing.assert_array_equal(s.eval([NEXT]), fresh_logits(model))
    s.close()


@pytest.mark.parametrize("ids,msg,status", BAD_TOKENS)
def test_eval_bad_tokens(used_session, ids, msg, status):
    with pytest.raises(EngineError, match=msg) as ei:
        used_session.eval(ids)
    assert ei.value.status == status


@pytest.mark.parametrize("ids,msg,status", BAD_TOKENS)
def test_logprobs_bad_tokens(used_session, ids, msg, status):
    with pytest.raises(EngineError, match=msg) as ei:
        used_session.logprobs(ids)
    assert ei.value.status == status


def test_bad_token_message_names_vocab(used_session):
    with pytest.raises(EngineError) as ei:
        used_session.eval([3, -1])
    msg = str(ei.value)
    assert "token id -1 at index 1" in msg and "vocabulary" in msg and "383" in msg


@pytest.mark.parametrize("mode", ["first", "LAST", 1, [], {}])
def test_eval_unknown_logits_mode(used_session, mode):
    with pytest.raises(EngineError, match="logits must be"):
        used_session.eval([NEXT], logits=mode)


def test_context_full(model):
    with model.session(n_ctx=8) as s:
        with pytest.raises(EngineError, match="do not fit") as ei:
            s.eval(list(range(9)))
        assert ei.value.status == lib.RK_ERR_CTX_FULL
        assert s.n_past == 0 and s.kv_bytes_used == 0
        s.eval(PREFIX)
        with pytest.raises(EngineError, match="do not fit") as ei:
            s.eval([1, 2, 3, 4, 5])
        assert ei.value.status == lib.RK_ERR_CTX_FULL
        with pytest.raises(EngineError, match="do not fit"):
            s.logprobs([1, 2, 3, 4, 5])
        assert s.n_past == len(PREFIX)
        np.testing.assert_array_equal(s.eval([NEXT]), fresh_logits(model))
        s.eval([1, 2, 3], logits=None)  # exactly full
        assert s.n_past == 8
        with pytest.raises(EngineError) as ei:
            s.eval([1])
        assert ei.value.status == lib.RK_ERR_CTX_FULL and s.n_past == 8
        s.reset()
        s.eval(PREFIX)
        np.testing.assert_array_equal(s.eval([NEXT]), fresh_logits(model))


@pytest.mark.parametrize("name", ["n_ctx", "n_threads", "n_batch"])
@pytest.mark.parametrize("value", [0, -1, -(2**40), 1.5, 2.0, "8", True, 2**31, 2**40])
def test_session_bad_ints(model, name, value):
    with pytest.raises(EngineError, match=name):
        model.session(**{name: value})
    with pytest.raises(EngineError, match=name):
        Session(model, **{name: value})


def test_session_absurd_threads(model):
    with pytest.raises(EngineError, match="n_threads") as ei:
        model.session(n_ctx=8, n_threads=10**6)
    assert ei.value.status == lib.RK_ERR_ARG


def test_session_huge_context_fails_cleanly(model):
    with pytest.raises(EngineError, match="cannot allocate") as ei:
        model.session(n_ctx=2**31 - 1)
    assert ei.value.status == lib.RK_ERR_OOM


@pytest.mark.parametrize("kv_type", ["q8_0", "F16", "", None, 1])
def test_session_unknown_kv_type(model, kv_type):
    with pytest.raises(EngineError, match="kv_type"):
        model.session(n_ctx=8, kv_type=kv_type)


@pytest.mark.parametrize("device", ["tpu", "CPU", "", None, 0])
def test_model_unknown_device(tiny_path, device):
    with pytest.raises(EngineError, match="device"):
        Model(tiny_path, device=device)


def test_model_cuda_unavailable(tiny_path):
    with pytest.raises(EngineError, match="(?i)cuda") as ei:
        Model(tiny_path, device="cuda")
    if not engine.has_cuda():
        assert ei.value.status == lib.RK_ERR_NO_CUDA
        assert "no CUDA backend" in str(ei.value)
    else:  # built with CUDA: no usable GPU here, or a GPU but no CUDA forward pass yet
        assert ei.value.status in (lib.RK_ERR_NO_CUDA, lib.RK_ERR_UNSUPPORTED)


@pytest.mark.parametrize("n_threads", [0, -2, 1.0, "4", 10**6, 2**40])
def test_model_bad_threads(tiny_path, n_threads):
    with pytest.raises(EngineError, match="n_threads"):
        Model(tiny_path, n_threads=n_threads)


def test_model_bad_path(tmp_path):
    with pytest.raises(EngineError, match="cannot open") as ei:
        Model(tmp_path / "missing.gguf")
    assert ei.value.status == lib.RK_ERR_IO
    assert "missing.gguf" in str(ei.value)


def test_failures_do_not_disturb_session(model):
    """A run of failing calls of every kind on one session; then it still matches a fresh one."""
    with model.session(n_ctx=16) as s:
        s.eval(PREFIX)
        for bad in ([-1], [], [[1]], [0.5], list(range(13)), None):
            with pytest.raises(EngineError):
                s.eval(bad)
            with pytest.raises(EngineError):
                s.logprobs(bad)
        with pytest.raises(EngineError):
            s.eval([1], logits="bogus")
        assert s.n_past == len(PREFIX)
        np.testing.assert_array_equal(s.eval([NEXT]), fresh_logits(model))


def test_status_strings():
    assert ffi.string(lib.rk_status_str(lib.RK_OK)) == b"ok"
    assert ffi.string(lib.rk_status_str(lib.RK_ERR_CTX_FULL)) == b"context full"
    assert ffi.string(lib.rk_status_str(12345)) == b"unknown status"


def test_engine_error_has_status():
    e = EngineError("boom", status=lib.RK_ERR_ARG)
    assert str(e) == "boom" and e.status == lib.RK_ERR_ARG
    assert EngineError("x").status is None


# ---------------------------------------------------------------- threads

def test_last_error_is_thread_local(model):
    """An error in one thread neither appears in nor overwrites another thread's message."""
    box = {}

    def clean_thread():
        box["clean"] = ffi.string(lib.rk_last_error())

    with model.session(n_ctx=8) as s:
        with pytest.raises(EngineError):
            s.eval([-1])
        main_msg = ffi.string(lib.rk_last_error())
        assert b"token id -1" in main_msg
        t = threading.Thread(target=clean_thread)
        t.start()
        t.join()
        assert box["clean"] == b""  # a thread that never failed sees no message
        assert ffi.string(lib.rk_last_error()) == main_msg


def test_errors_in_two_threads(model):
    """Two threads fail concurrently with different errors; each always reads its own."""
    wrong = []
    barrier = threading.Barrier(2)

    def worker(bad_id, n_ctx):
        with model.session(n_ctx=n_ctx, n_threads=1) as s:
            barrier.wait()
            for _ in range(300):
                try:
                    s.eval([bad_id])
                except EngineError as e:
                    if f"token id {bad_id} " not in str(e):
                        wrong.append(str(e))
                if f"token id {bad_id} ".encode() not in ffi.string(lib.rk_last_error()):
                    wrong.append("last_error: " + ffi.string(lib.rk_last_error()).decode())
                s.eval([1], logits=None)  # successful calls in between leave the message alone
                s.reset()

    ts = [threading.Thread(target=worker, args=(-5, 4)), threading.Thread(target=worker, args=(100000, 8))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not wrong, wrong[:3]


def test_sessions_in_threads_share_model(model):
    ref = fresh_logits(model)
    out = [None] * 4

    def worker(i):
        out[i] = fresh_logits(model, n_threads=1)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for o in out:
        np.testing.assert_array_equal(o, ref)
