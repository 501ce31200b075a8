"""Passkey retrieval, Landmark Attention's recipe (llama/run_test.py; §3.2).

Garbage is the noise line repeated (joined with spaces) and cut by characters: n characters in
all, split at a random point into the text before and after the pass key line; both pieces
start at the beginning of the repeated noise, as in Landmark.  The key is uniform on 1..50000.
"""

from __future__ import annotations

from .sample import rng
from .templates import NOISE_LINE, PASSKEY_ANSWER, PASSKEY_INFO, PASSKEY_QUESTION, PASSKEY_TASK

MAX_NEW = 10


class Passkey:
    def __init__(self, seed: int):
        r = rng(seed, "passkey")
        self.key = r.randint(1, 50000)
        # Landmark draws the prefix length with randint(0, n); a fraction keeps the sample a
        # function of n (same key, same relative depth) for the length search
        self.split = r.random()
        self.info = PASSKEY_INFO.format(key=self.key)
        self.answers = [str(self.key)]
        self.question, self.answer_prefix = PASSKEY_QUESTION, PASSKEY_ANSWER
        self.unit, self.step = "garbage chars", 1
        self._garbage = ""

    def garbage(self, n: int) -> str:
        while len(self._garbage) < n:
            reps = max(2 * (len(self._garbage) // (len(NOISE_LINE) + 1)), 64)
            self._garbage = " ".join([NOISE_LINE] * reps)
        return self._garbage[:n]

    def context(self, n: int) -> tuple:
        n_prefix = min(int(self.split * (n + 1)), n)
        lines = [PASSKEY_TASK, self.garbage(n_prefix), self.info, self.garbage(n - n_prefix)]
        # the fifth line, "What is the pass key? The pass key is", is the question + answer prefix
        ctx_text = "\n".join(lines) + "\n"
        return ctx_text, {"garbage_prefix_chars": n_prefix, "garbage_suffix_chars": n - n_prefix,
                          "key_depth_percent": round(100 * n_prefix / n, 2) if n else 0.0}
