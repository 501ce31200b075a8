"""RULER's variable tracking task, vt (scripts/data/synthetic/variable_tracking.py; §2.4).

One chain of 4 hops over noise lines, preceded by a one-shot example of about 500 tokens that
uses 3-letter names (RULER builds it once per run and re-randomises its names and value per
sample; here each sample draws its own).
"""

from __future__ import annotations

import string

from .fill import largest_fit, n_tokens
from .sample import rng
from .templates import NOISE_LINE, VT_ANSWER, VT_CONTEXT, VT_QUESTION

MAX_NEW = 30
HOPS = 4
ONESHOT_TOKENS = 500  # RULER: the example is generated with max_seq_length=500


def _names(r, k: int, n: int) -> list:
    out: list = []
    while len(out) < n:
        name = "".join(r.choices(string.ascii_uppercase, k=k))
        if name not in out:
            out.append(name)
    return out


def _chain(names: list, value: int) -> list:
    # the hop lines keep RULER's trailing space
    return [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(len(names) - 1)]


def _noise_with_chain(chain: list, fractions: list, n: int) -> str:
    lines = [NOISE_LINE] * n
    pos = sorted(min(int(f * n), max(n - 1, 0)) for f in fractions)
    # RULER: chain[j] goes in front of original line pos[j] (+j for the lines already inserted)
    for j, p in enumerate(pos):
        lines.insert(p + j, chain[j])
    return "\n".join(lines).replace(". \n", ".\n")


class Vt:
    def __init__(self, ctx: int, seed: int, tok):
        r = rng(seed, "chain")
        self.names = _names(r, 5, HOPS + 1)
        self.value = r.randint(10000, 99998)  # numpy randint(10000, 99999): upper bound excluded
        self.chain = _chain(self.names, self.value)
        self.fractions = [r.random() for _ in self.chain]
        self.step = 10 if ctx >= 4096 else 5
        self.unit = "lines"
        self.answers = list(self.names)
        self.question = VT_QUESTION.format(query=self.value)
        self.answer_prefix = VT_ANSWER.format(num_v=HOPS + 1, query=self.value)
        self.oneshot, self.oneshot_meta = self._oneshot(seed, tok)

    def _oneshot(self, seed: int, tok) -> tuple:
        r = rng(seed, "oneshot")
        names = _names(r, 3, HOPS + 1)
        value = self.value
        while value == self.value:
            value = r.randint(10000, 99998)
        chain = _chain(names, value)
        fractions = [r.random() for _ in chain]

        def text(n: int) -> str:
            return (VT_CONTEXT.format(context=_noise_with_chain(chain, fractions, n))
                    + VT_QUESTION.format(query=value) + VT_ANSWER.format(num_v=HOPS + 1, query=value))

        n, used, _ = largest_fit(lambda n: n_tokens(tok, text(n)), ONESHOT_TOKENS, 0, 25.0, "vt one-shot")
        # RULER: input + " " + answer names + "\n"; the task follows after another "\n"
        shot = text(n) + " " + " ".join(names) + "\n"
        return shot, {"oneshot_names": names, "oneshot_value": str(value), "oneshot_lines": n,
                      "oneshot_tokens": used}

    def context(self, n: int) -> tuple:
        body = VT_CONTEXT.format(context=_noise_with_chain(self.chain, self.fractions, n))
        return self.oneshot + "\n" + body, {"chain": self.chain, "oneshot_chars": len(self.oneshot) + 1}
