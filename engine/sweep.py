"""Sweep: perplexity and LAMBADA per eviction policy and KV budget, resumable, with a table and plots.

    python -m engine.sweep --gguf model.gguf [--policies all|p1,p2] [--budgets 1,0.5,0.25,0.1,0.05]
        [--datasets wikitext,lambada] [--ctx 2048] [--chunks N] [--lambada-n N] [--out DIR]

The entry module of the tool; the sweep itself (what it runs, the files it writes, how it
resumes) is engine.eval.sweep.
"""

from __future__ import annotations

import sys

# the Python API, also importable from here (its home is engine.eval.sweep)
from .eval.sweep import main, plan, sweep

__all__ = ["main", "plan", "sweep"]

if __name__ == "__main__":
    sys.exit(main())
