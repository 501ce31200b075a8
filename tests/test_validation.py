"""Input validation at every API entry: the C functions given NULL handles or arguments return a
status with a message (never crash); Python refuses bad arguments and closed handles with
EngineError; a refused call leaves the session as it was and usable."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine import EngineError
from engine._native import ffi, lib

NULL = ffi.NULL


@pytest.fixture(scope="module")
def model(tiny_gguf):
    with engine.Model(tiny_gguf(weight_type="Q8_0")) as m:
        yield m


def last_error() -> str:
    return ffi.string(lib.rk_last_error()).decode()


STATUS_CALLS = {
    "rk_model_load(out=NULL)": lambda: lib.rk_model_load(NULL, b"x.gguf", NULL),
    "rk_model_load(path=NULL)": lambda: lib.rk_model_load(ffi.new("rk_model **"), NULL, NULL),
    "rk_session_init(out=NULL)": lambda: lib.rk_session_init(NULL, NULL, NULL),
    "rk_session_init(model=NULL)": lambda: lib.rk_session_init(ffi.new("rk_session **"), NULL, NULL),
    "rk_session_eval": lambda: lib.rk_session_eval(NULL, ffi.new("int32_t[]", [1]), 1, NULL, lib.RK_LOGITS_NONE),
    "rk_session_logprobs": lambda: lib.rk_session_logprobs(NULL, ffi.new("int32_t[]", [1, 2]), 2,
                                                           ffi.new("float[]", 1), NULL),
    "rk_session_logprobs_next": lambda: lib.rk_session_logprobs_next(NULL, ffi.new("int32_t[]", [1]), 1,
                                                                     ffi.new("float[]", 1), NULL),
    "rk_session_reset": lambda: lib.rk_session_reset(NULL),
    "rk_session_set_eviction(session=NULL)": lambda: lib.rk_session_set_eviction(NULL, b"full", NULL),
    "rk_session_compress": lambda: lib.rk_session_compress(NULL),
    "rk_session_copy_state": lambda: lib.rk_session_copy_state(NULL, NULL),
    "rk_dequantize(src=NULL)": lambda: lib.rk_dequantize(lib.RK_TYPE_Q8_0, NULL, 34, ffi.new("float[]", 32), 32),
    "rk_vec_dot(row=NULL)": lambda: lib.rk_vec_dot(lib.RK_TYPE_Q8_0, NULL, 34, ffi.new("float[]", 32), 32,
                                                   ffi.new("float *")),
}


@pytest.mark.parametrize("name", sorted(STATUS_CALLS))
def test_c_entry_points_refuse_null(name):
    st = STATUS_CALLS[name]()
    assert st != lib.RK_OK
    msg = last_error()
    assert msg and ("NULL" in msg or "null" in msg), msg


def test_c_getters_and_free_accept_null():
    for fn in ("rk_model_n_vocab", "rk_model_n_layers", "rk_model_n_heads", "rk_model_n_kv_heads", "rk_model_n_embd",
               "rk_model_head_dim", "rk_model_n_ctx_train", "rk_model_n_params", "rk_model_weight_bytes",
               "rk_model_bos", "rk_model_eos", "rk_session_n_past", "rk_session_n_ctx", "rk_session_n_threads",
               "rk_session_kv_bytes_alloc", "rk_session_kv_bytes_used", "rk_session_next_pos"):
        assert getattr(lib, fn)(NULL) in (0, -1), fn
    assert ffi.string(lib.rk_model_desc(NULL)) == b""
    assert lib.rk_session_kv_count(NULL, 0, 0) == -1
    assert lib.rk_session_kv_positions(NULL, 0, 0, NULL, 0) == -1
    assert lib.rk_model_token_piece(NULL, 0, NULL, 0, 0) < 0
    lib.rk_model_free(NULL)
    lib.rk_session_free(NULL)


def test_c_session_set_evict_null_params(model):
    with model.session(n_ctx=32) as s:
        assert lib.rk_session_set_eviction(s._handle(), NULL, NULL) != lib.RK_OK
        assert "NULL" in last_error()
        assert lib.rk_session_eval(s._handle(), NULL, 1, NULL, lib.RK_LOGITS_NONE) != lib.RK_OK
        assert "tokens is NULL" in last_error()
        assert lib.rk_session_eval(s._handle(), ffi.new("int32_t[]", [1]), 1, NULL, lib.RK_LOGITS_LAST) != lib.RK_OK
        assert "logits buffer is NULL" in last_error()
        assert s.n_past == 0


def test_c_kv_queries_refuse_bad_indices(model):
    with model.session(n_ctx=32) as s:
        s.eval([1, 2, 3], logits=None)
        h = s._handle()
        for il, g in ((-1, 0), (model.n_layers, 0), (0, -1), (0, model.n_kv_heads)):
            assert lib.rk_session_kv_count(h, il, g) == -1
        with pytest.raises(EngineError, match="no KV buffer"):
            s.kv_positions(model.n_layers, 0)


BAD_SESSION_CALLS = [
    ("token id above the vocabulary", lambda s, m: s.eval([1, m.n_vocab], logits=None), "outside the vocabulary"),
    ("negative token id", lambda s, m: s.logprobs([1, -1]), "outside the vocabulary"),
    ("no tokens", lambda s, m: s.eval([], logits=None), "at least one token"),
    ("longer than the session", lambda s, m: s.eval(list(range(1, 40)), logits=None), "do not fit"),
    ("budget 0", lambda s, m: s.set_eviction(policy="snapkv", budget=0), "budget"),
    ("negative budget", lambda s, m: s.set_eviction(policy="snapkv", budget=-0.5), "budget"),
    ("fraction above 1", lambda s, m: s.set_eviction(policy="snapkv", budget=1.5), "budget"),
    ("unknown policy", lambda s, m: s.set_eviction(policy="lru"), "unknown policy 'lru'"),
    ("unknown parameter", lambda s, m: s.set_eviction(policy="snapkv", windows=8), "windows"),
    ("bad window", lambda s, m: s.set_eviction(policy="snapkv", window=-2), "window"),
    ("eviction of a wrong type", lambda s, m: s.set_eviction("snapkv"), "must be an Eviction"),
    ("bad logits mode", lambda s, m: s.eval([1], logits="some"), "logits"),
]


@pytest.mark.parametrize("what", [c[0] for c in BAD_SESSION_CALLS])
def test_bad_arguments_leave_the_session_usable(model, what):
    _, call, msg = next(c for c in BAD_SESSION_CALLS if c[0] == what)
    with model.session(n_ctx=32) as s, model.session(n_ctx=32) as ref:
        s.set_eviction(policy="snapkv", budget=0.5, window=4)
        s.eval([5, 6, 7, 8, 9], logits=None)
        with pytest.raises(EngineError, match=msg):
            call(s, model)
        assert s.n_past == 5 and s.eviction.policy == "snapkv"
        # still usable, and exactly as if the bad call had not happened
        ref.set_eviction(policy="snapkv", budget=0.5, window=4)
        ref.eval([5, 6, 7, 8, 9], logits=None)
        np.testing.assert_array_equal(s.logprobs([10, 11, 12], score_first=True),
                                      ref.logprobs([10, 11, 12], score_first=True))


@pytest.mark.parametrize("kw, msg", [
    (dict(n_threads=0), "n_threads"), (dict(n_threads=-2), "n_threads"), (dict(n_ctx=0), "n_ctx"),
    (dict(n_ctx=-5), "n_ctx"), (dict(n_batch=0), "n_batch"), (dict(kv_type="q4"), "kv_type"),
])
def test_bad_session_parameters(model, kw, msg):
    with pytest.raises(EngineError, match=msg):
        model.session(**kw)


def test_bad_model_parameters(tiny_gguf):
    path = tiny_gguf(weight_type="Q8_0")
    for kw, msg in ((dict(n_threads=0), "n_threads"), (dict(n_threads=-1), "n_threads"),
                    (dict(device="tpu"), "device")):
        with pytest.raises(EngineError, match=msg):
            engine.Model(path, **kw)


def test_negative_max_tokens(model):
    with pytest.raises(EngineError, match="max_tokens"):
        model.generate("hi", max_tokens=-3)


def test_closed_handles_are_refused(tiny_gguf):
    m = engine.Model(tiny_gguf(weight_type="Q8_0"))
    s = m.session(n_ctx=16)
    other = m.session(n_ctx=16)
    s.close()
    for call in (lambda: s.eval([1]), lambda: s.logprobs([1, 2]), lambda: s.reset(), lambda: s.compress(),
                 lambda: s.set_eviction(policy="h2o", budget=0.5), lambda: s.kv_count(0, 0), lambda: s.n_past,
                 lambda: other.copy_state_from(s)):
        with pytest.raises(EngineError, match="closed"):
            call()
    m.close()
    for call in (lambda: m.session(), lambda: m.n_vocab, lambda: other.eval([1])):
        with pytest.raises(EngineError, match="closed"):
            call()
