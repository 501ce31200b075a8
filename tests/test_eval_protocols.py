"""engine.perplexity with a compressed KV cache (prefix and streaming protocols) and engine.lambada."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.errors import EngineError
from engine.eval.lambada import LambadaItem, lambada, load_passages, prepare, split_passage
from engine.eval.protocols import perplexity
from engine.eviction import Eviction
from engine.perplexity import main as ppl_main

N_CTX = 64


def reference_full_cache(m, toks, n_ctx, bos):
    """engine.perplexity's loop before eviction existed (llama-perplexity's protocol), verbatim."""
    first = n_ctx // 2
    nll_sum = nll2_sum = 0.0
    count = 0
    running = []
    with m.session(n_ctx=n_ctx, n_batch=min(512, n_ctx)) as s:
        for i in range(len(toks) // n_ctx):
            chunk = toks[i * n_ctx:(i + 1) * n_ctx].copy()
            if bos is not None:
                chunk[0] = bos
            s.reset()
            s.eval(chunk[:first], logits=None)
            lp = s.logprobs(chunk[first:]).astype(np.float64)
            nll_sum += float(-lp.sum())
            nll2_sum += float((lp * lp).sum())
            count += len(lp)
            running.append(math.exp(nll_sum / count))
    return running, count


def log_softmax(rows):
    rows = rows.astype(np.float64)
    rows -= rows.max(1, keepdims=True)
    return rows - np.log(np.exp(rows).sum(1, keepdims=True))


@pytest.fixture(scope="module")
def tiny(tiny_gguf):
    with engine.Model(tiny_gguf(weight_type="Q8_0")) as m:
        yield m


def random_tokens(m, n, seed=1):
    return np.random.default_rng(seed).integers(3, m.n_vocab, n).astype(np.int32)


# ---------------------------------------------------------------- prefix protocol

@pytest.mark.parametrize("vocab", ["bpe", "spm"])
def test_prefix_at_budget_one_is_llama_perplexity_bit_for_bit(tiny_gguf, vocab):
    with engine.Model(tiny_gguf(weight_type="Q8_0", vocab=vocab)) as m:
        toks = random_tokens(m, N_CTX * 3 + 9)
        bos = m.tokenizer.bos_id if m.tokenizer.add_bos else None
        ref, count = reference_full_cache(m, toks, N_CTX, bos)
        runs = [perplexity(m, toks, n_ctx=N_CTX, bos_id=bos, progress=False)]
        for policy in ("full", "streaming", "topk", "h2o"):  # budget 1: nothing is evicted, whatever the policy
            runs.append(perplexity(m, toks, n_ctx=N_CTX, bos_id=bos, progress=False,
                                   eviction=Eviction(policy=policy, budget=1.0)))
    for r in runs:
        assert r.chunk_ppl == ref  # exact float equality
        assert r.ppl == ref[-1] and r.n_scored == count == 3 * (N_CTX // 2 - 1)
        assert r.kv_bytes_mean == r.kv_bytes_full > 0 and r.kv_bytes_peak == r.kv_bytes_alloc


def test_prefix_streaming_policy_quarter_budget_equals_hand_computation(tiny):
    m = tiny
    toks = random_tokens(m, N_CTX * 3, seed=2)
    res = perplexity(m, toks, n_ctx=N_CTX, progress=False, eviction=Eviction(policy="streaming", budget=0.25))
    full = perplexity(m, toks, n_ctx=N_CTX, progress=False)
    half = N_CTX // 2
    nll, kept = [], []
    with m.session(n_ctx=N_CTX) as s:
        s.set_eviction(policy="streaming", budget=0.25, schedule="prefix")
        for i in range(3):
            chunk = toks[i * N_CTX:(i + 1) * N_CTX]
            s.reset()
            s.eval(chunk[:half], logits=None)
            s.compress()
            kept.append(s.kv_count(0, 0))
            assert list(s.kv_positions(1, 1)) == [0, 1, 2, 3, 28, 29, 30, 31]  # 4 sinks + recent
            assert s.next_pos == half  # the second half continues from the true prefix length
            nll += list(-s.logprobs(chunk[half:]).astype(np.float64))
    assert kept == [half // 4] * 3
    assert res.n_scored == len(nll) == 3 * (half - 1)
    assert math.isfinite(res.ppl) and res.ppl == math.exp(sum(nll) / len(nll))
    assert res.ppl != full.ppl
    assert res.budget_tokens == half // 4 and res.policy == "streaming" and res.protocol == "prefix"
    assert res.kv_bytes_mean == pytest.approx(res.kv_bytes_full / 4)
    per_token = res.kv_bytes_alloc / N_CTX
    assert full.kv_bytes_peak == per_token * N_CTX
    assert res.kv_bytes_peak == per_token * (half // 4 + half)  # the kept 8 + the scored half, above the prefill
    assert res.eviction["budget"] == 0.25 and res.eviction["policy"] == "streaming"


def test_prefix_token_budget(tiny):
    toks = random_tokens(tiny, N_CTX * 2, seed=3)
    r8 = perplexity(tiny, toks, n_ctx=N_CTX, progress=False, eviction=Eviction(policy="streaming", budget=8))
    rq = perplexity(tiny, toks, n_ctx=N_CTX, progress=False, eviction=Eviction(policy="streaming", budget=0.25))
    assert r8.budget_tokens == 8 and r8.ppl == rq.ppl  # 8 tokens = a quarter of the 32-token half


# ---------------------------------------------------------------- streaming protocol

def streaming_by_hand(m, toks, n_ctx, kept, slack, policy="streaming"):
    """One eval over everything after the warm-up: no piece boundaries at all."""
    with m.session(n_ctx=kept + slack + 1) as s:
        s.set_eviction(policy=policy, budget=kept, schedule="streaming", slack=slack)
        s.eval(toks[:n_ctx - 1], logits=None)
        lp = log_softmax(s.eval(toks[n_ctx - 1:-1], logits="all"))
    return -lp[np.arange(len(lp)), toks[n_ctx:]]


@pytest.mark.parametrize("slack", [0, 3])
def test_streaming_protocol_scores_every_token_after_ctx_once(tiny, slack):
    m = tiny
    toks = random_tokens(m, N_CTX * 3 + 11, seed=4)
    kept = N_CTX // 4
    seen = []

    def on_piece(s):
        seen.append((s.n_ctx, s.kv_bytes_used, s.kv_bytes_alloc, max(s.kv_count(l, h) for l in range(2)
                                                                   for h in range(2))))

    ev = Eviction(policy="streaming", budget=0.25, slack=slack)
    res = {piece: perplexity(m, toks, n_ctx=N_CTX, progress=False, eviction=ev, protocol="streaming",
                             piece=piece, on_piece=on_piece if piece == 7 else None)
           for piece in (1, 7, 1000)}
    nll = streaming_by_hand(m, toks, N_CTX, kept, slack)
    for r in res.values():  # piece boundaries neither lose nor double count a prediction
        assert r.n_scored == len(toks) - N_CTX == len(nll)
        assert r.ppl == pytest.approx(math.exp(nll.mean()), rel=1e-7)  # float32 exp in the log-softmax
        assert r.budget_tokens == kept and r.protocol == "streaming"
    assert res[1].ppl == pytest.approx(res[7].ppl, rel=1e-12) and res[7].ppl == pytest.approx(res[1000].ppl, rel=1e-12)
    assert res[7].chunk_ppl == pytest.approx(res[1000].chunk_ppl, rel=1e-12)
    assert len(res[7].chunk_ppl) == 3  # 2 full chunks + the rest
    # memory is bounded: a session of kept + slack + 1 slots, never more than kept + slack after a call
    for n_ctx, used, alloc, most in seen:
        assert n_ctx == kept + slack + 1 and most <= kept + slack and used <= alloc
    r = res[7]
    assert r.kv_bytes_alloc == seen[0][2] and r.kv_bytes_alloc < r.kv_bytes_full
    assert r.kv_bytes_full == pytest.approx(r.kv_bytes_alloc / (kept + slack + 1) * N_CTX)
    assert r.kv_bytes_peak <= r.kv_bytes_alloc


def test_streaming_protocol_chunks_limit_and_errors(tiny):
    toks = random_tokens(tiny, N_CTX * 5, seed=5)
    ev = Eviction(policy="streaming", budget=0.5)
    r = perplexity(tiny, toks, n_ctx=N_CTX, n_chunks=2, progress=False, eviction=ev, protocol="streaming")
    assert r.n_scored == N_CTX and r.n_tokens_file == len(toks)
    with pytest.raises(EngineError, match="evicting policy"):
        perplexity(tiny, toks, n_ctx=N_CTX, progress=False, eviction=Eviction(policy="full"), protocol="streaming")
    with pytest.raises(EngineError, match="--chunks 1 must be >= 2"):
        perplexity(tiny, toks, n_ctx=N_CTX, n_chunks=1, progress=False, eviction=ev, protocol="streaming")
    with pytest.raises(EngineError, match="at least 2"):
        perplexity(tiny, toks, n_ctx=N_CTX, progress=False, eviction=Eviction(policy="streaming", budget=0.01),
                   protocol="streaming")


# ---------------------------------------------------------------- LAMBADA

PASSAGES = [
    "the cat sat on the mat and looked at the dog",
    "she opened the door and saw her brother standing there",
    "a b c d e f g h i j k l m n o p",
    "nothing but a  double space before the word",
    "oneword",
]


def lambada_by_hand(m, passages, eviction=None):
    """The protocol spelled out with session calls, the targets found the documented way."""
    nlls, correct, cases = [], 0, []
    for text in passages:
        if " " not in text.strip():
            continue
        i = text.rfind(" ")
        context, word = text[:i], text[i + 1:]
        ctx = m.tokenize(context, add_special=True)
        full = m.tokenize(text, add_special=True)
        if full[:len(ctx)] == ctx and len(full) > len(ctx):
            target = full[len(ctx):]
            cases.append("continuation")
        else:
            target = m.tokenize(" " + word, add_special=False)
            cases.append("separate")
        with m.session(n_ctx=len(ctx) + len(target)) as s:
            if eviction is None:
                lp = log_softmax(s.eval(ctx + target, logits="all"))[len(ctx) - 1:-1]
                am = lp.argmax(1)
                nll = -lp[np.arange(len(target)), target].sum()
            else:
                s.set_eviction(eviction)
                s.eval(ctx[:-1], logits=None)
                s.compress()
                lp, am = s.logprobs([ctx[-1]] + target, return_argmax=True)
                nll = -lp.astype(np.float64).sum()
        nlls.append(nll)
        correct += list(am) == list(target)
    return correct / len(nlls), math.exp(np.mean(nlls)), cases


def test_lambada_equals_direct_computation(tiny):
    acc, ppl, cases = lambada_by_hand(tiny, PASSAGES)
    res = lambada(tiny, PASSAGES, progress=False)
    assert res.n_scored == 4 and res.n_skipped == 1
    assert res.accuracy == acc and res.ppl == pytest.approx(ppl, rel=1e-5)
    assert res.target_cases == {"continuation": cases.count("continuation"), "separate": cases.count("separate")}
    ev = Eviction(policy="streaming", budget=0.5, n_sink=2, window=4)
    acc5, ppl5, _ = lambada_by_hand(tiny, PASSAGES, ev)
    res5 = lambada(tiny, PASSAGES, eviction=ev, progress=False)
    assert res5.accuracy == acc5 and res5.ppl == pytest.approx(ppl5, rel=1e-12) and res5.ppl != res.ppl
    assert res5.budget == 0.5 and res5.eviction["n_sink"] == 2
    assert res5.kv_bytes_mean < res5.kv_bytes_full <= res5.kv_bytes_peak <= res5.kv_bytes_alloc


def test_lambada_accuracy_counts_greedy_targets(tiny):
    """A target made of the model's own greedy continuation is right; one wrong token makes it wrong."""
    ctx = [int(t) for t in random_tokens(tiny, 12, seed=7)]
    with tiny.session(n_ctx=32) as s:
        g1 = int(np.argmax(s.eval(ctx)))
        g2 = int(np.argmax(s.eval([g1])))
    items = [LambadaItem(ctx, [g1, g2]), LambadaItem(ctx, [g1, (g2 + 1) % tiny.n_vocab], "separate")]
    res = lambada(tiny, items, progress=False)
    assert res.n_correct == 1 and res.accuracy == 0.5 and res.n_target_tokens == 4
    assert res.target_cases == {"continuation": 1, "separate": 1}


