"""Policy interface v2: the C core's policy and parameter tables, the settings text it parses, its errors, and
what Python builds from the tables (engine.Eviction, options, help, the shared prefill's source)."""

from __future__ import annotations

import threading
from dataclasses import fields

import numpy as np
import pytest

import engine
from engine import EngineError
from engine._native import ffi, lib
from engine import eviction as ev

TOKS = [int(t) for t in np.random.default_rng(3).integers(3, 380, 120)]


@pytest.fixture(scope="module")
def model(tiny_gguf):
    with engine.Model(tiny_gguf(weight_type="F32", n_heads=4, n_kv_heads=2)) as m:
        yield m


def last_error() -> str:
    return ffi.string(lib.rk_last_error()).decode()


def test_tables_describe_every_policy():
    n = lib.rk_policy_count()
    assert n == len(engine.policies()) and lib.rk_policy_name(n) == ffi.NULL
    info = ffi.new("rk_policy_info *")
    for i, name in enumerate(engine.policies()):
        assert lib.rk_policy_index(name.encode()) == i
        assert lib.rk_policy_get_info(i, info) == lib.RK_OK
        assert ffi.string(info.name).decode() == name and ffi.string(info.help)
        assert info.n_params == lib.rk_policy_n_params(i)
        assert info.gathers & info.needs == info.needs
        p = ev.POLICIES[name]
        for q in p.params:  # every default is in its range
            if q.type == "choice":
                assert q.default in q.choices
            else:
                assert q.min <= q.default <= q.max
                assert not (q.min_open and q.default == q.min) and not (q.max_open and q.default == q.max)
    assert lib.rk_policy_index(b"nope") == -1
    assert lib.rk_policy_get_info(n, info) == lib.RK_ERR_ARG and "no policy" in last_error()
    assert lib.rk_policy_param_info(0, 99, ffi.new("rk_param_info *")) == lib.RK_ERR_ARG
    assert lib.rk_policy_n_params(n) == -1


def test_flags_replace_the_name_special_cases():
    P = ev.POLICIES
    assert P["full"].flags & (ev.EVICTS | ev.MASKS_ATTN) == 0 and ev.FULL == "full"
    assert P["topk"].masks_attention and not P["topk"].evicts and ev.MASKING == ("topk",)
    assert set(ev.NON_EVICTING) == {"full", "topk"}
    assert P["h2o"].needs == ev.NEED_ACC and P["snapkv"].needs == ev.NEED_WINDOW
    assert [p.name for p in ev.SHARED_PARAMS] == ["budget", "schedule", "positions", "window", "n_sink", "slack"]
    # every shared setting and policy parameter is an Eviction field, with the C default
    names = [f.name for f in fields(engine.Eviction)]
    assert names[0] == "policy" and set(names[1:]) == set(ev.SHARED) | set(ev.POLICY_PARAMS)
    d = engine.Eviction()
    assert (d.window, d.kernel, d.ema_alpha, d.ada_base, d.lacache_span) == (32, 5, 0.3, "snapkv", 16)


def test_source_gathers_what_the_group_needs():
    assert ev.source_for([engine.Eviction(policy="h2o"), engine.Eviction(policy="snapkv")]).policy == "h2o"
    src = ev.source_for([engine.Eviction(policy="snapkv", window=8)], window=8)
    assert ev.POLICIES[src.policy].gathers & ev.NEED_WINDOW and src.window == 8 and src.budget == 1.0
    assert ev.source_for([None]).policy == "full"


