"""engine.tokenizer: token ids identical to llama.cpp's.

Offline checks use golden ids generated once from llama.cpp (tests/data/tokenizer_golden.json,
see tests/tokenizer_parity.py --write-golden) and need the SmolLM2 GGUF.  Live checks compare
with llama.cpp through llama-cpp-python when it is importable, on SmolLM2 and on vocabularies
written at test time: a BPE vocabulary trained with HF tokenizers (whose merges cross every
pre-tokenizer boundary, so a wrong split shows up in the ids) under several tokenizer.ggml.pre
values, and SentencePiece vocabularies trained with sentencepiece.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest

from engine.errors import EngineError
from engine.tokenizer import Tokenizer, read_gguf_metadata

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "data" / "tokenizer_golden.json"
SHARED_DATA = ROOT.parent / "shared" / "data"
WIKITEXT = SHARED_DATA / "wikitext-2" / "wiki.test.raw"
LAMBADA = SHARED_DATA / "lambada" / "lambada_development_plain_text.txt"


def _load_parity():
    spec = importlib.util.spec_from_file_location("tokenizer_parity", Path(__file__).with_name("tokenizer_parity.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tp = _load_parity()


def smollm2_path() -> str:
    """The SmolLM2-135M-Instruct Q4_1 GGUF (found or fetched as conftest does), else skip."""
    from conftest import smollm2_or_skip

    return smollm2_or_skip()


@pytest.fixture(scope="module")
def golden():
    with open(GOLDEN, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def smol_meta():
    return read_gguf_metadata(smollm2_path())


@pytest.fixture(scope="module")
def smol(smol_meta):
    return Tokenizer.from_metadata(smol_meta)


@pytest.fixture(scope="module")
def smol_ref():
    pytest.importorskip("llama_cpp")
    return tp.LlamaVocab(smollm2_path())


def _fuzz_texts(n: int, seed: int):
    """Random strings mixing the cases where tokenizers disagree."""
    pool = (list("abcdeXYZ sStTmMdDlLrReEvV'\"0123456789.,!?;:-_()[]{}<>|/\\$+=^~`@#%&*") + [" "] * 10
            + ["\t", "\n", "\r", "\v", "\f", "\xa0", "\u2003", "\u3000", "\x85", "\x1c", "\u200b", "\ufeff",
               "é", "ß", "İ", "ſ", "K", "日", "本", "テ", "한", "🙂", "👍🏽", "\u0301", "²", "Ⅻ", "５", "٣",
               "\U00011F04", "\U00011F50", "\U00031350", "\u0378", "\u1C89", "\U0001F6DC", "\u2FFC", "▁", "ǅ"])
    words = ["hello", " world", "don't", "I'M", " 2024", "   ", "\r\n", " \n ", "''", "'s", "'LL",
             "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>", "<|user|>", "<0x41>"]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 40)):
            parts.append(rng.choice(words) if rng.random() < 0.15 else rng.choice(pool))
        out.append("".join(parts))
    return out


def _assert_same_as_llama(tok, ref, texts, detok=True):
    for text in texts:
        for add_special in (False, True):
            for parse_special in (False, True):
                ours = tok.encode(text, add_special=add_special, parse_special=parse_special)
                theirs = ref.tokenize(text, add_special, parse_special)
                assert ours == theirs, (text, add_special, parse_special)
        if detok:
            for remove_special in (False, True):
                for unparse in (False, True):
                    assert tok.detokenize(theirs, remove_special, unparse) == \
                        ref.detokenize(theirs, remove_special, unparse), (text, remove_special, unparse)


# ------------------------------------------------------------------------------------------
# offline: golden ids (SmolLM2)
# ------------------------------------------------------------------------------------------

def test_smollm2_golden_ids(smol, golden):
    assert golden["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert len(golden["cases"]) >= 60
    for case in golden["cases"]:
        ids = smol.encode(case["text"], add_special=case["add_special"], parse_special=case["parse_special"])
        assert ids == case["ids"], case["text"]


def test_smollm2_golden_special_tokens(smol, golden):
    by_text = {(c["text"], c["parse_special"]): c["ids"] for c in golden["cases"]}
    text = "<|im_start|>user\nHi there<|im_end|>\n"
    assert by_text[(text, True)][0] == 1 and 2 in by_text[(text, True)]
    assert 1 not in by_text[(text, False)]  # control tokens are plain text without parse_special
    assert smol.encode("<|endoftext|>", parse_special=True) == [0]


def test_smollm2_properties(smol):
    assert smol.model == "gpt2" and smol.pre == "smollm"
    assert smol.n_vocab == len(smol) == 49152
    # eot: no GGUF key; llama.cpp picks <|endoftext|> (0) among its candidate texts, as we do
    assert (smol.bos_id, smol.eos_id, smol.eot_id, smol.unk_id, smol.pad_id) == (1, 2, 0, 0, 2)
    assert smol.add_bos is False and smol.add_eos is False and smol.add_space_prefix is False
    assert smol.clean_spaces is False
    assert smol.eog_ids == {0, 2, 4}  # <|endoftext|>, <|im_end|>, <reponame> (FIM repo)
    assert smol.chat_template.startswith("{% for message in messages %}")
    assert smol.is_control(1) and not smol.is_control(19556)
    assert smol.id_to_token(38699) == "ĠHello" and smol.token_to_id("ĠHello") == 38699
    assert smol.token_to_piece(38699) == b" Hello"
    assert smol.token_to_piece(1) == b"<|im_start|>" and smol.token_to_piece(1, special=False) == b""


def test_smollm2_roundtrip(smol):
    for text in tp.GOLDEN_TEXTS + _fuzz_texts(200, seed=3):
        for parse_special in (False, True):
            ids = smol.encode(text, parse_special=parse_special)
            assert smol.decode(ids) == text
    ids = smol.encode("<|im_start|>user\nHi<|im_end|>", parse_special=True)
    assert smol.decode(ids, skip_special=True) == "user\nHi"


def test_smollm2_python_backend_matches_hf(smol_meta, smol, golden):
    py = Tokenizer.from_metadata(smol_meta, bpe_backend="python")
    assert smol.bpe_backend == "hf" and py.bpe_backend == "python"
    for case in golden["cases"]:
        assert py.encode(case["text"], case["add_special"], case["parse_special"]) == case["ids"]
    if WIKITEXT.exists():
        chunk = WIKITEXT.read_text(encoding="utf-8")[:200_000]
        assert py.encode(chunk) == smol.encode(chunk)


def test_smollm2_wikitext_whole_file(smol, golden):
    """llama-perplexity's tokenisation of the whole wikitext-2 test file, offline (digest from llama.cpp)."""
    if not WIKITEXT.exists():
        pytest.skip(f"{WIKITEXT} not found")
    text = WIKITEXT.read_text(encoding="utf-8")
    t0 = time.perf_counter()
    ids = smol.encode(text, add_special=True, parse_special=False)
    elapsed = time.perf_counter() - t0
    ref = golden["wikitext2_test"]
    assert len(ids) == ref["n_tokens"] == 303415
    assert ids[:16] == ref["first_ids"]
    assert tp.ids_digest([ids]) == ref["sha256"]
    assert elapsed < 30, f"encoding wikitext-2 test took {elapsed:.1f} s"  # about 1.5 s on a 2-core box
    assert smol.decode(ids) == text


