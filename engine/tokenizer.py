"""Tokenizer configured from a GGUF's own metadata, with token ids identical to llama.cpp's.

    from engine.tokenizer import Tokenizer
    tok = Tokenizer.from_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
    ids = tok.encode("Hello world")            # == llama_tokenize(vocab, text, add_special=True, parse_special=False)
    text = tok.decode(ids)

Two vocabulary families are supported, chosen by ``tokenizer.ggml.model``:

``"gpt2"`` (byte-level BPE)
    The text is pre-tokenized with the regex sequence that llama.cpp selects from
    ``tokenizer.ggml.pre`` (see ``_PRE_TOKENIZERS``), every word is byte-encoded with the
    GPT-2 byte->unicode map and then merged by BPE rank (``tokenizer.ggml.merges``, rank = index).
    The merges run in the HF ``tokenizers`` BPE model when it accepts the vocabulary (it
    refuses merges whose result is not a token), else in a pure-Python port of llama.cpp's
    ``llm_tokenizer_bpe_session``; both give llama.cpp's ids, the Rust one is faster.
    The pre-tokenizer itself is not HF's: llama.cpp splits with hand-written splitters
    (``unicode_regex_split_custom_gpt2/llama3/qwen2``) and std::regex over its own Unicode
    tables (Unicode 15.1 categories, the White_Space property for ``\\s``).  We reproduce those
    with Python ``re`` patterns whose character classes are built from the same Unicode
    version (``_char_classes``), so ids do not depend on the Unicode version of onig/Rust.

``"llama"`` (SentencePiece)
    A port of llama.cpp's ``llm_tokenizer_spm_session``: spaces become ``U+2581``, a space is
    prefixed to each raw-text fragment that starts the text or follows a special token
    (``tokenizer.ggml.add_space_prefix``), then adjacent symbols are greedily merged by highest
    vocabulary score (ties: leftmost first), and pieces that are not tokens fall back to
    ``<0xXX>`` byte tokens.  The ``sentencepiece`` library is *not* used, although on plain
    text it agrees with llama.cpp: it differs wherever special pieces are involved.  It matches
    user-defined pieces inside the (escaped) text, llama.cpp splits them out of the raw text
    first; with a user-defined ``▁▁▁▁``, for instance, sentencepiece encodes four spaces as that
    piece and llama.cpp as ``▁▁▁`` + ``▁word``.  It adds the dummy prefix once per call,
    llama.cpp once per text fragment following a special token.  It has no counterpart of
    ``parse_special``.  Building its ModelProto from GGUF data would also need protobuf.
    The tests check the port against llama.cpp on vocabularies trained with sentencepiece.

Special and control tokens are split out of the text first, exactly as llama.cpp's
``tokenizer_st_partition`` does (longest token text first; with ``parse_special=False`` only
user-defined tokens are recognised, control/unknown ones are tokenized as plain text).
Token attributes follow llama.cpp's loader, including its text-based fix-ups (EOT/EOG/FIM
tokens forced to control, the gpt-oss/harmony and phi-3 rules).

Known, deliberate limits: other vocabulary types (bert, t5, rwkv, ...) and pre-tokenizers
that llama.cpp runs through std::regex with non-trivial patterns (deepseek, bloom, tekken,
gpt-4o, ...) raise EngineError rather than risk different ids.  Two orders that llama.cpp
leaves unspecified are made deterministic here: special tokens of equal text length are tried
in id order (llama.cpp uses an unstable sort), and when a vocabulary holds several candidate
texts for one auto-detected special token (EOT, FIM, ...), the lowest id wins (llama.cpp takes
whichever its hash map yields first).  The ids produced from text are unaffected by either
except in contrived vocabularies.  The Unicode tables are Unicode 15.1's, as llama.cpp's,
whatever Python's unicodedata version: the L/N/P ranges are stored in this module
(``_UNICODE_15_1``; the tests check them against unicodedata 14.0, 15.0, 15.1 or 16.0 plus
``_CATEGORY_FIXES``).

Start-up: ``engine.Model.tokenizer`` uses :meth:`Tokenizer.from_model`, which copies the
vocabulary out of the metadata the C loader already parsed (``rk_model_meta_*``, tens of
milliseconds for a 49k vocabulary).  ``from_gguf`` given a path reads just the key/value
section of the file (:func:`read_gguf_metadata_fast`: 0.3 s for Gemma-3's 262k tokens, a
vocab-only GGUF will do); :func:`read_gguf_metadata` goes through ``gguf.GGUFReader``, which
parses every array element (3 s for a 49k vocabulary, 40 s or more for 262k).  Building the
tokenizer from the metadata takes about 0.5 s for 262k tokens.  Special-token partition only
tries the special tokens whose text occurs in the input (Gemma-3 has 6414 of them).
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import os
import re
import unicodedata
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import EngineError

__all__ = ["Tokenizer"]

# --------------------------------------------------------------------------------------
# llama.cpp enums
# --------------------------------------------------------------------------------------

# tokenizer.ggml.token_type values (llama_token_type, also SentencePiece's piece types)
TOKEN_TYPE_UNDEFINED = 0
TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_UNKNOWN = 2
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
TOKEN_TYPE_UNUSED = 5
TOKEN_TYPE_BYTE = 6

# llama_token_attr bits
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_NORMALIZED = 1 << 6
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8
ATTR_SINGLE_WORD = 1 << 9

_TYPE_TO_ATTR = {
    TOKEN_TYPE_UNKNOWN: ATTR_UNKNOWN,
    TOKEN_TYPE_UNUSED: ATTR_UNUSED,
    TOKEN_TYPE_NORMAL: ATTR_NORMAL,
    TOKEN_TYPE_CONTROL: ATTR_CONTROL,
    TOKEN_TYPE_USER_DEFINED: ATTR_USER_DEFINED,
    TOKEN_TYPE_BYTE: ATTR_BYTE,
    TOKEN_TYPE_UNDEFINED: ATTR_UNDEFINED,
}

_SPM_SPACE = "\u2581"  # '▁'
_C_ISSPACE = " \t\n\v\f\r"  # isspace() in the C locale, used by llama.cpp's lstrip/rstrip

# --------------------------------------------------------------------------------------
# Unicode tables (llama.cpp's unicode-data.cpp is generated from Unicode 15.1)
# --------------------------------------------------------------------------------------

# Code points whose general category (first letter; U = unassigned) under Unicode 15.1
# differs from the category in the given version of Python's unicodedata.  Generated by
# comparing each version's database with llama.cpp's table; "start[-end]:C" in hex.
_CATEGORY_FIXES = {
    "14.0.0": (
        "cf3:M ece:M 2ffc-2fff:S 31ef:S 10efd-10eff:M 1123f-11240:L 11241:M 11b00-11b09:P "
        "11f00-11f01:M 11f02:L 11f03:M 11f04-11f10:L 11f12-11f33:L 11f34-11f3a:M 11f3e-11f42:M "
        "11f43-11f4f:P 11f50-11f59:N 1342f:L 13439-1343f:C 13440:M 13441-13446:L 13447-13455:M "
        "1b132:L 1b155:L 1d2c0-1d2d3:N 1df25-1df2a:L 1e030-1e06d:L 1e08f:M 1e4d0-1e4eb:L "
        "1e4ec-1e4ef:M 1e4f0-1e4f9:N 1f6dc:S 1f774-1f776:S 1f77b-1f77f:S 1f7d9:S 1fa75-1fa77:S "
        "1fa87-1fa88:S 1faad-1faaf:S 1fabb-1fabd:S 1fabf:S 1face-1facf:S 1fada-1fadb:S 1fae8:S "
        "1faf7-1faf8:S 2b739:L 2ebf0-2ee5d:L 31350-323af:L"
    ),
    "15.0.0": "2ffc-2fff:S 31ef:S 2ebf0-2ee5d:L",
    "15.1.0": "",
    "16.0.0": (
        "897:U 1b4e-1b4f:U 1b7f:U 1c89-1c8a:U 2427-2429:U 31e4-31e5:U a7cb-a7cd:U a7da-a7dc:U "
        "105c0-105f3:U 10d40-10d65:U 10d69-10d85:U 10d8e-10d8f:U 10ec2-10ec4:U 10efc:U "
        "11380-11389:U 1138b:U 1138e:U 11390-113b5:U 113b7-113c0:U 113c2:U 113c5:U 113c7-113ca:U "
        "113cc-113d5:U 113d7-113d8:U 113e1-113e2:U 116d0-116e3:U 11bc0-11be1:U 11bf0-11bf9:U "
        "11f5a:U 13460-143fa:U 16100-16139:U 16d40-16d79:U 18cff:U 1cc00-1ccf9:U 1cd00-1ceb3:U "
        "1e5d0-1e5fa:U 1e5ff:U 1f8b2-1f8bb:U 1f8c0-1f8c1:U 1fa89:U 1fa8f:U 1fabe:U 1fac6:U "
        "1fadc:U 1fadf:U 1fae9:U 1fbcb-1fbef:U"
    ),
}

# llama.cpp's unicode_set_whitespace (the Unicode White_Space property): its \s.
_WHITESPACE = (
    [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680]
    + list(range(0x2000, 0x200B))
    + [0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
)


def _class_char(c: int) -> str:
    # non-ASCII code points as themselves (re has no special characters outside ASCII, and the
    # pattern parses several times faster than with \\U escapes), ASCII ones escaped
    return chr(c) if c >= 0x80 else "\\x%02x" % c


def _ranges_to_class(ranges: Iterable[Tuple[int, int]]) -> str:
    """The body of a regex character class matching the given code point ranges."""
    parts = []
    for a, b in ranges:
        parts.append(_class_char(a) if a == b else _class_char(a) + "-" + _class_char(b))
    return "".join(parts)


def _category_ranges_from_unicodedata() -> Dict[str, List[Tuple[int, int]]]:
    """Code point ranges of the general categories L, N and P under Unicode 15.1, computed from
    Python's unicodedata plus the fix-ups above (about 0.3 s): how ``_UNICODE_15_1`` was made,
    and what the tests compare it with."""
    import numpy as np

    codes = {"L": 1, "N": 2, "P": 3}
    n = 0x110000
    table = bytearray(n)
    cat = unicodedata.category
    get = codes.get
    for cp in range(n):
        c = get(cat(chr(cp))[0])
        if c:
            table[cp] = c
    for item in _CATEGORY_FIXES.get(unicodedata.unidata_version, "").split():
        span, c = item.split(":")
        a, _, b = span.partition("-")
        lo, hi = int(a, 16), int(b or a, 16)
        table[lo:hi + 1] = bytes([codes.get(c, 0)]) * (hi - lo + 1)
    arr = np.frombuffer(bytes(table), dtype=np.uint8)
    out = {}
    for name, code in codes.items():
        mask = np.concatenate(([False], arr == code, [False]))
        edges = np.flatnonzero(mask[1:] != mask[:-1])
        starts, ends = edges[0::2], edges[1::2] - 1
        out[name] = list(zip(starts.tolist(), ends.tolist()))
    return out


_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _encode_ranges(ranges: Sequence[Tuple[int, int]]) -> str:
    """Compact text of sorted disjoint ranges: per range "gap[:len]" in base 36, where gap is
    the distance from the previous range's end (minus one) and len = end - start."""
    def b36(n: int) -> str:
        s = ""
        while True:
            n, r = divmod(n, 36)
            s = _B36[r] + s
            if not n:
                return s

    prev, parts = -1, []
    for a, b in ranges:
        parts.append(b36(a - prev - 1) + (":" + b36(b - a) if b > a else ""))
        prev = b
    return " ".join(parts)


