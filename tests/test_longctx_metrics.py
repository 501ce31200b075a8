"""Long-context metrics (issue 14; long-context-eval.md §2.1, §3.1, §3.2): RULER's string_match_all /
string_match_part after its cleanup, ReST-KV's ROUGE-1 needle score, Landmark's first-integer check."""

from __future__ import annotations

import pytest

from engine.longctx import Sample, score
from engine.longctx.metrics import clean, first_int, rouge1, score_answers, string_match_all, string_match_part
from engine.longctx.templates import NEEDLE


def sample(metric, answers, task="t"):
    return Sample(task=task, ctx=1024, index=0, seed=1, context="", question="", answer_prefix="",
                  answers=tuple(answers), max_new_tokens=8, metric=metric, stop_at_newline=False, meta={})


def test_ruler_cleanup():
    assert clean("  a\tb\x00c\x1fd \n") == "a\nb\nc\nd"
    assert clean("\x01\x02 x \x7f") == "x \x7f"  # only [\x00-\x1f] are control characters here


def test_string_match_all_case_insensitive_and_partial():
    refs = ["1234567", "Alpha-Beta", "ZZZ", "qqq"]
    assert string_match_all("1234567, alpha-beta, zzz and QQQ", refs) == 1.0
    assert string_match_all("The numbers are 1234567 and ALPHA-BETA.", refs) == 0.5
    assert string_match_all("nothing", refs) == 0.0
    assert string_match_all("12345678", ["1234567"]) == 1.0  # substring, as RULER
    assert string_match_all("1234\x00567", ["1234567"]) == 0.0  # the control char became a newline
    assert string_match_all("abc", []) == 0.0


def test_string_match_part():
    assert string_match_part("it is PARIS", ["paris", "london"]) == 1.0
    assert string_match_part("it is Rome", ["paris", "london"]) == 0.0


def test_rouge1_like_rest_kv():
    needle = NEEDLE.strip()
    assert rouge1(needle, NEEDLE) == pytest.approx(1.0)
    assert rouge1("  ", NEEDLE) == 0.0 and rouge1("", NEEDLE) == 0.0
    # stemming: 'sandwiches' counts as 'sandwich'; case and punctuation are ignored
    assert rouge1("EAT SANDWICHES!", "eat a sandwich") == pytest.approx(2 * (2 / 2) * (2 / 3) / (2 / 2 + 2 / 3))
    part = rouge1("eat a sandwich and sit in Dolores Park", NEEDLE)
    assert 0.3 < part < 1.0
    # precision 8/8, recall 8/21 (the needle has 21 words): F = 2PR/(P+R) = 16/29
    assert part == pytest.approx(16 / 29)


def test_first_int():
    assert first_int("12345. Remember it.", "12345") == 1.0
    assert first_int(" is 0012345", "12345") == 1.0  # the integer, not the string
    assert first_int("The pass key is 999, not 12345", "12345") == 0.0  # only the first one counts
    assert first_int("no digits here", "12345") == 0.0
    assert first_int("123456", "12345") == 0.0


def test_score_dispatch_and_range():
    assert score(sample("all", ["a", "b"]), "A") == 0.5
    assert score(sample("part", ["a", "b"]), "B") == 1.0
    assert score(sample("rouge1", [NEEDLE.strip()]), NEEDLE) == pytest.approx(1.0)
    assert score(sample("first_int", ["42"]), "42 is the pass key") == 1.0
    for metric, answers in (("all", ["x"]), ("part", ["x"]), ("rouge1", ["x y"]), ("first_int", ["7"])):
        for pred in ("", "x", "x y 7", "\x00\x01", "7" * 50):
            assert 0.0 <= score(sample(metric, answers), pred) <= 1.0
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        score_answers("bleu", "x", ["x"])