def test_smollm2_lambada_passages(smol, golden):
    if not LAMBADA.exists():
        pytest.skip(f"{LAMBADA} not found")
    seqs = [smol.encode(p) for p in tp.lambada_passages(LAMBADA)]
    ref = golden["lambada_dev"]
    assert len(seqs) == ref["n_passages"] == 4869
    assert sum(map(len, seqs)) == ref["n_tokens"]
    assert tp.ids_digest(seqs) == ref["sha256"]


# ------------------------------------------------------------------------------------------
# offline: configuration and errors (no model needed)
# ------------------------------------------------------------------------------------------

def test_stored_unicode_tables_equal_unicodedata_with_fixes():
    """_UNICODE_15_1 (stored, so start-up does not scan 1.1M code points) is what unicodedata
    plus _CATEGORY_FIXES give, on every Python whose Unicode version has fix-ups."""
    import unicodedata

    from engine import tokenizer as T

    if unicodedata.unidata_version not in T._CATEGORY_FIXES:
        pytest.skip(f"no fix-ups to Unicode 15.1 for unicodedata {unicodedata.unidata_version}")
    computed = T._category_ranges_from_unicodedata()
    assert sorted(computed) == sorted(T._UNICODE_15_1) == ["L", "N", "P"]
    for name, ranges in computed.items():
        assert T._decode_ranges(T._UNICODE_15_1[name]) == ranges, name
        assert T._encode_ranges(ranges) == " ".join(T._UNICODE_15_1[name].split()), name
        assert T._char_classes()[name] == T._ranges_to_class(ranges), name


