"""Threads: a session used from two threads at once, and sessions or models closed while another
thread is inside a call, fail cleanly or wait (issue 11: each of these used to segfault).

Runs under the sanitizer build too (tests/sanitize.sh): there a use after free is reported, not
just a crash."""

from __future__ import annotations

import os
import threading
import time

import pytest

import engine
from engine import EngineError, Model
from engine._native import ffi, lib

BUSY = "in a call from another thread"


def ids(n: int) -> list[int]:
    """n token ids inside the tiny models' vocabulary (384)"""
    return [i % 300 for i in range(n)]


@pytest.fixture(scope="module")
def slow_model(tiny_gguf):
    """A tiny model wide enough that a long eval takes a noticeable time (tenths of a second)."""
    return tiny_gguf(n_embd=256, n_layers=4, n_heads=4, n_kv_heads=2, n_ctx_train=8192, seed=3)


class InFlight:
    """Runs fn in a thread and records when it started and returned (time.monotonic)."""

    def __init__(self, fn):
        self.started = threading.Event()
        self.t0 = self.t1 = None
        self.result = self.error = None

        def run():
            self.t0 = time.monotonic()
            self.started.set()
            try:
                self.result = fn()
            except BaseException as e:  # noqa: BLE001 - reported by the test
                self.error = e
            self.t1 = time.monotonic()

        self.thread = threading.Thread(target=run)
        self.thread.start()
        self.started.wait()

    def join(self):
        self.thread.join(timeout=600)
        assert not self.thread.is_alive()


def overlapping(make_call, probe, waits=False, tries=4, n=1500):
    """Calls probe() while make_call(n) runs in another thread; doubles n until the probe really
    happened inside the other call (by the clock: it ended before that call did or, for a probe
    that waits for the call, began before it ended). Returns (in-flight call, probe outcome,
    time the probe returned)."""
    for _ in range(tries):
        call = InFlight(lambda: make_call(n))
        time.sleep(0.02)
        t = time.monotonic()
        try:
            outcome = probe()
        except EngineError as e:
            outcome = e
        t_end = time.monotonic()
        call.join()
        if (t if waits else t_end) < call.t1:
            return call, outcome, t_end
        n *= 2
    pytest.skip("could not overlap two calls on this machine")


def test_second_thread_is_refused_not_queued(slow_model):
    with Model(slow_model, n_threads=2) as m, m.session(n_ctx=8192) as s:
        call, outcome, _ = overlapping(lambda n: (s.reset(), s.eval(ids(n), logits=None)),
                                       lambda: s.eval([1, 2, 3]))
        assert call.error is None
        assert isinstance(outcome, EngineError) and BUSY in str(outcome)
        # the refused call changed nothing, and the session works afterwards
        n_past = s.n_past
        s.eval([1, 2, 3], logits=None)
        assert s.n_past == n_past + 3


def test_every_session_call_is_guarded(slow_model):
    """While one call is in flight, every other call on the session is refused with the same error."""
    with Model(slow_model, n_threads=1) as m, m.session(n_ctx=8192) as s, m.session(n_ctx=8192) as other:
        probes = [lambda: s.eval([1]), lambda: s.logprobs([1, 2]), lambda: s.reset(), lambda: s.compress(),
                  lambda: s.set_eviction(policy="streaming", budget=0.5), lambda: s.n_past,
                  lambda: s.kv_count(0, 0), lambda: other.copy_state_from(s), lambda: s.copy_state_from(other)]
        s._lock.acquire()  # as a call in flight does
        try:
            for probe in probes:
                with pytest.raises(EngineError, match=BUSY):
                    probe()
        finally:
            s._lock.release()
        assert s.n_past == 0


