"""engine.ruler: the long-context evaluation end to end on a tiny random model with the real task generators
(engine.longctx): the files and their schema, scores and kept counts, resuming after an interruption (the same
final files, nothing counted twice), refusing other settings, clear errors, the command line."""

from __future__ import annotations

import csv
import importlib.util
import json
import os

import pytest

import engine
from engine import cli
from engine.chat import CHATML_TEMPLATE
from engine.errors import EngineError
from engine.longctx import DEVIATIONS, expand_tasks, generate
from engine.longctx import protocols as P
from engine.longctx import report
from engine.longctx import runner as runner_mod
from engine.longctx.protocols import GenTokenizer, prompt_format
from engine.ruler import main, run

CTX = 512
TASKS = "niah_single_1,passkey,needle"
KW = dict(samples=2, policies="full,snapkv,streaming", budgets=[0.25, 64], protocols="agnostic,aware-full",
          progress=False, eviction={"window": 4})
N_RUNS = 3 * 2 * 2 * (1 + 2 * 2)  # tasks x samples x protocols x (full + 2 policies x 2 budgets)
RUN_FIELDS = {"task", "ctx", "index", "protocol", "policy", "budget", "label", "budget_kind", "sample_seed", "depth",
              "metric", "answers", "max_new_tokens", "n_prompt", "score", "n_span", "n_rest", "kept_mean", "kept_min",
              "kept_max", "kept_fraction", "first_token_from", "generated_ids", "prediction", "n_generated",
              "stop_reason", "append_seconds", "decode_seconds", "decode_tokens_per_second", "prefill_seconds",
              "prefill_shared", "compress_seconds", "evicted", "seconds", "same_as_full", "run_as", "finished"}


@pytest.fixture(scope="module")
def gguf(tiny_gguf):
    return tiny_gguf(weight_type="Q8_0", n_ctx_train=1024)


def timeless(obj):
    """The object without the fields that measure time (two runs of the same command differ there only)."""
    if isinstance(obj, dict):
        return {k: timeless(v) for k, v in obj.items()
                if k not in runner_mod.TIME_FIELDS and not k.endswith("seconds_mean")
                and k != "decode_tokens_per_second_mean"}
    if isinstance(obj, list):
        return [timeless(v) for v in obj]
    return obj


def csv_timeless(path):
    rows = list(csv.DictReader(open(path)))
    return [{k: v for k, v in r.items() if k not in runner_mod.TIME_FIELDS} for r in rows]


@pytest.fixture(scope="module")
def done(gguf, tmp_path_factory):
    """One uninterrupted run, shared by the tests below (the needle task reads the shared essays)."""
    from engine.longctx.haystack import essay_dir

    try:
        essay_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("ruler") / "a"
    res = run(gguf, TASKS, [CTX], out=str(out), **KW)
    return out, res