def test_merges_with_odd_spacing_and_duplicates():
    """The fast merge parsing agrees with llama.cpp's rule (split at the first space after the
    first character; the first rank of a duplicate wins; a merge without such a space is kept
    for its rank only)."""
    base = _tiny_bpe_meta()
    odd = ["Ġ t", "h e", "Ġ t", "x", " y z", "h  e", "Ġt he", "Ġ a", "i n", "Ġ w", ""]
    tok = Tokenizer.from_metadata({**base, "tokenizer.ggml.merges": odd}, bpe_backend="python")
    assert tok._merges == [("Ġ", "t"), ("h", "e"), (" y", "z"), ("h", " e"), ("Ġt", "he"), ("Ġ", "a"),
                           ("i", "n"), ("Ġ", "w")]
    assert tok._ranks[("Ġ", "t")] == 0 and tok._ranks[("", "")] == 3 and tok._ranks[("Ġt", "he")] == 6
    plain = Tokenizer.from_metadata(base, bpe_backend="python")
    assert tok.encode(" the tin w") == plain.encode(" the tin w")


def _tiny_bpe_meta(**over):
    """A tiny byte-level BPE vocabulary: every byte, a few merges, two special tokens."""
    from engine.tokenizer import _BYTE_TO_UNICODE

    toks = ["<|endoftext|>", "<|user|>"] + list(_BYTE_TO_UNICODE)
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "Ġ w"]
    for m in merges:
        a, b = m.split(" ")
        toks.append(a + b)
    meta = {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": toks, "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": [3, 4] + [1] * (len(toks) - 2),
    }
    meta.update(over)
    return {k: v for k, v in meta.items() if v is not None}


def test_unknown_pre_tokenizer_raises():
    with pytest.raises(EngineError, match="unknown pre-tokenizer"):
        Tokenizer.from_metadata(_tiny_bpe_meta(**{"tokenizer.ggml.pre": "no-such-pre"}))
    with pytest.raises(EngineError, match="not supported"):
        Tokenizer.from_metadata(_tiny_bpe_meta(**{"tokenizer.ggml.pre": "deepseek-llm"}))


def test_other_configuration_errors():
    with pytest.raises(EngineError, match="unknown tokenizer"):
        Tokenizer.from_metadata(_tiny_bpe_meta(**{"tokenizer.ggml.model": "nonsense"}))
    with pytest.raises(EngineError, match="not supported"):
        Tokenizer.from_metadata(_tiny_bpe_meta(**{"tokenizer.ggml.model": "bert"}))
    with pytest.raises(EngineError, match="merges"):
        Tokenizer.from_metadata(_tiny_bpe_meta(**{"tokenizer.ggml.merges": None}))
    with pytest.raises(EngineError, match="tokenizer"):
        Tokenizer.from_metadata({"general.architecture": "llama"})
    with pytest.raises(EngineError):
        Tokenizer.from_gguf("/nonexistent/model.gguf")
    with pytest.raises(EngineError):
        Tokenizer.from_metadata(_tiny_bpe_meta(), bpe_backend="rust")
    tok = Tokenizer.from_metadata(_tiny_bpe_meta())
    with pytest.raises(EngineError):
        tok.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(EngineError):
        tok.token_to_piece(tok.n_vocab)


def test_missing_pre_is_default_and_defaults_of_bpe():
    tok = Tokenizer.from_metadata(_tiny_bpe_meta(**{"tokenizer.ggml.pre": None}))
    assert tok.pre is None and tok.clean_spaces is True
    # llama.cpp's BPE defaults: bos = eos = 11, no BOS added unless the GGUF says so
    assert tok.bos_id == 11 and tok.eos_id == 11 and tok.add_bos is False
    tok = Tokenizer.from_metadata(_tiny_bpe_meta(**{"tokenizer.ggml.pre": "llama-bpe"}))
    assert tok.add_bos is True and tok.encode("the")[0] == 11


