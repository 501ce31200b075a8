"""Checkpoints of the shared-prefill evaluations (engine.eval.checkpoint): a batch interrupted after some
chunks (passages) resumes from them, with the figures of an uninterrupted run bit for bit; another
batch's checkpoint is ignored; engine.sweep resumes its batch in progress."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from engine import cli
from engine.eval import sweep as sweep_mod
from engine.eval.checkpoint import Checkpoint
from engine.eval.lambada import LambadaItem, lambada_many
from engine.eval.protocols import perplexity_many
from engine.eviction import Eviction
from test_shared_prefill import N_CTX, gqa, tokens  # noqa: F401  (gqa: the shared model fixture)
from test_sweep import data, run  # noqa: F401  (data: the sweep's text fixture)

CONFIGS = [None, Eviction(policy="h2o", budget=0.25), Eviction(policy="restkv", budget=0.25, window=8)]


def figures(results):
    out = []
    for r in results:
        d = asdict(r)
        for k in ("seconds", "tokens_per_second", "partial"):
            d.pop(k)
        out.append(d)
    return out


def stop_after(n):
    def cb(i, _):
        if i + 1 == n:
            raise KeyboardInterrupt
    return cb


def test_perplexity_many_resumes_from_its_checkpoint(gqa, tmp_path):
    toks = tokens(gqa, 5 * N_CTX)
    whole = perplexity_many(gqa, toks, CONFIGS, n_ctx=N_CTX, progress=False)
    ck = Checkpoint(str(tmp_path / "ck.json"), ["batch", 1], every_seconds=0)
    with pytest.raises(cli.Interrupted):  # after chunk 2 of 5
        perplexity_many(gqa, toks, CONFIGS, n_ctx=N_CTX, progress=False, on_chunk=stop_after(2), checkpoint=ck)
    assert ck.load()["done"] == 2
    seen = []
    resumed = perplexity_many(gqa, toks, CONFIGS, n_ctx=N_CTX, progress=False, checkpoint=ck,
                              on_chunk=lambda i, _: seen.append(i))
    assert seen == [2, 3, 4]  # the saved chunks are not scored again
    assert figures(resumed) == figures(whole)
    # another batch's checkpoint is not this one's: it starts from the first chunk
    seen.clear()
    other = Checkpoint(ck.path, ["batch", 2], every_seconds=0)
    assert other.load() is None
    perplexity_many(gqa, toks, CONFIGS[:2], n_ctx=N_CTX, progress=False, checkpoint=other,
                    on_chunk=lambda i, _: seen.append(i))
    assert seen == [0, 1, 2, 3, 4]


def test_lambada_many_resumes_from_its_checkpoint(gqa, tmp_path):
    rng = np.random.default_rng(7)
    items = [LambadaItem(list(rng.integers(3, gqa.n_vocab, int(rng.integers(12, 40)))),
                         list(rng.integers(3, gqa.n_vocab, int(rng.integers(1, 3))))) for _ in range(12)]
    whole = lambada_many(gqa, items, CONFIGS, progress=False)
    ck = Checkpoint(str(tmp_path / "ck.json"), "lambada", every_seconds=0)
    with pytest.raises(cli.Interrupted):
        lambada_many(gqa, items, CONFIGS, progress=False, on_passage=stop_after(5), checkpoint=ck)
    assert ck.load()["done"] == 5
    seen = []
    resumed = lambada_many(gqa, items, CONFIGS, progress=False, checkpoint=ck,
                           on_passage=lambda i, _: seen.append(i))
    assert seen == list(range(5, 12))
    assert figures(resumed) == figures(whole)


def test_sweep_resumes_its_batch_in_progress(tiny_gguf, data, tmp_path, monkeypatch):  # noqa: F811
    gguf = tiny_gguf(weight_type="Q8_0")
    want = run(gguf, tmp_path / "whole", data)
    real = sweep_mod.perplexity_many

    def interrupted(model, toks, evs, **kw):  # Ctrl-C after the first chunk of the WikiText batch
        return real(model, toks, evs, on_chunk=stop_after(1), **kw)

    monkeypatch.setattr(sweep_mod, "perplexity_many", interrupted)
    # saved after every chunk (the tool saves at most every 30 s)
    monkeypatch.setattr(sweep_mod, "Checkpoint", lambda path, key: Checkpoint(path, key, every_seconds=0))
    out = tmp_path / "resumed"
    with pytest.raises(cli.Interrupted):
        run(gguf, out, data)
    assert json.loads((out / sweep_mod.CHECKPOINT).read_text())["state"]["done"] == 1
    monkeypatch.setattr(sweep_mod, "perplexity_many", real)
    chunks = []

    def counting(model, toks, evs, **kw):
        return real(model, toks, evs, on_chunk=lambda i, _: chunks.append(i), **kw)

    monkeypatch.setattr(sweep_mod, "perplexity_many", counting)
    got = run(gguf, out, data)
    assert chunks == [1]  # only the second of the two chunks was scored again
    assert not (out / sweep_mod.CHECKPOINT).exists()

    def table(r):
        return sorted((json.dumps(x["settings"], sort_keys=True), json.dumps(figures_of(x["result"]), sort_keys=True))
                      for x in r["runs"])

    def figures_of(res):
        return {k: v for k, v in res.items() if k not in ("seconds", "tokens_per_second", "partial")}

    assert table(got) == table(want)
