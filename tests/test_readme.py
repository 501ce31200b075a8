"""The README's Python snippets run as written (from the repository root, with SmolLM2 and the
shared data where the README reads them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from subproc import run_python

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)


def test_readme_has_python_snippets():
    assert len(SNIPPETS) >= 2


@pytest.mark.parametrize("i", range(len(SNIPPETS)))
def test_readme_snippet_runs(i, smollm2, wikitext_path):
    code = (SNIPPETS[i].replace("models/SmolLM2-135M-Instruct.Q4_1.gguf", smollm2)
            .replace("../shared/data/wikitext-2/wiki.test.raw", str(wikitext_path)))
    run_python(code, timeout=600)  # fails the test with the snippet's stderr