def test_special_token_partition_rules():
    """User-defined tokens are split out even without parse_special; control tokens only with it."""
    for backend in ("hf", "python"):
        tok = Tokenizer.from_metadata(_tiny_bpe_meta(), bpe_backend=backend)
        assert tok.bpe_backend == backend
        ids = tok.encode("a<|user|>b<|endoftext|>", parse_special=False)
        assert 1 in ids and 0 not in ids
        ids = tok.encode("a<|user|>b<|endoftext|>", parse_special=True)
        assert ids[-1] == 0 and 1 in ids
        the = tok.token_to_id("Ġthe")
        assert tok.encode(" the the") == [the, the]
        assert tok.decode(tok.encode(" the <|user|> in")) == " the <|user|> in"


def test_clean_spaces_detokenize():
    tok = Tokenizer.from_metadata(_tiny_bpe_meta())  # gpt-2 pre: clean_up_tokenization_spaces
    ids = tok.encode("a , b . c ' d 's 'm 're 've 't")
    assert tok.decode(ids) == "a, b. c'd's'm're've 't"


def test_spm_algorithm_on_handmade_vocab():
    """Highest-score merge first, leftmost on ties, byte fallback, space prefix per fragment."""
    byte_toks = ["<0x%02X>" % b for b in range(256)]
    toks = ["<unk>", "<s>", "</s>", "<|sep|>"] + byte_toks + ["▁", "a", "b", "c", "ab", "bc", "▁a", "▁ab"]
    scores = [0.0] * 4 + [0.0] * 256 + [-1, -2, -2, -2, -5, -3, -4, -6]
    types = [2, 3, 3, 4] + [6] * 256 + [1] * 8
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": toks,
            "tokenizer.ggml.scores": np.array(scores, dtype=np.float32), "tokenizer.ggml.token_type": types}
    tok = Tokenizer.from_metadata(meta)
    i = tok.token_to_id
    assert tok.add_bos and tok.bos_id == 1 and tok.add_space_prefix
    # "▁abc": bigrams ▁a(-4) ab(-5) bc(-3) -> bc first, then ▁a (a left-to-right longest match would give ▁ab c)
    assert tok.encode("abc", add_special=False) == [i("▁a"), i("bc")]
    assert tok.encode("ab") == [1, i("▁ab")]
    assert tok.encode("é", add_special=False) == [i("▁"), i("<0xC3>"), i("<0xA9>")]
    # user-defined token split out; the next fragment gets a space prefix again
    assert tok.encode("a<|sep|>a", add_special=False) == [i("▁a"), 3, i("▁a")]
    assert tok.decode(tok.encode("ab c", add_special=False)) == "ab c"
    assert tok.decode(tok.encode("ab c")) == "<s> ab c"  # llama.cpp keeps the space after a BOS
    assert tok.decode(tok.encode("ab c"), skip_special=True) == " ab c"
    assert tok.token_to_piece(i("<0x41>")) == b"A"


# ------------------------------------------------------------------------------------------
# live: llama.cpp through llama-cpp-python
# ------------------------------------------------------------------------------------------

def test_live_smollm2_golden_and_fuzz(smol, smol_ref, golden):
    for case in golden["cases"]:
        assert smol_ref.tokenize(case["text"], case["add_special"], case["parse_special"]) == case["ids"]
    _assert_same_as_llama(smol, smol_ref, tp.GOLDEN_TEXTS + _fuzz_texts(300, seed=1))
    spec = smol_ref.special()
    assert (spec["bos"], spec["eos"], spec["eot"], spec["n_vocab"]) == (smol.bos_id, smol.eos_id, smol.eot_id, smol.n_vocab)
    assert {t for t in range(smol.n_vocab) if smol_ref.is_eog(t)} == set(smol.eog_ids)


def test_live_smollm2_token_pieces(smol, smol_ref):
    for t in range(0, smol.n_vocab, 7):
        for special in (False, True):
            assert smol.token_to_piece(t, special) == smol_ref.token_to_piece(t, special), t


def test_live_smollm2_lambada_subset(smol, smol_ref):
    if not LAMBADA.exists():
        pytest.skip(f"{LAMBADA} not found")
    for p in tp.lambada_passages(LAMBADA)[:300]:
        assert smol.encode(p) == smol_ref.tokenize(p, True, False)