def test_outputs_and_schema(gguf, done):
    out, res = done
    assert res["ran"] == N_RUNS and res["skipped"] == 0 and not res["partial"]
    saved = json.loads((out / "ruler.json").read_text())
    assert set(saved) == {"meta", "runs", "summary", "partial"} and saved["partial"] is False
    assert saved == json.loads(json.dumps({k: res[k] for k in ("meta", "runs", "summary", "partial")}))
    meta = saved["meta"]
    assert meta["model"] == os.path.abspath(gguf) and meta["model_size"] == os.path.getsize(gguf)
    assert len(meta["model_sha256"]) == 64 and meta["model_desc"].startswith("llama")
    assert meta["engine_version"] == engine.__version__ and meta["seed"] == 42 and meta["samples"] == 2
    assert meta["tasks"] == ["niah_single_1", "passkey", "needle"] and meta["lengths"] == [CTX]
    assert meta["protocols"] == ["agnostic", "aware-full"] and meta["template"]["mode"] == "raw"
    assert meta["generators"]["deviations"] == json.loads(json.dumps(DEVIATIONS))
    assert len(meta["generators"]["hashes"]["essays"]) == 64 and meta["generators"]["hashes"]["wordlists"]
    assert meta["eviction"]["window"] == 4 and meta["eviction"]["positions"] == "original"
    runs = saved["runs"]
    assert len(runs) == N_RUNS and len({runner_mod.record_key(r) for r in runs}) == N_RUNS
    m = engine.Model(gguf)
    gen_tok = GenTokenizer(m.tokenizer)
    fmt = prompt_format(m.tokenizer, "auto")
    samples = {}
    for r in runs:
        assert set(r) == RUN_FIELDS, set(r) ^ RUN_FIELDS
        assert 0.0 <= r["score"] <= 1.0 and r["n_generated"] <= r["max_new_tokens"]
        assert r["stop_reason"] in ("eos", "newline", "max_new") and r["n_prompt"] + r["max_new_tokens"] <= CTX
        key = (r["task"], r["index"])
        if key not in samples:
            samples[key] = generate(r["task"], CTX, r["index"], 42, gen_tok, overhead_tokens=fmt.overhead)
        s = samples[key]
        assert r["answers"] == list(s.answers) and r["sample_seed"] == s.seed and r["metric"] == s.metric
        assert r["score"] == engine.longctx.score(s, r["prediction"])  # the generators' metric on the prediction
        assert r["prediction"] == m.tokenizer.decode(r["generated_ids"], skip_special=True).split("\n")[0] \
            if r["stop_reason"] == "newline" else m.tokenizer.decode(r["generated_ids"], skip_special=True)
        segs = P.segments(s, fmt, gen_tok)
        assert r["n_prompt"] == len(segs.prompt) and r["n_span"] == segs.n_span(r["protocol"])
        # the kept counts follow the budget: fractions of the span, token counts per (layer, kv-head)
        if r["policy"] == "full":
            assert r["kept_min"] == r["kept_max"] == r["n_span"] and not r["evicted"]
        else:
            assert r["kept_min"] == r["kept_max"] == P.kept_per_head(r["budget"], r["n_span"]) and r["evicted"]
        assert r["first_token_from"] == ("prefill" if r["protocol"] == "aware-full" else "append")
        assert r["depth"] == (s.meta["depth_percent"] if r["task"] == "needle" else None)
        assert r["budget_kind"] == {1.0: "full", 0.25: "fraction", 64.0: "tokens"}[r["budget"]]
    m.close()
    # the CSV: a row per run, in the same order
    rows = list(csv.DictReader((out / "ruler.csv").open()))
    assert len(rows) == N_RUNS and [r["label"] for r in rows] == [r["label"] for r in runs]
    assert rows[0]["answers"] == " | ".join(runs[0]["answers"])
    # the summary and the markdown: a table per (length, protocol), rows policy@budget
    sm = saved["summary"]
    assert len(sm["rows"]) == 2 * 5 and all(row["complete"] for row in sm["rows"])
    row = next(x for x in sm["rows"] if x["label"] == "snapkv@0.25" and x["protocol"] == "agnostic")
    scores = [r["score"] for r in runs if r["label"] == "snapkv@0.25" and r["protocol"] == "agnostic"
              and r["task"] == "passkey"]
    assert row["tasks"]["passkey"]["n"] == 2 and row["tasks"]["passkey"]["mean"] == sum(scores) / 2
    assert row["avg"]["mean"] == pytest.approx(sum(t["mean"] for t in row["tasks"].values()) / 3)
    assert row["avg"]["ci95_low"] <= row["avg"]["mean"] <= row["avg"]["ci95_high"]
    assert {(c["depth"], c["label"]) for c in sm["needle"] if c["protocol"] == "agnostic"} == \
        {(d, lab) for d in (0, 11) for lab in ("full", "snapkv@0.25", "snapkv@64", "streaming@0.25", "streaming@64")}
    md = (out / "ruler.md").read_text()
    assert md == res["tables"]
    assert md.count("| policy@budget | s1 | passkey | needle | avg3 | KV kept |") == 2
    # the overview first: policies x (protocol, budget), the tasks' averages; the full cache once per protocol
    assert md.startswith("**512 tokens, average over 3 task(s), x 100**")
    assert "| policy | agnostic 0.25 | agnostic 64 tok | aware-full 0.25 | aware-full 64 tok |" in md
    avg = {(r["policy"], r["protocol"], r["budget"]): f"{100 * r['avg']['mean']:.1f}" for r in sm["rows"]}
    assert f"| full | {avg['full', 'agnostic', 1.0]} |  | {avg['full', 'aware-full', 1.0]} |  |" in md
    assert (f"| snapkv | {avg['snapkv', 'agnostic', 0.25]} | {avg['snapkv', 'agnostic', 64.0]} | "
            f"{avg['snapkv', 'aware-full', 0.25]} | {avg['snapkv', 'aware-full', 64.0]} |") in md
    assert "**512 tokens, protocol agnostic**" in md and "**512 tokens, protocol aware-full**" in md
    for lab in ("| full |", "| snapkv@0.25 |", "| snapkv@64 |", "| streaming@64 |"):
        assert md.count(lab) == (3 if lab == "| full |" else 2)  # full: a row of the overview too
    if importlib.util.find_spec("matplotlib") is not None:
        for name in ("acc_vs_budget_512_agnostic.png", "needle_full_1_aware-full.png", "needle_all_aware-full.png",
                     "needle_snapkv_0.25_agnostic.png"):
            assert (out / name).stat().st_size > 1000
    else:
        assert not any(f.endswith(".png") for f in res["files"])


