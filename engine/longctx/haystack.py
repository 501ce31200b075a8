"""The Paul Graham essay haystack (read in place from the shared data folder) and the sentence splitter.

RULER's corpus starts with the 49 gkamradt essays, sorted by name and concatenated without a
separator; ReST-KV's needle test concatenates the same files. Ours are byte copies of them
(SOURCE.md in the folder), so essay haystacks below ~100k tokens equal RULER's.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path

ESSAYS = "paul_graham_essays"
N_ESSAYS = 49


def essay_dir(data_root=None) -> Path:
    """The essays folder: `data_root`/paul_graham_essays, else the first shared data folder that has
    it ($RESTKV_SHARED_DATA, else ../shared/data of the cwd and of the checkout: engine.data's rule)."""
    if data_root is not None:
        roots = [Path(data_root).expanduser()]
    else:
        from .. import data  # lazily: engine.data is only needed to find the folder

        roots = data.shared_dirs()
    for root in roots:
        for d in (root / ESSAYS, root):  # the data root, or the essays folder itself
            if d.name == ESSAYS and d.is_dir() and any(d.glob("*.txt")):
                return d
    where = ", ".join(str(r) for r in roots) or "(none: set RESTKV_SHARED_DATA or pass data_root)"
    raise FileNotFoundError(f"the Paul Graham essays ({ESSAYS}/*.txt) were not found under {where}")


class Corpus:
    """The concatenated essays: `text` (files sorted by name, no separator) and RULER's `words`."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.files = sorted(directory.glob("*.txt"))
        # text mode, as RULER and ReST-KV read them (universal newlines)
        self.texts = [p.read_text(encoding="utf-8") for p in self.files]
        self.text = "".join(self.texts)
        self.sha256 = hashlib.sha256(self.text.encode("utf-8")).hexdigest()
        # RULER niah.py: re.sub(r'\s+', " ", essay).split(" ")
        self.words = re.sub(r"\s+", " ", self.text).split(" ")

    def essay_words(self, n: int) -> str:
        """The first n words joined with spaces, repeating the corpus when n exceeds it (RULER)."""
        w = self.words
        if n <= len(w):
            return " ".join(w[:n])
        reps = -(-n // len(w))
        return " ".join((w * reps)[:n])

    def rotated_text(self, start_file: int, min_chars: int) -> str:
        """Files from `start_file` on (cyclically, repeated) until at least min_chars characters."""
        out, size, i = [], 0, start_file % len(self.texts)
        while size < min_chars:
            out.append(self.texts[i])
            size += len(self.texts[i])
            i = (i + 1) % len(self.texts)
        return "".join(out)


@functools.lru_cache(maxsize=4)
def _corpus(directory: str, mtime_key: tuple) -> Corpus:
    return Corpus(Path(directory))


def corpus(data_root=None) -> Corpus:
    d = essay_dir(data_root)
    key = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.glob("*.txt")))
    return _corpus(os.fspath(d), key)


# Deterministic sentence splitter standing in for NLTK punkt (whose model cannot be downloaded
# here): a sentence ends after '.', '!' or '?' (and any closing quotes/brackets right after them)
# followed by whitespace. RULER joins the sentences back with single spaces; on whitespace-collapsed
# text the split is lossless, so the haystack text is unchanged and a needle moves by at most one
# sentence compared with punkt (which also keeps e.g. "Mr. Smith" together).
_SENTENCE_END = re.compile(r"(?<=[.!?])(?:[\"'\u201d\u2019)\]]*)\s+")
SPLITTER = r"""a sentence ends after [.!?]["'\u201d\u2019)\]]* followed by whitespace; no abbreviation list"""


def split_sentences(text: str) -> list:
    text = text.strip()
    if not text:
        return []
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        # the closing quotes/brackets stay with their sentence, the whitespace is dropped
        end = m.start() + len(m.group(0).rstrip())
        out.append(text[start:end])
        start = m.end()
    out.append(text[start:])
    return [s for s in out if s]


def noise_lines(n: int) -> list:
    from .templates import NOISE_LINE

    return [NOISE_LINE] * n


def offsets(text: str, needles) -> list:
    """Character offset of each needle in text (-1 if absent)."""
    return [text.find(nd) for nd in needles]