def _train_bpe_meta(specials, types=None, vocab_size=3000, n_texts=4000, seed=11):
    """GGUF metadata of a byte-level BPE vocabulary trained here without pre-tokenization: its
    merges cross spaces, digits and punctuation, so each pre-tokenizer's boundaries show in the
    ids.  `types` maps special texts to token types (default: control)."""
    import tokenizers
    from tokenizers import models, pre_tokenizers, trainers

    ht = tokenizers.Tokenizer(models.BPE())
    ht.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=list(specials), show_progress=False)
    texts = _fuzz_texts(n_texts, seed=seed)
    if WIKITEXT.exists():
        texts += WIKITEXT.read_text(encoding="utf-8")[:100_000].split("\n")
    ht.train_from_iterator(texts, trainer)
    model = json.loads(ht.to_str())["model"]
    toks = [None] * len(model["vocab"])
    for t, i in model["vocab"].items():
        toks[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = types or {}
    return {
        "tokenizer.ggml.model": b"gpt2",
        "tokenizer.ggml.tokens": [t.encode("utf-8") for t in toks],
        "tokenizer.ggml.token_type": np.array([types.get(t, 3) if t in specials else 1 for t in toks], dtype=np.int32),
        "tokenizer.ggml.merges": [m.encode("utf-8") for m in merges],
        "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 0,
    }


@pytest.fixture(scope="module")
def synth_bpe_meta():
    pytest.importorskip("llama_cpp")
    return _train_bpe_meta(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])


@pytest.mark.parametrize("pre", ["smollm", "llama3", "default", "gpt-2", "qwen2", "falcon", None])
def test_live_bpe_pre_tokenizers(pre, synth_bpe_meta, tmp_path):
    pytest.importorskip("llama_cpp")
    path = tp.write_vocab_gguf(str(tmp_path / "vocab.gguf"), synth_bpe_meta, pre=pre)
    ref = tp.LlamaVocab(path)
    texts = tp.GOLDEN_TEXTS + _fuzz_texts(250, seed=5)
    for backend in ("hf", "python"):
        tok = Tokenizer.from_gguf(path, bpe_backend=backend)
        assert tok.pre == pre
        _assert_same_as_llama(tok, ref, texts, detok=backend == "hf")
    assert tok.add_bos == ref.special()["add_bos"]


def test_live_pre_tokenizers_discriminate(synth_bpe_meta, tmp_path):
    """The synthetic vocabulary does tell the pre-tokenizers apart (so the test above has teeth)."""
    pytest.importorskip("llama_cpp")
    texts = tp.GOLDEN_TEXTS + _fuzz_texts(100, seed=6)
    seen = {}
    for pre in ("smollm", "llama3", "default", "gpt-2", "qwen2"):
        ref = tp.LlamaVocab(tp.write_vocab_gguf(str(tmp_path / f"{pre}.gguf"), synth_bpe_meta, pre=pre))
        seen[pre] = [tuple(ref.tokenize(t, False, False)) for t in texts]
    assert len({tuple(v) for v in seen.values()}) == len(seen)


@pytest.mark.parametrize("pre,name", [("jina-v2-de", None), ("gpt-2", "Phi-3 mini"), ("smollm", None)])
def test_live_special_token_attribute_rules(pre, name, tmp_path):
    """llama.cpp's special-token fix-ups: user-defined tokens split without parse_special, <mask>
    lstrip (jina), rstrip after specials (phi-3), gpt-oss's <|channel|>, harmony's <|end|>."""
    pytest.importorskip("llama_cpp")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<mask>", "<|channel|>", "<|return|>",
                "<|call|>", "<|end|>", "<|fim_prefix|>", "</s>", "<unk>", "<s>", "<|user|>"]
    meta = _train_bpe_meta(specials, types={"<|user|>": 4, "<mask>": 4, "<|end|>": 1}, n_texts=2000, seed=3)
    path = tp.write_vocab_gguf(str(tmp_path / "v.gguf"), meta, pre=pre, general_name=name)
    tok, ref = Tokenizer.from_gguf(path), tp.LlamaVocab(path)
    texts = ["<|user|>  \nhi", "a  <mask> b", " <|channel|> x<|end|>y", "<|return|> <|call|>"]
    _assert_same_as_llama(tok, ref, texts + [t + s + " z " for t in tp.GOLDEN_TEXTS[:20] for s in specials[::3]])
    assert {t for t in range(tok.n_vocab) if ref.is_eog(t)} == set(tok.eog_ids)
    assert tok.token_to_id("<|end|>") not in tok.eog_ids
    for t in range(tok.n_vocab):
        assert tok.token_to_piece(t, False) == ref.token_to_piece(t, False), t


