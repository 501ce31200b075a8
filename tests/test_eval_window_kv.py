"""KV figures per layer type in engine.eval (perplexity protocols, LAMBADA, printed tables): a model with
sliding-window layers (gemma3) reports the bytes of its global layers (evicted from) and of its window
layers (rings of n_swa - 1 + n_batch slots per kv-head, never evicted from) besides those of all layers;
a model without window layers reports 0 for them and prints the tables it always printed."""

from __future__ import annotations

import json

import numpy as np
import pytest

import engine
from engine.eval import report
from engine.eval.lambada import lambada_many, prepare
from engine.eval.options import budget_tokens
from engine.eval.protocols import perplexity, perplexity_many
from engine.eviction import Eviction
from engine.perplexity import main as ppl_main

GEMMA = dict(arch="gemma3", n_embd=128, n_heads=4, n_kv_heads=1, n_layers=7, sliding_window=8, head_dim=32,
             weight_type="F32")
N_WINDOW = 6  # layers 0-4 and 6 have a window of 8; layer 5 is global (tests/test_window_cache.py)
N_SWA = 8
# above n_swa - 1 + n_batch = 8 - 1 + 512: the window layers are rings smaller than the session
N_CTX = 640
SPLIT = ("peak", "mean", "alloc")
PASSAGES = [
    "the cat sat on the mat and looked at the dog",
    "she opened the door and saw her brother standing there",
    "a b c d e f g h i j k l m n o p",
]


@pytest.fixture(scope="module")
def gemma(tiny_gguf):
    with engine.Model(tiny_gguf(**GEMMA)) as m:
        assert m.layer_windows.count(N_SWA) == N_WINDOW and m.layer_windows.count(0) == 1 and m.n_kv_heads == 1
        yield m


def tokens(n, seed=1):
    return np.random.default_rng(seed).integers(3, 380, n).astype(np.int32)


def check_sums(r):
    """all layers = global + window: exactly for the allocations, to rounding for the means; the peaks are
    maxima over the same points, so at most the sum."""
    assert r.kv_bytes_alloc == r.kv_bytes_alloc_global + r.kv_bytes_alloc_window
    assert r.kv_bytes_mean == pytest.approx(r.kv_bytes_mean_global + r.kv_bytes_mean_window, rel=1e-12)
    assert r.kv_bytes_peak <= r.kv_bytes_peak_global + r.kv_bytes_peak_window


