"""engine.longctx.protocols and the runner's shared prefill: the prompt's segments per template, what each
protocol compresses, the budgets' kept counts, greedy decoding and its stop rules, and the shared prefill
(one per sample, staged over the protocols) bit for bit equal to separate fresh runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import engine
from engine.chat import CHATML_TEMPLATE
from engine.errors import EngineError
from engine.eval.shared_prefill import SharedPrefill
from engine.eviction import Eviction
from engine.longctx import protocols as P
from engine.longctx.runner import Config, PrefillCache, fresh_run, run_sample

N_CTX = 192
MAX_NEW = 10
WINDOW = 4


@dataclass
class FakeSample:
    """The Sample fields the protocols read."""
    context: str = "Read the text. The code is 42.\n"
    question: str = "What is the code?"
    answer_prefix: str = " The code is"
    max_new_tokens: int = MAX_NEW
    stop_at_newline: bool = False
    task: str = "fake"


@pytest.fixture(scope="module")
def model(tiny_gguf):
    with engine.Model(tiny_gguf(weight_type="Q8_0")) as m:
        yield m


def rand_segments(m, n_c=120, n_q=12, seed=3, fmt=None):
    """Segments of random tokens (avoiding the control ids) with the raw format's P and S."""
    rng = np.random.default_rng(seed)
    ids = lambda n: tuple(int(x) for x in rng.integers(3, m.n_vocab, n))  # noqa: E731
    fmt = fmt or P.prompt_format(m.tokenizer, "raw")
    return P.Segments(fmt.p_ids, ids(n_c), ids(n_q), fmt.s_ids, ids(5))


# ---------------------------------------------------------------- segments and templates

def test_raw_format_and_segments(model, tiny_gguf):
    tok = model.tokenizer
    fmt = P.prompt_format(tok, "auto")  # the tiny GGUF has no chat template: raw (kvpress's rule)
    assert fmt.mode == "raw" and fmt.p_ids == () and fmt.s_text == "\n"  # this vocabulary adds no BOS
    assert fmt.s_ids == tuple(tok.encode("\n", add_special=False)) and fmt.overhead == len(fmt.s_ids)
    with engine.Model(tiny_gguf(weight_type="Q8_0", vocab="spm")) as spm:
        f2 = P.prompt_format(spm.tokenizer, "raw")
        assert f2.p_ids == (spm.tokenizer.bos_id,) and f2.overhead == 1 + len(f2.s_ids)
    s = FakeSample()
    g = P.GenTokenizer(tok)
    segs = P.segments(s, fmt, g)
    assert segs.c == tuple(g.encode(s.context)) and segs.q == tuple(g.encode(s.question))
    assert segs.a == tuple(g.encode(s.answer_prefix))
    assert tok.decode(list(segs.prompt)) == s.context + s.question + "\n" + s.answer_prefix
    # what each protocol compresses and what it appends
    for proto, span, rest in [("agnostic", segs.p + segs.c, segs.q + segs.s + segs.a),
                              ("aware", segs.p + segs.c + segs.q, segs.s + segs.a),
                              ("aware-full", segs.prompt, ())]:
        assert segs.span(proto) == span and segs.rest(proto) == rest and span + rest == segs.prompt
        stages = segs.stages()[:P.STAGE[proto] + 1]
        assert tuple(int(x) for x in np.concatenate(stages)) == span
    # the generator's tokenizer: no BOS, special-token text stays text
    assert g.encode("<|im_start|>") != [tok.token_to_id("<|im_start|>")]


def test_chat_template_split(model):
    tok = model.tokenizer
    fmt = P.prompt_format(tok, "auto", source=CHATML_TEMPLATE)
    assert fmt.mode == "chat" and fmt.origin == "given" and fmt.verbatim
    assert fmt.p_text == "<|im_start|>user\n" and fmt.s_text == "<|im_end|>\n<|im_start|>assistant\n"
    im_start, im_end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    assert fmt.p_ids[0] == im_start and im_end in fmt.s_ids and fmt.s_ids.count(im_start) == 1
    assert fmt.overhead == len(fmt.p_ids) + len(fmt.s_ids)
    # the user message is context + question: P + C + Q + S is the rendered conversation
    segs = P.segments(FakeSample(), fmt, P.GenTokenizer(tok))
    text = tok.decode(list(segs.p + segs.c + segs.q + segs.s))
    assert text == ("<|im_start|>user\n" + FakeSample.context + FakeSample.question
                    + "<|im_end|>\n<|im_start|>assistant\n")
    # raw overrides the template; a template that rewrites the message is flagged (not verbatim); one that
    # trims it (Llama 3's) changes nothing in a message that starts and ends with text
    assert P.prompt_format(tok, "raw", source=CHATML_TEMPLATE).mode == "raw"
    trim = CHATML_TEMPLATE.replace("message['content']", "(message['content'] | trim)")
    assert P.prompt_format(tok, "auto", source=trim).verbatim
    flat = CHATML_TEMPLATE.replace("message['content']", "(message['content'] | replace('\\n', ' '))")
    assert not P.prompt_format(tok, "auto", source=flat).verbatim
    with pytest.raises(EngineError, match="cannot split"):
        P.prompt_format(tok, "auto", source="{{ messages[0]['content'] }}{{ messages[0]['content'] }}")
    with pytest.raises(EngineError, match="unknown template"):
        P.prompt_format(tok, "chatml")


