#!/usr/bin/env python3
"""Compare engine.tokenizer's token ids with llama.cpp's (through llama-cpp-python) over whole files.

    python tests/tokenizer_parity.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf
    python tests/tokenizer_parity.py --gguf M --pre llama3        # same vocabulary, other pre-tokenizer
    python tests/tokenizer_parity.py --spm                        # a SentencePiece vocabulary trained here
    python tests/tokenizer_parity.py --model gemma3-270m --model qwen2.5-coder-0.5b   # engine.models names

Checks, each against llama.cpp's llama_tokenize:
  * wikitext-2 test, the whole file at once with add_special=True, parse_special=False
    (what llama-perplexity does);
  * every LAMBADA development passage (one per line, newline excluded), each separately;
    and what engine.eval.lambada tokenizes: the context (the passage up to its last space,
    add_special=True) and " " + last word (add_special=False);
  * llama_detokenize of those ids (remove_special=False, unparse_special=True).
Prints one summary line per check and exits 1 if any id differs.

Also a library of helpers for tests/test_tokenizer.py: writing vocab-only GGUFs (from another
GGUF's vocabulary or from a SentencePiece model trained on the spot) and calling llama.cpp.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
WIKITEXT = SHARED_DATA / "wikitext-2" / "wiki.test.raw"
LAMBADA = SHARED_DATA / "lambada" / "lambada_development_plain_text.txt"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------------------- GGUF writing

def write_vocab_gguf(path: str, meta: Mapping[str, Any], **overrides: Any) -> str:
    """Write a vocab-only GGUF (architecture llama, tiny hyper-parameters) with the tokenizer.*
    keys of `meta` (as returned by engine.tokenizer.read_gguf_metadata), changed by `overrides`
    given as short names: pre="llama3", add_bos=True, add_space_prefix=False, eos=..., ...
    An override of None removes the key."""
    import gguf

    m = {k: v for k, v in meta.items() if k.startswith("tokenizer.")}
    short = {
        "model": "tokenizer.ggml.model", "pre": "tokenizer.ggml.pre",
        "tokens": "tokenizer.ggml.tokens", "scores": "tokenizer.ggml.scores",
        "token_type": "tokenizer.ggml.token_type", "merges": "tokenizer.ggml.merges",
        "bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
        "unk": "tokenizer.ggml.unknown_token_id", "pad": "tokenizer.ggml.padding_token_id",
        "eot": "tokenizer.ggml.eot_token_id",
        "add_bos": "tokenizer.ggml.add_bos_token", "add_eos": "tokenizer.ggml.add_eos_token",
        "add_space_prefix": "tokenizer.ggml.add_space_prefix",
        "chat_template": "tokenizer.chat_template",
    }
    for k, v in overrides.items():
        key = short.get(k, k)
        if v is None:
            m.pop(key, None)
        else:
            m[key] = v
    name = overrides.get("general_name")
    m.pop("general_name", None)

    def s(v):
        return v.decode("utf-8", "surrogateescape") if isinstance(v, (bytes, bytearray)) else str(v)

    w = gguf.GGUFWriter(path, "llama")
    if name:
        w.add_name(name)
    w.add_context_length(4096)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    setters = {
        "tokenizer.ggml.model": lambda v: w.add_tokenizer_model(s(v)),
        "tokenizer.ggml.pre": lambda v: w.add_tokenizer_pre(s(v)),
        "tokenizer.ggml.tokens": lambda v: w.add_token_list([bytes(t) if isinstance(t, (bytes, bytearray)) else t for t in v]),
        "tokenizer.ggml.scores": lambda v: w.add_token_scores([float(x) for x in v]),
        "tokenizer.ggml.token_type": lambda v: w.add_token_types([int(x) for x in v]),
        "tokenizer.ggml.merges": lambda v: w.add_token_merges(list(v)),
        "tokenizer.chat_template": lambda v: w.add_chat_template(s(v)),
    }
    for key, v in m.items():
        if key in setters:
            setters[key](v)
        elif key.endswith("_token_id"):
            w.add_uint32(key, int(v))
        elif isinstance(v, bool):
            w.add_bool(key, v)
        elif isinstance(v, (bytes, str)):
            w.add_string(key, s(v))
        # other keys (e.g. token_type_count) are not needed by the tokenizer
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def train_spm_vocab(workdir: str, text: str, vocab_size: int = 1500, user_defined: Sequence[str] = (),
                    split_by_whitespace: bool = True, name: str = "spm") -> Dict[str, Any]:
    """Train a byte-fallback BPE SentencePiece model on `text`; return GGUF tokenizer metadata
    (tokens, scores, token types, bos/eos/unk ids) in read_gguf_metadata's form, plus
    "_model_file": the .model file for sentencepiece itself."""
    import numpy as np
    import sentencepiece as spm

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / f"{name}_corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    prefix = str(work / name)
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=prefix, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, character_coverage=0.9995, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
        allow_whitespace_only_pieces=True, split_by_whitespace=split_by_whitespace,
        user_defined_symbols=list(user_defined), unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        max_sentence_length=1 << 16, num_threads=2, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    toks, scores, types = [], [], []
    ud = set(user_defined)
    for i in range(sp.get_piece_size()):
        p = sp.id_to_piece(i)
        toks.append(p.encode("utf-8"))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            t = 2
        elif sp.is_control(i):
            t = 3
        elif sp.is_byte(i):
            t = 6
        elif sp.is_unused(i):
            t = 5
        elif p in ud:
            t = 4
        else:
            t = 1
        types.append(t)
    return {
        "tokenizer.ggml.model": b"llama",
        "tokenizer.ggml.tokens": toks,
        "tokenizer.ggml.scores": np.array(scores, dtype=np.float32),
        "tokenizer.ggml.token_type": np.array(types, dtype=np.int32),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_space_prefix": True,
        "_model_file": prefix + ".model",
    }


def spm_training_text(max_chars: int = 600_000) -> str:
    """Text to train a test SentencePiece vocabulary on: Paul Graham essays and War and Peace."""
    parts: List[str] = []
    for p in sorted((SHARED_DATA / "paul_graham_essays").glob("*.txt")):
        parts.append(p.read_text(encoding="utf-8", errors="replace"))
    wp = SHARED_DATA / "gutenberg" / "pg2600_war_and_peace.txt"
    if wp.exists():
        parts.append(wp.read_text(encoding="utf-8", errors="replace")[:max_chars // 3])
    return "\n".join(parts)[:max_chars]


# ----------------------------------------------------------------------------- llama.cpp

class LlamaVocab:
    """llama.cpp's tokenizer of a GGUF, through llama-cpp-python (vocab_only)."""

    def __init__(self, path: str):
        import llama_cpp

        self._lc = llama_cpp
        self.llama = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        self.vocab = self.llama._model.vocab

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> List[int]:
        return self.llama.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)

    def detokenize(self, ids: Sequence[int], remove_special: bool = False, unparse_special: bool = False) -> bytes:
        lc = self._lc
        arr = (lc.llama_token * max(1, len(ids)))(*ids)
        size = 4 * len(ids) + 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = lc.llama_detokenize(self.vocab, arr, len(ids), buf, size, remove_special, unparse_special)
            if n >= 0:
                return buf.raw[:n]
            size = -n + 1

    def token_to_piece(self, token: int, special: bool = True, lstrip: int = 0) -> bytes:
        lc = self._lc
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = lc.llama_token_to_piece(self.vocab, token, buf, size, lstrip, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n + 1

    def special(self) -> Dict[str, int]:
        lc, v = self._lc, self.vocab
        return {"bos": lc.llama_vocab_bos(v), "eos": lc.llama_vocab_eos(v), "eot": lc.llama_vocab_eot(v),
                "n_vocab": lc.llama_vocab_n_tokens(v),
                "add_bos": bool(lc.llama_vocab_get_add_bos(v)), "add_eos": bool(lc.llama_vocab_get_add_eos(v))}

    def is_eog(self, token: int) -> bool:
        return bool(self._lc.llama_vocab_is_eog(self.vocab, token))


# ----------------------------------------------------------------------------- golden data

# Tricky strings whose llama.cpp ids (SmolLM2 vocabulary) are committed in tests/data/tokenizer_golden.json.
GOLDEN_TEXTS = [
    "", " ", "Hello world", " Hello", "  two leading spaces", "trailing space ", "\n\nnewlines\n",
    "\t tab\tand\ttabs", "I'm you're he'll they've she'd it's don't", "I'M YOU'RE HE'LL 'S 'd",
    "1234567890", "3.14159 2,000 1e-5 -42", "2024-08-17T12:00:00Z", "ħéllo wörld naïve café",
    "日本語のテキスト", "中文测试，标点。", "한국어 텍스트", "Ελληνικά κείμενα", "Русский текст",
    "مرحبا بالعالم", "emoji 😀👍🏽🇫🇷 done", "def f(x):\n    return x**2  # square\n",
    "for (int i = 0; i < n; ++i) { a[i] = b[i]; }", "<|im_start|>user\nHi there<|im_end|>\n",
    "<|endoftext|>", "<|im_start|><|im_end|>", " <|im_end|> ", "<im_start> <|im_start <|fake|>",
    "a\u00a0b\u2003c\u3000d\u0085e", "   \n   \n", "multiple     spaces  here", "\r\nwindows\r\nlines\r\n",
    "'''quotes''' \"double\" `back`", "https://example.com/path?q=1&r=2#frag", "email@example.com",
    "x²+y³=z⁴ Ⅻ ５ ٣", "\u0301combining e\u0301", "ſ long s, ß, İ, ǅ",
    "unassigned \u0378, Unicode 15 \U00011F04\U00011F50", "\x00\x01\x1f\x7f control",
    "zero\u200bwidth\ufeffbom", " = Valkyria Chronicles III = \n",
]


def ids_digest(seqs: Sequence[Sequence[int]]) -> str:
    """sha256 of token id sequences (each as little-endian int32, sequences separated by -1)."""
    import hashlib
    import struct

    h = hashlib.sha256()
    for seq in seqs:
        h.update(struct.pack(f"<{len(seq)}i", *seq))
        h.update(struct.pack("<i", -1))
    return h.hexdigest()


def lambada_passages(path: Path = LAMBADA) -> List[str]:
    """LAMBADA passages: one per line, newline excluded."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def lambada_pieces(passage: str) -> List[tuple]:
    """The (text, add_special) pairs the LAMBADA protocol tokenizes for one passage
    (engine.eval.lambada.prepare): the passage, its context (up to the last space) and
    " " + its last word; just the passage when it has no space."""
    text = passage.strip()
    i = text.rfind(" ")
    if i <= 0:
        return [(passage, True)]
    return [(passage, True), (text[:i], True), (" " + text[i + 1:], False)]


def make_golden(gguf_path: str) -> Dict[str, Any]:
    """Golden data from llama.cpp: ids of GOLDEN_TEXTS, digests of the wikitext-2 test and LAMBADA dev ids."""
    import llama_cpp

    ref = LlamaVocab(gguf_path)
    cases = []
    for text in GOLDEN_TEXTS:
        for parse_special in (False, True):
            cases.append({"text": text, "add_special": True, "parse_special": parse_special,
                          "ids": ref.tokenize(text, True, parse_special)})
    out: Dict[str, Any] = {
        "about": "token ids from llama.cpp (llama_tokenize) for the SmolLM2-135M-Instruct vocabulary; regenerate with "
                 "python tests/tokenizer_parity.py --gguf M --write-golden tests/data/tokenizer_golden.json",
        "model": Path(gguf_path).name,
        "reference": f"llama-cpp-python {llama_cpp.__version__}",
        "cases": cases,
    }
    if WIKITEXT.exists():
        ids = ref.tokenize(WIKITEXT.read_text(encoding="utf-8"), True, False)
        out["wikitext2_test"] = {"file": "wikitext-2/wiki.test.raw", "how": "whole file, add_special, no parse_special",
                                 "n_tokens": len(ids), "sha256": ids_digest([ids]), "first_ids": ids[:16]}
    if LAMBADA.exists():
        seqs = [ref.tokenize(p, True, False) for p in lambada_passages()]
        out["lambada_dev"] = {"file": "lambada/lambada_development_plain_text.txt",
                              "how": "each line separately (newline excluded), add_special, no parse_special",
                              "n_passages": len(seqs), "n_tokens": sum(map(len, seqs)), "sha256": ids_digest(seqs)}
    return out


# ----------------------------------------------------------------------------- comparison

def first_difference(a: Sequence[int], b: Sequence[int]) -> Optional[int]:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compare(tok, ref: LlamaVocab, wikitext: Optional[Path] = WIKITEXT, lambada: Optional[Path] = LAMBADA,
            out=sys.stdout) -> bool:
    """Run the checks of this script; print a summary; True if everything matches."""
    ok = True
    if wikitext is not None and Path(wikitext).exists():
        text = Path(wikitext).read_text(encoding="utf-8")
        t0 = time.perf_counter()
        ours = tok.encode(text, add_special=True, parse_special=False)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        theirs = ref.tokenize(text, add_special=True, parse_special=False)
        t_ref = time.perf_counter() - t0
        d = first_difference(ours, theirs)
        same = d is None
        ok &= same
        print(f"wikitext-2 test ({len(text.encode('utf-8')):,} bytes, whole file): ours {len(ours):,} tokens "
              f"in {t_ours:.2f} s, llama.cpp {len(theirs):,} in {t_ref:.2f} s: "
              + ("IDENTICAL" if same else f"DIFFER at token {d}: ours {ours[d:d + 8]} llama.cpp {theirs[d:d + 8]}"),
              file=out)
        back_ours = tok.detokenize(ours, remove_special=False, unparse_special=True)
        back_ref = ref.detokenize(theirs, remove_special=False, unparse_special=True)
        same = back_ours == back_ref
        ok &= same
        print(f"  detokenize: {'IDENTICAL' if same else 'DIFFERENT'}"
              f"{', equals the input text' if back_ours == text.encode('utf-8') else ''}", file=out)
    if lambada is not None and Path(lambada).exists():
        lines = lambada_passages(Path(lambada))
        n_bad, n_tok, first_bad, n_detok_bad, n_parts_bad = 0, 0, None, 0, 0
        t0 = time.perf_counter()
        for i, line in enumerate(lines):
            ours = tok.encode(line, add_special=True, parse_special=False)
            theirs = ref.tokenize(line, add_special=True, parse_special=False)
            n_tok += len(theirs)
            if ours != theirs:
                n_bad += 1
                if first_bad is None:
                    first_bad = (i, first_difference(ours, theirs))
            if tok.detokenize(ours, False, True) != ref.detokenize(theirs, False, True):
                n_detok_bad += 1
            for piece, add_special in lambada_pieces(line)[1:]:
                if tok.encode(piece, add_special, False) != ref.tokenize(piece, add_special, False):
                    n_parts_bad += 1
        ok &= n_bad == 0 and n_detok_bad == 0 and n_parts_bad == 0
        msg = (f"LAMBADA dev ({len(lines):,} passages, each separately, {n_tok:,} tokens): "
               f"{len(lines) - n_bad:,}/{len(lines):,} identical")
        if first_bad is not None:
            msg += f"; first difference: line {first_bad[0] + 1}, token {first_bad[1]}"
        msg += (f"; contexts and targets differ on {n_parts_bad}; detokenize differs on {n_detok_bad} "
                f"({time.perf_counter() - t0:.1f} s)")
        print(msg, file=out)
    return ok


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", action="append", default=[], help="GGUF whose vocabulary to check (repeatable)")
    ap.add_argument("--model", action="append", default=[],
                    help="a model known to engine.models (smollm2, qwen2.5-coder-0.5b, gemma3-270m, ...), repeatable")
    ap.add_argument("--pre", help="rewrite the vocabulary with this tokenizer.ggml.pre first (BPE only)")
    ap.add_argument("--spm", action="store_true", help="check a SentencePiece vocabulary trained on the spot")
    ap.add_argument("--spm-vocab-size", type=int, default=4000)
    ap.add_argument("--backend", default="auto", choices=["auto", "hf", "python"], help="BPE merge backend")
    ap.add_argument("--wikitext", default=str(WIKITEXT))
    ap.add_argument("--lambada", default=str(LAMBADA))
    ap.add_argument("--workdir", default=None, help="where to write temporary GGUFs (default: a temp dir)")
    ap.add_argument("--write-golden", metavar="JSON", help="write golden ids from llama.cpp for --gguf and exit")
    args = ap.parse_args(argv)

    if args.write_golden:
        import json

        if len(args.gguf) != 1:
            ap.error("--write-golden needs one --gguf")
        data = make_golden(args.gguf[0])
        Path(args.write_golden).parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for key, value in data.items():  # one case per line, for readable diffs
            if key == "cases":
                body = ",\n  ".join(json.dumps(c, ensure_ascii=True) for c in value)
                lines.append(f' "cases": [\n  {body}\n ]')
            else:
                lines.append(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=True)}")
        with open(args.write_golden, "w", encoding="utf-8") as f:
            f.write("{\n" + ",\n".join(lines) + "\n}\n")
        print(f"wrote {args.write_golden}: {len(data['cases'])} cases")
        return 0

    import tempfile

    from engine.tokenizer import Tokenizer, read_gguf_metadata_fast

    if args.model:
        from engine import models

        for name in args.model:
            found = models.find(name)
            if found is None:
                ap.error(f"model {name!r} not found (python -m engine.models fetch {name})")
            args.gguf.append(str(found))
    if not args.gguf and not args.spm:
        ap.error("give --gguf PATH, --model NAME and/or --spm")
    work = args.workdir or tempfile.mkdtemp(prefix="tokparity_")
    targets = []
    for path in args.gguf:
        if args.pre:
            meta = read_gguf_metadata_fast(path)
            path = write_vocab_gguf(os.path.join(work, f"vocab_{args.pre}_{Path(path).stem}.gguf"), meta, pre=args.pre)
        targets.append(path)
    if args.spm:
        meta = train_spm_vocab(work, spm_training_text(), vocab_size=args.spm_vocab_size,
                               user_defined=["<|user|>"])
        meta.pop("_model_file")
        targets.append(write_vocab_gguf(os.path.join(work, "vocab_spm.gguf"), meta))

    all_ok = True
    for path in targets:
        t0 = time.perf_counter()
        tok = Tokenizer.from_gguf(path, bpe_backend=args.backend)
        t_load = time.perf_counter() - t0
        ref = LlamaVocab(path)
        print(f"== {path}: {tok!r}, backend {tok.bpe_backend}, loaded in {t_load:.1f} s")
        all_ok &= compare(tok, ref, Path(args.wikitext) if args.wikitext else None,
                          Path(args.lambada) if args.lambada else None)
    print("RESULT: " + ("all token ids identical to llama.cpp" if all_ok else "DIFFERENCES FOUND"))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