def test_prefix_protocol_split(gemma):
    toks = tokens(2 * N_CTX)
    half = N_CTX // 2
    full, r5 = perplexity_many(gemma, toks, [None, Eviction(policy="streaming", budget=0.5)], n_ctx=N_CTX,
                               progress=False)
    r25 = perplexity(gemma, toks, n_ctx=N_CTX, progress=False, eviction=Eviction(policy="snapkv", budget=0.25))
    slot = full.kv_bytes_alloc_global // N_CTX  # one global layer, one kv-head: n_ctx slots
    ring = N_SWA - 1 + min(512, N_CTX)
    assert ring < N_CTX
    with gemma.session(n_ctx=N_CTX, n_batch=min(512, N_CTX)) as s:  # the ring, measured once full
        s.eval(toks[:N_CTX], logits=None)
        assert s.kv_bytes_used_window == s.kv_bytes_alloc_window == N_WINDOW * ring * slot
    for r, kept in ((full, half), (r5, half // 2), (r25, half // 4)):
        check_sums(r)
        # both kinds peak together, after the second half is scored: the sum is exact
        assert r.kv_bytes_peak == r.kv_bytes_peak_global + r.kv_bytes_peak_window
        assert r.kv_bytes_mean == r.kv_bytes_mean_global + r.kv_bytes_mean_window
        assert r.kv_bytes_full == (half + N_WINDOW * half) * slot  # the prefill: the rings are not full yet
        # the window layers: whatever the budget, rings of n_swa - 1 + n_batch slots, full after the scoring
        assert r.kv_bytes_alloc_window == N_WINDOW * ring * slot == r.kv_bytes_peak_window
        assert r.kv_bytes_mean_window == N_WINDOW * half * slot
        # the global layers: what the budget keeps
        assert r.kv_bytes_alloc_global == N_CTX * slot
        assert r.kv_bytes_mean_global == kept * slot and r.budget_tokens == kept
        assert r.kv_bytes_peak_global == (kept + half) * slot
    assert full.kv_bytes_mean_global > r5.kv_bytes_mean_global > r25.kv_bytes_mean_global
    assert full.kv_bytes_peak_global > r5.kv_bytes_peak_global > r25.kv_bytes_peak_global


def test_streaming_protocol_split(gemma):
    toks = tokens(2 * N_CTX, seed=2)
    slack = 8
    res = {}
    for budget in (0.9, 0.85):
        kept = budget_tokens(budget, N_CTX)
        s_ctx = kept + slack + 1
        assert s_ctx > N_SWA - 1 + min(512, s_ctx)  # rings smaller than the session
        r = res[budget] = perplexity(gemma, toks, n_ctx=N_CTX, progress=False, protocol="streaming",
                                     eviction=Eviction(policy="streaming", budget=budget, slack=slack))
        check_sums(r)
        slot = r.kv_bytes_alloc_global // s_ctx
        assert r.kv_bytes_alloc_global == s_ctx * slot
        assert r.kv_bytes_alloc_window == N_WINDOW * (N_SWA - 1 + 512) * slot == r.kv_bytes_peak_window
        assert r.kv_bytes_peak_global <= (kept + slack) * slot
        # the full cache of n_ctx tokens, all layers: what a session of n_ctx slots holds after them
        with gemma.session(n_ctx=N_CTX, n_batch=min(512, N_CTX)) as s:
            s.eval(toks[:N_CTX], logits=None)
            assert r.kv_bytes_full == s.kv_bytes_used
    a, b = res[0.9], res[0.85]
    assert a.kv_bytes_alloc_global > b.kv_bytes_alloc_global and a.kv_bytes_peak_global > b.kv_bytes_peak_global
    assert a.kv_bytes_mean_global > b.kv_bytes_mean_global
    assert (a.kv_bytes_alloc_window, a.kv_bytes_peak_window) == (b.kv_bytes_alloc_window, b.kv_bytes_peak_window)


def test_lambada_split(gemma):
    items, _ = prepare(gemma, PASSAGES)
    full, r5 = lambada_many(gemma, items, [None, Eviction(policy="streaming", budget=0.5, n_sink=2)],
                            progress=False)
    n_ctx = max(len(it.context_ids) + len(it.target_ids) for it in items)
    slot = full.kv_bytes_alloc_global // n_ctx
    for r, budget in ((full, 1.0), (r5, 0.5)):
        check_sums(r)
        assert r.n_ctx == n_ctx and r.kv_bytes_alloc_global == n_ctx * slot
        # short passages: each ring holds n_swa - 1 + n_batch slots (n_batch = n_ctx here), more than
        # the session's n_ctx: the window layers keep their window whatever the global capacity
        assert r.kv_bytes_alloc_window == N_WINDOW * (N_SWA - 1 + n_ctx) * slot
        # entries kept per buffer of the global layer (the window rings do not count)
        kept = [budget_tokens(budget, len(it.context_ids) - 1) for it in items]
        assert r.budget_tokens_mean == pytest.approx(np.mean(kept), rel=1e-12)
        assert r.kv_bytes_mean_global == pytest.approx(np.mean(kept) * slot, rel=1e-12)
    assert r5.kv_bytes_mean_global < full.kv_bytes_mean_global
    assert r5.kv_bytes_peak_global < full.kv_bytes_peak_global
    assert (r5.kv_bytes_mean_window, r5.kv_bytes_peak_window, r5.kv_bytes_alloc_window) == \
           (full.kv_bytes_mean_window, full.kv_bytes_peak_window, full.kv_bytes_alloc_window)


def test_llama_has_no_window_figures_and_unchanged_rows(tiny_gguf):
    with engine.Model(tiny_gguf(weight_type="Q8_0")) as m:
        toks = tokens(3 * 64, seed=3)
        rs = [perplexity(m, toks, n_ctx=64, progress=False, eviction=Eviction(policy="streaming", budget=0.5)),
              perplexity(m, toks, n_ctx=64, progress=False, protocol="streaming",
                         eviction=Eviction(policy="streaming", budget=0.5, slack=2))]
        rs += lambada_many(m, PASSAGES, [Eviction(policy="streaming", budget=0.5)], progress=False)
    for r in rs:
        for f in SPLIT:
            assert getattr(r, f"kv_bytes_{f}_window") == 0
            assert getattr(r, f"kv_bytes_{f}_global") == getattr(r, f"kv_bytes_{f}")
        # the rows printed before the split existed, exactly
        assert report.kv_rows(r) == [
            ("KV bytes peak", report.mib(r.kv_bytes_peak)),
            ("KV bytes mean", f"{report.mib(r.kv_bytes_mean)} ({r.kv_bytes_mean / r.kv_bytes_full:.1%} of full)"),
            ("KV bytes full cache, same point", report.mib(r.kv_bytes_full)),
            ("KV bytes allocated", report.mib(r.kv_bytes_alloc))]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("txt") / "t.txt"
    p.write_text(" ".join(f"word{i % 37} and {i}" for i in range(400)))
    return str(p)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_cli_table_and_json(tiny_gguf, text_file, tmp_path, capsys, arch):
    gguf = tiny_gguf(**GEMMA) if arch == "gemma3" else tiny_gguf()
    out = tmp_path / "r.json"
    assert ppl_main(["--gguf", gguf, "-f", text_file, "--ctx", "64", "--chunks", "2", "--budget", "0.5",
                     "--policy", "streaming", "--json", str(out), "--no-progress"]) == 0
    o = capsys.readouterr().out
    res = json.loads(out.read_text())
    for f in SPLIT:  # in the JSON always
        assert f"kv_bytes_{f}_global" in res and f"kv_bytes_{f}_window" in res
    rows = ("KV bytes peak, global layers", "KV bytes peak, window layers", "KV bytes mean, global layers",
            "KV bytes mean, window layers", "KV bytes allocated, global layers", "KV bytes allocated, window layers")
    if arch == "llama":  # printed only for a model with window layers
        assert res["kv_bytes_alloc_window"] == 0 and "global layers" not in o and "window layers" not in o
    else:
        assert res["kv_bytes_alloc_window"] > 0
        labels = [ln.split("|")[1].strip() for ln in o.splitlines() if ln.startswith("| KV bytes")]
        assert labels == ["KV bytes peak", *rows[:2], "KV bytes mean", *rows[2:4], "KV bytes full cache, same point",
                          "KV bytes allocated", *rows[4:]]