def test_issue_reproduction_two_threads_one_session(slow_model):
    """The issue's first reproduction: two threads, 30 x (reset, eval 64 tokens) each, one session."""
    with Model(slow_model, n_threads=2) as m, m.session(n_ctx=4096) as s:
        refused, errors = [], []

        def work():
            for _ in range(30):
                try:
                    s.reset()
                    s.eval(list(range(100, 164)), logits=None)
                except EngineError as e:
                    (refused if BUSY in str(e) else errors).append(e)

        threads = [threading.Thread(target=work) for _ in range(2)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert not errors
        # after the storm the session is consistent
        s.reset()
        s.eval(list(range(100, 164)), logits=None)
        assert s.n_past == 64


@pytest.mark.parametrize("what", ["session", "model"])
def test_close_waits_for_the_call_in_flight(slow_model, what):
    """The issue's second reproduction: close() while another thread is in s.eval(2000 tokens)."""
    m = Model(slow_model, n_threads=2)
    s = m.session(n_ctx=8192)
    target = s if what == "session" else m
    call, _, t_closed = overlapping(lambda n: s.eval(ids(n)), target.close, waits=True)
    assert call.error is None and call.result is not None  # the call finished with its logits
    assert t_closed >= call.t1  # and close() returned only after it
    assert s._ptr is None and (m._ptr is None) == (what == "model")
    with pytest.raises(EngineError, match="closed"):
        s.eval([1])
    if what == "model":
        with pytest.raises(EngineError, match="closed"):
            m.n_vocab
    m.close()


def test_c_session_keeps_its_model_alive(slow_model):
    """In C, rk_model_free before rk_session_free is safe: the weights go with the last session."""
    mp = ffi.new("rk_model **")
    assert lib.rk_model_load(mp, slow_model.encode(), ffi.NULL) == lib.RK_OK
    sp = ffi.new("rk_session **")
    params = ffi.new("rk_session_params *", lib.rk_session_default_params())
    params.n_ctx = 256
    assert lib.rk_session_init(sp, mp[0], params) == lib.RK_OK
    lib.rk_model_free(mp[0])  # the caller's handle: the session still holds the weights
    toks = ffi.new("int32_t[]", list(range(50)))
    n_vocab = 384
    logits = ffi.new("float[]", n_vocab)
    assert lib.rk_session_eval(sp[0], toks, 50, logits, lib.RK_LOGITS_LAST) == lib.RK_OK
    assert all(logits[i] == logits[i] for i in range(n_vocab))  # finite numbers, not freed memory
    lib.rk_session_free(sp[0])


def test_c_busy_status_and_free_waits(slow_model):
    """The C API itself refuses a second thread (RK_ERR_BUSY) and rk_session_free waits for the call."""
    mp = ffi.new("rk_model **")
    assert lib.rk_model_load(mp, slow_model.encode(), ffi.NULL) == lib.RK_OK
    sp = ffi.new("rk_session **")
    params = ffi.new("rk_session_params *", lib.rk_session_default_params())
    params.n_ctx = 8192
    params.n_threads = 2
    assert lib.rk_session_init(sp, mp[0], params) == lib.RK_OK
    sess = sp[0]
    keep = []

    def long_eval(n):
        toks = ffi.new("int32_t[]", ids(n))
        keep.append(toks)
        lib.rk_session_reset(sess)
        return lib.rk_session_eval(sess, toks, n, ffi.NULL, lib.RK_LOGITS_NONE)

    one = ffi.new("int32_t[]", [1])
    call, outcome, _ = overlapping(long_eval, lambda: lib.rk_session_eval(sess, one, 1, ffi.NULL,
                                                                           lib.RK_LOGITS_NONE))
    assert call.result == lib.RK_OK
    assert outcome == lib.RK_ERR_BUSY
    assert BUSY in ffi.string(lib.rk_last_error()).decode()
    assert ffi.string(lib.rk_status_str(lib.RK_ERR_BUSY)).decode() == "session busy"
    # free while a call is in flight: it returns only after that call did
    call = InFlight(lambda: long_eval(1500))
    time.sleep(0.02)
    lib.rk_session_free(sess)
    t_freed = time.monotonic()
    call.join()
    assert call.result == lib.RK_OK and call.t1 <= t_freed
    lib.rk_model_free(mp[0])


def test_sessions_in_threads_of_their_own_still_run_in_parallel(slow_model):
    """The guard is per session: one model, one session per thread, all at once, same results."""
    with Model(slow_model, n_threads=1) as m:
        toks = ids(390)
        with m.session(n_ctx=1024, n_threads=1) as s:
            ref = s.eval(toks)
        out = [None] * 3

        def work(i):
            with m.session(n_ctx=1024, n_threads=1) as s:
                out[i] = s.eval(toks)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        for o in out:
            assert (o == ref).all()


@pytest.mark.skipif(os.environ.get("RESTKV_SANITIZE") == "1",
                    reason="minutes under ASan; the tiny-model tests above run the same paths there")
def test_smollm2_reproductions(smollm2):
    """Both reproductions of the issue, as written there, on SmolLM2."""
    m = engine.Model(smollm2, n_threads=2)
    s = m.session(n_ctx=4096)
    refused = []

    def w():
        for _ in range(30):
            try:
                s.reset()
                s.eval(list(range(100, 164)), logits=None)
            except EngineError as e:
                assert BUSY in str(e)
                refused.append(e)

    t = [threading.Thread(target=w) for _ in range(2)]
    [x.start() for x in t]
    [x.join() for x in t]
    call = InFlight(lambda: s.eval(list(range(100, 2100))))
    time.sleep(1)
    m.close()  # closes s first, after its eval returned
    call.join()
    assert call.error is None and call.result is not None
    with pytest.raises(EngineError, match="closed"):
        s.eval([1])
