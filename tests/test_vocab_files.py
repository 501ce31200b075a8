"""Token ids identical to llama.cpp's on the vocabulary test files that llama.cpp ships.

llama.cpp keeps vocab-only GGUFs with test cases in ``models/ggml-vocab-*.gguf`` plus
``.gguf.inp`` (test strings, each followed by a line ``__ggml_vocab_test__``) and
``.gguf.out`` (one line of space-separated ids per string); ``tests/test-tokenizer-0.cpp``
tokenizes every string with ``common_tokenize(ctx, text, add_special=false,
parse_special=false)`` and compares.  We read them from the llama-cpp-python sdist
(``vendor/llama.cpp/models/``), copying nothing into the repository:

* ``$RESTKV_LLAMA_SDIST``: the ``.tar.gz``, or an unpacked copy (the sdist's top directory,
  its ``vendor/llama.cpp`` or that ``models`` directory);
* else ``llama_cpp_python-0.3.36.tar.gz`` found in pip's find-links / local ``file://`` index
  directories, pip's cache or ``~/.cache/restkv-engine`` (``find_sdist``), where
  ``pip download --no-deps --no-binary :all: --no-build-isolation llama-cpp-python==0.3.36
  -d ~/.cache/restkv-engine`` puts it;
* else every test here is skipped, with the reason.

The vocabulary files are unpacked from the tarball into a pytest temporary directory.

Per vocabulary file:
* ``test_vocab_file_ids``: every ``.inp`` string tokenized by ``Tokenizer.from_gguf`` (a
  vocab-only GGUF: no tensors needed) gives the ``.out`` ids.  Vocabulary types and
  pre-tokenizers the engine does not implement (bert/WPM, t5/UGM, gemma4, deepseek-*,
  qwen35, ...) must raise EngineError, and are skipped with that reason; every other file
  must pass.  Files shipped without ``.inp``/``.out`` are skipped here and covered by:
* ``test_vocab_file_live``: with llama-cpp-python importable, the strings of all ``.inp``
  files plus special-token cases, with add_special and parse_special both ways, against
  the installed llama.cpp (ids and detokenized bytes).
"""

from __future__ import annotations

import configparser
import functools
import os
import re
import tarfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote, urlparse

import pytest

from engine.errors import EngineError
from engine.tokenizer import Tokenizer, read_gguf_metadata_fast

SDIST_VERSION = "0.3.36"
SDIST_NAMES = (f"llama_cpp_python-{SDIST_VERSION}.tar.gz", f"llama-cpp-python-{SDIST_VERSION}.tar.gz")
ENV = "RESTKV_LLAMA_SDIST"
SEP = b"\n__ggml_vocab_test__\n"
VOCAB_RE = re.compile(r"(?:^|/)vendor/llama\.cpp/models/(ggml-vocab-[^/]+\.gguf(?:\.inp|\.out)?)$")

# llama.cpp's vocabulary types of tokenizer.ggml.model values (llama-vocab.cpp, load)
LLAMA_VOCAB_TYPES = {"llama": "SPM", "gpt2": "BPE", "bert": "WPM", "t5": "UGM", "rwkv": "RWKV",
                     "plamo2": "PLAMO2", "gemma4": "BPE (gemma4)", "no_vocab": "NONE", "none": "NONE"}


# ----------------------------------------------------------------------------- finding the sdist