def _decode_ranges(text: str) -> List[Tuple[int, int]]:
    prev, out = -1, []
    for item in text.split():
        gap, _, ln = item.partition(":")
        a = prev + 1 + int(gap, 36)
        prev = a + (int(ln, 36) if ln else 0)
        out.append((a, prev))
    return out


@functools.lru_cache(maxsize=None)
def _char_classes() -> Dict[str, str]:
    """Bodies of regex character classes with llama.cpp's \\p{L}, \\p{N}, \\p{P} and \\s.

    From the Unicode 15.1 ranges stored in ``_UNICODE_15_1`` (what llama.cpp's
    unicode-data.cpp holds), whatever Python's own unicodedata version.
    """
    out = {name: _ranges_to_class(_decode_ranges(text)) for name, text in _UNICODE_15_1.items()}
    out["W"] = _ranges_to_class((c, c) for c in sorted(_WHITESPACE))
    # whitespace code points are never L/N/P in llama.cpp's collapsed regexes either
    return out


# --------------------------------------------------------------------------------------
# Pre-tokenizers (llama.cpp's llm_tokenizer_bpe regex_exprs, stage by stage)
# --------------------------------------------------------------------------------------

# Each stage refines the list of pieces: it is applied to every piece separately and keeps
# both its matches and the text between them (llama.cpp's offsets pipeline).
_STAGE_PATTERNS = {
    # unicode_regex_split_custom_gpt2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
    # (plus its trailing \s+ fallback)
    "gpt2": r"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{W}{L}{N}]+|[{W}]+(?![^{W}])|[{W}]+",
    # unicode_regex_split_custom_llama3 (case-insensitive contractions, digits by 3)
    "llama3": (
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n{L}{N}]?[{L}]+|[{N}]{{1,3}}"
        r"| ?[^{W}{L}{N}]+[\r\n]*|[{W}]*[\r\n]+|[{W}]+(?![^{W}])|[{W}]+"
    ),
    # unicode_regex_split_custom_qwen2 (as llama3, single digits)
    "qwen2": (
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n{L}{N}]?[{L}]+|[{N}]"
        r"| ?[^{W}{L}{N}]+[\r\n]*|[{W}]*[\r\n]+|[{W}]+(?![^{W}])|[{W}]+"
    ),
    # std::regex stages on llama.cpp's "collapsed" text
    "N": r"[{N}]",                              # \p{N}
    "N+": r"[{N}]+",                            # \p{N}+
    "P": r"[{P}\$\+<=>\^~\|]+",                 # [\p{P}\$\+<=>\^~\|]+
    "P_falcon": r"[{P}\$\+<=>\^~\|`]+",         # [\p{P}\$\+<=>\^~\|`]+
    "ddd": r"[0-9][0-9][0-9]",                  # [0-9][0-9][0-9]
}
# stages whose matches cover every character (so re.findall is enough)
_FULL_COVER = {"gpt2", "llama3", "qwen2"}


class _PreSpec:
    __slots__ = ("stages", "clean_spaces", "ignore_merges", "add_bos", "bos_null")

    def __init__(self, stages, clean_spaces=True, ignore_merges=False, add_bos=False, bos_null=False):
        self.stages = tuple(stages)
        self.clean_spaces = clean_spaces
        self.ignore_merges = ignore_merges
        self.add_bos = add_bos
        self.bos_null = bos_null


def _build_pre_table() -> Dict[str, _PreSpec]:
    t: Dict[str, _PreSpec] = {}
    t["default"] = _PreSpec(["P", "gpt2", "N+", "ddd"])
    for name in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                 "lfm2", "jina-v5-nano"):
        t[name] = _PreSpec(["llama3"], ignore_merges=True, add_bos=True)
    for name in ("dbrx", "smaug-bpe"):
        t[name] = _PreSpec(["llama3"])
    t["chatglm-bpe"] = _PreSpec(["llama3"], bos_null=True)
    for name in ("glm4", "glm5"):
        t[name] = _PreSpec(["llama3"], bos_null=True, ignore_merges=True)
    t["falcon"] = _PreSpec(["P_falcon", "gpt2", "ddd"])
    for name in ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
                 "a.x-4.0", "mellum", "modern-bert", "mpt", "olmo", "jais", "exaone4"):
        t[name] = _PreSpec(["gpt2"])
    for name in ("trillion", "granite-docling"):
        t[name] = _PreSpec(["gpt2"], clean_spaces=False)
    for name in ("starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2"):
        t[name] = _PreSpec(["N", "gpt2"])
    for name in ("smollm", "command-r"):
        t[name] = _PreSpec(["N", "gpt2"], clean_spaces=False)
    for name in ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open"):
        t[name] = _PreSpec(["qwen2"], clean_spaces=False)
    for name in ("megrez", "stablelm2"):
        t[name] = _PreSpec(["qwen2"])
    return t


_PRE_TOKENIZERS = _build_pre_table()

# pre-tokenizer names that llama.cpp knows but this engine does not implement
_PRE_KNOWN_UNSUPPORTED = frozenset("""
minicpm5 deepseek-llm deepseek-coder deepseek-v3 spark2_5 youtu jais-2 gemma4
granite-embed-multi-311m sarvam-moe jina-v1-en jina-v2-code roberta-bpe whitespace qwen35
poro-chat viking tekken bloom gpt3-finnish exaone-moe chameleon gpt-4o llama4 kanana2 talkie
granite-embed-multi-97m tiny_aya cohere2moe superbpe bailingmoe bailingmoe2 llada-moe
seed-coder hunyuan-dense hy_v4 joyai-llm kimi-k2 ufakzeka grok-2 afmoe laguna minimax-m2
""".split())


@functools.lru_cache(maxsize=None)
def _compiled_stage(name: str) -> "re.Pattern[str]":
    pat = _STAGE_PATTERNS[name].format(**_char_classes())
    if name in _FULL_COVER:
        return re.compile(pat)
    return re.compile("(" + pat + ")")  # split() keeps the matches


def _pre_tokenize(text: str, stages: Sequence[str]) -> List[str]:
    pieces = [text]
    for name in stages:
        rx = _compiled_stage(name)
        if name in _FULL_COVER:
            findall = rx.findall
            out: List[str] = []
            for p in pieces:
                out.extend(findall(p))
        else:
            split = rx.split
            out = []
            for p in pieces:
                out.extend(s for s in split(p) if s)
        pieces = out
    return pieces


# --------------------------------------------------------------------------------------
# GPT-2 byte <-> unicode map
# --------------------------------------------------------------------------------------

def _byte_to_unicode() -> List[str]:
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table = [""] * 256
    for b in keep:
        table[b] = chr(b)
    n = 0
    for b in range(256):
        if not table[b]:
            table[b] = chr(256 + n)
            n += 1
    return table


_BYTE_TO_UNICODE = _byte_to_unicode()
_UNICODE_TO_BYTE = {c: b for b, c in enumerate(_BYTE_TO_UNICODE)}
_LATIN1_TO_BYTELEVEL = {b: c for b, c in enumerate(_BYTE_TO_UNICODE)}  # str.translate table


