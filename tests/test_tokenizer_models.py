"""Tokenizers of the Gemma-3 and Qwen2.5 models: token ids identical to llama.cpp's.

* A small handmade SentencePiece vocabulary with Gemma-3's traits (always runs): BOS 2 added,
  no space prefix (``tokenizer.ggml.add_space_prefix = false``), user-defined tokens
  (runs of raw spaces, newlines and tabs, HTML tags) split out of the raw text before SPM
  even without parse_special, control tokens only with it, ``<0xXX>`` byte fallback.
  Checked against fixed ids, and against llama.cpp when llama-cpp-python is importable.
* The real GGUFs (``engine.models.find``: ``gemma3-270m``, ``qwen2.5-coder-0.5b``,
  ``qwen2.5-coder-1.5b``; each skipped when absent): against llama-cpp-python
  (``Llama(path, vocab_only=True)``) on the whole wikitext-2 test file as the perplexity
  tools tokenize it, every LAMBADA development passage with the context and target pieces the
  LAMBADA protocol tokenizes, tricky strings with every add_special / parse_special
  combination, detokenization, token pieces, special ids and end-of-generation ids.
"""

from __future__ import annotations

import importlib.util
import random
import time
from pathlib import Path

import numpy as np
import pytest

from engine.tokenizer import Tokenizer


