"""Start-up path (issue 11, item 5): ``Model.tokenizer`` is built from the metadata the C loader
already parsed (``rk_model_meta_*`` in src/restkv.h), not by reading the GGUF a second time with
the ``gguf`` package.  These tests check that what the C API exposes equals what the gguf package
reads, key by key, on the tiny test models and on SmolLM2; that the tokenizer built from it is the
same tokenizer; and that the accessors fail cleanly on bad arguments and stay safe on malformed
files.  No timing assertions here: ``python tools/startup_time.py --gguf M`` measures the speed.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import engine
from engine import EngineError
from engine._native import ffi, lib
from engine.tokenizer import Tokenizer, read_gguf_metadata, read_model_metadata

GOLDEN = Path(__file__).resolve().parent / "data" / "tokenizer_golden.json"
FUZZ = Path(__file__).resolve().parent / "fuzz"
ALL = ("",)  # every key


def assert_same_metadata(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray), k
            assert x.dtype == y.dtype and x.shape == y.shape, (k, x.dtype, y.dtype)
            assert x.tobytes() == y.tobytes(), k  # bit for bit (floats included)
        else:
            assert type(x) is type(y) and x == y, (k, x, y)


def assert_same_tokenizer(t1: Tokenizer, t2: Tokenizer) -> None:
    for attr in ("_model", "_pre", "_id2tok", "_tok2id", "_attrs", "_scores", "_merges", "_ranks", "_special",
                 "_eog", "_special_cache", "_add_space_prefix", "_add_bos", "_add_eos", "_clean_spaces",
                 "_ignore_merges", "_chat_template"):
        assert getattr(t1, attr) == getattr(t2, attr), attr
    assert t1.bpe_backend == t2.bpe_backend


TINY_CONFIGS = [
    dict(vocab="bpe"),
    dict(vocab="spm"),
    dict(vocab="bpe", weight_type="Q4_1", n_vocab=300, seed=3),
    dict(vocab="spm", weight_type="Q8_0", llama3_rope_factors=True, rope_scaling_linear=2.0, seed=5),
]


@pytest.mark.parametrize("cfg", TINY_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_c_metadata_equals_gguf_package_on_tiny_models(tiny_gguf, cfg):
    path = tiny_gguf(**cfg)
    with engine.Model(path, n_threads=1) as m:
        # every key (hyper-parameters too), and the default tokenizer./general. selection
        assert_same_metadata(read_model_metadata(m, ALL), read_gguf_metadata(path, ALL))
        assert_same_metadata(read_model_metadata(m), read_gguf_metadata(path))
        tok = m.tokenizer
        ref = Tokenizer.from_gguf(path)
        assert_same_tokenizer(tok, ref)
        rng = random.Random(0)
        for _ in range(50):
            text = "".join(rng.choice(["a", "b", " ", "ab", "\n", "é", "<s>", "</s>", "1", "12", "'s", "▁"])
                           for _ in range(rng.randrange(0, 20)))
            for parse_special in (False, True):
                assert tok.encode(text, parse_special=parse_special) == ref.encode(text, parse_special=parse_special)


def test_c_metadata_on_smollm2_and_its_tokenizer_is_unchanged():
    from conftest import smollm2_or_skip

    path = smollm2_or_skip()
    with engine.Model(path, n_threads=1) as m:
        meta = read_model_metadata(m, ALL)
        assert_same_metadata(meta, read_gguf_metadata(path, ALL))
        assert len(meta["tokenizer.ggml.tokens"]) == m.n_vocab == 49152
        assert len(meta["tokenizer.ggml.merges"]) == 48900
        tok = m.tokenizer
        assert_same_tokenizer(tok, Tokenizer.from_gguf(path))
        assert tok.bpe_backend == "hf"
        golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
        for case in golden["cases"]:
            ids = m.tokenize(case["text"], add_special=case["add_special"], parse_special=case["parse_special"])
            assert ids == case["ids"], case["text"]


# ------------------------------------------------------------------------------------------
# the C accessors: argument checks
# ------------------------------------------------------------------------------------------

def _err() -> str:
    return ffi.string(lib.rk_last_error()).decode()


def test_meta_accessors_refuse_bad_arguments(tiny_gguf):
    with engine.Model(tiny_gguf(vocab="bpe"), n_threads=1) as m:
        h = m._handle()
        n = lib.rk_model_meta_count(h)
        assert n > 5
        assert lib.rk_model_meta_count(ffi.NULL) == -1
        assert lib.rk_model_meta_find(ffi.NULL, b"general.architecture") == -1
        assert lib.rk_model_meta_find(h, ffi.NULL) == -1
        assert lib.rk_model_meta_find(h, b"no.such.key") == -1
        key = ffi.new("const char **")
        t, at, an = ffi.new("int32_t *"), ffi.new("int32_t *"), ffi.new("int64_t *")
        for bad in (-1, n, n + 1000, 2**62):
            assert lib.rk_model_meta_info(h, bad, key, t, at, an) == lib.RK_ERR_ARG
            assert "out of range" in _err()
            assert lib.rk_model_meta_data(h, bad, ffi.NULL, 0) == lib.RK_ERR_ARG
            assert lib.rk_model_meta_str(h, bad, ffi.new("const char **"), ffi.new("uint64_t *")) == lib.RK_ERR_ARG
            assert lib.rk_model_meta_strs(h, bad, ffi.NULL, 0, ffi.NULL, 0, ffi.NULL) == lib.RK_ERR_ARG
        assert lib.rk_model_meta_info(ffi.NULL, 0, key, t, at, an) == lib.RK_ERR_ARG
        # NULL outputs are allowed for info
        assert lib.rk_model_meta_info(h, 0, ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL) == lib.RK_OK

        arch = lib.rk_model_meta_find(h, b"general.architecture")
        toks = lib.rk_model_meta_find(h, b"tokenizer.ggml.tokens")
        types = lib.rk_model_meta_find(h, b"tokenizer.ggml.token_type")
        n_layer = lib.rk_model_meta_find(h, b"llama.block_count")
        assert min(arch, toks, types, n_layer) >= 0
        assert lib.rk_model_meta_info(h, arch, key, t, at, an) == lib.RK_OK
        assert ffi.string(key[0]) == b"general.architecture" and t[0] == lib.RK_META_STRING
        assert at[0] == -1 and an[0] == 0
        assert lib.rk_model_meta_info(h, toks, key, t, at, an) == lib.RK_OK
        assert t[0] == lib.RK_META_ARRAY and at[0] == lib.RK_META_STRING and an[0] == m.n_vocab
        # wrong types
        buf = np.zeros(8, dtype=np.uint8)
        assert lib.rk_model_meta_data(h, arch, ffi.from_buffer(buf), 8) == lib.RK_ERR_ARG
        assert "not a number" in _err()
        assert lib.rk_model_meta_data(h, toks, ffi.from_buffer(buf), 8) == lib.RK_ERR_ARG
        assert lib.rk_model_meta_str(h, toks, ffi.new("const char **"), ffi.new("uint64_t *")) == lib.RK_ERR_ARG
        assert "not a string" in _err()
        assert lib.rk_model_meta_strs(h, types, ffi.NULL, 0, ffi.NULL, 0, ffi.NULL) == lib.RK_ERR_ARG
        assert "not a string array" in _err()
        assert lib.rk_model_meta_str(h, arch, ffi.NULL, ffi.NULL) == lib.RK_ERR_ARG
        # buffers too small / NULL
        assert lib.rk_model_meta_data(h, n_layer, ffi.from_buffer(buf), 3) == lib.RK_ERR_ARG
        assert "needs 4 bytes" in _err()
        assert lib.rk_model_meta_data(h, n_layer, ffi.NULL, 4) == lib.RK_ERR_ARG
        assert lib.rk_model_meta_data(h, n_layer, ffi.from_buffer(buf), 8) == lib.RK_OK
        assert int(buf[:4].view("<u4")[0]) == m.n_layers
        nt = m.n_vocab * 4
        arr = np.zeros(m.n_vocab, dtype=np.int32)
        assert lib.rk_model_meta_data(h, types, ffi.from_buffer(arr), nt - 1) == lib.RK_ERR_ARG
        total = ffi.new("uint64_t *")
        assert lib.rk_model_meta_strs(h, toks, ffi.NULL, 0, ffi.NULL, 0, total) == lib.RK_OK
        sb = bytearray(total[0])
        offs = np.zeros(m.n_vocab + 1, dtype=np.int64)
        cbuf, coffs = ffi.from_buffer("char[]", sb), ffi.from_buffer("int64_t[]", offs)
        assert lib.rk_model_meta_strs(h, toks, cbuf, len(sb) - 1, coffs, m.n_vocab + 1, ffi.NULL) == lib.RK_ERR_ARG
        assert "needs" in _err()
        for n_off in (m.n_vocab, m.n_vocab + 2, -1, 0):
            assert lib.rk_model_meta_strs(h, toks, cbuf, len(sb), coffs, n_off, ffi.NULL) == lib.RK_ERR_ARG
        assert lib.rk_model_meta_strs(h, toks, cbuf, len(sb), ffi.NULL, m.n_vocab + 1, ffi.NULL) == lib.RK_ERR_ARG
        assert lib.rk_model_meta_strs(h, toks, cbuf, len(sb), coffs, m.n_vocab + 1, ffi.NULL) == lib.RK_OK
        assert offs[0] == 0 and offs[-1] == len(sb) and np.all(np.diff(offs) >= 0)


def test_closed_model_has_no_metadata(tiny_gguf):
    m = engine.Model(tiny_gguf(vocab="bpe"), n_threads=1)
    m.close()
    with pytest.raises(EngineError):
        read_model_metadata(m)


# ------------------------------------------------------------------------------------------
# malformed files: whatever loads can be read back in full, and equals the gguf package's view
# ------------------------------------------------------------------------------------------

def _walk(path: str) -> None:
    """Loads path if the engine accepts it and reads every key/value back through the C API."""
    try:
        m = engine.Model(path, n_threads=1)
    except EngineError:
        return
    with m:
        meta = read_model_metadata(m, ALL)
        assert len(meta) <= lib.rk_model_meta_count(m._handle())
        try:
            ref = read_gguf_metadata(path, ALL)
        except EngineError:
            return  # the gguf package refuses what our parser accepts: nothing to compare with
        assert_same_metadata(meta, ref)


@pytest.fixture(scope="module")
def seed_corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seeds")
    subprocess.run([sys.executable, str(FUZZ / "make_seeds.py"), "--out", str(out)], check=True,
                   capture_output=True)
    return out


def test_meta_walk_over_the_fuzz_seeds(seed_corpus):
    files = sorted(seed_corpus.glob("*.gguf"))
    assert len(files) > 90
    for f in files:
        _walk(str(f))


def test_meta_walk_over_mutated_metadata(tiny_gguf, tmp_path):
    """Random byte mutations of the metadata section of a tiny GGUF (the region the accessors read)."""
    good = Path(tiny_gguf(vocab="bpe", n_vocab=260, seed=7)).read_bytes()
    # the key/value section ends where the first tensor name starts: find it
    end = good.find(b"token_embd.weight")
    assert end > 0
    rng = random.Random(11)
    for i in range(150):
        data = bytearray(good)
        for _ in range(rng.choice((1, 2, 4, 8))):
            pos = rng.randrange(24, end)
            data[pos] = rng.choice((0, 1, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        p = tmp_path / f"mut{i}.gguf"
        p.write_bytes(bytes(data))
        _walk(str(p))
