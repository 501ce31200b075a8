"""engine.sweep: every (dataset, policy, budget) once, CSV/JSON/markdown/plots, resumable."""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest

import engine
from engine.errors import EngineError
from engine.eval import lambada as lambada_mod
from engine.eval import sweep as sweep_mod
from engine.eval.lambada import lambada
from engine.eval.protocols import perplexity
from engine.eviction import Eviction

N_CTX = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweepdata")
    text = d / "t.txt"
    text.write_text(" ".join(f"word{i % 37} and {i}" for i in range(300)))
    lam = d / "lam.jsonl"
    lam.write_text("".join(json.dumps({"text": t}) + "\n" for t in [
        "the cat sat on the mat and looked at the dog",
        "she opened the door and saw her brother standing there",
        "a b c d e f g h i j k l m n o p",
    ]))
    return str(text), str(lam)


def run(gguf, out, data, budgets=(1.0, 0.5, 0.25), policies=("streaming", "topk"), **kw):
    return sweep_mod.sweep(gguf, list(policies), list(budgets), ["wikitext", "lambada"], str(out), ctx=N_CTX,
                           chunks=2, wikitext=data[0], lambada_file=data[1], progress=False, **kw)


def test_plan_runs_budget_one_once():
    runs = sweep_mod.plan(["streaming", "topk", "full"], [1.0, 0.5], ["wikitext", "lambada"])
    assert runs == [("wikitext", "full", 1.0, "prefix"), ("wikitext", "streaming", 0.5, "prefix"),
                    ("wikitext", "topk", 0.5, "prefix"), ("lambada", "full", 1.0, "prefix"),
                    ("lambada", "streaming", 0.5, "prefix"), ("lambada", "topk", 0.5, "prefix")]
    # streaming protocol: budget 1 still evicts past --ctx (per policy); topk/full cannot stream; LAMBADA is prefix
    runs = sweep_mod.plan(["streaming", "topk"], [1.0], ["wikitext", "lambada"], protocol="streaming")
    assert runs == [("wikitext", "streaming", 1.0, "streaming"), ("lambada", "full", 1.0, "prefix")]
    assert sweep_mod.parse_budgets("1, 0.5,0.5,256") == [1.0, 0.5, 256.0]
    assert "full" not in sweep_mod.parse_policies("all") and "streaming" in sweep_mod.parse_policies("all")
    with pytest.raises(EngineError, match="unknown policy"):
        sweep_mod.parse_policies("streaming,nope")
    with pytest.raises(EngineError, match="between 1 and 2"):
        sweep_mod.parse_budgets("1,1.5")


