"""engine.chat: chat templates, incremental evaluation of a conversation, the bounded-memory CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import engine
import subproc
from engine import EngineError, Model
from engine.chat import CHATML_TEMPLATE, Chat, compile_template, render_template, resolve_budget

pytest.importorskip("jinja2")

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def run_chat(*args, stdin: str = "", cwd, timeout: int = 300):
    """Runs `python -m engine.chat` with the engine package this test imported."""
    env = dict(os.environ, PYTHONPATH=subproc.pythonpath())
    return subprocess.run([sys.executable, "-m", "engine.chat", *args], input=stdin, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


# ----------------------------------------------------------------------------- templates

def test_smollm2_template_renders_chatml(smollm2):
    with Model(smollm2) as m:
        chat = Chat(m, budget=256, policy="full", slack=16)
        assert chat.template_origin == "gguf"
        msgs = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "Tell me a joke."}]
        assert chat.render(msgs) == (
            f"<|im_start|>system\n{SMOL_SYSTEM}<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
            "<|im_start|>user\nTell me a joke.<|im_end|>\n"
            "<|im_start|>assistant\n")
        # an explicit system prompt replaces the template's default one; no generation prompt on request
        sys_msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        assert chat.render(sys_msgs, add_generation_prompt=False) == (
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")
        # the markers are the special tokens, and <|im_end|> ends a reply
        im_start, im_end = m.tokenizer.token_to_id("<|im_start|>"), m.tokenizer.token_to_id("<|im_end|>")
        ids = chat.encode(chat.render(sys_msgs), first=True)
        assert ids[0] == im_start and ids.count(im_start) == 3 and ids.count(im_end) == 2
        assert im_end in chat.end_ids
        chat.close()


def test_template_helpers_and_sandbox():
    t = compile_template("{% if messages|length > 1 %}{{ raise_exception('only one message') }}{% endif %}"
                         "{{ bos_token }}{{ messages[0]['content']|tojson }}")
    assert render_template(t, [{"role": "user", "content": "é"}], bos_token="<s>") == '<s>"é"'
    with pytest.raises(EngineError, match="only one message"):
        render_template(t, [{"role": "user", "content": "a"}] * 2)
    evil = compile_template("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(EngineError, match="template failed"):
        render_template(evil, [])
    with pytest.raises(EngineError, match="does not compile"):
        compile_template("{% for %}")


def test_resolve_budget():
    assert resolve_budget("1024", 8192) == 1024
    assert resolve_budget(0.25, 8192) == 2048
    assert resolve_budget("1", 512) == 512
    for bad in ("0", "-3", "nan", "abc", "2.5", "0.001", "inf"):
        with pytest.raises(EngineError, match="budget"):
            resolve_budget(bad, 512)


# ----------------------------------------------------------------------------- incremental evaluation

def test_incremental_turns_equal_whole_conversation(tiny_gguf):
    """Evaluating each turn's new tokens gives the tokens and logits of the whole rendering at once."""
    notes = []
    with Model(tiny_gguf()) as m:
        chat = Chat(m, budget=400, policy="full", slack=0, system="Be brief.", temperature=0,
                    on_notice=notes.append)
        assert chat.template_origin == "chatml-fallback" and any("ChatML" in n for n in notes)
        l1, ids1, _ = chat.prefill("Hello there")
        r1 = m.tokenize("General Kenobi!", add_special=False)
        chat.add_reply(r1)
        l2, ids2, _ = chat.prefill("What is the time?")
        r2 = m.tokenize("Late.", add_special=False)
        chat.add_reply(r2)
        l3, ids3, _ = chat.prefill("Thanks")
        # only the new part was evaluated each time; it starts by closing the previous reply
        im_end = m.tokenizer.token_to_id("<|im_end|>")
        assert ids2[0] == im_end and ids3[0] == im_end
        whole = chat.encode(chat.render(), first=True)
        assert ids1 + r1 + ids2 + r2 + ids3 == whole
        assert chat.session.n_past == len(whole)
        with m.session(n_ctx=len(whole)) as s:
            ref = s.eval(whole, logits="all")
        ends = np.cumsum([len(x) for x in (ids1, r1, ids2, r2, ids3)])
        for got, end in ((l1, ends[0]), (l2, ends[2]), (l3, ends[4])):
            np.testing.assert_allclose(got, ref[end - 1], rtol=1e-4, atol=1e-4)
        chat.close()