# ---------------------------------------------------------------- budgets

def test_budget_mapping():
    assert P.budget_kind(0.25) == "fraction" and P.budget_kind(256.0) == "tokens" and P.budget_kind(1.0) == "full"
    assert P.kept_per_head(0.25, 100) == 25 and P.kept_per_head(0.1, 99) == 9 and P.kept_per_head(0.001, 50) == 1
    assert P.kept_per_head(64.0, 100) == 64 and P.kept_per_head(256.0, 100) == 100
    assert P.same_as_full("full", 1.0, 10) and P.same_as_full("snapkv", 1.0, 10)
    assert P.same_as_full("snapkv", 256.0, 256) and not P.same_as_full("snapkv", 256.0, 257)
    assert not P.same_as_full("snapkv", 0.99, 10)
    assert not P.same_as_full("topk", 256.0, 10) and P.same_as_full("topk", 1.0, 10)


CONFIG_EVS = [("full", 1.0), ("streaming", 0.25), ("h2o", 0.25), ("tova", 0.5), ("snapkv", 0.25), ("snapkv", 0.1),
              ("pyramidkv", 0.25), ("adakv", 0.25), ("restkv", 0.25), ("restkv", 16.0), ("knorm", 0.5),
              ("topk", 0.5), ("snapkv", 10000.0)]
UNIFORM = ("streaming", "h2o", "tova", "snapkv", "restkv", "knorm")


def configs_for(protocols):
    return [Config(proto, pol, b) for proto in protocols for pol, b in CONFIG_EVS]


# ---------------------------------------------------------------- one prefill shared == separate runs

def test_split_evaluation_is_bit_identical(model):
    """What the staged prefill rests on: a text evaluated in pieces leaves the same state and logits as in
    one call (also across the n_batch boundary)."""
    ids = np.random.default_rng(0).integers(3, model.n_vocab, 700).astype(np.int32)
    with model.session(n_ctx=800) as a, model.session(n_ctx=800) as b:
        la = a.eval(ids, logits="last")
        b.eval(ids[:300], logits=None), b.eval(ids[300:520], logits=None)
        lb = b.eval(ids[520:], logits="last")
        np.testing.assert_array_equal(la, lb)
        nxt = [5, 6, 7]
        np.testing.assert_array_equal(a.logprobs(nxt, score_first=True), b.logprobs(nxt, score_first=True))


def test_shared_prefill_equals_fresh_runs(model):
    """Every (protocol, policy, budget) from the one staged prefill of run_sample equals the same configuration
    run alone (span prefilled in one call, compressed, rest appended, decoded): generated tokens, kept
    counts, everything but the times."""
    cfgs = configs_for(P.PROTOCOLS)
    ev_params = {"window": WINDOW}
    cache = PrefillCache()  # the sessions of one sample reused by the next, as the runner does
    first = list(run_sample(model, FakeSample(), rand_segments(model, seed=2), cfgs, ev_params, n_ctx=N_CTX,
                            cache=cache))
    sp = cache.sp
    segs = rand_segments(model)
    got = list(run_sample(model, FakeSample(), segs, cfgs, ev_params, n_ctx=N_CTX, cache=cache))
    assert cache.sp is sp and len(first) == len(got)
    cache.close()
    assert [c for c, _ in got] != [] and sorted(map(repr, (c for c, _ in got))) == sorted(map(repr, cfgs))
    # one source prefill for all but topk (its own, sparse from the first query) and the lone ones
    gen = {}
    for cfg, res in got:
        if cfg.policy == "full" or P.same_as_full(cfg.policy, cfg.budget, segs.n_span(cfg.protocol)):
            ev = None
        else:
            ev = Eviction(policy=cfg.policy, budget=cfg.budget, window=WINDOW)
        alone = fresh_run(model, segs, cfg.protocol, ev, N_CTX, MAX_NEW)
        for k, v in alone.items():
            if not k.endswith("seconds") and k != "decode_tokens_per_second":
                assert res[k] == v, (cfg, k, res[k], v)
        # the budget >= n configuration ran as the full cache, and equals the policy itself run at that budget
        if cfg.budget == 10000.0:
            assert res["same_as_full"] and not res["evicted"]
            own = fresh_run(model, segs, cfg.protocol, Eviction(policy="snapkv", budget=10000, window=WINDOW), N_CTX,
                            MAX_NEW)
            assert own["generated_ids"] == res["generated_ids"] and own["kept_min"] == segs.n_span(cfg.protocol)
        gen[(cfg.protocol, cfg.policy, cfg.budget)] = res["generated_ids"]
    # the configurations differ (a state leaking between them would make them equal)
    assert len({tuple(v) for v in gen.values()}) >= 6