def test_sweep_writes_results_and_resumes(tiny_gguf, data, tmp_path, monkeypatch):
    gguf = tiny_gguf(weight_type="Q8_0")
    out = tmp_path / "sw"
    r = run(gguf, out, data)
    assert r["ran"] == 10 and r["skipped"] == 0 and not r["failed"]  # 2 datasets x (full + 2 policies x 2 budgets)
    saved = json.loads((out / "sweep.json").read_text())
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(saved["runs"]) == len(rows) == 10
    keys = {(x["dataset"], x["policy"], float(x["budget"])) for x in rows}
    assert keys == {(ds, p, b) for ds in ("wikitext", "lambada")
                    for p, b in [("full", 1.0), ("streaming", 0.5), ("streaming", 0.25), ("topk", 0.5), ("topk", 0.25)]}
    # the figures are those of engine.perplexity / engine.lambada called directly
    with engine.Model(gguf) as m:
        toks = m.tokenize(open(data[0]).read(), add_special=True)
        bos = m.tokenizer.bos_id if m.tokenizer.add_bos else None
        want = perplexity(m, toks, n_ctx=N_CTX, n_chunks=2, bos_id=bos, progress=False,
                          eviction=Eviction(policy="streaming", budget=0.25))
        lam = lambada(m, [json.loads(ln)["text"] for ln in open(data[1])], progress=False,
                      eviction=Eviction(policy="topk", budget=0.5))
    by = {(x["dataset"], x["policy"], float(x["budget"])): x for x in rows}
    assert float(by[("wikitext", "streaming", 0.25)]["ppl"]) == want.ppl
    assert float(by[("lambada", "topk", 0.5)]["accuracy"]) == lam.accuracy
    assert float(by[("lambada", "topk", 0.5)]["ppl"]) == lam.ppl
    w = by[("wikitext", "streaming", 0.25)]
    assert int(w["n_scored"]) == 2 * (N_CTX // 2 - 1) and float(w["kv_bytes_mean"]) < float(w["kv_bytes_full"])
    # the KV figures per layer type: a llama model has global layers only
    for x in rows:
        for f in ("peak", "mean", "alloc"):
            assert float(x[f"kv_bytes_{f}_window"]) == 0, (x, f)
            assert float(x[f"kv_bytes_{f}_global"]) == float(x[f"kv_bytes_{f}"]) > 0, (x, f)
    # the markdown table: rows = policies, columns = budgets, budget 1 = the full cache in every row
    md = r["tables"]
    assert md == (out / "sweep.md").read_text()
    assert "| policy | 1 | 0.5 | 0.25 |" in md
    full_ppl = f"{float(by[('wikitext', 'full', 1.0)]['ppl']):.2f}"
    assert f"| streaming | {full_ppl} | " in md and f"| topk | {full_ppl} | " in md
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "ppl_vs_budget.png").stat().st_size > 1000
        assert (out / "lambada_vs_budget.png").stat().st_size > 1000
    else:
        assert r["plots"] == []

    # resumable: nothing runs again ...
    def boom(*a, **k):
        raise AssertionError("re-ran a finished combination")

    monkeypatch.setattr(sweep_mod, "perplexity", boom)
    monkeypatch.setattr(sweep_mod, "perplexity_many", boom)
    monkeypatch.setattr(lambada_mod, "lambada_many", boom)
    r2 = run(gguf, out, data)
    assert r2["ran"] == 0 and r2["skipped"] == 10 and json.loads((out / "sweep.json").read_text()) == saved
    # ... only the new combinations do; a failing run is reported, recorded and retried next time
    monkeypatch.undo()
    real = sweep_mod.perplexity_many

    def flaky(model, tokens, evs, **kw):
        if any(ev.policy == "topk" for ev in evs):
            raise EngineError("policy 'topk' is not implemented yet")
        return real(model, tokens, evs, **kw)

    monkeypatch.setattr(sweep_mod, "perplexity_many", flaky)
    r3 = run(gguf, out, data, budgets=(1.0, 0.5, 0.25, 0.1))
    assert r3["ran"] == 3 and r3["skipped"] == 10 and r3["failed"] == ["wikitext topk @ 0.1 (prefix)"]
    saved = json.loads((out / "sweep.json").read_text())
    assert len(saved["runs"]) == 13 and saved["errors"][0]["error"] == "policy 'topk' is not implemented yet"
    monkeypatch.undo()
    r4 = run(gguf, out, data, budgets=(1.0, 0.5, 0.25, 0.1))
    assert r4["ran"] == 1 and not r4["failed"] and json.loads((out / "sweep.json").read_text())["errors"] == []
    # other settings (here --chunks) are other combinations, not a resume of these
    r5 = sweep_mod.sweep(gguf, ["streaming"], [0.5], ["wikitext"], str(out), ctx=N_CTX, chunks=3, wikitext=data[0],
                         progress=False)
    assert r5["ran"] == 1 and len(list(csv.DictReader((out / "sweep.csv").open()))) == 15


def test_sweep_cli(tiny_gguf, data, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["--gguf", tiny_gguf(weight_type="Q8_0"), "--policies", "streaming", "--budgets", "1,0.5",
            "--datasets", "lambada", "--lambada", data[1], "--lambada-n", "2", "--out", str(out), "--no-progress",
            "--window", "4"]
    assert sweep_mod.main(argv) == 0
    o = capsys.readouterr().out
    assert "| policy | 1 | 0.5 |" in o and "| streaming |" in o and "2 run(s) done" in o
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    assert [r["result"]["n_scored"] for r in runs] == [2, 2]
    assert runs[1]["settings"]["eviction"]["window"] == 4 and runs[1]["result"]["eviction"]["window"] == 4
    assert sweep_mod.main(argv) == 0 and "0 run(s) done, 2 already done" in capsys.readouterr().out
    assert sweep_mod.main(argv[:2] + ["--policies", "bogus", "--out", str(out)]) == 2
    assert "unknown policy 'bogus'" in capsys.readouterr().err
    assert sweep_mod.main(argv[:2] + ["--datasets", "wikitext", "--wikitext", str(tmp_path / "no.txt"),
                                      "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_plot_series_are_told_apart_past_ten():
    # 11 policies (12 with a variant) are plotted; matplotlib's cycle repeats after 10 colours
    from engine.eval.plotstyle import series_style

    styles = [tuple(sorted(series_style(k).items())) for k in range(40)]
    assert len(set(styles)) == 40
