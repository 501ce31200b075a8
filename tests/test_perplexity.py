"""engine.perplexity: llama-perplexity's protocol, the CLI, and SmolLM2 figures against llama.cpp's."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import engine
import subproc
from engine.errors import EngineError
from engine.eval.protocols import perplexity

# llama.cpp (llama-cpp-python 0.3.36, same protocol; tools/llamacpp_reference.py ppl --chunks 40)
# running estimates on wiki.test.raw with SmolLM2-135M-Instruct Q4_1, n_ctx 512
LLAMACPP_RUNNING_PPL = {1: 13.0466, 2: 21.4484, 3: 22.6128, 4: 22.8845, 40: 23.5863}


def run_cli(*args, cwd):
    """Runs `python -m engine.perplexity` with the engine package this test imported."""
    env = dict(os.environ, PYTHONPATH=subproc.pythonpath())
    return subprocess.run([sys.executable, "-m", "engine.perplexity", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("vocab", ["bpe", "spm"])
def test_protocol_matches_direct_computation(tiny_gguf, vocab):
    """Chunks from an empty cache, BOS over the first token when the vocab adds BOS, second half scored."""
    path = tiny_gguf(weight_type="Q8_0", vocab=vocab)
    rng = np.random.default_rng(1)
    n_ctx, n_chunks = 32, 3
    with engine.Model(path) as m:
        toks = rng.integers(3, m.n_vocab, n_ctx * n_chunks + 7).astype(np.int32)
        bos = m.tokenizer.bos_id if m.tokenizer.add_bos else None
        res = perplexity(m, toks, n_ctx=n_ctx, progress=False, bos_id=bos)
        nll = []
        for c in range(n_chunks):
            chunk = toks[c * n_ctx:(c + 1) * n_ctx].copy()
            if bos is not None:
                chunk[0] = bos
            with m.session(n_ctx=n_ctx) as s:
                lg = s.eval(chunk, logits="all").astype(np.float64)
            lg -= lg.max(1, keepdims=True)
            lp = lg - np.log(np.exp(lg).sum(1, keepdims=True))
            first = n_ctx // 2
            nll += [-lp[i, chunk[i + 1]] for i in range(first, n_ctx - 1)]
    assert res.n_chunks == n_chunks and res.n_scored == len(nll) == n_chunks * (n_ctx - n_ctx // 2 - 1)
    assert res.ppl == pytest.approx(math.exp(np.mean(nll)), rel=1e-5)
    assert len(res.chunk_ppl) == n_chunks


def test_too_short_text_is_an_error(tiny_gguf):
    with engine.Model(tiny_gguf()) as m, pytest.raises(EngineError, match="at least 2"):
        perplexity(m, [5] * 40, n_ctx=32, progress=False)


def test_cli_help(tmp_path):
    r = run_cli("--help", cwd=tmp_path)
    assert r.returncode == 0 and "llama-perplexity" in r.stdout and "--budget" in r.stdout


def test_cli_budget_below_one_is_a_clear_error(tiny_gguf, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello world " * 200)
    r = run_cli("--gguf", tiny_gguf(), "-f", str(text), "--budget", "0.1", cwd=tmp_path)
    assert r.returncode == 2 and "--budget 0.1" in r.stderr and "Traceback" not in r.stderr


def test_cli_bad_model_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    text = tmp_path / "t.txt"
    text.write_text("hello " * 100)
    r = run_cli("--gguf", str(bad), "-f", str(text), cwd=tmp_path)
    assert r.returncode == 2 and "not a GGUF file" in r.stderr and "Traceback" not in r.stderr


def test_cli_tiny_json(tiny_gguf, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"word{i % 37} and {i}" for i in range(400)))
    out = tmp_path / "r.json"
    r = run_cli("--gguf", tiny_gguf(), "-f", str(text), "--ctx", "64", "--chunks", "3", "--json", str(out),
                "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Final estimate: PPL = " in r.stdout and "[3]" in r.stdout
    res = json.loads(out.read_text())
    assert res["n_chunks"] == 3 and res["n_ctx"] == 64 and res["n_scored"] == 3 * 31
    assert res["ppl"] > 1 and res["tokens_per_second"] > 0


def test_smollm2_first_chunks_match_llamacpp(smollm2, wikitext_path, tmp_path):
    out = tmp_path / "r.json"
    r = run_cli("--gguf", smollm2, "-f", wikitext_path, "--chunks", "2", "--threads", "2", "--json", str(out),
                "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["n_tokens_file"] == 303415  # llama.cpp's count for the whole file
    for i, ppl in enumerate(res["chunk_ppl"], start=1):
        assert abs(ppl / LLAMACPP_RUNNING_PPL[i] - 1) < 0.01, (i, ppl)