def test_generated_turns_stay_prefix_stable(tiny_gguf):
    with Model(tiny_gguf()) as m:
        chat = Chat(m, budget=32, policy="streaming", slack=8, temperature=0.9, seed=3, max_tokens=12)
        total = 0
        for i in range(12):
            t = chat.turn(f"message number {i}")
            total += t.prompt_tokens + t.reply_tokens
            assert chat.session.n_past == total and len(t.reply_ids) == t.reply_tokens
            assert chat.kv_tokens()[1] <= 32 + 8
        assert chat.prefix_stable and chat.turns == 12 and total > 4 * 40
        assert chat.messages[-1]["role"] == "assistant" and len(chat.messages) == 24
        chat.close()


def test_should_stop_interrupts_the_reply(tiny_gguf):
    with Model(tiny_gguf()) as m:
        chat = Chat(m, budget=64, policy="streaming", slack=8, temperature=0, max_tokens=50)
        calls = []

        def stop():
            calls.append(1)
            return len(calls) > 3

        t = chat.turn("hi", should_stop=stop)
        if t.stop != "eot":  # the greedy reply of a random model may end at once
            assert t.stop == "interrupted" and t.reply_tokens <= 3
        n = chat.session.n_past
        t2 = chat.turn("go on", max_tokens=2)
        assert chat.session.n_past == n + t2.prompt_tokens + t2.reply_tokens
        chat.close()


