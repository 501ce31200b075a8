"""The length rule (RULER's, §2.1/§5.2): the largest haystack whose prompt still fits.

    overhead + len(encode(context)) + len(encode(question)) + len(encode(answer_prefix)) + max_new <= ctx

The three segments are counted separately because the runner tokenizes them separately; the
overhead covers BOS and the chat template's wrapping.  RULER binary-searches the haystack size
once per task (from a lower bound of one step: 500 essay words, 25 lines or 5 below 4k, 10 cwe
words) on one random sample, then steps each sample down by a step until it fits, so a sample
can end up a whole step short.  Here every sample is searched on its own content (a sample is a
pure function of its seed and its size n), which gives the largest n with n+1 not fitting, at
the cost of a few more tokenizations; the count of tokens is close to linear in n, so an
interpolation search needs ~5-8 of them instead of the ~15 of a bisection.
"""

from __future__ import annotations

import math
from typing import Callable


class NoFit(ValueError):
    pass


def n_tokens(tok, text: str) -> int:
    return len(tok.encode(text)) if text else 0


def largest_fit(need: Callable[[int], int], ctx: int, lo: int, tokens_per_unit: float,
                what: str = "haystack") -> tuple:
    """(n, need(n), probes): the largest n >= lo found with need(n) <= ctx < need(n+1).

    `need(n)` is the full length of the sample built with n haystack units (segments, overhead and
    max_new); `tokens_per_unit` is only a first guess of its slope.  Every probe lies strictly
    inside the bracket (good, bad), so the answer satisfies both inequalities even where `need` is
    not monotone (a needle moving to another sentence can change the count by a token)."""
    memo = {}

    def f(n: int) -> int:
        if n not in memo:
            memo[n] = need(n)
        return memo[n]

    if f(lo) > ctx:
        raise NoFit(f"ctx {ctx} is too small: even the smallest {what} ({lo} units) needs {f(lo)} tokens "
                    f"(prompt + overhead + max_new_tokens)")
    good, bad = lo, None
    rate = max(float(tokens_per_unit), 1e-3)
    last_width = None
    while bad is None or bad - good > 1:
        fg = f(good)
        if bad is None:
            if good > lo:
                rate = max((fg - f(lo)) / (good - lo), 1e-3)
            # aim a little past the boundary, so that the probe brackets it
            cands = [good + max(1, math.ceil((ctx - fg) / rate * 1.01) + 1)]
        else:
            width, fb = bad - good, f(bad)
            if fb <= fg or (last_width is not None and width > last_width // 2 and width > 4):
                cands = [(good + bad) // 2]  # interpolation stalled on one side: bisect once
            else:
                p = good + int((ctx - fg) * width / (fb - fg))
                cands = [p, p + 1]  # the boundary is usually between the two
            last_width = width
        for p in cands:
            if bad is not None and bad - good <= 1:
                break
            p = max(p, good + 1) if bad is None else min(max(p, good + 1), bad - 1)
            if f(p) <= ctx:
                good = p
            else:
                bad = p
                break
    return good, f(good), len(memo)


def step_up_fit(need: Callable[[int], int], ctx: int, start: int, step: int, what: str = "haystack") -> tuple:
    """fwe's rule (RULER freq_words_extraction.py): from `start`, grow by `step` while the next size
    still fits; when `start` itself does not fit, step down until one does.  (n, need(n), probes).
    The growth is searched over the multiples of `step` (same result, fewer tokenizations)."""
    first = need(start)
    if first <= ctx:
        j, used, probes = largest_fit(lambda j: first if j == 0 else need(start + j * step), ctx, 0,
                                      max(first / max(start, 1), 1e-3) * step, what)
        return start + j * step, used, probes
    n, cur, probes = start, first, 1
    while cur > ctx:
        n -= step
        if n < 0:
            raise NoFit(f"ctx {ctx} is too small for any {what}")
        cur = need(n)
        probes += 1
    return n, cur, probes
