"""Per-sample scores in [0, 1] (§2.1, §3.1, §3.2).

- all / part: RULER's string_match_all / string_match_part (scripts/eval/synthetic/constants.py):
  the fraction of references (all) or whether any reference (part) occurs in the prediction,
  case-insensitively, after RULER's cleanup (strip; control characters become newlines).
- rouge1: ReST-KV's needle score, rouge_score's ROUGE-1 F-measure with the Porter stemmer of the
  stripped response against the needle (0 for an empty response); ReST-KV multiplies it by 10.
- first_int: Landmark's passkey check, the first integer in the output equals the key.
"""

from __future__ import annotations

import functools
import re

_CONTROL = re.compile(r"[\x00-\x1f]")
_INT = re.compile(r"\d+")
METRICS = ("all", "part", "rouge1", "first_int")


def clean(prediction: str) -> str:
    """RULER evaluate.py postprocess_pred."""
    return _CONTROL.sub("\n", prediction.strip()).strip()


def string_match_all(prediction: str, references) -> float:
    p = clean(prediction).lower()
    refs = list(references)
    return sum(1.0 for r in refs if r.lower() in p) / len(refs) if refs else 0.0


def string_match_part(prediction: str, references) -> float:
    p = clean(prediction).lower()
    return 1.0 if any(r.lower() in p for r in references) else 0.0


@functools.lru_cache(maxsize=1)
def _scorer():
    try:
        from rouge_score import rouge_scorer
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("the needle test's score needs `rouge-score` (pip install rouge-score)") from e
    return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)


def rouge1(prediction: str, reference: str) -> float:
    response = prediction.strip()
    if not response:
        return 0.0
    return float(_scorer().score(reference, response)["rouge1"].fmeasure)


def first_int(prediction: str, reference: str) -> float:
    m = _INT.search(prediction)
    return 1.0 if m is not None and int(m.group()) == int(reference) else 0.0


def score_answers(metric: str, prediction: str, answers) -> float:
    if metric == "all":
        return string_match_all(prediction, answers)
    if metric == "part":
        return string_match_part(prediction, answers)
    if metric == "rouge1":
        return max((rouge1(prediction, a) for a in answers), default=0.0)
    if metric == "first_int":
        return max((first_int(prediction, a) for a in answers), default=0.0)
    raise ValueError(f"unknown metric {metric!r} (expected one of {', '.join(METRICS)})")


def score(sample, prediction: str) -> float:
    """The score of `prediction` (the generated text, without the prompt) for `sample`, in [0, 1]."""
    return score_answers(sample.metric, prediction, sample.answers)