def test_resume_after_interrupt_gives_the_same_files(gguf, done, tmp_path, monkeypatch):
    out_a, _ = done
    out = tmp_path / "b"
    real = runner_mod.run_sample
    yielded = [0]

    def interrupted(*a, **k):  # Ctrl-C after 23 runs, in the middle of a sample
        for item in real(*a, **k):
            if yielded[0] == 23:
                raise KeyboardInterrupt
            yielded[0] += 1
            yield item

    monkeypatch.setattr(runner_mod, "run_sample", interrupted)
    with pytest.raises(cli.Interrupted) as e:
        run(gguf, TASKS, [CTX], out=str(out), **KW)
    assert (e.value.done, e.value.total) == (23, N_RUNS)
    part = json.loads((out / "ruler.json").read_text())
    assert part["partial"] is True and len(part["runs"]) == 23 and e.value.result["partial"]
    assert "(partial)" in (out / "ruler.md").read_text()
    # a run torn while being written (the process killed mid-line) is dropped and runs again
    with open(out / "ruler.jsonl", "a") as f:
        f.write('{"task": "niah_single_1", "ctx": 512, "ind')
    monkeypatch.undo()
    res = run(gguf, TASKS, [CTX], out=str(out), **KW)
    assert res["ran"] == N_RUNS - 23 and res["skipped"] == 23 and not res["partial"]
    lines = (out / "ruler.jsonl").read_text().splitlines()
    assert len(lines) == 1 + N_RUNS and "ruler_jsonl" in json.loads(lines[0])
    assert len({runner_mod.record_key(json.loads(x)) for x in lines[1:]}) == N_RUNS  # nothing twice
    a, b = json.loads((out_a / "ruler.json").read_text()), json.loads((out / "ruler.json").read_text())
    assert timeless(a) == timeless(b)
    assert csv_timeless(out_a / "ruler.csv") == csv_timeless(out / "ruler.csv")
    assert (out_a / "ruler.md").read_text() == (out / "ruler.md").read_text()

    # the same command again runs nothing; more samples run only the new ones
    def boom(*a, **k):
        raise AssertionError("ran a finished run again")

    monkeypatch.setattr(runner_mod, "run_sample", boom)
    again = run(gguf, TASKS, [CTX], out=str(out), **KW)
    assert again["ran"] == 0 and again["skipped"] == N_RUNS and timeless(again["runs"]) == timeless(b["runs"])
    monkeypatch.undo()
    more = run(gguf, "passkey", [CTX], out=str(out), **{**KW, "samples": 3, "protocols": "agnostic"})
    assert more["ran"] == 5 and more["skipped"] == 10 and len(more["runs"]) == 15


def test_other_settings_are_refused(gguf, done):
    out, _ = done
    for kw, what in [({"seed": 7}, "seed 42 there, 7 now"), ({"eviction": {"window": 8}}, "eviction.window"),
                     ({"chat_template": CHATML_TEMPLATE}, "template.mode")]:
        with pytest.raises(cli.UsageError, match="other settings") as e:
            run(gguf, TASKS, [CTX], out=str(out), **{**KW, **kw})
        assert what in str(e.value)
    # a file that is not a resume log
    bad = out.parent / "bad"
    bad.mkdir()
    (bad / "ruler.jsonl").write_text('{"x": 1}\n{"y": 2}\n')
    with pytest.raises(EngineError, match="not a resume log"):
        run(gguf, TASKS, [CTX], out=str(bad), **KW)
    (bad / "ruler.jsonl").write_text('{"x": 1}\nnot json\n{"y": 2}\n')
    with pytest.raises(EngineError, match="line 2 is not JSON"):
        run(gguf, TASKS, [CTX], out=str(bad), **KW)


