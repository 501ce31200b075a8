"""One generated long-context sample, and the seeds it is generated from.

Seeds come from sha256, never from Python's hash() (salted per process), so a sample is the same
on every machine and run; every random choice uses a local random.Random seeded from them.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sample:
    task: str
    ctx: int            # target length in tokens: overhead + C + Q + A + max_new_tokens <= ctx
    index: int
    seed: int           # the sample's own seed, sample_seed(run seed, task, ctx, index)
    context: str        # C: instruction + haystack (compressed under every protocol)
    question: str       # Q (compressed only under 'aware' and 'aware-full')
    answer_prefix: str  # A (appended after compression except in 'aware-full')
    answers: tuple      # reference strings
    max_new_tokens: int
    metric: str         # 'all' | 'part' | 'rouge1' | 'first_int'
    stop_at_newline: bool
    meta: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """A JSON-ready copy (answers as a list; meta copied, its values are already JSON types)."""
        return {
            "task": self.task, "ctx": self.ctx, "index": self.index, "seed": self.seed,
            "context": self.context, "question": self.question, "answer_prefix": self.answer_prefix,
            "answers": list(self.answers), "max_new_tokens": self.max_new_tokens, "metric": self.metric,
            "stop_at_newline": self.stop_at_newline, "meta": _plain(self.meta),
        }


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _hash64(*parts) -> int:
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def sample_seed(seed: int, task: str, ctx: int, index: int) -> int:
    """The seed of sample `index` of `task` at `ctx` in a run seeded `seed` (§5.2): a 64-bit hash."""
    return _hash64("restkv-longctx", int(seed), task, int(ctx), int(index))


def rng(sample_seed_: int, *stream) -> random.Random:
    """An independent stream of a sample's randomness, e.g. rng(s, "needles") or rng(s, "shuffle", n):
    the stream named by the extra parts, so that one choice does not shift another."""
    return random.Random(_hash64(sample_seed_, *stream))
