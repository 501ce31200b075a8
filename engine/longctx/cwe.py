"""RULER's common words extraction, cwe (scripts/data/synthetic/common_words_extraction.py; §2.5).

n distinct words: the first 10 ('common') appear 30 times each, the other n-10 three times
(below ctx 4096: 6 and 1), shuffled and numbered on one line; a one-shot example of 40 words
(10 x 10, 30 x 3; below 4096: 20 words, x3 / x1) comes first.
"""

from __future__ import annotations

from . import words
from .sample import rng
from .templates import CWE_ANSWER, CWE_CONTEXT, CWE_QUESTION

MAX_NEW = 120
NUM_CW = 10


def numbered(ws) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(ws))


class Cwe:
    def __init__(self, ctx: int, seed: int):
        pool = list(words.cwe_pool())
        rng(seed, "words").shuffle(pool)
        # the task takes words from the front of the permutation (so the first n are the same for
        # every n) and the one-shot from its end: RULER samples both independently and may reuse
        # a word of the example in the task
        self.perm = pool
        if ctx < 4096:
            self.rep_common, self.rep_uncommon, shot = 6, 1, (20, 3, 1)
        else:
            self.rep_common, self.rep_uncommon, shot = 30, 3, (40, 10, 3)
        n_shot, shot_c, shot_u = shot
        shot_words = pool[len(pool) - n_shot:]
        shot_list = shot_words[:NUM_CW] * shot_c + shot_words[NUM_CW:] * shot_u
        rng(seed, "oneshot").shuffle(shot_list)
        self.oneshot = (CWE_CONTEXT.format(context=numbered(shot_list)) + CWE_QUESTION + CWE_ANSWER
                        + " " + numbered(shot_words[:NUM_CW]))
        self.max_words = len(pool) - n_shot
        self.seed = seed
        self.answers = pool[:NUM_CW]
        self.question, self.answer_prefix = CWE_QUESTION, CWE_ANSWER
        self.step, self.unit, self.lo = 10, "distinct words", NUM_CW

    def word_list(self, n: int) -> list:
        if n > self.max_words:
            raise ValueError(f"cwe needs {n} distinct words; wonderwords has {self.max_words} besides the one-shot's "
                             "(RULER falls back to its english_words.json, which is not available here)")
        wl = self.perm[:NUM_CW] * self.rep_common + self.perm[NUM_CW:n] * self.rep_uncommon
        rng(self.seed, "shuffle", n).shuffle(wl)
        return wl

    def context(self, n: int) -> tuple:
        body = CWE_CONTEXT.format(context=numbered(self.word_list(n)))
        return self.oneshot + "\n" + body, {"oneshot_chars": len(self.oneshot) + 1,
                                            "repeats": [self.rep_common, self.rep_uncommon]}