class _CharModel:
    """tokenize(): one id per character, BOS = 1; 'Z' is spelt differently after a space (breaks prefixes)."""

    def tokenize(self, text, add_special=True):
        ids = [1] if add_special else []
        for i, ch in enumerate(text):
            ids.append(500 if ch == "Z" and i and text[i - 1] == " " else ord(ch))
        if text.endswith(" Z"):
            ids[-3:] = [600]  # a merge across the context's end: the context is no longer a prefix
        return ids


def test_lambada_target_tokenisation_cases():
    assert split_passage("  a b  c ") == ("a b ", "c")
    items, skipped = prepare(_CharModel(), ["ab cd", "xy Z", "single", "q Z"])
    assert skipped == 1
    assert [it.case for it in items] == ["continuation", "separate", "separate"]
    assert items[0].context_ids == [1, ord("a"), ord("b")] and items[0].target_ids == [ord(" "), ord("c"), ord("d")]
    assert items[1].target_ids == [600]  # tokenize(" Z") without BOS


def test_load_passages_formats(tmp_path):
    j = tmp_path / "l.jsonl"
    j.write_text('{"text": "one two"}\n\n{"text": "three four five"}\n')
    p = tmp_path / "l.txt"
    p.write_text("one two\nthree four five\nsix seven\n")
    assert load_passages(str(j)) == ["one two", "three four five"]
    assert load_passages(str(p), limit=2) == ["one two", "three four five"]
    with pytest.raises(EngineError, match="no such file"):
        load_passages(str(tmp_path / "missing.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"txt": 1}\n')
    with pytest.raises(EngineError, match="'text'"):
        load_passages(str(tmp_path / "bad.jsonl"))


# ---------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("txt") / "t.txt"
    p.write_text(" ".join(f"word{i % 37} and {i}" for i in range(400)))
    return str(p)


def test_cli_json_prefix(tiny_gguf, text_file, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = ppl_main(["--gguf", tiny_gguf(), "-f", text_file, "--ctx", str(N_CTX), "--chunks", "3", "--budget", "0.5",
                   "--policy", "streaming", "--window", "8", "--json", str(out), "--no-progress"])
    assert rc == 0
    o = capsys.readouterr().out
    assert "Final estimate: PPL = " in o and "[3]" in o and "| policy" in o and "| KV bytes mean" in o
    res = json.loads(out.read_text())
    assert res["policy"] == "streaming" and res["budget"] == 0.5 and res["protocol"] == "prefix"
    assert set(res["eviction"]) == {f.name for f in fields(Eviction)} and res["eviction"]["window"] == 8
    assert res["n_scored"] == 3 * (N_CTX // 2 - 1) and res["n_chunks"] == 3 and res["ppl"] > 1
    assert res["model"] == tiny_gguf() and res["data"] == text_file and res["dataset"] == "wikitext"
    for k in ("kv_bytes_peak", "kv_bytes_mean", "kv_bytes_alloc", "kv_bytes_full", "tokens_per_second", "seconds"):
        assert res[k] > 0, k
    assert res["kv_bytes_mean"] == pytest.approx(res["kv_bytes_full"] / 2)


def test_cli_budget_one_any_policy_is_the_full_cache(tiny_gguf, text_file, tmp_path, capsys):
    figs = []
    for extra in ([], ["--policy", "streaming"], ["--policy", "topk"]):
        out = tmp_path / "r.json"
        assert ppl_main(["--gguf", tiny_gguf(), "-f", text_file, "--ctx", str(N_CTX), "--chunks", "2",
                         "--json", str(out), "--no-progress", *extra]) == 0
        res = json.loads(out.read_text())
        figs.append((res["chunk_ppl"], res["ppl"], res["ppl_stderr"]))
        lines = capsys.readouterr().out.splitlines()
        assert lines[1].startswith("Final estimate: PPL = ") and " chunks of 64 tokens, 62 scored, " in lines[2]
    assert figs[0] == figs[1] == figs[2]


def test_cli_streaming_and_lambada_json(tiny_gguf, text_file, tmp_path, capsys):
    out = tmp_path / "s.json"
    assert ppl_main(["--gguf", tiny_gguf(), "-f", text_file, "--ctx", str(N_CTX), "--chunks", "3", "--budget", "0.25",
                     "--policy", "streaming", "--protocol", "streaming", "--slack", "2", "--json", str(out),
                     "--no-progress"]) == 0
    res = json.loads(out.read_text())
    assert res["protocol"] == "streaming" and res["n_scored"] == 2 * N_CTX and res["budget_tokens"] == 16
    assert res["eviction"]["slack"] == 2
    assert "streamed through a cache of 16 tokens" in capsys.readouterr().out
    lam = tmp_path / "lam.jsonl"
    lam.write_text("".join(json.dumps({"text": t}) + "\n" for t in PASSAGES))
    out = tmp_path / "l.json"
    assert ppl_main(["--gguf", tiny_gguf(), "--dataset", "lambada", "--data", str(lam), "--limit", "3",
                     "--budget", "0.5", "--policy", "streaming", "--json", str(out), "--no-progress"]) == 0
    res = json.loads(out.read_text())
    assert res["dataset"] == "lambada" and res["n_scored"] == 3 and res["policy"] == "streaming"
    assert 0 <= res["accuracy"] <= 1 and res["ppl"] > 1 and sum(res["target_cases"].values()) == 3
    assert res["data"] == str(lam) and res["kv_bytes_alloc"] > 0
    assert "LAMBADA: accuracy = " in capsys.readouterr().out


@pytest.mark.parametrize("args, msg", [
    (["--budget", "0.5", "--policy", "nope"], "unknown policy 'nope' (known: full, streaming,"),
    (["--budget", "0"], "must be > 0"),
    (["--budget", "-0.5", "--policy", "streaming"], "must be > 0"),
    (["--budget", "1.5", "--policy", "streaming"], "between 1 and 2"),
    (["--budget", "2.5", "--policy", "streaming"], "integer >= 2"),
    (["--budget", "0.5"], "needs an eviction policy"),
    (["--budget", "0.5", "--policy", "full"], "keeps every entry"),
    (["--protocol", "streaming", "--policy", "topk"], "needs an evicting policy"),
    (["--ctx", "63"], "--ctx must be an even number"),
    (["--ctx", "2"], "--ctx must be an even number"),
    (["--ctx", "65536"], "need at least 2*ctx"),
    (["-f", "/nonexistent/t.txt"], "no such file"),
    (["--dataset", "lambada", "--data", "/nonexistent/l.jsonl"], "no such file"),
    (["--budget", "0.5", "--policy", "streaming", "--kernel", "4"], "kernel must be odd"),
])
def test_cli_errors_are_clear(tiny_gguf, text_file, capsys, args, msg):
    argv = ["--gguf", tiny_gguf(), "--no-progress", *args]
    if "-f" not in args and "--data" not in args:
        argv += ["-f", text_file]
    assert ppl_main(argv) == 2  # a bad command line: exit status 2, before any work
    err = capsys.readouterr().err
    assert msg in err and "error: " in err and "Traceback" not in err, err


def test_cli_subprocess_no_traceback(tiny_gguf, text_file, tmp_path):
    import subproc  # the child runs the same compiled core as this process

    env = dict(os.environ, PYTHONPATH=subproc.pythonpath())
    r = subprocess.run([sys.executable, "-m", "engine.lambada", "--gguf", tiny_gguf(), "--budget", "1.5",
                        "--policy", "streaming"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "between 1 and 2" in r.stderr and "Traceback" not in r.stderr
