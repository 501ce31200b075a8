"""python -m engine: the tools of this package, one line each, and how to get their help.

    python -m engine              the list
    python -m engine --version    the version
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Optional

# the command-line tools, in the order a new user meets them; each one's line is its module's docstring's
# first line, so it cannot drift from the tool
TOOLS = ("models", "data", "perplexity", "lambada", "sweep", "ruler", "bench", "chat")


def summary(tool: str) -> Optional[str]:
    """The first line of engine.<tool>'s docstring; None when this version has no such tool."""
    if importlib.util.find_spec(f"engine.{tool}") is None:
        return None
    try:
        doc = importlib.import_module(f"engine.{tool}").__doc__ or ""
    except ImportError as e:  # an optional dependency missing: the tool is listed, saying so
        return f"(unavailable here: {e})"
    return doc.strip().split("\n")[0].rstrip(".") if doc.strip() else ""


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from . import __version__

    if argv and argv[0] in ("--version", "-V"):
        print(f"restkv-engine {__version__}")
        return 0
    if argv and argv[0] not in ("-h", "--help"):
        print(f"error: unknown argument {argv[0]!r}; the tools are run as python -m engine.TOOL "
              "(python -m engine lists them)", file=sys.stderr)
        return 2
    lines = [f"restkv-engine {__version__}: GGUF inference with native KV-cache eviction", "", "tools:"]
    found = [(t, summary(t)) for t in TOOLS]
    w = max(len(t) for t, s in found if s is not None)
    for tool, line in found:
        if line is not None:
            lines.append(f"  python -m engine.{tool.ljust(w)}  {line}")
    lines += ["", "python -m engine.TOOL --help shows a tool's options (and, for the evaluation tools and the chat, "
              "the eviction policies and their parameters).",
              "python -m engine --version prints the version."]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
