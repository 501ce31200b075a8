"""Long-context tasks (issue 14): RULER's synthetic tasks, ReST-KV's needle test and passkey retrieval,
generated deterministically and sized with the evaluated model's tokenizer, and their metrics.
The specification is ../shared/docs/long-context-eval.md (§2, §3, §5.2).

    from engine.longctx import expand_tasks, generate, score
    for task in expand_tasks("ruler11"):
        s = generate(task, 4096, index=0, seed=42, tok=tok)   # tok: encode(text) -> ids, decode(ids) -> text
        prompt = s.context + s.question + s.answer_prefix
        score(s, prediction)                                  # in [0, 1]
"""

from .needle import NEEDLE_DEPTHS
from .sample import Sample, sample_seed
from .tasks import (DEVIATIONS, MAX_NEW_TOKENS, METRIC, RULER11, SHORT_NAMES, TASKS, expand_tasks, generate,
                    measure, score)

__all__ = ["Sample", "TASKS", "RULER11", "NEEDLE_DEPTHS", "DEVIATIONS", "MAX_NEW_TOKENS", "METRIC", "SHORT_NAMES",
           "expand_tasks", "generate", "measure", "score", "sample_seed"]