def test_not_prefix_stable_template_falls_back_to_turns(tiny_gguf):
    # a template that shows only the last two messages: the conversation does not grow as a prefix
    last_two = ("{% for message in messages[-2:] %}{{ '<|im_start|>' + message['role'] + '\n' + "
                "message['content'] + '<|im_end|>\n' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    notes = []
    with Model(tiny_gguf()) as m:
        chat = Chat(m, budget=64, policy="streaming", slack=8, template=last_two, on_notice=notes.append)
        chat.prefill("one")
        chat.add_reply(m.tokenize("uno", add_special=False))
        chat.prefill("two")
        chat.add_reply(m.tokenize("dos", add_special=False))
        _, ids, _ = chat.prefill("three")
        assert not chat.prefix_stable and any("prefix" in n for n in notes)
        assert m.detokenize(ids) == "<|im_end|>\n<|im_start|>user\nthree<|im_end|>\n<|im_start|>assistant\n"
        chat.close()


# ----------------------------------------------------------------------------- CLI

def test_cli_scripted_chat(tiny_gguf, tmp_path):
    r = run_chat("--gguf", tiny_gguf(), "--budget", "64", "--policy", "streaming", "--max-tokens", "8",
                 "--temp", "0", stdin="hello there\nhow are you?\n/stats\n/help\nbye\n", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    status = [line for line in r.stderr.splitlines() if "tok/head" in line]
    assert len(status) == 3 and all("kv " in s and "tok/s" in s and "conversation" in s for s in status)
    assert "kv memory:" in r.stdout and "/reset" in r.stdout  # /stats and /help answered
    assert "> hello there\n" in r.stdout and "> bye\n" in r.stdout  # the messages, each followed by its reply


def test_cli_json_memory_stays_bounded(tiny_gguf, tmp_path):
    budget, slack, turns = 64, 16, 30
    lines = "".join(f"tell me about the sea, part {i}\n" for i in range(turns))
    r = run_chat("--gguf", tiny_gguf(), "--budget", str(budget), "--slack", str(slack), "--policy", "streaming",
                 "--max-tokens", "8", "--seed", "1", "--json", stdin=lines, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json_lines(r.stdout)
    assert [o["event"] for o in out] == ["turn"] * turns
    alloc = out[0]["kv_bytes_alloc"]
    n_ctx = out[0]["n_ctx"]
    assert n_ctx == budget + slack + 1
    bound = alloc * (budget + slack) // n_ctx  # bytes of budget + slack tokens in every buffer
    for o in out:
        assert o["kv_bytes_alloc"] == alloc
        assert o["kv_bytes_used"] <= bound and o["kv_tokens_max"] <= budget + slack
        assert isinstance(o["reply"], str) and o["reply_tokens"] <= 8
    assert out[-1]["conversation_tokens"] > 5 * (budget + slack)  # eviction happened, many times
    assert out[-1]["conversation_tokens"] == sum(o["prompt_tokens"] + o["reply_tokens"] for o in out)


def test_cli_reset(tiny_gguf, tmp_path):
    r = run_chat("--gguf", tiny_gguf(), "--budget", "64", "--policy", "streaming", "--max-tokens", "8",
                 "--temp", "0", "--json", stdin="hello\nand more\n/reset\nhello\n", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    a, b, reset, c = json_lines(r.stdout)
    assert reset["event"] == "reset" and reset["conversation_tokens"] == 0 and reset["kv_bytes_used"] == 0
    assert c["turn"] == 1 and c["reply"] == a["reply"] and c["prompt_tokens"] == a["prompt_tokens"]
    assert c["conversation_tokens"] == a["conversation_tokens"] < b["conversation_tokens"]


@pytest.mark.parametrize("args, message", [
    (("--budget", "0"), "--budget"),
    (("--budget", "lots"), "--budget"),
    (("--budget", "2.5"), "--budget 2.5"),
    (("--policy", "no-such-policy"), "unknown policy 'no-such-policy'"),
    (("--slack", "-1"), "--slack"),
])
def test_cli_bad_arguments_are_clear_errors(tiny_gguf, tmp_path, args, message):
    base = {"--budget": "64", "--policy": "streaming"}
    base.update(dict(zip(args[::2], args[1::2])))
    r = run_chat("--gguf", tiny_gguf(), *[x for kv in base.items() for x in kv], stdin="hi\n", cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and r.stderr.startswith(("error:", "note:"))
    assert "Traceback" not in r.stderr


def test_cli_missing_model_is_a_clear_error(tmp_path):
    r = run_chat("--gguf", str(tmp_path / "absent.gguf"), stdin="hi\n", cwd=tmp_path)
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_cli_default_policy_works_or_says_why(tiny_gguf, tmp_path):
    """restkv is the default; until it is implemented it must fail clearly at start, not crash later."""
    r = run_chat("--gguf", tiny_gguf(), "--budget", "16", "--slack", "4", "--max-tokens", "8", "--json",
                 stdin="".join(f"line {i} of a long enough chat\n" for i in range(6)), cwd=tmp_path)
    assert "Traceback" not in r.stderr
    if r.returncode == 2:
        assert "not implemented yet" in r.stderr
    else:
        assert r.returncode == 0 and len(json_lines(r.stdout)) == 6


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_cli_ctrl_c_stops_the_reply_not_the_program(tiny_gguf, tmp_path):
    env = dict(os.environ, PYTHONPATH=subproc.pythonpath())
    # a reply that would last many minutes (the greedy reply of this random model does not end by itself)
    p = subprocess.Popen([sys.executable, "-m", "engine.chat", "--gguf", tiny_gguf(), "--budget", "64",
                          "--policy", "streaming", "--max-tokens", "1000000", "--temp", "0", "--json"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=tmp_path, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        p.stdin.write("tell me everything\n")
        p.stdin.flush()
        err = ""
        while "kv: policy" not in err:  # the banner: from here on SIGINT is the chat's
            line = p.stderr.readline()
            assert line, "the chat ended early"
            err += line
        time.sleep(1.0)
        p.send_signal(signal.SIGINT)
        out, rest = p.communicate("/stats\n", timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    objs = json_lines(out)
    assert p.returncode == 0, rest
    assert objs[0]["event"] == "turn" and objs[-1]["event"] == "stats"
    if objs[0]["stop"] != "eot":
        assert objs[0]["stop"] == "interrupted"