def _byte_encode(word: str) -> str:
    return word.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_BYTELEVEL)


def _single_byte_key(b: int) -> str:
    """The vocabulary key of a token whose text is the single raw byte b."""
    return chr(b) if b < 0x80 else chr(0xDC00 + b)  # surrogateescape form of a lone byte


# --------------------------------------------------------------------------------------
# GGUF metadata
# --------------------------------------------------------------------------------------

def read_gguf_metadata(source: Union[str, os.PathLike, Any],
                       prefixes: Tuple[str, ...] = ("tokenizer.", "general.")) -> Dict[str, Any]:
    """The tokenizer.* and general.* key/values of a GGUF (keys starting with one of `prefixes`),
    as plain Python values, read with the ``gguf`` package (seconds for a 49k vocabulary: an
    ``engine.Model`` builds its tokenizer with :func:`read_model_metadata` instead).

    `source` is a path or an already-open ``gguf.GGUFReader``.  Strings come back as bytes,
    arrays of strings as lists of bytes, numeric arrays as numpy arrays, scalars as Python
    scalars.
    """
    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    if isinstance(source, (str, bytes, os.PathLike)):
        try:
            reader = GGUFReader(source, "r")
        except FileNotFoundError as e:
            raise EngineError(f"no such GGUF file: {os.fsdecode(source)}") from e
        except Exception as e:  # bad magic, truncated file, ...
            raise EngineError(f"cannot read GGUF {os.fsdecode(source)}: {e}") from e
    else:
        reader = source
    meta: Dict[str, Any] = {}
    for key, field in reader.fields.items():
        if not key.startswith(prefixes) or key.startswith("GGUF."):  # GGUF.*: the reader's header pseudo-keys
            continue
        types = field.types
        if not types:
            continue
        if types[0] == GGUFValueType.ARRAY:
            sub = types[1] if len(types) > 1 else None
            if sub == GGUFValueType.STRING:
                meta[key] = [bytes(field.parts[i]) for i in field.data]
            elif sub == GGUFValueType.ARRAY:
                continue  # nested arrays: nothing the tokenizer reads
            elif len(field.data):
                meta[key] = np.concatenate([field.parts[i] for i in field.data])
            else:
                meta[key] = np.zeros(0)
        elif types[0] == GGUFValueType.STRING:
            meta[key] = bytes(field.parts[field.data[0]])
        else:
            meta[key] = field.parts[field.data[0]][0].item()
    return meta


# rk_meta_type -> numpy dtype (GGUF is little-endian); 8 = string, 9 = array
_META_DTYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?",
                10: "<u8", 11: "<i8", 12: "<f8"}


# GGUF scalar value types -> struct format (the same types as _META_DTYPES)
_GGUF_STRUCTS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                 10: "<Q", 11: "<q", 12: "<d"}


class _GGUFShort(Exception):
    pass


def read_gguf_metadata_fast(path: Union[str, os.PathLike],
                            prefixes: Tuple[str, ...] = ("tokenizer.", "general.")) -> Dict[str, Any]:
    """The same mapping as :func:`read_gguf_metadata`, parsed straight from the file's
    key/value section instead of through ``gguf.GGUFReader``.

    GGUFReader makes a numpy view of every array element: 20 to 60 s for the 150k-262k
    vocabularies of Qwen2.5 and Gemma-3 (3 s for a 49k one); this reads only the key/value
    section, in well under a second.  Tensor infos are not read.  Little-endian GGUF v2/v3
    files; others (v1, big-endian) go through :func:`read_gguf_metadata`.  Raises EngineError
    for a missing, truncated or malformed file, or a duplicated key (as GGUFReader does).
    """
    import mmap

    name = os.fsdecode(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError as e:
        raise EngineError(f"no such GGUF file: {name}") from e
    except OSError as e:
        raise EngineError(f"cannot read GGUF {name}: {e}") from e
    with f:
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError) as e:  # empty file, not mappable
            raise EngineError(f"cannot read GGUF {name}: {e}") from e
        try:
            meta = _parse_gguf_kv(mm, prefixes, name)
        except _GGUFShort:
            raise EngineError(f"cannot read GGUF {name}: truncated key/value section") from None
        except RecursionError:
            raise EngineError(f"cannot read GGUF {name}: arrays nested too deeply") from None
        finally:
            mm.close()
    if meta is None:
        return read_gguf_metadata(path, prefixes)
    return meta


def _parse_gguf_kv(mm: Any, prefixes: Tuple[str, ...], name: str) -> Optional[Dict[str, Any]]:
    import struct

    import numpy as np

    size = len(mm)
    if size < 24 or mm[:4] != b"GGUF":
        raise EngineError(f"cannot read GGUF {name}: GGUF magic invalid")
    version = struct.unpack_from("<I", mm, 4)[0]
    if version not in (2, 3):
        return None  # v1 (32-bit lengths), big-endian or unknown: GGUFReader decides
    n_kv = struct.unpack_from("<Q", mm, 16)[0]
    u32 = struct.Struct("<I").unpack_from
    u64 = struct.Struct("<Q").unpack_from
    scalars = {t: struct.Struct(f) for t, f in _GGUF_STRUCTS.items()}
    off = 24

    def need(n: int) -> None:
        if n < 0 or off + n > size:
            raise _GGUFShort

    def read_str() -> bytes:
        nonlocal off
        need(8)
        n = u64(mm, off)[0]
        need(8 + n)
        v = mm[off + 8:off + 8 + n]
        off += 8 + n
        return v

    def skip_array(t: int, n: int) -> None:
        nonlocal off
        if t == 8:
            for _ in range(n):
                need(8)
                off += 8 + u64(mm, off)[0]
            need(0)
        elif t == 9:
            for _ in range(n):
                need(12)
                st, sn = u32(mm, off)[0], u64(mm, off + 4)[0]
                off += 12
                skip_array(st, sn)
        elif t in scalars:
            need(n * scalars[t].size)
            off += n * scalars[t].size
        else:
            raise EngineError(f"cannot read GGUF {name}: unknown value type {t}")

    meta: Dict[str, Any] = {}
    seen = set()
    for _ in range(n_kv):
        raw = read_str()
        try:
            key = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise EngineError(f"cannot read GGUF {name}: key is not UTF-8: {e}") from e
        if key in seen:
            raise EngineError(f"cannot read GGUF {name}: duplicate key {key}")
        seen.add(key)
        need(4)
        t = u32(mm, off)[0]
        off += 4
        want = key.startswith(prefixes) and not key.startswith("GGUF.")
        if t == 8:
            v = read_str()
            if want:
                meta[key] = v
        elif t == 9:
            need(12)
            at, n = u32(mm, off)[0], u64(mm, off + 4)[0]
            off += 12
            if want and n == 0:
                meta[key] = np.zeros(0)  # GGUFReader records no element type for an empty array
            elif not want or at == 9:
                skip_array(at, n)  # nested arrays: nothing the tokenizer reads (as read_gguf_metadata)
            elif at == 8:
                items = []
                append = items.append
                for _ in range(n):
                    need(8)
                    ln = u64(mm, off)[0]
                    end = off + 8 + ln
                    if end > size:
                        raise _GGUFShort
                    append(mm[off + 8:end])
                    off = end
                meta[key] = items
            elif at in scalars:
                nbytes = n * scalars[at].size
                need(nbytes)
                meta[key] = np.frombuffer(mm, dtype=_META_DTYPES[at], count=n, offset=off).copy()
                off += nbytes
            else:
                raise EngineError(f"cannot read GGUF {name}: unknown array type {at} for {key}")
        elif t in scalars:
            st = scalars[t]
            need(st.size)
            v = st.unpack_from(mm, off)[0]
            off += st.size
            if want:
                meta[key] = v
        else:
            raise EngineError(f"cannot read GGUF {name}: unknown value type {t} for {key}")
    return meta


