"""LAMBADA last-word accuracy and perplexity, with the context's KV cache compressed to a budget.

    python -m engine.lambada --gguf model.gguf [--data FILE] [--limit N] [--budget 0.1 --policy snapkv]
    (the same as python -m engine.perplexity --dataset lambada ...)

The entry module of the tool; the protocol is engine.eval.lambada, the command line
engine.eval.command.
"""

from __future__ import annotations

import sys

from .eval.command import lambada_main as main
# the Python API, also importable from here (its home is engine.eval.lambada)
from .eval.lambada import LambadaItem, LambadaResult, lambada, lambada_many, load_passages, prepare, split_passage

__all__ = ["main", "LambadaItem", "LambadaResult", "lambada", "lambada_many", "load_passages", "prepare",
           "split_passage"]

if __name__ == "__main__":
    sys.exit(main())