@pytest.fixture(scope="module")
def spm_meta(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("sentencepiece")
    work = tmp_path_factory.mktemp("spm")
    text = tp.spm_training_text(300_000)
    if len(text) < 100_000:
        pytest.skip(f"training text for the SentencePiece vocabulary not found under {tp.SHARED_DATA}")
    meta = tp.train_spm_vocab(str(work), text, vocab_size=2000,
                              user_defined=["<|user|>", "▁▁▁▁"])
    meta.pop("_model_file")
    return meta


@pytest.mark.parametrize("add_space_prefix", [True, False])
def test_live_spm_vocab(spm_meta, tmp_path, add_space_prefix):
    pytest.importorskip("llama_cpp")
    path = tp.write_vocab_gguf(str(tmp_path / "spm.gguf"), spm_meta, add_space_prefix=add_space_prefix)
    tok = Tokenizer.from_gguf(path)
    ref = tp.LlamaVocab(path)
    assert tok.model == "llama" and tok.add_bos and tok.bos_id == 1
    _assert_same_as_llama(tok, ref, tp.GOLDEN_TEXTS + _fuzz_texts(300, seed=9))
    for t in range(tok.n_vocab):
        for special in (False, True):
            assert tok.token_to_piece(t, special) == ref.token_to_piece(t, special), t
    if LAMBADA.exists():
        for p in tp.lambada_passages(LAMBADA)[:200]:
            assert tok.encode(p) == ref.tokenize(p, True, False)
    if add_space_prefix:
        for text in tp.GOLDEN_TEXTS:
            ids = tok.encode(text, add_special=False)
            # merges can reach the user-defined piece "▁▁▁▁", which llama.cpp renders raw
            if tok.token_to_id("▁▁▁▁") not in ids:
                assert tok.decode(ids) == text


def test_live_spm_vocab_with_cross_word_pieces(tmp_path):
    """Pieces spanning words ("of▁the") disable the per-word cut; ids must not change."""
    pytest.importorskip("sentencepiece")
    pytest.importorskip("llama_cpp")
    text = tp.spm_training_text(200_000)
    if len(text) < 100_000:
        pytest.skip(f"training text for the SentencePiece vocabulary not found under {tp.SHARED_DATA}")
    meta = tp.train_spm_vocab(str(tmp_path), text, vocab_size=2000, split_by_whitespace=False)
    meta.pop("_model_file")
    assert any("▁" in t.decode("utf-8")[1:] for t in meta["tokenizer.ggml.tokens"])
    path = tp.write_vocab_gguf(str(tmp_path / "spm.gguf"), meta)
    tok, ref = Tokenizer.from_gguf(path), tp.LlamaVocab(path)
    _assert_same_as_llama(tok, ref, tp.GOLDEN_TEXTS + _fuzz_texts(200, seed=10), detok=False)
    if LAMBADA.exists():
        for p in tp.lambada_passages(LAMBADA)[:100]:
            assert tok.encode(p) == ref.tokenize(p, True, False)
    for text in tp.GOLDEN_TEXTS:
        assert tok.decode(tok.encode(text, add_special=False)) == text


# ------------------------------------------------------------------------------------------
# read_gguf_metadata_fast (what from_gguf reads paths with) against the gguf package
# ------------------------------------------------------------------------------------------

def _assert_same_meta(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray), k
            assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), k
        else:
            assert type(x) is type(y) and x == y, (k, x, y)


def _gguf_bytes(kvs, version=3, n_tensors=0) -> bytes:
    """A GGUF header and key/value section (no tensors) from (key, type, value) triples;
    type 9 values are (element type, [values]), nested to any depth."""
    import struct

    fmts = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

    def val(t, v):
        if t == 8:
            b = v.encode("utf-8") if isinstance(v, str) else v
            return struct.pack("<Q", len(b)) + b
        if t == 9:
            et, items = v
            return struct.pack("<IQ", et, len(items)) + b"".join(val(et, x) for x in items)
        return struct.pack(fmts[t], v)

    out = b"GGUF" + struct.pack("<IQQ", version, n_tensors, len(kvs))
    for key, t, v in kvs:
        out += val(8, key) + struct.pack("<I", t) + val(t, v)
    return out