def read_model_metadata(model: Any, prefixes: Tuple[str, ...] = ("tokenizer.", "general.")) -> Dict[str, Any]:
    """The same mapping as :func:`read_gguf_metadata`, from an open ``engine.Model``.

    The C core parsed and bounds-checked the file when it loaded the model; this copies the
    values out of that parse (``rk_model_meta_*``) instead of reading the file a second time
    with the ``gguf`` package, which takes seconds for a 49k vocabulary.
    """
    import numpy as np
    from ._native import ffi, lib

    # held while copying, so that model.close() in another thread waits until the copy is done
    # (`with` on the lock itself: Ctrl-C cannot leave it held)
    guard = getattr(model, "_lock", None) or contextlib.nullcontext()

    def check(status: int) -> None:
        if status != 0:
            raise EngineError(ffi.string(lib.rk_last_error()).decode("utf-8", "replace"), status=status)

    meta: Dict[str, Any] = {}
    with guard:
        h = model._handle()
        n = int(lib.rk_model_meta_count(h))
        key_p = ffi.new("const char **")
        typ = ffi.new("int32_t *")
        atyp = ffi.new("int32_t *")
        arr_n = ffi.new("int64_t *")
        str_p = ffi.new("const char **")
        u64 = ffi.new("uint64_t *")
        for i in range(n):
            check(lib.rk_model_meta_info(h, i, key_p, typ, atyp, arr_n))
            key = ffi.string(key_p[0]).decode("utf-8", "surrogateescape")
            if not key.startswith(prefixes):
                continue
            t = typ[0]
            if t == 8:  # string
                check(lib.rk_model_meta_str(h, i, str_p, u64))
                meta[key] = ffi.unpack(str_p[0], u64[0]) if u64[0] else b""
            elif t == 9:  # array
                et, cnt = atyp[0], int(arr_n[0])
                if et == 8:
                    check(lib.rk_model_meta_strs(h, i, ffi.NULL, 0, ffi.NULL, 0, u64))
                    buf = bytearray(max(int(u64[0]), 1))
                    offs = np.empty(cnt + 1, dtype=np.int64)
                    check(lib.rk_model_meta_strs(h, i, ffi.from_buffer("char[]", buf), len(buf),
                                                 ffi.from_buffer("int64_t[]", offs), cnt + 1, ffi.NULL))
                    blob = bytes(buf)
                    o = offs.tolist()
                    meta[key] = [blob[a:b] for a, b in zip(o, o[1:])]
                elif et == 9:
                    continue  # nested arrays: nothing the tokenizer reads
                elif cnt:
                    arr = np.empty(cnt, dtype=_META_DTYPES[et])
                    check(lib.rk_model_meta_data(h, i, ffi.from_buffer(arr), arr.nbytes))
                    meta[key] = arr
                else:
                    meta[key] = np.zeros(0)
            else:
                arr = np.empty(1, dtype=_META_DTYPES[t])
                check(lib.rk_model_meta_data(h, i, ffi.from_buffer(arr), arr.nbytes))
                meta[key] = arr[0].item()
    return meta


def _is_int_array(a: Any) -> bool:
    """A numpy array of integers (its tolist() gives Python ints)."""
    return getattr(getattr(a, "dtype", None), "kind", None) in ("i", "u") and getattr(a, "ndim", 0) == 1


def _is_float_array(a: Any) -> bool:
    """A numpy array of floats (its tolist() gives Python floats)."""
    return getattr(getattr(a, "dtype", None), "kind", None) == "f" and getattr(a, "ndim", 0) == 1


def _decode_joined(items: Any) -> Optional[str]:
    """The byte strings `items` decoded as UTF-8 (surrogateescape) and joined by "\\n", in one pass,
    or None when an item is not bytes-like or holds a newline itself.  UTF-8 never uses an ASCII
    byte inside a multi-byte sequence, so this equals decoding each item on its own."""
    if not isinstance(items, list) or not items:
        return None
    try:
        joined = b"\n".join(items)
    except TypeError:
        return None
    if joined.count(b"\n") != len(items) - 1:
        return None
    return joined.decode("utf-8", "surrogateescape")


def _merge_pairs(merges: Any) -> List[Tuple[str, str]]:
    """llama.cpp's split of each ``tokenizer.ggml.merges`` entry: at the first space after the
    first character; ("", "") when there is none."""
    text = _decode_joined(merges)
    if text is not None:
        # the usual case, in a few C-level passes: every entry holds exactly one space, not first
        flat = text.replace("\n", " ").split(" ")
        if len(flat) == 2 * len(merges):
            pairs = list(zip(flat[0::2], flat[1::2]))
            if "" not in flat[0::2] and "\n".join(map(" ".join, pairs)) == text:
                return pairs
    strs = [m.decode("utf-8", "surrogateescape") if type(m) is bytes else _as_str(m) for m in merges]
    return [(s[:p], s[p + 1:]) if (p := s.find(" ", 1)) >= 0 else ("", "") for s in strs]


def _as_str(v: Any) -> str:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).decode("utf-8", "surrogateescape")
    return str(v)


# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------

_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
              "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_PRE_TEXTS = ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                  "<|code_prefix|>", "<|prefix|>")
_FIM_SUF_TEXTS = ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                  "<|code_suffix|>", "<|suffix|>")
_FIM_MID_TEXTS = ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                  "<|code_middle|>", "<|middle|>")
_FIM_PAD_TEXTS = ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]")
_FIM_REP_TEXTS = ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>")
_FIM_SEP_TEXTS = ("<|file_sep|>",)
_EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
))

# GGUF key -> name of the special id
_SPECIAL_KEYS = (
    ("tokenizer.ggml.bos_token_id", "bos"),
    ("tokenizer.ggml.eos_token_id", "eos"),
    ("tokenizer.ggml.eot_token_id", "eot"),
    ("tokenizer.ggml.eom_token_id", "eom"),
    ("tokenizer.ggml.unknown_token_id", "unk"),
    ("tokenizer.ggml.seperator_token_id", "sep"),
    ("tokenizer.ggml.padding_token_id", "pad"),
    ("tokenizer.ggml.mask_token_id", "mask"),
    ("tokenizer.ggml.fim_pre_token_id", "fim_pre"),
    ("tokenizer.ggml.fim_suf_token_id", "fim_suf"),
    ("tokenizer.ggml.fim_mid_token_id", "fim_mid"),
    ("tokenizer.ggml.fim_pad_token_id", "fim_pad"),
    ("tokenizer.ggml.fim_rep_token_id", "fim_rep"),
    ("tokenizer.ggml.fim_sep_token_id", "fim_sep"),
    # deprecated names
    ("tokenizer.ggml.prefix_token_id", "fim_pre"),
    ("tokenizer.ggml.suffix_token_id", "fim_suf"),
    ("tokenizer.ggml.middle_token_id", "fim_mid"),
)

_CACHE_LIMIT = 1 << 18  # words kept in the per-tokenizer word cache