def _pip_config_values(key: str) -> List[str]:
    """Values of a pip option (find-links, index-url, extra-index-url) from the environment and
    pip's configuration files (without running pip)."""
    vals: List[str] = []
    env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
    if env:
        vals += env.split()
    home = Path.home()
    files = [Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf"), home / ".pip" / "pip.conf",
             home / ".config" / "pip" / "pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    for f in files:
        cp = configparser.ConfigParser(interpolation=None)
        try:
            cp.read(f)
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        for section in ("global", "download", "install"):
            if cp.has_option(section, key):
                vals += cp.get(section, key).split()
    return vals


def _local_path(url_or_path: str) -> Optional[Path]:
    if url_or_path.startswith("file:"):
        return Path(unquote(urlparse(url_or_path).path))
    if "://" in url_or_path:
        return None
    return Path(url_or_path)


def _candidate_dirs() -> List[Path]:
    dirs: List[Path] = []
    for v in _pip_config_values("find-links"):
        p = _local_path(v)
        if p is not None:
            dirs.append(p)
    for key in ("index-url", "extra-index-url"):
        for v in _pip_config_values(key):
            root = _local_path(v)
            if root is None:
                continue
            # a PEP 503 "simple" tree: <root>/<project>/ (files or an index.html linking them)
            for project in ("llama-cpp-python", "llama_cpp_python"):
                dirs.append(root / project)
                idx = root / project / "index.html"
                if idx.is_file():
                    for href in re.findall(r'href="([^"#]+)', idx.read_text(errors="replace")):
                        dirs.append((idx.parent / unquote(href)).parent)
            dirs.append(root.parent / "files")
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    dirs += [Path(cache) / "restkv-engine", Path(cache) / "restkv",
             Path(os.environ.get("PIP_CACHE_DIR") or Path(cache) / "pip")]
    return dirs


def _find_in(d: Path, max_depth: int = 3) -> Optional[Path]:
    """SDIST_NAMES in d or below it (a few levels: pip's cache keeps files in subdirectories)."""
    if not d.is_dir():
        return None
    base = len(d.parts)
    for root, subdirs, files in os.walk(d):
        for name in SDIST_NAMES:
            if name in files:
                return Path(root) / name
        if len(Path(root).parts) - base >= max_depth:
            subdirs[:] = []
    return None


def find_sdist() -> Tuple[Optional[Path], str]:
    """(path of the sdist .tar.gz or of an unpacked models directory, "") or (None, why not)."""
    env = os.environ.get(ENV)
    if env:
        p = Path(env)
        if p.is_file():
            return p, ""
        for sub in ("vendor/llama.cpp/models", "models", "."):
            if (p / sub).is_dir() and list((p / sub).glob("ggml-vocab-*.gguf")):
                return (p / sub).resolve(), ""
        return None, f"${ENV}={env} is neither a .tar.gz nor a directory holding vendor/llama.cpp/models/ggml-vocab-*.gguf"
    searched = []
    for d in _candidate_dirs():
        found = _find_in(d)
        if found:
            return found, ""
        searched.append(str(d))
    return None, (f"llama-cpp-python {SDIST_VERSION} sdist not found: set ${ENV} to its .tar.gz or an unpacked copy, "
                  f"or put it in ~/.cache/restkv-engine (`pip download --no-deps --no-binary :all: --no-build-isolation "
                  f"llama-cpp-python=={SDIST_VERSION} -d ~/.cache/restkv-engine`; without --no-build-isolation pip "
                  f"builds cmake from source first); searched {', '.join(dict.fromkeys(searched))}")


SDIST, SKIP_REASON = find_sdist()


@functools.lru_cache(maxsize=None)
def _members() -> Dict[str, Optional[str]]:
    """Vocabulary file name -> member name in the tarball (None for an unpacked directory)."""
    if SDIST is None:
        return {}
    if SDIST.is_dir():
        return {p.name: None for p in sorted(SDIST.glob("ggml-vocab-*"))}
    out = {}
    with tarfile.open(SDIST, "r:*") as tf:
        for m in tf:
            hit = VOCAB_RE.search(m.name)
            if hit and m.isfile():
                out[hit.group(1)] = m.name
    return out


def _vocab_names() -> List[str]:
    global SDIST, SKIP_REASON
    try:
        return sorted(n for n in _members() if n.endswith(".gguf"))
    except (tarfile.TarError, OSError, EOFError) as e:
        SDIST, SKIP_REASON = None, f"cannot read {SDIST}: {e}"
        return []


VOCABS = _vocab_names()
PARAMS = VOCABS or [pytest.param("none", marks=pytest.mark.skip(
    reason=SKIP_REASON or f"no vocab files under vendor/llama.cpp/models in {SDIST}"))]


@pytest.fixture(scope="session")
def vocab_dir(tmp_path_factory) -> Path:
    """Directory holding the ggml-vocab-* files (unpacked from the tarball once per session)."""
    if SDIST is None:
        pytest.skip(SKIP_REASON)
    if SDIST.is_dir():
        return SDIST
    out = tmp_path_factory.mktemp("llama_vocab")
    wanted = {member: name for name, member in _members().items()}
    with tarfile.open(SDIST, "r:*") as tf:
        for m in tf:
            name = wanted.get(m.name)
            if name is not None and m.isfile():
                src = tf.extractfile(m)
                assert src is not None
                with src, open(out / name, "wb") as dst:
                    dst.write(src.read())
    return out


# ----------------------------------------------------------------------------- test cases

def read_tests(inp: Path, out: Path) -> List[Tuple[bytes, List[int]]]:
    """The (text, ids) pairs of a .inp/.out pair, read as test-tokenizer-0.cpp reads them."""
    sraw = inp.read_bytes()
    sout = out.read_bytes().split(b"\n")
    if sout and sout[-1] == b"":  # std::getline yields no line after a final newline
        sout.pop()
    sinp: List[bytes] = []
    pos = 0
    while pos < len(sraw):
        nxt = sraw.find(SEP, pos)
        if nxt < 0:
            sinp.append(sraw[pos:])
            break
        sinp.append(sraw[pos:nxt])
        pos = nxt + len(SEP)
    assert len(sinp) == len(sout), f"{inp.name}: {len(sinp)} inputs, {len(sout)} outputs"
    return [(s, [int(x) for x in o.split()]) for s, o in zip(sinp, sout)]


@functools.lru_cache(maxsize=None)
def _meta(path: str) -> dict:
    return read_gguf_metadata_fast(path)


def unsupported_reason(meta: dict) -> Optional[str]:
    """Why the engine does not implement this vocabulary (None when it does), from its own tables."""
    from engine import tokenizer as T

    def s(v):
        return v.decode("utf-8", "replace") if isinstance(v, bytes) else v

    model = s(meta.get("tokenizer.ggml.model"))
    if model == "llama":
        return None
    if model == "gpt2":
        pre = s(meta.get("tokenizer.ggml.pre")) or "default"
        if pre in T._PRE_TOKENIZERS:
            return None
        return f"BPE pre-tokenizer {pre!r} is not implemented by the engine"
    return f"vocabulary type {LLAMA_VOCAB_TYPES.get(model, '?')} (tokenizer.ggml.model = {model!r}) is not implemented by the engine"


def _tokenizer_or_skip(path: Path) -> Tokenizer:
    meta = _meta(str(path))
    why = unsupported_reason(meta)
    if why is not None:
        with pytest.raises(EngineError, match="not supported"):
            Tokenizer.from_metadata(meta)
        pytest.skip(f"{path.name}: {why}")
    return Tokenizer.from_gguf(str(path))  # any error here is a failure


@pytest.mark.parametrize("name", PARAMS)
def test_vocab_file_ids(vocab_dir, name):
    path = vocab_dir / name
    inp, out = Path(str(path) + ".inp"), Path(str(path) + ".out")
    if not inp.exists() or not out.exists():
        _tokenizer_or_skip(path)
        pytest.skip(f"{name}: llama.cpp ships no .inp/.out test pair for it (see test_vocab_file_live)")
    tests = read_tests(inp, out)
    tok = _tokenizer_or_skip(path)
    bad = []
    for raw, want in tests:
        text = raw.decode("utf-8")
        got = tok.encode(text, add_special=False, parse_special=False)
        if got != want:
            bad.append(f"{text[:60]!r}: ours {got[:24]}, llama.cpp {want[:24]}")
    assert not bad, f"{name} ({tok!r}): {len(bad)}/{len(tests)} strings differ:\n" + "\n".join(bad)


EXTRA_STRINGS = [
    "<s>", "</s>", "<unk>", "<|endoftext|>", "<|im_start|>user\nhi<|im_end|>\n", " <|im_end|> ",
    "<start_of_turn>user\nhi<end_of_turn>\n", "<bos><eos>", "[CLS] [SEP] [MASK] <mask>", "<|eot_id|>",
    "a  b   c\t\td\n\n\ne", "\r\n\r\n", "12345 678901", "I'LL don't", " leading", "trailing ",
]


@pytest.fixture(scope="session")
def all_strings(vocab_dir) -> List[str]:
    seen = dict.fromkeys(EXTRA_STRINGS)
    for inp in sorted(vocab_dir.glob("ggml-vocab-*.gguf.inp")):
        out = Path(str(inp)[:-4] + ".out")
        if out.exists():
            for raw, _ in read_tests(inp, out):
                seen.setdefault(raw.decode("utf-8"))
    return list(seen)


@pytest.mark.parametrize("name", PARAMS)
def test_vocab_file_live(vocab_dir, all_strings, name):
    llama_cpp = pytest.importorskip("llama_cpp")
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from tokenizer_parity import LlamaVocab

    path = vocab_dir / name
    tok = _tokenizer_or_skip(path)
    ref = LlamaVocab(str(path))
    bad = []
    for text in all_strings:
        for add_special in (False, True):
            for parse_special in (False, True):
                got = tok.encode(text, add_special, parse_special)
                want = ref.tokenize(text, add_special, parse_special)
                if got != want:
                    bad.append(f"{text[:50]!r} add_special={add_special} parse_special={parse_special}: "
                               f"ours {got[:16]}, llama.cpp {want[:16]}")
                    continue
                for remove, unparse in ((False, True), (True, False)):
                    a, b = tok.detokenize(got, remove, unparse), ref.detokenize(want, remove, unparse)
                    if a != b:
                        bad.append(f"detokenize({text[:40]!r}, remove_special={remove}, unparse_special={unparse}): "
                                   f"ours {a[:60]!r}, llama.cpp {b[:60]!r}")
    assert not bad, (f"{name} ({tok!r}) against llama-cpp-python {llama_cpp.__version__}: {len(bad)} differences:\n"
                     + "\n".join(bad[:40]))