@pytest.mark.parametrize("policy, settings, fragments", [
    ("snapkv", "kernel=4", ["kernel must be odd", "snapkv"]),
    ("snapkv", "kernel=0", ["kernel must be an integer >= 1", "got 0", "policy 'snapkv'"]),
    ("restkv", "ema_alpha=0", ["ema_alpha must be in (0, 1]", "policy 'restkv'"]),
    ("restkv", "aws_beta=-1", ["aws_beta must be > 0", "restkv"]),
    ("pyramidkv", "pyramid_beta=0.5", ["pyramid_beta must be >= 1", "pyramidkv"]),
    ("adakv", "ada_base=h2o", ["unknown ada_base 'h2o'", "snapkv, restkv", "adakv"]),
    ("lacache", "lacache_span=4,lacache_overlap=4", ["lacache_overlap < lacache_span", "4/4"]),
    ("snapkv", "window=0", ["window must be an integer in [1, 4096]", "shared setting of policy 'snapkv'"]),
    ("snapkv", "window=abc", ["window must be an integer", "'abc'"]),
    ("snapkv", "window=8.5", ["window must be an integer"]),
    ("snapkv", "budget=1.5", ["integer >= 2"]),
    ("snapkv", "budget=nan", ["budget must be a fraction"]),
    ("snapkv", "schedule=later", ["unknown schedule 'later'", "prefix, streaming"]),
    ("snapkv", "ema_alpha=0.5", ["policy 'snapkv' has no parameter 'ema_alpha'", "its parameters: kernel"]),
    ("full", "kernel=5", ["policy 'full' has no parameter 'kernel'", "its parameters: none"]),
    ("snapkv", "window", ["not key=value"]),
    ("snapkv", "window=8,window=9", ["given twice"]),
    ("nope", "", ["unknown policy 'nope'", "snapkv"]),
])
def test_settings_errors_name_parameter_range_and_policy(model, policy, settings, fragments):
    assert lib.rk_evict_check(policy.encode(), settings.encode()) == lib.RK_ERR_ARG
    for f in fragments:
        assert f in last_error(), (f, last_error())
    with model.session(n_ctx=128) as s:
        s.set_eviction(policy="streaming", budget=16)
        assert s._call(lib.rk_session_set_eviction, policy.encode(), settings.encode()) == lib.RK_ERR_ARG
        s.eval(TOKS[:40], logits=None)  # the previous settings still apply
        s.compress()
        assert s.kv_count(0, 0) == 16


def test_settings_text_is_parsed_like_the_fields(model):
    """spaces, defaults and the Python path give the same keep-sets"""
    def keep(set_it):
        with model.session(n_ctx=128) as s:
            set_it(s)
            s.eval(TOKS[:80], logits=None)
            s.compress()
            return [s.kv_positions(il, g).tolist() for il in range(model.n_layers) for g in range(2)]

    def c_set(text):
        def f(s):
            assert s._call(lib.rk_session_set_eviction, b"restkv", text) == lib.RK_OK, last_error()
        return f

    a = keep(lambda s: s.set_eviction(policy="restkv", budget=0.25, window=8, ema_alpha=0.05))
    assert a == keep(c_set(b" budget = 0.25 , window=8,ema_alpha=0.05, "))
    assert a != keep(c_set(b"budget=0.25,window=8"))  # ema_alpha reaches the policy


def test_a_parameter_of_another_policy_is_still_checked(model):
    with model.session(n_ctx=64) as s:
        with pytest.raises(EngineError, match="kernel must be odd"):
            s.set_eviction(policy="streaming", budget=8, kernel=4)
        s.set_eviction(policy="streaming", budget=8, kernel=7)  # valid for the policies that read it


def test_gram_matrices_are_prepared_once_from_threads(tiny_gguf):
    """two sessions of a fresh model set restkv at once (the Gram matrices are computed on first need);
    both score as a session that set it alone"""
    path = tiny_gguf(weight_type="Q8_0", n_heads=4, n_kv_heads=2)

    def run(m, out, i):
        with m.session(n_ctx=128, n_threads=1) as s:
            s.set_eviction(policy="restkv", budget=0.25, window=8)
            s.eval(TOKS[:60], logits=None)
            s.compress()
            out[i] = s.logprobs(TOKS[60:80])

    with engine.Model(path) as m:
        res = [None, None]
        ts = [threading.Thread(target=run, args=(m, res, i)) for i in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    with engine.Model(path) as m:
        one = [None]
        run(m, one, 0)
    np.testing.assert_array_equal(res[0], one[0])
    np.testing.assert_array_equal(res[1], one[0])


def test_help_and_options_come_from_the_tables():
    text = ev.policy_help()
    for name, p in ev.POLICIES.items():
        assert f"  {name}" in text
        for q in p.params:
            assert f"--{q.name.replace('_', '-')} {q.default}" in text
    opts = {name for _, name, *_ in ev.cli_options()}
    assert opts == (set(ev.SHARED) - {"budget", "schedule"}) | set(ev.POLICY_PARAMS)