class Tokenizer:
    """llama.cpp-compatible tokenizer of a GGUF vocabulary (``gpt2`` BPE or ``llama`` SPM).

    Build it with :meth:`from_gguf` (a path or an open ``gguf.GGUFReader``) or
    :meth:`from_metadata` (a mapping of GGUF keys to values).
    """

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_gguf(cls, source: Union[str, os.PathLike, Any], *, bpe_backend: str = "auto") -> "Tokenizer":
        """Tokenizer of a GGUF file (path: read with :func:`read_gguf_metadata_fast`) or of an
        open ``gguf.GGUFReader``.  Only the metadata is read: a vocab-only GGUF will do."""
        if isinstance(source, (str, bytes, os.PathLike)):
            return cls(read_gguf_metadata_fast(source), bpe_backend=bpe_backend)
        return cls(read_gguf_metadata(source), bpe_backend=bpe_backend)

    @classmethod
    def from_model(cls, model: Any, *, bpe_backend: str = "auto") -> "Tokenizer":
        """Tokenizer of an open ``engine.Model``, from the metadata its C loader already parsed."""
        return cls(read_model_metadata(model), bpe_backend=bpe_backend)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], *, bpe_backend: str = "auto") -> "Tokenizer":
        """Tokenizer from GGUF key/values (strings as str or bytes, arrays as lists or numpy)."""
        return cls(metadata, bpe_backend=bpe_backend)

    def __init__(self, metadata: Mapping[str, Any], *, bpe_backend: str = "auto"):
        if bpe_backend not in ("auto", "hf", "python"):
            raise EngineError(f"bpe_backend must be 'auto', 'hf' or 'python', got {bpe_backend!r}")
        meta = metadata
        model = meta.get("tokenizer.ggml.model")
        if model is None:
            raise EngineError("GGUF has no tokenizer (missing key tokenizer.ggml.model)")
        model = _as_str(model)
        pre_raw = meta.get("tokenizer.ggml.pre")
        pre = _as_str(pre_raw) if pre_raw is not None else None
        self._model = model
        self._pre = pre

        special: Dict[str, Optional[int]] = {k: None for _, k in _SPECIAL_KEYS}
        self._pre_spec: Optional[_PreSpec] = None
        if model == "llama":
            self._is_spm = True
            special.update(bos=1, eos=2, unk=0)
            add_space_prefix, add_bos, add_eos, clean_spaces = True, True, False, False
            ignore_merges = False
        elif model == "gpt2":
            self._is_spm = False
            special.update(bos=11, eos=11)
            name = pre if pre else "default"  # llama.cpp: missing pre -> 'default' (with a warning)
            spec = _PRE_TOKENIZERS.get(name)
            if spec is None:
                if name in _PRE_KNOWN_UNSUPPORTED:
                    raise EngineError(f"pre-tokenizer type {name!r} is not supported by this engine")
                raise EngineError(f"unknown pre-tokenizer type: {name!r}")
            self._pre_spec = spec
            if spec.bos_null:
                special["bos"] = None
            add_space_prefix, add_bos, add_eos = False, spec.add_bos, False
            clean_spaces, ignore_merges = spec.clean_spaces, spec.ignore_merges
        elif model in ("no_vocab", "none"):
            raise EngineError("the GGUF has no vocabulary (tokenizer.ggml.model = %r)" % model)
        elif model in ("bert", "t5", "rwkv", "plamo2", "gemma4", "hybriddna", "whitespace", "test"):
            raise EngineError(f"tokenizer model {model!r} is not supported by this engine")
        else:
            raise EngineError(f"unknown tokenizer: {model!r}")

        v = meta.get("tokenizer.ggml.add_space_prefix")
        if v is not None:
            add_space_prefix = bool(v)

        # ---- vocabulary
        tokens = meta.get("tokenizer.ggml.tokens")
        if tokens is None:
            raise EngineError("cannot find tokenizer vocab in model file (tokenizer.ggml.tokens)")
        n = len(tokens)
        scores = meta.get("tokenizer.ggml.scores")
        if scores is not None and len(scores) < n:
            raise EngineError(f"Index out of array bounds for scores ({len(scores)} < {n})")
        types = meta.get("tokenizer.ggml.token_type")
        if types is not None and len(types) < n:
            raise EngineError(f"Index out of array bounds for toktypes ({len(types)} < {n})")
        # (comprehensions and C-level helpers throughout: a 49k vocabulary in a few tens of ms)
        joined = _decode_joined(tokens)
        if joined is not None:
            id2tok: List[str] = joined.split("\n")
        else:
            id2tok = [t.decode("utf-8", "surrogateescape") if type(t) is bytes else _as_str(t) for t in tokens]
        if "" in id2tok:
            for i, t in enumerate(id2tok):
                if not t:
                    id2tok[i] = f"[EMPTY_{i}]"
        tok2id: Dict[str, int] = dict(zip(id2tok, range(n)))  # duplicates: the last one wins, as in llama.cpp
        if types is not None:
            if _is_int_array(types):
                import numpy as np

                t = types[:n]
                lut = np.array([_TYPE_TO_ATTR[k] for k in range(len(_TYPE_TO_ATTR))], dtype=np.int64)
                known = (t >= 0) & (t < len(lut))
                attrs: List[int] = np.where(known, lut[np.where(known, t, 0)], ATTR_UNDEFINED).tolist()
            else:
                types_l = [int(x) for x in (types.tolist() if hasattr(types, "tolist") else types)][:n]
                get = _TYPE_TO_ATTR.get
                attrs = [get(x, ATTR_UNDEFINED) for x in types_l]
        else:
            attrs = [ATTR_NORMAL] * n
        if scores is not None:
            if _is_float_array(scores):
                self._scores = scores[:n].tolist()
            else:
                sc = scores.tolist() if hasattr(scores, "tolist") else list(scores)
                self._scores = [float(x) for x in sc[:n]]
        else:
            self._scores = [0.0] * n
        self._id2tok = id2tok
        self._tok2id = tok2id
        self._attrs = attrs

        # ---- BPE merges
        self._pairs: List[Tuple[str, str]] = []  # every merge as a pair, rank = index (see _ranks)
        self._ranks_cache: Optional[Dict[Tuple[str, str], int]] = None
        self._merges: List[Tuple[str, str]] = []
        if not self._is_spm:
            merges = meta.get("tokenizer.ggml.merges")
            if merges is None:
                raise EngineError("cannot find tokenizer merges in model file (tokenizer.ggml.merges)")
            self._pairs = pairs = _merge_pairs(merges)
            distinct = set(pairs)
            if len(distinct) == len(pairs) and ("", "") not in distinct:
                self._merges = pairs  # no duplicates, every merge well-formed: the usual case
            else:
                seen = set()
                for pair in pairs:
                    if pair not in seen:
                        seen.add(pair)
                        if pair != ("", ""):
                            self._merges.append(pair)

        # ---- special ids
        for key, name in _SPECIAL_KEYS:
            cur = special[name]
            if cur is not None and cur >= n:
                special[name] = cur = None  # "default special token ... out of vocab range, disabling"
            val = meta.get(key)
            if val is None:
                continue
            val = int(val)
            if 0 <= val < n:
                special[name] = val
            # else: "bad special token", keep the default
        v = meta.get("tokenizer.ggml.add_bos_token")
        if v is not None:
            add_bos = bool(v)
        v = meta.get("tokenizer.ggml.add_eos_token")
        if v is not None:
            add_eos = bool(v)

        self._detect_special_tokens(special)
        self._special = special
        self._add_space_prefix = add_space_prefix
        self._add_bos = add_bos
        self._add_eos = add_eos
        self._clean_spaces = clean_spaces
        self._ignore_merges = ignore_merges

        # ---- special-token cache: ids of control/user-defined/unknown tokens, longest text first
        mask = ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN
        cache = [i for i, a in enumerate(attrs) if a & mask]
        cache.sort(key=lambda i: (-len(id2tok[i].encode("utf-8", "surrogateescape")), i))
        self._special_cache = cache

        self._apply_model_name_attrs(meta)

        tmpl = meta.get("tokenizer.chat_template")
        self._chat_template = _as_str(tmpl) if tmpl is not None else None
        # per parse_special: the special-token texts indexed by first character (_present_specials)
        self._special_index: Dict[bool, Dict[str, Tuple[List[Tuple[int, str]], Dict[str, List[int]], List[int]]]] = {}
        self._word_cache: Dict[str, Tuple[int, ...]] = {}
        self._piece_cache: Dict[int, bytes] = {}

        # ---- backends
        self._hf_bpe = None
        if self._is_spm:
            self._init_spm()
        elif bpe_backend in ("auto", "hf"):
            try:
                from tokenizers.models import BPE

                self._hf_bpe = BPE(vocab=tok2id, merges=self._merges, ignore_merges=ignore_merges)
            except Exception as e:  # e.g. a merge whose result is not a token
                if bpe_backend == "hf":
                    raise EngineError(f"HF tokenizers refused this vocabulary: {e}") from e
                self._hf_bpe = None

    @property
    def _ranks(self) -> Dict[Tuple[str, str], int]:
        """BPE rank of each merge pair (a duplicate keeps its first rank, as llama.cpp's emplace),
        built on first use: only the pure-Python backend merges with it."""
        ranks = self._ranks_cache
        if ranks is None:
            pairs = self._pairs
            # going backwards, the first rank of a duplicate is assigned last
            ranks = self._ranks_cache = dict(zip(reversed(pairs), range(len(pairs) - 1, -1, -1)))
        return ranks

    def _detect_special_tokens(self, special: Dict[str, Optional[int]]) -> None:
        """llama.cpp's text-based fix-ups of special ids and attributes (llama_vocab::impl::load)."""
        attrs, tok2id, id2tok = self._attrs, self._tok2id, self._id2tok

        def find(texts: Sequence[str]) -> Optional[int]:
            ids = [tok2id[t] for t in texts if t in tok2id]
            return min(ids) if ids else None

        for name, texts in (("eot", _EOT_TEXTS), ("eom", _EOM_TEXTS), ("fim_pre", _FIM_PRE_TEXTS),
                            ("fim_suf", _FIM_SUF_TEXTS), ("fim_mid", _FIM_MID_TEXTS),
                            ("fim_pad", _FIM_PAD_TEXTS), ("fim_rep", _FIM_REP_TEXTS),
                            ("fim_sep", _FIM_SEP_TEXTS)):
            if special[name] is None:
                tid = find(texts)
                if tid is not None:
                    special[name] = tid
                    attrs[tid] |= ATTR_CONTROL

        # control tokens whose text contains "unused" are unused (llama.cpp walks its text -> id
        # map: a text held by several ids counts for the last one only)
        for i in [i for i, a in enumerate(attrs) if a & ATTR_CONTROL]:
            t = id2tok[i]
            if "unused" in t and tok2id[t] == i:
                attrs[i] |= ATTR_UNUSED

        eog = set()
        for name in ("fim_pad", "fim_rep", "fim_sep"):
            if special[name] is not None:
                eog.add(special[name])
        for t in _EOG_TEXTS:
            i = tok2id.get(t)
            if i is not None:
                eog.add(i)
                attrs[i] |= ATTR_CONTROL
        # gpt-oss: always render these tokens
        for t in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):
            if t in tok2id:
                attrs[tok2id[t]] = ATTR_USER_DEFINED
        for name in ("eos", "eot", "eom"):
            if special[name] is not None:
                eog.add(special[name])
        # o200k_harmony / solar-open: "<|end|>" is not end-of-generation
        texts = {id2tok[i]: i for i in eog if 0 <= i < len(id2tok)}
        has_call = "<|call|>" in texts or "<|calls|>" in texts
        if "<|end|>" in texts and has_call and ("<|return|>" in texts or "<|flush|>" in texts):
            end_id = texts["<|end|>"]
            eog.discard(end_id)
            attrs[end_id] = ATTR_USER_DEFINED
        # gemma4 / plamo: "</s>" is a normal token
        if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
            s_id = texts["</s>"]
            eog.discard(s_id)
            attrs[s_id] = ATTR_NORMAL
        self._eog = frozenset(eog)

    def _apply_model_name_attrs(self, meta: Mapping[str, Any]) -> None:
        """Per-model lstrip/rstrip attributes, set by llama.cpp from names (after the cache)."""
        attrs, tok2id = self._attrs, self._tok2id
        name = _as_str(meta.get("general.name", b"")).lower()
        arch = _as_str(meta.get("general.architecture", b""))
        pre = self._pre or ""
        if any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or \
                any(s in arch for s in ("nomic-bert-moe", "jina-bert-v3")):
            if "<mask>" in tok2id:
                attrs[tok2id["<mask>"]] |= ATTR_LSTRIP
        elif "phi-3" in name or "phi3" in name:
            for i in self._special_cache:
                attrs[i] |= ATTR_RSTRIP
            if "</s>" in tok2id:
                attrs[tok2id["</s>"]] |= ATTR_RSTRIP
            for t in ("<unk>", "<s>", "<|endoftext|>"):
                if t in tok2id:
                    attrs[tok2id[t]] &= ~ATTR_RSTRIP
        elif "modern-bert" in name:
            if "[MASK]" in tok2id:
                attrs[tok2id["[MASK]"]] |= ATTR_LSTRIP

    def _init_spm(self) -> None:
        # Characters x such that some token contains x followed by '▁': a merge can only
        # cross a "x▁" boundary for these x, so the text can be cut before every other '▁'
        # and the pieces tokenized (and cached) independently with identical results.
        bad = set()
        for t in self._id2tok:
            j = t.find(_SPM_SPACE, 1)
            while j > 0:
                bad.add(t[j - 1])
                j = t.find(_SPM_SPACE, j + 1)
        if bad:
            cls = "".join(re.escape(c) for c in sorted(bad))
            self._spm_cut = re.compile(f"(?<![{cls}])(?={_SPM_SPACE})")
        else:
            self._spm_cut = re.compile(f"(?={_SPM_SPACE})")

    # ---------------------------------------------------------------- properties

    @property
    def n_vocab(self) -> int:
        return len(self._id2tok)

    @property
    def model(self) -> str:
        """``tokenizer.ggml.model``: "gpt2" (BPE) or "llama" (SentencePiece)."""
        return self._model

    @property
    def pre(self) -> Optional[str]:
        """``tokenizer.ggml.pre`` as stored in the GGUF (None if absent)."""
        return self._pre

    @property
    def bos_id(self) -> Optional[int]:
        return self._special["bos"]

    @property
    def eos_id(self) -> Optional[int]:
        return self._special["eos"]

    @property
    def eot_id(self) -> Optional[int]:
        return self._special["eot"]

    @property
    def eom_id(self) -> Optional[int]:
        return self._special["eom"]

    @property
    def unk_id(self) -> Optional[int]:
        return self._special["unk"]

    @property
    def pad_id(self) -> Optional[int]:
        return self._special["pad"]

    @property
    def special_ids(self) -> Dict[str, Optional[int]]:
        """All special ids llama.cpp tracks: bos, eos, eot, eom, unk, sep, pad, mask, fim_*."""
        return dict(self._special)

    @property
    def eog_ids(self) -> frozenset:
        """Ids that end generation (llama_vocab_is_eog)."""
        return self._eog

    @property
    def add_bos(self) -> bool:
        return self._add_bos

    @property
    def add_eos(self) -> bool:
        return self._add_eos

    @property
    def add_space_prefix(self) -> bool:
        return self._add_space_prefix

    @property
    def clean_spaces(self) -> bool:
        return self._clean_spaces

    @property
    def chat_template(self) -> Optional[str]:
        """``tokenizer.chat_template`` (the raw Jinja string) or None."""
        return self._chat_template

    @property
    def bpe_backend(self) -> Optional[str]:
        """"hf" or "python" for BPE vocabularies, None for SentencePiece."""
        if self._is_spm:
            return None
        return "hf" if self._hf_bpe is not None else "python"

    def is_eog(self, token: int) -> bool:
        return token in self._eog

    def is_control(self, token: int) -> bool:
        return bool(self._attrs[token] & ATTR_CONTROL)

    def token_attr(self, token: int) -> int:
        """llama_token_attr bits of a token."""
        return self._attrs[token]

    def id_to_token(self, token: int) -> str:
        """The token's text as stored in the vocabulary (byte-level / '▁' form)."""
        return self._id2tok[token]

    def token_to_id(self, text: str) -> Optional[int]:
        return self._tok2id.get(text)

    def __len__(self) -> int:
        return len(self._id2tok)

    def __repr__(self) -> str:
        return f"Tokenizer(model={self._model!r}, pre={self._pre!r}, n_vocab={self.n_vocab})"

    # ---------------------------------------------------------------- encoding

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> List[int]:
        """Token ids of `text`, as llama.cpp's ``llama_tokenize(vocab, text, add_special, parse_special)``.

        add_special: add BOS/EOS as the vocabulary asks (``add_bos``/``add_eos``).
        parse_special: recognise control tokens such as ``<|im_start|>`` written in the text.
        """
        if not isinstance(text, str):
            raise EngineError(f"text must be a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise EngineError(f"text is not encodable as UTF-8: {e}") from e
        frags = self._partition(text, parse_special)
        out: List[int] = []
        if add_special and self._add_bos:
            if self.bos_id is None:
                raise EngineError("the vocabulary asks for a BOS token but has none")
            out.append(self.bos_id)
        if self._is_spm:
            is_prev_special = True
            for f in frags:
                if isinstance(f, str):
                    if self._add_space_prefix and is_prev_special:
                        f = " " + f
                    self._spm_encode(f.replace(" ", _SPM_SPACE), out)
                    is_prev_special = False
                else:
                    out.append(f)
                    is_prev_special = True
        else:
            for f in frags:
                if isinstance(f, str):
                    self._bpe_encode(f, out)
                else:
                    out.append(f)
        if add_special and self._add_eos:
            if self.eos_id is None:
                raise EngineError("the vocabulary asks for an EOS token but has none")
            out.append(self.eos_id)
        return out

    def _present_specials(self, text: str, parse_special: bool) -> List[int]:
        """The ids of ``_special_cache`` that tokenizer_st_partition would try on `text` (with
        parse_special=False only user-defined ones, as llama.cpp) and whose text occurs in it,
        in cache order.

        llama.cpp tries every special token on every fragment; a token whose text does not
        occur in the whole text cannot occur in any fragment (each is a substring of it), so
        skipping those changes nothing.  Gemma-3 has 6414 special tokens (6249 control, 165
        user-defined): trying them all took 3 ms per call and 4 s on the wikitext-2 test file
        with parse_special.  The texts are indexed by first character; per character present
        in `text`, either each token is searched for (C-level ``in``), or, when the character
        is rare in `text`, its occurrences are looked up by slice (one dict lookup per
        distinct token length), whichever costs less.
        """
        index = self._special_index.get(parse_special)
        if index is None:
            index = self._special_index[parse_special] = self._build_special_index(parse_special)
        if not index or not text:
            return []
        found = set()
        n = len(text)
        for c in index.keys() & set(text):
            items, by_text, lengths = index[c]
            n_occ = text.count(c)
            if n_occ * len(lengths) * 200 < len(items) * n:
                get = by_text.get
                pos = text.find(c)
                while pos >= 0:
                    for ln in lengths:
                        ranks = get(text[pos:pos + ln])
                        if ranks is not None:
                            found.update(ranks)
                    pos = text.find(c, pos + 1)
            else:
                found.update(rank for rank, st in items if st in text)
        cache = self._special_cache
        return [cache[r] for r in sorted(found)]

    def _build_special_index(self, parse_special: bool):
        """first character -> ([(rank in _special_cache, text)], {text: [ranks]}, [distinct lengths])"""
        attrs, id2tok = self._attrs, self._id2tok
        by_char: Dict[str, List[Tuple[int, str]]] = {}
        for rank, tid in enumerate(self._special_cache):
            if not parse_special and attrs[tid] & (ATTR_CONTROL | ATTR_UNKNOWN):
                continue
            st = id2tok[tid]
            if st:
                by_char.setdefault(st[0], []).append((rank, st))
        index = {}
        for c, items in by_char.items():
            by_text: Dict[str, List[int]] = {}
            for rank, st in items:
                by_text.setdefault(st, []).append(rank)
            index[c] = (items, by_text, sorted({len(st) for st in by_text}))
        return index

    def _partition(self, text: str, parse_special: bool) -> List[Union[str, int]]:
        """llama.cpp's tokenizer_st_partition: split special-token texts out of the raw text."""
        frags: List[Union[str, int]] = [text] if text else []
        attrs, id2tok = self._attrs, self._id2tok
        for tid in self._present_specials(text, parse_special):
            a = attrs[tid]
            st = id2tok[tid]
            if not any(isinstance(f, str) and st in f for f in frags):
                continue
            lstrip, rstrip = a & ATTR_LSTRIP, a & ATTR_RSTRIP
            new: List[Union[str, int]] = []
            for f in frags:
                if not isinstance(f, str) or st not in f:
                    new.append(f)
                    continue
                pos, end = 0, len(f)
                while True:
                    m = f.find(st, pos)
                    if m < 0:
                        if pos < end:
                            new.append(f[pos:])
                        break
                    left = f[pos:m]
                    if lstrip:
                        left = left.rstrip(_C_ISSPACE)
                    if left:
                        new.append(left)
                    new.append(tid)
                    pos = m + len(st)
                    if rstrip:
                        while pos < end and f[pos] in _C_ISSPACE:
                            pos += 1
            frags = new
        return frags

    # BPE ----------------------------------------------------------------

    def _bpe_encode(self, text: str, out: List[int]) -> None:
        cache = self._word_cache
        words = _pre_tokenize(text, self._pre_spec.stages)
        missing = [w for w in set(words) if w not in cache]
        if missing:
            if len(cache) + len(missing) > _CACHE_LIMIT:
                cache.clear()
            hf = self._hf_bpe
            if hf is not None:
                for w in missing:
                    cache[w] = tuple(t.id for t in hf.tokenize(_byte_encode(w)))
            else:
                for w in missing:
                    cache[w] = tuple(self._bpe_word(_byte_encode(w)))
        for w in words:
            out.extend(cache[w])

    def _bpe_word(self, word: str) -> List[int]:
        """llama.cpp's llm_tokenizer_bpe_session on one (byte-encoded) word."""
        tok2id = self._tok2id
        if self._ignore_merges:
            tid = tok2id.get(word)
            if tid is not None:
                return [tid]
        syms: List[str] = list(word)
        n = len(syms)
        if n > 1:
            ranks = self._ranks
            nxt = list(range(1, n + 1))
            nxt[-1] = -1
            prv = list(range(-1, n - 1))
            heap = []
            for i in range(n - 1):
                r = ranks.get((syms[i], syms[i + 1]))
                if r is not None:
                    heap.append((r, i, i + 1, syms[i] + syms[i + 1]))
            heapq.heapify(heap)
            while heap:
                r, left, right, text = heapq.heappop(heap)
                ls, rs = syms[left], syms[right]
                if not ls or not rs or ls + rs != text:
                    continue  # outdated
                syms[left] = text
                syms[right] = ""
                nn = nxt[right]
                nxt[left] = nn
                if nn >= 0:
                    prv[nn] = left
                p = prv[left]
                if p >= 0:
                    rr = ranks.get((syms[p], text))
                    if rr is not None:
                        heapq.heappush(heap, (rr, p, left, syms[p] + text))
                if nn >= 0:
                    rr = ranks.get((text, syms[nn]))
                    if rr is not None:
                        heapq.heappush(heap, (rr, left, nn, text + syms[nn]))
        out: List[int] = []
        for s in syms:
            if not s:
                continue
            tid = tok2id.get(s)
            if tid is not None:
                out.append(tid)
                continue
            # not a token: llama.cpp looks up each raw byte of the symbol's UTF-8 as a token
            for b in s.encode("utf-8"):
                tid = tok2id.get(_single_byte_key(b))
                if tid is not None:
                    out.append(tid)
        return out

    # SPM ----------------------------------------------------------------

    def _spm_encode(self, text: str, out: List[int]) -> None:
        cache = self._word_cache
        chunks = [c for c in self._spm_cut.split(text) if c]
        for c in chunks:
            ids = cache.get(c)
            if ids is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                ids = cache[c] = tuple(self._spm_chunk(c))
            out.extend(ids)

    def _spm_chunk(self, text: str) -> List[int]:
        """llama.cpp's llm_tokenizer_spm_session on one piece of escaped text."""
        tok2id, scores = self._tok2id, self._scores
        n = len(text)
        size = [1] * n  # symbol i starts at character i; merged-away symbols have size 0
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap = []
        for i in range(n - 1):
            tid = tok2id.get(text[i:i + 2])
            if tid is not None:
                heap.append((-scores[tid], i, i + 1, 2))
        heapq.heapify(heap)
        while heap:
            _, left, right, sz = heapq.heappop(heap)
            ls, rs = size[left], size[right]
            if ls == 0 or rs == 0 or ls + rs != sz:
                continue
            size[left] = sz
            size[right] = 0
            nn = nxt[right]
            nxt[left] = nn
            if nn >= 0:
                prv[nn] = left
            p = prv[left]
            if p >= 0:
                s2 = size[p] + sz
                tid = tok2id.get(text[p:p + s2])
                if tid is not None:
                    heapq.heappush(heap, (-scores[tid], p, left, s2))
            if nn >= 0:
                s2 = sz + size[nn]
                tid = tok2id.get(text[left:left + s2])
                if tid is not None:
                    heapq.heappush(heap, (-scores[tid], left, nn, s2))
        out: List[int] = []
        i = 0 if n else -1
        while i >= 0:
            piece = text[i:i + size[i]]
            tid = tok2id.get(piece)
            if tid is not None:
                out.append(tid)
            else:
                for b in piece.encode("utf-8"):
                    out.append(self._byte_to_token(b))
            i = nxt[i]
        return out

    def _byte_to_token(self, b: int) -> int:
        tid = self._tok2id.get("<0x%02X>" % b)
        if tid is None:
            tid = self._tok2id.get(_single_byte_key(b))
        if tid is None:
            raise EngineError(f"the vocabulary has no token for byte 0x{b:02X} (no byte fallback)")
        return tid

    # ---------------------------------------------------------------- decoding

    def token_to_piece(self, token: int, special: bool = True, lstrip: int = 0) -> bytes:
        """The bytes of one token, as llama.cpp's ``llama_token_to_piece(vocab, token, ..., lstrip, special)``.

        special: render control/unknown tokens (their text); when False they give b"".
        lstrip: drop up to this many leading spaces.
        """
        if not 0 <= token < len(self._id2tok):
            raise EngineError(f"token id {token} out of range [0, {len(self._id2tok)})")
        a = self._attrs[token]
        if not special and a & (ATTR_UNKNOWN | ATTR_CONTROL):
            return b""
        piece = self._piece_cache.get(token)
        if piece is None:
            piece = self._piece_cache[token] = self._make_piece(token)
        if lstrip:
            k = 0
            while k < lstrip and k < len(piece) and piece[k] == 0x20:
                k += 1
            piece = piece[k:]
        return piece

    def _make_piece(self, token: int) -> bytes:
        a = self._attrs[token]
        text = self._id2tok[token]
        if a & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED):
            return text.encode("utf-8", "surrogateescape")
        if a & ATTR_NORMAL:
            if self._is_spm:
                return text.replace(_SPM_SPACE, " ").encode("utf-8", "surrogateescape")
            out = bytearray()
            raw = text.encode("utf-8", "surrogateescape")
            for ch in text:
                b = _UNICODE_TO_BYTE.get(ch)
                if b is not None:
                    out.append(b)
                else:  # llama_decode_text's marker for a character outside the byte map
                    out += b"[UNK_BYTE_0x" + ch.encode("utf-8", "surrogateescape").hex().encode() + raw + b"]"
            return bytes(out)
        if a & ATTR_BYTE:
            try:
                return bytes([int(text[3:5], 16) & 0xFF])
            except ValueError:
                return b"\x00"
        return b""

    def detokenize(self, ids: Iterable[int], remove_special: bool = False, unparse_special: bool = False) -> bytes:
        """Bytes of a token sequence, as llama.cpp's ``llama_detokenize(vocab, ..., remove_special, unparse_special)``."""
        ids = [int(t) for t in ids]
        remove_space = self._add_space_prefix
        if remove_special and self._add_bos and ids and ids[0] == self.bos_id:
            remove_space = False
            ids = ids[1:]
        if remove_special and self._add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        buf = bytearray()
        for t in ids:
            buf += self.token_to_piece(t, special=unparse_special, lstrip=1 if remove_space else 0)
            remove_space = False
        if self._clean_spaces:
            buf = _clean_spaces(buf)
        return bytes(buf)

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of a token sequence (invalid UTF-8 is replaced by U+FFFD).

        skip_special=False renders control tokens (``llama_detokenize(remove_special=False,
        unparse_special=True)``); True drops them and a leading BOS / trailing EOS that the
        vocabulary adds (``remove_special=True, unparse_special=False``).  As in llama.cpp,
        SentencePiece vocabularies lose the leading space of the first token only when no
        BOS precedes it, so ``decode(encode(x, add_special=False)) == x``.
        """
        return self.detokenize(ids, remove_special=skip_special, unparse_special=not skip_special).decode(
            "utf-8", "replace")


def _clean_spaces(text: bytearray) -> bytearray:
    """llama.cpp's clean_up_tokenization_spaces passes over detokenized bytes (in place)."""
    SP, Q = 0x20, 0x27
    # first pass: " ?", " !", " .", " ,"
    total1 = len(text)
    total = 1 if total1 else 0
    for i in range(1, total1):
        x = text[i]
        if text[i - 1] == SP and x in b"?!.,":
            total -= 1
        text[total] = x
        total += 1
    # second pass: strip a single apostrophe between spaces
    total2 = total
    total = 1 if total2 else 0
    i = 1
    while i < total2:
        x = text[i]
        if x == Q and i + 1 < total2 and text[i - 1] == SP and text[i + 1] == SP:
            total -= 1
            i += 1
            text[i] = 0
        text[total] = x
        total += 1
        i += 1
    # third pass: " 's", " 'm", " 're", " 've"
    total3 = total
    total = 1 if total3 else 0
    for i in range(1, total3):
        x = text[i]
        if text[i - 1] == SP and x == Q and i + 1 < total3:
            x1 = text[i + 1]
            if x1 in b"sm":
                total -= 1
            elif x1 not in b"td" and i + 2 < total3:
                x2 = text[i + 2]
                if (x1 == 0x72 and x2 == 0x65) or (x1 == 0x76 and x2 == 0x65):  # "re", "ve"
                    total -= 1
        text[total] = x
        total += 1
    del text[total:]
    return text