def _load_parity():
    spec = importlib.util.spec_from_file_location("tokenizer_parity", Path(__file__).with_name("tokenizer_parity.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tp = _load_parity()

CONTROL, UNKNOWN, USER, BYTE, NORMAL = 3, 2, 4, 6, 1

TRICKY = [
    "12345", "I'LL", "don't", "I'm you're he'll they've she'd", "line one\r\nline two\r\n", "a  b   c    d",
    "\t\tindented\n\t\t\tmore", "  two leading spaces", " one leading space", "no leading space",
    "trailing   ", "\n\n\n\nfour newlines", "emoji 😀👍🏽🇫🇷 and rare CJK 𠀋𪚲 龘", "ǅ ß İ ſ é\u0301",
    "def f(x):\n    return {'k': [x ** 2 for x in range(10)]}  # comment\n",
    "for (int i = 0; i < n; ++i) { a[i] = b[i] >> 1; }",
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<bos><eos><pad><unk><mask>", "<|endoftext|><|fim_prefix|>x<|fim_suffix|>y<|fim_middle|>",
    "<table><tr><td>cell</td></tr></table>", "[multimodal] <start_of_image> <unused0>",
    "\u2581already\u2581escaped \u2581", " = Valkyria Chronicles III = \n", "", " ", "\n",
]


def _fuzz(n: int, seed: int):
    pool = list("abcdehlorwt <>/\n\t\r'0123456789") + ["  ", "   ", "\n\n", "é", "😀", "\u2581", "日本"]
    words = ["hello", " world", "<table>", "</table>", "<start_of_turn>", "<end_of_turn>", "<bos>", "[multimodal]",
             "<|im_start|>", "<|im_end|>", "<|endoftext|>", "don't", "I'LL"]
    rng = random.Random(seed)
    return ["".join(rng.choice(words) if rng.random() < 0.2 else rng.choice(pool) for _ in range(rng.randint(0, 30)))
            for _ in range(n)]


def _compare(tok, ref, texts, detok=True):
    bad = []
    for text in texts:
        for add_special in (False, True):
            for parse_special in (False, True):
                ours = tok.encode(text, add_special=add_special, parse_special=parse_special)
                theirs = ref.tokenize(text, add_special, parse_special)
                if ours != theirs:
                    bad.append(f"{text[:50]!r} add_special={add_special} parse_special={parse_special}: "
                               f"ours {ours[:16]}, llama.cpp {theirs[:16]}")
                    continue
                if detok:
                    for remove, unparse in ((False, True), (True, False), (False, False)):
                        a, b = tok.detokenize(ours, remove, unparse), ref.detokenize(theirs, remove, unparse)
                        if a != b:
                            bad.append(f"detokenize {text[:40]!r} remove_special={remove} unparse_special={unparse}: "
                                       f"ours {a[:50]!r}, llama.cpp {b[:50]!r}")
    assert not bad, f"{len(bad)} differences:\n" + "\n".join(bad[:30])


# ----------------------------------------------------------------------------- handmade Gemma-like vocabulary

def gemma_like_meta() -> dict:
    special = [("<pad>", CONTROL), ("<eos>", CONTROL), ("<bos>", CONTROL), ("<unk>", UNKNOWN), ("<mask>", CONTROL),
               ("[multimodal]", USER), ("\n", USER), ("\n\n", USER), ("\n\n\n", USER), ("  ", USER), ("   ", USER),
               ("\t", USER), ("\t\t", USER), ("<table>", USER), ("</table>", USER), ("<start_of_turn>", CONTROL),
               ("<end_of_turn>", CONTROL), ("<unused0>", CONTROL), ("<start_of_image>", USER)]
    normal = [("\u2581", -1), ("a", -2), ("b", -2), ("c", -2), ("d", -3), ("e", -2), ("h", -3), ("l", -2), ("o", -2),
              ("w", -3), ("r", -3), ("t", -3), ("<", -4), (">", -4), ("u", -4), ("s", -4), ("n", -4), ("ab", -5),
              ("bc", -3), ("\u2581a", -4), ("\u2581ab", -6), ("he", -5), ("ll", -5), ("llo", -6), ("hello", -7),
              ("\u2581hello", -8), ("\u2581w", -5), ("wor", -7), ("or", -6), ("ld", -6), ("world", -8),
              ("\u2581world", -9), ("\u2581\u2581", -6), ("\u2581\u2581\u2581", -7), ("o\u2581w", -4.5), ("ta", -10),
              ("table", -11), ("\u2581<", -9), ("é", -5)]
    toks = [t for t, _ in special] + ["<0x%02X>" % b for b in range(256)] + [t for t, _ in normal]
    types = [k for _, k in special] + [BYTE] * 256 + [NORMAL] * len(normal)
    scores = [0.0] * len(special) + [0.0] * 256 + [float(s) for _, s in normal]
    return {
        "tokenizer.ggml.model": b"llama", "tokenizer.ggml.pre": b"default",
        "tokenizer.ggml.tokens": [t.encode("utf-8") for t in toks],
        "tokenizer.ggml.scores": np.array(scores, dtype=np.float32),
        "tokenizer.ggml.token_type": np.array(types, dtype=np.int32),
        "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 3, "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.add_space_prefix": False,
    }


@pytest.fixture(scope="module")
def gemma_like(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gemma_like") / "vocab.gguf")
    tp.write_vocab_gguf(path, gemma_like_meta())
    return path, Tokenizer.from_gguf(path)  # a vocab-only GGUF


def test_gemma_like_spm_fixed_ids(gemma_like):
    _, tok = gemma_like
    i = tok.token_to_id
    assert tok.model == "llama" and tok.add_bos and not tok.add_eos and not tok.add_space_prefix
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id) == (2, 1, 3, 0)
    assert tok.encode("hello") == [2, i("hello")]  # no "▁" prefixed: "▁hello" with add_space_prefix
    assert tok.encode(" hello", add_special=False) == [i("\u2581hello")]
    # user-defined tokens are split out of the raw text before SPM, without parse_special
    assert tok.encode("ab  ab", add_special=False) == [i("ab"), i("  "), i("ab")]
    assert tok.encode("ab   ab    ab", add_special=False) == [i("ab"), i("   "), i("ab"), i("   "), i("\u2581ab")]
    assert tok.encode("\n\n\n\n", add_special=False) == [i("\n\n\n"), i("\n")]
    assert tok.encode("\t\t\ta", add_special=False) == [i("\t\t"), i("\t"), i("a")]
    assert tok.encode("ab<table>", add_special=False) == [i("ab"), i("<table>")]
    # control tokens only with parse_special
    assert i("<start_of_turn>") not in tok.encode("<start_of_turn>hello", parse_special=False)
    assert tok.encode("<start_of_turn>hello", parse_special=True) == [2, i("<start_of_turn>"), i("hello")]
    # byte fallback, and a merge across a space ("o▁w", scored above "▁w")
    assert tok.encode("😀", add_special=False) == [i("<0xF0>"), i("<0x9F>"), i("<0x98>"), i("<0x80>")]
    assert tok.encode("x", add_special=False) == [i("<0x78>")]
    assert tok.encode("hello world", add_special=False) == [i("he"), i("ll"), i("o\u2581w"), i("or"), i("ld")]
    # no leading space to strip when decoding
    assert tok.decode(tok.encode(" hello"), skip_special=True) == " hello"
    assert tok.decode(tok.encode("hello")) == "<bos>hello"
    for text in TRICKY:
        if "\u2581" not in text:  # a literal "▁" comes back as a space, as in llama.cpp
            assert tok.decode(tok.encode(text, add_special=False, parse_special=True)) == text


def test_gemma_like_spm_live(gemma_like):
    pytest.importorskip("llama_cpp")
    path, tok = gemma_like
    ref = tp.LlamaVocab(path)
    s = ref.special()
    assert (s["bos"], s["eos"], s["add_bos"], s["add_eos"], s["n_vocab"]) == (2, 1, True, False, tok.n_vocab)
    _compare(tok, ref, TRICKY + tp.GOLDEN_TEXTS + _fuzz(400, seed=11))
    for t in range(tok.n_vocab):
        for special in (False, True):
            assert tok.token_to_piece(t, special) == ref.token_to_piece(t, special), t
    assert tok.eog_ids == {t for t in range(tok.n_vocab) if ref.is_eog(t)}


# ----------------------------------------------------------------------------- the real models

MODELS = ["gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]


def _ours(path: str) -> Tokenizer:
    """from_gguf (the metadata read directly, well under a second for 262k tokens)."""
    return Tokenizer.from_gguf(path)


@pytest.fixture(scope="module", params=MODELS)
def real(request):
    from engine import models

    name = request.param
    path = models.find(name)
    if path is None:
        spec = models.MODELS[name]
        pytest.skip(f"{name} not found (python -m engine.models fetch {name}, or ${spec.env_var})")
    pytest.importorskip("llama_cpp")
    t0 = time.perf_counter()
    tok = _ours(str(path))
    dt = time.perf_counter() - t0
    assert dt < 30, f"building the tokenizer of {name} took {dt:.1f} s"
    return name, tok, tp.LlamaVocab(str(path))


def test_real_special_tokens(real):
    name, tok, ref = real
    s = ref.special()
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.add_eos, tok.n_vocab) == \
        (s["bos"], s["eos"], s["add_bos"], s["add_eos"], s["n_vocab"])
    assert tok.eog_ids == {t for t in range(tok.n_vocab) if ref.is_eog(t)}
    if name.startswith("gemma3"):
        assert tok.model == "llama" and tok.add_bos and tok.bos_id == 2 and not tok.add_space_prefix
        assert tok.token_to_id("<end_of_turn>") in tok.eog_ids
    else:
        assert tok.model == "gpt2" and tok.pre == "qwen2" and not tok.add_bos
        assert len(tok.encode("12345")) == 5  # one token per digit
        assert tok.token_to_id("<|im_end|>") in tok.eog_ids


def test_real_tricky_strings(real):
    _, tok, ref = real
    _compare(tok, ref, TRICKY + tp.GOLDEN_TEXTS + _fuzz(300, seed=12))


def test_real_token_pieces(real):
    _, tok, ref = real
    ids = sorted(set(range(0, tok.n_vocab, 37)) | set(tok._special_cache[:500]) | set(range(300)))
    for t in ids:
        for special in (False, True):
            assert tok.token_to_piece(t, special) == ref.token_to_piece(t, special), t


def test_real_wikitext_whole_file(real):
    """As llama-perplexity and engine.perplexity tokenize it: the whole file, add_special, no parse_special."""
    if not tp.WIKITEXT.exists():
        pytest.skip(f"{tp.WIKITEXT} not found")
    _, tok, ref = real
    text = tp.WIKITEXT.read_text(encoding="utf-8")
    t0 = time.perf_counter()
    ours = tok.encode(text, add_special=True, parse_special=False)
    dt = time.perf_counter() - t0
    theirs = ref.tokenize(text, add_special=True, parse_special=False)
    d = tp.first_difference(ours, theirs)
    assert d is None, f"first difference at token {d}: ours {ours[d:d + 8]}, llama.cpp {theirs[d:d + 8]}"
    assert tok.detokenize(ours, False, True) == ref.detokenize(theirs, False, True)
    assert dt < 60, f"encoding wikitext-2 test took {dt:.1f} s"


def test_real_lambada_dev(real):
    """Every passage, and the context and target pieces engine.eval.lambada tokenizes."""
    if not tp.LAMBADA.exists():
        pytest.skip(f"{tp.LAMBADA} not found")
    _, tok, ref = real
    bad = []
    for n, line in enumerate(tp.lambada_passages()):
        for piece, add_special in tp.lambada_pieces(line):
            ours = tok.encode(piece, add_special, False)
            theirs = ref.tokenize(piece, add_special, False)
            if ours != theirs:
                bad.append(f"line {n + 1} {piece[:40]!r}: ours {ours[:12]}, llama.cpp {theirs[:12]}")
    assert not bad, f"{len(bad)} differences:\n" + "\n".join(bad[:20])
