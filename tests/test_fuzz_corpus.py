"""The fuzzer's seed corpus (tests/fuzz/corpus): every malformed GGUF is refused with an error that
names the file and the problem, the valid seed loads and runs, and make_seeds.py reproduces it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import engine
from engine import EngineError

FUZZ = Path(__file__).resolve().parent / "fuzz"
CORPUS = FUZZ / "corpus"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())
MALFORMED = sorted(k for k, v in MANIFEST.items() if v is not None)


def test_corpus_covers_what_the_issue_lists():
    names = " ".join(MANIFEST)
    for kind in ("truncated-header", "truncated-metadata", "truncated-tensor-info", "truncated-at-data-section",
                 "truncated-tensor-data", "absurd-metadata-count", "absurd-tensor-count", "absurd-array-count",
                 "overflowing-product", "offset-past-end", "overlapping-tensors", "misaligned-tensor",
                 "wrong-value-type", "unterminated-string", "duplicate-key", "unknown-architecture",
                 "missing-tensor", "shape-mismatch"):
        assert kind in names, kind
    assert len(MALFORMED) >= 90


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_seed_is_refused_with_its_reason(name):
    with pytest.raises(EngineError) as ei:
        engine.Model(str(CORPUS / name))
    msg = str(ei.value)
    assert name in msg, msg
    assert re.search(MANIFEST[name], msg), f"{MANIFEST[name]!r} not found in {msg!r}"


def test_valid_seed_loads_and_runs():
    with engine.Model(str(CORPUS / "valid.gguf")) as m, m.session(n_ctx=16) as s:
        lp = s.logprobs([1, 2, 3, m.n_vocab - 1])
        assert np.all(np.isfinite(lp))


def test_make_seeds_reproduces_the_corpus(tmp_path):
    subprocess.run([sys.executable, str(FUZZ / "make_seeds.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == sorted(p.name for p in CORPUS.iterdir())
    for name in made:
        assert (tmp_path / name).read_bytes() == (CORPUS / name).read_bytes(), name