# --------------------------------------------------------------------------------------
# Unicode 15.1 general categories L, N, P (generated by _category_ranges_from_unicodedata with
# _encode_ranges; tests/test_tokenizer.py checks it against unicodedata + _CATEGORY_FIXES)
# --------------------------------------------------------------------------------------

_UNICODE_15_1 = {
    "L": (
        "1t:p 6:p 1b a 4 5:m 1:u 1:cp 4:b e:4 7 1 3l:4 1:1 2:3 1 6 1:2 1 1:j 1:2a 1:3u 8:4l 1:11 2 6:14 "
        "1z:q 4:3 19:16 z:1 1:2q 1 f:1 7:1 a:2 2 g 1:t t:2g b o:w 9:1 4 5:l 4 9 3 n:o 7:a 5:n 1:5 h:15 "
        "1m:1h 3 i 7:9 f:f 4:7 2:1 2:l 1:6 1 3:3 3 g d:1 1:2 e:1 a 8:5 4:1 2:l 1:6 1:1 1:1 1:1 v:3 1 j:2 "
        "g:8 1:2 1:l 1:6 1:1 1:4 3 i f:1 n b:7 2:1 2:l 1:6 1:1 1:4 3 u:1 1:2 f h 1:5 3:2 1:3 3:1 1 1:1 "
        "3:1 3:2 3:b m 1g:7 1:2 1:m 1:f 3 q:2 2 2:1 u 4:7 1:2 1:m 1:9 1:4 3 v:1 1:1 f:1 h:8 1:2 1:14 2 g "
        "5:2 8:2 o:5 5:h 3:n 1:8 1 2:6 1m:1b 1:1 c:6 1m:1 1 1:4 1:n 1 1:9 1:1 9 2:4 1 l:3 w 1r:7 1:z r:4 "
        "37:16 k g:5 4:3 3 3:1 7:2 4:c c h:11 1 5 2:16 1:98 1:3 2:6 1 1:3 2:14 1:3 2:w 1:3 2:6 1 1:3 2:e "
        "1:1k 1:3 2:1u 11:f g:2d 2:5 3:h7 2:g 1:p 5:22 6:7 7:h d:i e:h e:c 1:2 f:1f z 4 1v:2g 7:4 2:x 1 "
        "5:1x a:u 1d:t 2:4 b:17 4:p 1i:m 9:1g 2a 2l:1a h:7 1i:t d:1 a:17 q:z 15:2 a:z 2:8 7:16 2:2 15:3 "
        "1:5 1:1 3 5:5b 1s:7p 2:5 2:11 2:5 2:7 1 1 1 1:u 2:1g 1:6 1 3:2 1:6 3:3 2:5 4:c 5:2 1:6 38 d g:c "
        "2t 4 2:9 1 3:4 6 1 1 1:3 1:a 2:3 5:4 4 1g:1 22j:6c 6:3 3:1 c:11 1 5 2:1j 7 g:m 9:6 1:6 1:6 1:6 "
        "1:6 1:6 1:6 1:6 28 d1:1 16:4 5:1 4:2d 6:2 1:2h 1:3 5:16 1:2l h:v 1c:f e8:533 1s:h3g 1v:19 2:7g "
        "3:f a:1 k:1a g:u 2:1x 1d:8 2:2u 2:1r 5:1 1 1:4 o:f 1:2 1:3 1:m t:1f e:1d 1q:5 3 1:1 b:r a:m p:s "
        "7:1a s g:4 1:9 a:4 1:14 n:2 1:7 k:m 3 3:1d 1 3:1 2:4 2 1 o:2 2:a 7:2 c:5 2:5 2:5 9:6 1:6 1:16 "
        "1:d 6:36 t:8mb c:m 4:1c 6is:a5 2:2x 12:6 c:4 5 1:9 1:c 1:4 1 1:1 1:1 1:2z x:a2 i:1r 2:1h 14:b "
        "38:4 1:3q 10:p 6:p b:2g 3:5 2:5 2:5 2:2 z:b 1:p 1:i 1:1 1:e 2:d y:3e at:s 3:1c 1b:v d:j 1:7 6:11 "
        "a:t 2:z 4:7 1c:4d i:z 4:z 4:13 8:1f c:a 1:e 1:6 1:1 1:a 1:e 1:6 1:1 1v:8m 9:l a:7 o:5 1:15 1:8 "
        "1x:5 2 1:17 1:1 3 2:m a:m 9:u 1t:i 1:1 a:l a:p 1y:1j 6:1 1s f:3 1:2 1:s 16:s 3:s z:7 1:r r:1h "
        "a:l a:i d:h 32:20 1j:1e d:1e d:z 9o:15 6:1 26:s a 8:l 16:h 1a:k r:m c:1g 1l:1 2 d:18 w:o q:z t 2 "
        "8:y 3 c:1b e:3 l 1 z:h 1:o j:1 1r:6 1 1:3 1:e 1:9 7:1a 12:7 2:1 2:l 1:6 1:1 1:4 3 i c:4 4e:1g "
        "i:3 k:2 u:1b k:1 1 54:1a 15:3 10:1b k 1n:16 d 1z:q 11:6 55:17 38:1r v:7 2 2:7 1:1 1:n f 1 2m:7 "
        "2:12 g 1 s a:13 7 l b:19 j i:20 7b:8 1:10 h 1d:t 34:6 1:1 1:11 l p:5 1:1 1:v e 93:i f 1:c 1:x 3g "
        "27:pl 6e:5f 218:2o f:tr h:5 33t:g6 6nt:fs 7:u h:26 h:t i:1b g:3 v:k 5:i j4:1r 3k:22 5 1u:c 1s:1 "
        "1 s:4qf 8:yd 16:8 6w7:3 1:6 1:1 1:82 f t:2 2 e:3 8:az 1s4:2y 5:c 3:8 7:9 4me:2c 1:1y 1:1 2 2:1 "
        "2:3 1:b 1 1:6 1:1s 1:3 2:7 1:6 1:r 1:3 1:4 1 3:6 1:9f 2:o 1:o 1:u 1:o 1:u 1:o 1:u 1:o 1:u 1:o "
        "1:7 1f8:u 6:5 79:1p 42:18 a:6 g 8x:t i:17 dg:r l0:6 1:3 1:1 1:e 1:5g 1n:1v 7 xg:3 1:q 1:1 1 2 "
        "1:9 1:3 1 1 6 4 1 1 1:2 1:1 1 2 1 1 1 1 1:1 1 2:3 1:6 1:3 1:3 1 1:9 1:g 5:2 1:4 1:g 3es:wyn "
        "w:37d 6:65 2:4g1 e:5rk f:h9 1wi:f1 15u:3t6 5:38f"
    ),
    "N": (
        "1c:9 3c:1 5 2:2 141:9 3q:9 5i:9 bg:9 3a:9 4:5 30:9 3a:9 3a:9 2:5 32:c 37:9 8:6 2v:9 2w:6 7:i "
        "31:9 2o:9 3a:9 1y:j 7g:9 1y:9 jz:j oh:2 6n:9 6:9 m:9 8c:9 3k:a 4l:9 6:9 52:9 2e:9 3q:9 6:9 t2 "
        "3:5 6:9 5i:1e 2:4 k6:1n 26:l hi:t 12h ll p:8 e:2 9j:3 3u:9 u:7 1:e w:9 13:e msg:9 58:9 8w:5 4a:9 "
        "12:9 5i:9 m:9 2e:9 ba:9 geu:9 dp:18 c:1k h:1 9h:q 10:3 t 8 3q:4 5m:9 q6:7 p:6 13:8 23:4 m:5 4g:1 "
        "2:f 2:19 1s:8 1g:1 u:2 23:4 2w:7 o:7 15:6 96:5 1c:9 86:u 4e:9 16:3 34:6 3q:t 3k:9 1o:9 40:9 7:j "
        "6z:9 9i:9 3a:9 ae:9 2u:9 2u:b bo:i 2l:9 l2:s 6b:9 1y:9 bq:9 2u:k tn:32 dtd:9 2e:9 3q:9 1:6 m6:m "
        "js9:j c:j 30:o ut:1d 1ts:9 bq:9 dy:9 r1:8 3k:9 lz:1m 1:2 1:3 24:18 1:e qq:c 25f:9"
    ),
    "P": (
        "x:2 1:5 1:3 a:1 3:1 q:2 1 r 1 z 5 3 a:1 3 3 ji 8 cy:5 15:1 1f 1 2 2 18:1 k:1 1:1 d 1:2 22:3 2u "
        "17:d 6h:2 1i:e v 79:1 a 3w 3c 3d au c a7 2i a:1 4o:e 1 11:3 1z 22:4 4:1 33:5 4r h0:8 47 h9 18:1 "
        "26:2 1z:1 4d:2 1:2 11:a 8p:1 60:1 3k:6 1:5 4s:6 s:1 3h:3 1n:4 1q:1 1s:7 b n0:n 8:j 1:c 1:b u:1 "
        "e:1 hl:3 t:1 u5:d 27:1 v:9 b7:l 1r:3 w:1 l7:3 1:1 34 3z:1a 1:v 2:b bn:2 4:9 2:b g c 2q 2i mwy:1 "
        "7h:2 2r a 37:5 ak:3 2e:1 14:2 1 1d:1 1b 2p:c g:1 3g:3 3i:1 g:1 6x g2a:1 5s:9 m:y 1:d 1 4 1:1 "
        "45:2 1:5 1:3 a:1 3:1 q:2 1 r 1 1:6 be:2 ik 1c bi kn 5j v 7k:8 12 34:6 1u:6 2h:3 ls 4n:4 18:3 "
        "59:6 31:1 1:3 3i:3 1c:1 27:3 4 d 1:2 2g:5 2z bl:4 a:1 1 2w 6y:m 2x:2 s:c 24 3m:2 70 7c:2 4b 2k:7 "
        "2b:2 1:4 2l:9 8n:4 16:1 hx:1 22:c 4v vk:4 29o:1 bjv:1 3p 1t:4 8 nm:3 93 f5o 5wn:4 2xe:1"
    ),
}