def test_shared_prefill_stages_api(model):
    """SharedPrefill.prefill_stages with logits: each configuration's state and logits are those of a prefill
    of its stage's span in one call; prefill(ids) is prefill_stages([ids])."""
    segs = rand_segments(model, seed=5).stages()
    evs = [None, Eviction(policy="snapkv", budget=0.5, window=WINDOW),
           Eviction(policy="h2o", budget=0.3, window=WINDOW), Eviction(policy="topk", budget=0.5)]
    stage_of = [2, 0, 1, 2]
    with SharedPrefill(model, evs, n_ctx=N_CTX) as sp:
        seen = set()
        for i, s, pre in sp.prefill_stages(segs, stage_of=stage_of, logits=True):
            seen.add(i)
            span = np.concatenate(segs[:stage_of[i] + 1])
            with model.session(n_ctx=N_CTX) as own:
                if evs[i] is not None:
                    own.set_eviction(evs[i])
                want = own.eval(span, logits="last")
                if evs[i] is not None:
                    own.compress()
                np.testing.assert_array_equal(pre.logits, want)
                assert pre.stage == stage_of[i] and pre.shared == (evs[i] is None or evs[i].policy != "topk")
                assert s.n_past == own.n_past == len(span)
                for il in range(model.n_layers):
                    for g in range(model.n_kv_heads):
                        np.testing.assert_array_equal(s.kv_positions(il, g), own.kv_positions(il, g))
                nxt = [7, 8, 9]
                np.testing.assert_array_equal(s.logprobs(nxt, score_first=True), own.logprobs(nxt, score_first=True))
        assert seen == {0, 1, 2, 3}
        with pytest.raises(ValueError, match="stage_of"):
            list(sp.prefill_stages(segs, stage_of=[0, 1]))


# ---------------------------------------------------------------- kept counts, full cache, aware-full

def test_kept_counts_follow_the_budget(model):
    segs = rand_segments(model, n_c=150, seed=7)
    got = list(run_sample(model, FakeSample(), segs, configs_for(P.PROTOCOLS), {"window": WINDOW}, n_ctx=N_CTX))
    for cfg, res in got:
        n = segs.n_span(cfg.protocol)
        assert res["n_span"] == n
        if P.same_as_full(cfg.policy, cfg.budget, n) or cfg.policy == "topk":
            assert res["kept_min"] == res["kept_max"] == n, cfg
        elif cfg.policy in UNIFORM:
            assert res["kept_min"] == res["kept_max"] == P.kept_per_head(cfg.budget, n), cfg
        else:  # pyramidkv, adakv: uneven allocations with the same total
            assert res["kept_min"] < n and abs(res["kept_mean"] - P.kept_per_head(cfg.budget, n)) <= 1, (cfg, res)
        assert res["kept_fraction"] == res["kept_mean"] / n
    # the ReST-KV token budget keeps B, window included
    r16 = [res for cfg, res in got if cfg.policy == "restkv" and cfg.budget == 16.0]
    assert r16 and all(r["kept_mean"] == 16 for r in r16)


def plain_greedy(m, prompt, max_new, n_ctx=N_CTX):
    """Reference: the whole prompt evaluated in one call, then argmax decoding."""
    ends = P.end_ids(m.tokenizer)
    out = []
    with m.session(n_ctx=n_ctx) as s:
        logits = s.eval(list(prompt), logits="last")
        for _ in range(max_new):
            t = int(np.argmax(logits))
            if t in ends:
                break
            out.append(t)
            logits = s.eval([t], logits="last")
    return out[:max_new]


def test_full_cache_and_large_budgets_equal_plain_greedy(model):
    segs = rand_segments(model, seed=11)
    want = plain_greedy(model, segs.prompt, MAX_NEW)
    assert len(want) == MAX_NEW
    cfgs = [Config(p, pol, b) for p in P.PROTOCOLS for pol, b in [("full", 1.0), ("snapkv", 1000.0),
                                                                  ("pyramidkv", float(segs.n_span(p))),
                                                                  ("restkv", 1.0)]]
    got = list(run_sample(model, FakeSample(), segs, cfgs, {"window": WINDOW}, n_ctx=N_CTX))
    assert len(got) == len(cfgs)
    for cfg, res in got:
        assert res["generated_ids"] == want, cfg
        assert not res["evicted"] and res["kept_min"] == segs.n_span(cfg.protocol)