_ALL_TYPES_KVS = [
    ("general.architecture", 8, "llama"), ("general.u8", 0, 200), ("general.i8", 1, -100),
    ("general.u16", 2, 60000), ("general.i16", 3, -30000), ("general.u32", 4, 4000000000),
    ("general.i32", 5, -2000000000), ("general.f32", 6, 0.1), ("general.bool", 7, True),
    ("general.u64", 10, 2 ** 63 + 5), ("general.i64", 11, -2 ** 62), ("general.f64", 12, 0.1),
    ("general.bytes", 8, b"\xff\xfe not utf-8"), ("general.empty_str", 8, ""),
    ("tokenizer.ggml.tokens", 9, (8, ["a", "", "\u2581b", b"\x80\xff"])),
    ("tokenizer.ggml.scores", 9, (6, [0.5, -1.25, 3.0, 1e-30])),
    ("tokenizer.ggml.token_type", 9, (5, [1, 2, 3, 6])),
    ("tokenizer.u8s", 9, (0, [1, 255])), ("tokenizer.bools", 9, (7, [True, False, True])),
    ("tokenizer.f64s", 9, (12, [1.5, -2.5])), ("tokenizer.u64s", 9, (10, [1, 2 ** 64 - 1])),
    ("tokenizer.empty_i32", 9, (5, [])), ("tokenizer.empty_str", 9, (8, [])), ("tokenizer.empty_nested", 9, (9, [])),
    ("tokenizer.nested", 9, (9, [(5, [1, 2]), (8, ["x"]), (9, [(0, [7])])])),
    ("llama.block_count", 4, 1), ("other.strings", 9, (8, ["skipped"] * 3)),
]


@pytest.mark.parametrize("prefixes", [("tokenizer.", "general."), ("",), ("tokenizer.ggml.",)])
def test_fast_gguf_reader_equals_gguf_package_on_every_value_type(tmp_path, prefixes):
    from engine.tokenizer import read_gguf_metadata_fast

    path = tmp_path / "kv.gguf"
    path.write_bytes(_gguf_bytes(_ALL_TYPES_KVS))
    fast = read_gguf_metadata_fast(path, prefixes)
    _assert_same_meta(fast, read_gguf_metadata(str(path), prefixes))
    if prefixes == ("",):
        assert "GGUF.version" not in fast and fast["general.u64"] == 2 ** 63 + 5
        assert fast["tokenizer.ggml.tokens"] == [b"a", b"", "\u2581b".encode(), b"\x80\xff"]
        assert "tokenizer.nested" not in fast  # nested arrays are skipped, as by read_gguf_metadata


def test_fast_gguf_reader_equals_gguf_package_on_smollm2(smol_meta):
    from engine.tokenizer import read_gguf_metadata_fast

    t0 = time.perf_counter()
    fast = read_gguf_metadata_fast(smollm2_path())
    dt = time.perf_counter() - t0
    _assert_same_meta(fast, smol_meta)
    assert dt < 5, dt  # ~0.1 s; the gguf package takes seconds


