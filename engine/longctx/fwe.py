"""RULER's frequent words extraction, fwe (scripts/data/synthetic/freq_words_extraction.py; §2.6).

V = (ctx - 50) // 50 random 6-letter words ranked by a shuffle; rank k occurs
floor(n·k^-2/ζ(2)) times, rank 1 is replaced by '...' (noise), the answers are ranks 2-4.
"""

from __future__ import annotations

import math
import string

import numpy as np

from .sample import rng
from .templates import FWE_ANSWER, FWE_CONTEXT, FWE_QUESTION

MAX_NEW = 50
WORD_LEN = 6
ALPHA = 2.0
ZETA2 = math.pi ** 2 / 6  # scipy.special.zeta(2.0), the same double


class Fwe:
    def __init__(self, ctx: int, seed: int):
        r = rng(seed, "vocab")
        size = max((ctx - MAX_NEW) // 50, 4)
        vocab: set = set()
        while len(vocab) < size:
            vocab.add("".join(r.choices(string.ascii_lowercase, k=WORD_LEN)))
        self.vocab = sorted(vocab)
        r.shuffle(self.vocab)
        self.vocab[0] = "..."  # the top rank is noise
        self.seed = seed
        self.answers = self.vocab[1:4]
        self.question, self.answer_prefix = FWE_QUESTION, FWE_ANSWER
        self.unit = "words (zipf n)"

    def counts(self, n: int) -> list:
        k = np.arange(1, len(self.vocab) + 1)
        return [int(c) for c in (n * (k ** -ALPHA) / ZETA2).astype(int)]

    def context(self, n: int) -> tuple:
        ws = [w for w, c in zip(self.vocab, self.counts(n)) for _ in range(c)]
        rng(self.seed, "shuffle", n).shuffle(ws)
        return FWE_CONTEXT.format(context=" ".join(ws)), {"vocab_size": len(self.vocab),
                                                           "top_counts": self.counts(n)[:5]}