def test_aware_full_first_token_comes_from_the_prefill(model, monkeypatch):
    """aware-full: the first generated token comes from the prefill's last logits, computed on the full cache
    before the compression (ReST-KV / KVCache-Factory), whatever the budget; the next ones are decoded on the
    compressed cache. Under agnostic the first token comes from the appended segments' evaluation."""
    import engine.longctx.runner as runner_mod

    segs = rand_segments(model, seed=13)
    with model.session(n_ctx=N_CTX) as s:
        full_logits = s.eval(list(segs.prompt), logits="last")
    seen = []
    real = runner_mod.greedy

    def spy(session, logits, *a, **k):
        seen.append(np.array(logits))
        return real(session, logits, *a, **k)

    monkeypatch.setattr(runner_mod, "greedy", spy)
    cfgs = [Config(p, pol, b) for p in ("agnostic", "aware-full")
            for pol, b in [("full", 1.0), ("streaming", 2.0), ("streaming", 0.05), ("snapkv", 0.05), ("knorm", 0.1)]]
    got = list(run_sample(model, FakeSample(), segs, cfgs, {"window": WINDOW}, n_ctx=N_CTX))
    assert len(seen) == len(got) == len(cfgs)
    full_first = int(np.argmax(full_logits))
    for (cfg, res), logits in zip(got, seen):
        if cfg.protocol == "aware-full":
            np.testing.assert_array_equal(logits, full_logits)  # bit for bit: not recomputed after compressing
            assert res["first_token_from"] == "prefill" and res["generated_ids"][0] == full_first, cfg
        else:
            assert res["first_token_from"] == "append"
            if cfg.policy != "full":
                assert not np.array_equal(logits, full_logits), cfg  # seen through the compressed cache
    full = next(r for c, r in got if c.protocol == "aware-full" and c.policy == "full")["generated_ids"]
    assert any(r["generated_ids"] != full for c, r in got if c.protocol == "aware-full" and c.policy != "full")
    # the fresh reference does the same: its first token is the prefill's
    monkeypatch.undo()
    res = fresh_run(model, segs, "aware-full", Eviction(policy="streaming", budget=2, window=WINDOW), N_CTX, MAX_NEW)
    assert res["generated_ids"][0] == full_first and res["kept_max"] == 2


# ---------------------------------------------------------------- greedy decoding

class ScriptedSession:
    """eval([t]) returns one-hot logits of the next scripted token."""

    def __init__(self, script, n_vocab):
        self.script, self.n_vocab, self.calls = list(script), n_vocab, 0

    def one_hot(self, t):
        x = np.zeros(self.n_vocab, dtype=np.float32)
        x[t] = 1
        return x

    def eval(self, ids, logits="last"):
        self.calls += 1
        return self.one_hot(self.script.pop(0))


def test_greedy_stop_rules(model):
    tok = model.tokenizer
    ends = P.end_ids(tok)
    assert tok.eos_id in ends
    a, b = tok.encode("a", add_special=False)[0], tok.encode("b", add_special=False)[0]
    nl = tok.encode("\n", add_special=False)[0]
    s = ScriptedSession([b, a, b, a, b, a], model.n_vocab)
    d = P.greedy(s, s.one_hot(a), 4, ends, tok)
    assert (d.text, d.stop, len(d.ids), s.calls) == ("abab", "max_new", 4, 3)  # no eval after the last token
    s = ScriptedSession([b, tok.eos_id, a], model.n_vocab)
    d = P.greedy(s, s.one_hot(a), 10, ends, tok)
    assert (d.ids, d.stop, d.text) == ([a, b], "eos", "ab")  # the end id is not kept
    s = ScriptedSession([nl, a], model.n_vocab)
    d = P.greedy(s, s.one_hot(a), 10, ends, tok, stop_at_newline=True)
    assert (d.ids, d.stop, d.text) == ([a, nl], "newline", "a")
    s = ScriptedSession([nl, b, b], model.n_vocab)
    d = P.greedy(s, s.one_hot(a), 3, ends, tok, stop_at_newline=False)
    assert (d.text, d.stop) == ("a\nb", "max_new")
    # ties: the lowest id, as np.argmax and engine.generate
    s = ScriptedSession([], model.n_vocab)
    assert P.greedy(s, np.ones(model.n_vocab, dtype=np.float32), 1, frozenset(), tok).ids == [0]