def test_fast_gguf_reader_errors(tmp_path):
    from engine.tokenizer import read_gguf_metadata_fast

    with pytest.raises(EngineError, match="no such GGUF file"):
        read_gguf_metadata_fast(tmp_path / "missing.gguf")
    with pytest.raises(EngineError, match="no such GGUF file"):
        Tokenizer.from_gguf(str(tmp_path / "missing.gguf"))
    data = _gguf_bytes(_ALL_TYPES_KVS)
    bad = tmp_path / "bad.gguf"
    for blob, what in ((b"", "empty"), (b"GGUX" + data[4:], "magic"), (data[:24] + b"\x00" * 3, "short")):
        bad.write_bytes(blob)
        with pytest.raises(EngineError, match="cannot read GGUF"):
            read_gguf_metadata_fast(bad)
    # every truncation of the key/value section: a clean EngineError, never another exception
    for n in range(4, len(data), 3):
        bad.write_bytes(data[:n])
        with pytest.raises(EngineError):
            read_gguf_metadata_fast(bad, ("",))
    # a huge string length or count
    bad.write_bytes(_gguf_bytes([("general.a", 8, "x")])[:-9] + (2 ** 62).to_bytes(8, "little") + b"x")
    with pytest.raises(EngineError, match="truncated"):
        read_gguf_metadata_fast(bad)
    # duplicate keys (GGUFReader refuses them too), unknown value types
    bad.write_bytes(_gguf_bytes([("general.a", 4, 1), ("general.a", 4, 2)]))
    with pytest.raises(EngineError, match="duplicate key general.a"):
        read_gguf_metadata_fast(bad)
    with pytest.raises(EngineError):
        read_gguf_metadata(str(bad))
    bad.write_bytes(_gguf_bytes([("general.a", 4, 1)]).replace(b"\x04\x00\x00\x00\x01", b"\x0d\x00\x00\x00\x01"))
    with pytest.raises(EngineError, match="unknown value type 13"):
        read_gguf_metadata_fast(bad)
    # GGUF v1 (32-bit lengths) is left to the gguf package, which refuses it
    bad.write_bytes(_gguf_bytes([("general.a", 4, 1)], version=1))
    with pytest.raises(EngineError, match="cannot read GGUF"):
        read_gguf_metadata_fast(bad)


# ------------------------------------------------------------------------------------------
# special-token partition: the prefilter (_present_specials) changes nothing
# ------------------------------------------------------------------------------------------

def _partition_full_scan(tok, text, parse_special):
    """tokenizer_st_partition trying every cached special token (the engine skips those whose
    text does not occur in `text`)."""
    from engine import tokenizer as T

    frags = [text] if text else []
    for tid in tok._special_cache:
        a = tok._attrs[tid]
        if not parse_special and a & (T.ATTR_CONTROL | T.ATTR_UNKNOWN):
            continue
        st = tok._id2tok[tid]
        new = []
        for f in frags:
            if not isinstance(f, str):
                new.append(f)
                continue
            pos = 0
            while True:
                m = f.find(st, pos)
                if m < 0:
                    if pos < len(f):
                        new.append(f[pos:])
                    break
                left = f[pos:m]
                if a & T.ATTR_LSTRIP:
                    left = left.rstrip(T._C_ISSPACE)
                if left:
                    new.append(left)
                new.append(tid)
                pos = m + len(st)
                if a & T.ATTR_RSTRIP:
                    while pos < len(f) and f[pos] in T._C_ISSPACE:
                        pos += 1
        frags = new
    return frags


def test_special_partition_prefilter_equals_full_scan():
    from engine import tokenizer as T

    specials = ["<a>", "<a><b>", "<b>", "<", "\n", "\n\n", "\n\n\n", "  ", "   ", "\t", "ab", "b<a",
                "<unused1>", "<unused12>", "<u", "é", "🙂x", "x"]
    types = [4, 3, 4, 4, 4, 4, 4, 4, 4, 4, 3, 4, 3, 3, 2, 4, 4, 4]
    toks = ["<unk>", "<s>", "</s>"] + specials + ["<0x%02X>" % b for b in range(256)] + ["\u2581", "a", "b"]
    ttypes = [2, 3, 3] + types + [6] * 256 + [1, 1, 1]
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": toks,
            "tokenizer.ggml.scores": np.zeros(len(toks), dtype=np.float32),
            "tokenizer.ggml.token_type": np.array(ttypes, dtype=np.int32)}
    tok = Tokenizer.from_metadata(meta)
    tok._attrs[tok.token_to_id("<b>")] |= T.ATTR_LSTRIP
    tok._attrs[tok.token_to_id("\t")] |= T.ATTR_RSTRIP | T.ATTR_LSTRIP
    rng = random.Random(3)
    pool = specials + ["a", "b", " ", "u", "n", "s", "e", "d", "1", "2", ">", "🙂", "\r"]
    texts = ["", "x", "<a><b>", "\n\n\n\n\n"] + ["".join(rng.choice(pool) for _ in range(rng.randint(1, 30)))
                                                 for _ in range(3000)]
    texts.append("".join(rng.choice(pool) for _ in range(20000)))  # long: per-character slice lookups
    for text in texts:
        for parse_special in (False, True):
            assert tok._partition(text, parse_special) == _partition_full_scan(tok, text, parse_special), \
                (text, parse_special)
