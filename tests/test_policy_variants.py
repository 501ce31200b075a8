"""Policy variants ('restkv:pooling=none'): a policy with some of its own parameters set, a policy of its
own in the tools' --policies lists, so an ablation shares the prefills of one run. Its figures are those
of the policy run with the same settings given as options."""

from __future__ import annotations

import csv

import pytest

from engine.errors import EngineError
from engine.eval import sweep as sweep_mod
from engine.eval.options import base_policy, check_policy, make_eviction, parse_policies, split_variant
from test_sweep import N_CTX, data  # noqa: F401  (data: the sweep's text fixture)


def test_split_and_spell_variants():
    assert split_variant("restkv") == ("restkv", {})
    assert split_variant("restkv:pooling=none:ema_alpha=0.5") == ("restkv", {"restkv_pooling": "none",
                                                                             "ema_alpha": 0.5})
    assert split_variant(" snapkv : kernel = 7 ") == ("snapkv", {"kernel": 7})
    assert check_policy("restkv:distance=value") == "restkv:restkv_distance=value"
    assert base_policy("restkv:restkv_distance=value") == "restkv"
    assert parse_policies("h2o, restkv:smoothing=mean,restkv:restkv_smoothing=mean") == [
        "h2o", "restkv:restkv_smoothing=mean"]
    ev = make_eviction("restkv:pooling=avgpool", 0.25, kernel=9, restkv_pooling="adaptive")
    assert (ev.policy, ev.budget, ev.kernel, ev.restkv_pooling) == ("restkv", 0.25, 9, "avgpool")


@pytest.mark.parametrize("spec, message", [
    ("nope:kernel=3", "unknown policy 'nope'"),
    ("h2o:kernel=5", "not PARAM=VALUE of a parameter of h2o"),
    ("restkv:pooling", "not PARAM=VALUE"),
    ("restkv:pooling=round", "restkv_pooling is one of adaptive"),
    ("restkv:kernel=five", "kernel='five' is not an int"),
])
def test_bad_variants_are_refused(spec, message):
    with pytest.raises(EngineError, match=message):
        check_policy(spec)


def test_sweep_variant_rows_equal_runs_with_the_option(tiny_gguf, data, tmp_path):  # noqa: F811
    gguf = tiny_gguf(weight_type="Q8_0")
    kw = dict(ctx=N_CTX, chunks=2, wikitext=data[0], progress=False)
    got = sweep_mod.sweep(gguf, ["restkv", "restkv:pooling=none:distance=value"], [0.25], ["wikitext"],
                          str(tmp_path / "a"), eviction={"window": 8}, **kw)
    alone = sweep_mod.sweep(gguf, ["restkv"], [0.25], ["wikitext"], str(tmp_path / "b"),
                            eviction={"window": 8, "restkv_pooling": "none", "restkv_distance": "value"}, **kw)
    ppl = {r["settings"]["policy"]: r["result"]["ppl"] for r in got["runs"]}
    assert ppl["restkv:restkv_pooling=none:restkv_distance=value"] == alone["runs"][0]["result"]["ppl"]
    assert ppl["restkv"] != ppl["restkv:restkv_pooling=none:restkv_distance=value"]
    assert "| restkv:restkv_pooling=none:restkv_distance=value | " in got["tables"]
    # the CSV row carries the variant's own settings
    rows = {r["policy"]: r for r in csv.DictReader((tmp_path / "a" / "sweep.csv").open())}
    assert rows["restkv:restkv_pooling=none:restkv_distance=value"]["restkv_pooling"] == "none"
    assert rows["restkv"]["restkv_pooling"] == "adaptive"


def test_ruler_variant_runs_equal_runs_with_the_option(tiny_gguf, tmp_path):
    from engine.ruler import run
    from test_ruler import CTX, timeless

    gguf = tiny_gguf(weight_type="Q8_0", n_ctx_train=1024)
    kw = dict(samples=2, budgets=[0.25], protocols="agnostic", progress=False)
    got = run(gguf, "niah_single_1", [CTX], out=str(tmp_path / "a"), policies="restkv,restkv:distance=none",
              eviction={"window": 4}, **kw)
    alone = run(gguf, "niah_single_1", [CTX], out=str(tmp_path / "b"), policies="restkv",
                eviction={"window": 4, "restkv_distance": "none"}, **kw)
    name = "restkv:restkv_distance=none"
    var = [timeless(r) for r in got["runs"] if r["policy"] == name]
    want = [dict(timeless(r), policy=name, label=r["label"].replace("restkv", name), prefill_shared=True)
            for r in alone["runs"]]
    assert len(var) == 2 and var == want


def test_ruler_runs_a_masking_policy_once_for_every_protocol(tiny_gguf, tmp_path):
    """topk evicts nothing: its generations do not depend on the protocol, so it runs once per budget and
    sample and is recorded under each protocol (run_as: the one it ran under), with what a run under that
    protocol alone generates."""
    from engine.ruler import run
    from test_ruler import CTX

    gguf = tiny_gguf(weight_type="Q8_0", n_ctx_train=1024)
    kw = dict(samples=2, policies="topk", budgets=[0.25], progress=False, eviction={"window": 4})
    both = run(gguf, "niah_single_1,passkey", [CTX], out=str(tmp_path / "a"), protocols="agnostic,aware-full", **kw)
    alone = run(gguf, "niah_single_1,passkey", [CTX], out=str(tmp_path / "b"), protocols="aware-full", **kw)
    aware = {(r["task"], r["index"]): r for r in both["runs"] if r["protocol"] == "aware-full"}
    assert len(aware) == 4 and all(r["run_as"] == "agnostic" for r in aware.values())
    assert all(r["run_as"] is None for r in both["runs"] if r["protocol"] == "agnostic")
    for r in alone["runs"]:
        assert r["run_as"] is None
        assert aware[(r["task"], r["index"])]["generated_ids"] == r["generated_ids"]
        assert aware[(r["task"], r["index"])]["score"] == r["score"]
