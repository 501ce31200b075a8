"""Perplexity of a GGUF model on a text file, with llama-perplexity's protocol and a compressed KV cache.

    python -m engine.perplexity --gguf model.gguf -f wiki.test.raw [--ctx 512] [--chunks N]
    python -m engine.perplexity --gguf model.gguf --budget 0.1 --policy snapkv [--protocol prefix|streaming]
    python -m engine.perplexity --gguf model.gguf --dataset lambada [--data FILE] [--limit N] \
        --budget 0.1 --policy snapkv

The entry module of the tool; the work is in engine.eval: the protocols (full cache = llama.cpp
tools/perplexity's, bit for bit; "prefix": each chunk's first half compressed to the budget, the
second half scored on top; "streaming": the whole text through a cache held at the budget) in
engine.eval.protocols, LAMBADA (--dataset lambada) in engine.eval.lambada, the command line in
engine.eval.command.
"""

from __future__ import annotations

import sys

from .eval.command import main
# engine.bench imports these from here (their home is engine.eval.options)
from .eval.options import EXIT_HELP, check_policy
# the Python API, also importable from here (its home is engine.eval.protocols)
from .eval.protocols import PerplexityResult, perplexity, perplexity_many

__all__ = ["main", "EXIT_HELP", "check_policy", "PerplexityResult", "perplexity", "perplexity_many"]

if __name__ == "__main__":
    sys.exit(main())
