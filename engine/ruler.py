"""Long-context accuracy under KV budgets: RULER tasks, needle test and passkey per policy, budget and protocol.

    python -m engine.ruler --gguf model.gguf --tasks ruler11|needle|passkey|NAMES --lengths 4096,8192 \
        --samples N --policies full,snapkv,restkv --budgets 0.5,0.25,0.1,256,1024 \
        --protocol agnostic|aware|aware-full --seed S --template auto|raw --out DIR [--json FILE]

The entry module of the tool; the work is in engine.longctx: the task generators, the protocols
(engine.longctx.protocols), the runner with its shared prefills and resumable files
(engine.longctx.runner), the report and plots, the command line (engine.longctx.cli).
From Python: engine.ruler.run(model_or_path, tasks=..., lengths=..., ...) -> {meta, runs, summary, ...}.
"""

from __future__ import annotations

import sys

from .longctx.cli import main
# the Python API, also importable from here (its home is engine.longctx.runner)
from .longctx.runner import run

__all__ = ["main", "run"]

if __name__ == "__main__":
    sys.exit(main())
