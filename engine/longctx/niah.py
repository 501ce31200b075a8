"""RULER's needle-in-a-haystack tasks (scripts/data/synthetic/niah.py; §2.1–2.3).

A sample is a pure function of its seed and the haystack size n (essay words or lines): keys,
values, depths and needle-line fractions are drawn once from the seed, so the length search can
rebuild it at any n and the answer never changes with n.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

from . import haystack, words
from .sample import rng
from .templates import NIAH_ANSWER, NIAH_CONTEXT, NIAH_NEEDLE, NIAH_QUESTION, NOISE_LINE, niah_singular


@dataclass(frozen=True)
class Config:
    haystack: str  # 'noise' | 'essay' | 'needle'
    type_k: str    # 'words' | 'numbers' | 'uuids'
    type_v: str
    k: int
    v: int
    q: int


CONFIGS = {  # synthetic.yaml (§2.2)
    "niah_single_1": Config("noise", "words", "numbers", 1, 1, 1),
    "niah_single_2": Config("essay", "words", "numbers", 1, 1, 1),
    "niah_single_3": Config("essay", "words", "uuids", 1, 1, 1),
    "niah_multikey_1": Config("essay", "words", "numbers", 4, 1, 1),
    "niah_multikey_2": Config("needle", "words", "numbers", 1, 1, 1),
    "niah_multikey_3": Config("needle", "uuids", "uuids", 1, 1, 1),
    "niah_multivalue": Config("essay", "words", "numbers", 1, 4, 1),
    "niah_multiquery": Config("essay", "words", "numbers", 4, 1, 4),
}
MAX_NEW = 128
BLOCK = 256  # distractor lines drawn per stream
# RULER: depths of essay needles, drawn without replacement
DEPTHS = [int(d) for d in np.round(np.linspace(0, 100, num=40, endpoint=True)).astype(int)]


def random_value(kind: str, r) -> str:
    if kind == "numbers":
        return str(r.randint(1_000_000, 9_999_999))  # 7 digits
    if kind == "words":
        return words.adj_noun(r)
    if kind == "uuids":
        return str(uuid.UUID(int=r.getrandbits(128), version=4))
    raise ValueError(kind)


def _distinct(kind: str, r, n: int, taken: set) -> list:
    # RULER does not prevent repeats; a repeated key or value would make the answer ambiguous
    out = []
    while len(out) < n:
        x = random_value(kind, r)
        if x not in taken:
            taken.add(x)
            out.append(x)
    return out


class Niah:
    """One sample's fixed draws, and its prompt for any haystack size n."""

    def __init__(self, task: str, ctx: int, seed: int, corpus=None):
        self.task, self.cfg, self.seed = task, CONFIGS[task], seed
        c = self.cfg
        k = max(c.k, c.q)
        r = rng(seed, "needles")
        taken: set = set()
        self.keys = _distinct(c.type_k, r, k, taken)
        self.values = [_distinct(c.type_v, r, c.v, taken) for _ in self.keys]
        self.real_keys = frozenset(self.keys)
        self.needles = [NIAH_NEEDLE.format(type_needle_v=c.type_v, key=key, value=val)
                        for key, vals in zip(self.keys, self.values) for val in vals]
        r.shuffle(self.needles)
        qi = r.sample(range(k), c.q)
        self.queries = [self.keys[i] for i in qi]
        self.answers = [a for i in qi for a in self.values[i]]
        self.query = (", ".join(self.queries[:-1]) + ", and " + self.queries[-1]
                      if len(self.queries) > 1 else self.queries[0])
        if c.haystack == "essay":
            self.depths = sorted(r.sample(DEPTHS, len(self.needles)))
        else:
            # RULER samples line indices uniformly; fractions of n keep the sample a function of n
            self.fractions = sorted(r.random() for _ in self.needles)
        self.corpus = corpus
        # RULER's step: the search lower bound and the per-sample step down
        self.step = 500 if c.haystack == "essay" else (25 if ctx >= 4096 else 5)
        self.unit = "words" if c.haystack == "essay" else "lines"
        self._distractors: list = []

        tmpl_c, tmpl_q, tmpl_a, type_v = NIAH_CONTEXT, NIAH_QUESTION, NIAH_ANSWER, c.type_v
        if c.q * c.v == 1:
            tmpl_c, tmpl_q, tmpl_a = niah_singular(tmpl_c), niah_singular(tmpl_q), niah_singular(tmpl_a)
            type_v = type_v[:-1]  # the needle itself stays plural
        self.tmpl_c = tmpl_c
        self.type_v_text = type_v
        self.question = tmpl_q.format(type_needle_v=type_v, query=self.query)
        self.answer_prefix = tmpl_a.format(type_needle_v=type_v, query=self.query)

    def _distractor_lines(self, n: int) -> list:
        # multikey_2/3: every filler line is a needle with its own random key and value.  Drawn in
        # blocks of BLOCK lines, block b from a stream of its own, so that the first n lines are the
        # same whatever n is and whatever was built before; a filler key never equals a real key
        # (RULER does not check), values may repeat (they are not asked for)
        c = self.cfg
        while len(self._distractors) < n:
            r = rng(self.seed, "distractors", len(self._distractors) // BLOCK)
            for _ in range(BLOCK):
                key = random_value(c.type_k, r)
                while key in self.real_keys:
                    key = random_value(c.type_k, r)
                self._distractors.append(NIAH_NEEDLE.format(
                    type_needle_v=c.type_v, key=key, value=random_value(c.type_v, r)))
        return self._distractors[:n]

    def haystack(self, n: int) -> tuple:
        """(haystack text with the needles, meta of the placement)."""
        c = self.cfg
        if c.haystack == "essay":
            sents = haystack.split_sentences(self.corpus.essay_words(n))
            pos = [0] + [int(len(sents) * d / 100) for d in self.depths] + [len(sents)]
            parts = []
            for i in range(1, len(pos)):
                parts.append(" ".join(sents[pos[i - 1]:pos[i]]))
                if i - 1 < len(self.needles):
                    parts.append(self.needles[i - 1])
            return " ".join(parts), {"depths": self.depths, "n_sentences": len(sents),
                                     "sentence_positions": pos[1:-1]}
        lines = [NOISE_LINE] * n if c.haystack == "noise" else list(self._distractor_lines(n))
        idx = [min(int(f * n), max(n - 1, 0)) for f in self.fractions]
        # inserted from the last index down, so each index refers to the original lines (RULER)
        for i, nd in sorted(zip(idx, self.needles), key=lambda t: t[0], reverse=True):
            lines.insert(i, nd)
        return "\n".join(lines), {"line_indices": idx,
                                  "depths": [round(100 * i / n, 2) if n else 0.0 for i in idx]}

    def context(self, n: int) -> tuple:
        hay, meta = self.haystack(n)
        return self.tmpl_c.format(type_needle_v=self.type_v_text, context=hay), meta