@pytest.mark.parametrize("change, message", [
    ({"tasks": "niah_single_1,bogus"}, "unknown task"),
    ({"budgets": [1.5]}, "between 1 and 2"),
    ({"budgets": [0]}, "must be > 0"),
    ({"policies": "snapkv,nope"}, "unknown policy 'nope'"),
    ({"protocols": "agnostic,sideways"}, "unknown protocol 'sideways'"),
    ({"lengths": [100]}, "too small"),
    ({"lengths": [32]}, "too short"),
    ({"samples": 0}, "--samples"),
    ({"template": "chatml"}, "unknown template"),
    ({"eviction": {"window": 0}}, "window"),
    ({"model": "/nonexistent/model.gguf"}, "no such file"),
])
def test_bad_inputs(gguf, tmp_path, change, message):
    kw = {**KW, "tasks": TASKS, "lengths": [CTX], "model": gguf, **change}
    model, tasks, lengths = kw.pop("model"), kw.pop("tasks"), kw.pop("lengths")
    with pytest.raises(cli.UsageError, match=message):
        run(model, tasks, lengths, out=str(tmp_path / "x"), **kw)
    assert not (tmp_path / "x" / "ruler.jsonl").exists()


def test_cli(gguf, tmp_path, capsys):
    out = tmp_path / "cli"
    js = tmp_path / "r.json"
    argv = ["--gguf", gguf, "--tasks", "passkey,s1", "--lengths", "0.5k", "--samples", "1", "--policies",
            "full,restkv", "--budgets", "0.5,32", "--protocol", "aware", "--out", str(out), "--no-progress",
            "--window", "4", "--json", str(js)]
    assert main(argv) == 0
    o = capsys.readouterr().out
    assert "| policy@budget | passkey | s1 | avg2 | KV kept |" in o and "| restkv@32 |" in o and "6 run(s) done" in o
    saved = json.loads((out / "ruler.json").read_text())
    assert json.loads(js.read_text()) == saved and len(saved["runs"]) == 6
    assert saved["meta"]["eviction"]["window"] == 4 and saved["meta"]["lengths"] == [512]
    assert len(list(csv.DictReader((out / "ruler.csv").open()))) == 6 and (out / "ruler.md").exists()
    assert main(argv) == 0 and "0 run(s) done, 6 already done" in capsys.readouterr().out
    # user errors: one line, exit status 2, no traceback
    for bad, msg in [(["--tasks", "bogus"], "unknown task"), (["--budgets", "1.5"], "between 1 and 2"),
                     (["--protocol", "nope"], "unknown protocol"), (["--lengths", "4x"], "--lengths"),
                     (["--policies", "nope"], "unknown policy"), (["--data-root", str(tmp_path / "none")], "no such")]:
        assert main(argv + bad) == 2, bad
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and "Traceback" not in err, (bad, err)
    assert main(["--gguf", str(tmp_path / "missing.gguf"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    h = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for text in ("aware-full", "default ruler11", "default 0.5,0.25,0.1", "max_capacity_prompt", "--window",
                 "--positions", "snapkv", "exit status"):
        assert text in h, text


def test_cli_ctrl_c_writes_partial_json(gguf, tmp_path, capsys, monkeypatch):
    out, js = tmp_path / "c", tmp_path / "c.json"
    real = runner_mod.run_sample

    def once(*a, **k):
        it = real(*a, **k)
        yield next(it)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_mod, "run_sample", once)
    argv = ["--gguf", gguf, "--tasks", "passkey", "--lengths", "512", "--samples", "2", "--policies", "full,tova",
            "--budgets", "0.5", "--out", str(out), "--no-progress", "--json", str(js)]
    assert main(argv) == cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "interrupted: 1 of 4 runs" in err and "the same command resumes" in err
    assert json.loads(js.read_text())["partial"] is True and len(json.loads(js.read_text())["runs"]) == 1
    monkeypatch.undo()
    assert main(argv) == 0 and "3 run(s) done, 1 already done" in capsys.readouterr().out


def test_wilson_interval_and_plan():
    lo, hi = report.wilson(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = report.wilson(1.0, 2)
    assert lo == pytest.approx(0.3424, abs=1e-4) and hi == 1.0
    cfgs = runner_mod.plan_configs(["agnostic", "aware"], ["snapkv", "full"], [1.0, 0.5, 256.0])
    assert [(c.protocol, c.label) for c in cfgs] == [("agnostic", "full"), ("agnostic", "snapkv@0.5"),
                                                     ("agnostic", "snapkv@256"), ("aware", "full"),
                                                     ("aware", "snapkv@0.5"), ("aware", "snapkv@256")]
    assert runner_mod.plan_configs(["agnostic"], ["snapkv"], [0.5]) == [runner_mod.Config("agnostic", "snapkv", 0.5)]
    assert expand_tasks("ruler11")[:2] == ["niah_single_1", "niah_single_2"]


def _runs(scores: dict) -> list[dict]:
    """scores: {(policy, budget): {task: [score per sample]}} -> runs at 4096 tokens, aware-full"""
    return [{"ctx": 4096, "protocol": "aware-full", "policy": pol, "budget": b, "task": t, "index": i, "score": s}
            for (pol, b), per in scores.items() for t, ss in per.items() for i, s in enumerate(ss)]


def test_paired_difference_against_the_exact_bootstrap_and_sign_flips():
    import itertools

    import numpy as np

    ref = {"a": [1.0, 1.0, 0.0], "b": [0.5, 0.5, 1.0]}
    snap = {"a": [0.0, 1.0, 0.0], "b": [0.5, 0.0, 0.0]}
    full = {"a": [1.0, 1.0, 1.0], "b": [1.0, 1.0, 1.0]}
    runs = _runs({("restkv", 0.1): ref, ("snapkv", 0.1): snap, ("full", 1.0): full})
    meta = {"lengths": [4096], "protocols": ["aware-full"]}
    cfgs = runner_mod.plan_configs(["aware-full"], ["full", "restkv", "snapkv"], [1.0, 0.1])
    out = report.paired(runs, meta, cfgs)
    assert [(r["other"], r["budget"]) for r in out] == [("full", 0.1), ("snapkv", 0.1)]
    r = out[1]
    # differences a: 1, 0, 0; b: 0, 0.5, 1 -> task means 1/3 and 1/2
    assert r["delta"] == pytest.approx((1 / 3 + 1 / 2) / 2) and (r["wins"], r["losses"], r["n"]) == (3, 0, 6)
    # the exact bootstrap distribution: every draw of 6 of the 6 pairs (equal weights here), equally likely
    d = [1.0, 0.0, 0.0, 0.0, 0.5, 1.0]
    exact = np.array([np.mean(x) for x in itertools.product(d, repeat=6)])
    for q, x in ((0.025, r["ci95_low"]), (0.975, r["ci95_high"])):  # x is a q-quantile of it, give or take 1%
        assert (exact < x - 1e-9).mean() <= q + 0.01 and (exact <= x + 1e-9).mean() >= q - 0.01
    # sign flips of the three nonzero differences 1, 0.5, 1: only all + and all - reach |2.5|: p = 2/8
    assert r["p"] == 0.25
    assert report.paired(runs, meta, cfgs) == out  # seeded: the same interval every time
    f = out[0]  # against the full cache (budget 1.0) at restkv's budget
    assert f["delta"] == pytest.approx(((-1 / 3) + (-1 / 3)) / 2) and (f["wins"], f["losses"], f["p"]) == (0, 3, 0.25)
    # equal scores everywhere: no difference, a degenerate interval, p = 1
    same = report.paired(_runs({("restkv", 0.1): ref, ("snapkv", 0.1): ref}), meta, cfgs)[0]
    assert (same["delta"], same["ci95_low"], same["ci95_high"], same["wins"], same["losses"], same["p"]) == \
        (0, 0, 0, 0, 0, 1.0)
    # unequal sample counts: each pair weighs 1 / (tasks x its task's samples)
    un = report.paired(_runs({("restkv", 0.1): {"a": [1.0], "b": [1.0, 0.0, 0.0]},
                              ("snapkv", 0.1): {"a": [0.0], "b": [0.0, 0.0, 0.0]}}), meta, cfgs)[0]
    assert un["delta"] == pytest.approx((1 + 1 / 3) / 2) and un["p"] == 0.5
    md = report.paired_tables({"meta": meta, "summary": {"paired": out}})
    assert "restkv minus each policy" in md and "| snapkv | +41.7 [" in md and "3/0 p=0.25 |" in md


def test_sign_flip_p_many_terms_against_the_binomial():
    import math

    import numpy as np

    # 30 equal terms, 20 positive: |sum| >= 10 when the positives number >= 20 or <= 10
    x = np.array([1.0] * 20 + [-1.0] * 10)
    exact = 2 * sum(math.comb(30, k) for k in range(20, 31)) / 2 ** 30
    p = report.sign_flip_p(x, np.random.default_rng(0))
    assert p == pytest.approx(exact, abs=0.01)
