"""The import graph among the engine package's modules has no cycle.

Every engine/**/*.py is parsed with `ast`; every `import` / `from ... import` node counts, at module
level or inside a function (a lazy import is still a dependency), relative ones resolved against the
importing module's package. `from PKG import X` is an arrow to the submodule PKG.X when there is one,
else to PKG itself (its `__init__`); importing a submodule is not counted as importing its parent
packages (Python runs their `__init__` first, but a package's `__init__` that re-exports its
submodules would then make every arrow into the package a circle). Only arrows between engine
modules count; a module importing itself is no arrow.

Run as a script (`python tests/test_import_graph.py [ROOT]`) it prints the graph of ROOT's engine/
(default: this checkout) and its circles, e.g. for a tree from `git archive`.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "engine"


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under root/engine (a package is its __init__.py)."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if "__pycache__" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_package(name: str, mods: dict[str, Path]) -> bool:
    return mods[name].name == "__init__.py"


def _resolve(name: str, mods: dict[str, Path]) -> Optional[str]:
    """The engine module a dotted name refers to: itself, or its longest prefix that is one."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in mods:
            return cand
        parts.pop()
    return None


def imports_of(name: str, mods: dict[str, Path]) -> set[str]:
    """The engine modules `name` imports anywhere in its file."""
    tree = ast.parse(mods[name].read_text(encoding="utf-8"), filename=str(mods[name]))
    # the package a relative import starts from: a package's own name, else the module's parent
    here = name if _is_package(name, mods) else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    target = _resolve(alias.name, mods)
                    if target is not None:
                        out.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = here.split(".")
                if node.level - 1 > len(base_parts) - 1:
                    raise AssertionError(f"{mods[name]}:{node.lineno}: relative import beyond the package")
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not (base == PACKAGE or base.startswith(PACKAGE + ".")):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                target = sub if sub in mods else _resolve(base, mods)
                if target is not None:
                    out.add(target)
    out.discard(name)
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = modules(root)
    return {name: imports_of(name, mods) for name in mods}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle [a, b, ..., a] per strongly connected component of more than one module (Tarjan)."""
    index, low, on_stack, stack, sccs = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(set(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in sccs:
        # a shortest circle through the component's first module, by breadth-first search inside it
        start = min(comp)
        prev = {start: None}
        queue = [start]
        end = None
        while queue and end is None:
            v = queue.pop(0)
            for w in sorted(graph[v] & comp):
                if w == start:
                    end = v
                    break
                if w not in prev:
                    prev[w] = v
                    queue.append(w)
        path = []
        while end is not None:  # end, prev[end], ..., start
            path.append(end)
            end = prev[end]
        cycles.append(path[::-1] + [start])
    return cycles


def format_graph(graph: dict[str, set[str]]) -> str:
    return "\n".join(f"{m} -> {', '.join(sorted(graph[m])) or '(nothing)'}" for m in sorted(graph))


def test_parser_sees_relative_and_lazy_imports():
    graph = import_graph()
    # module level, relative
    assert "engine.errors" in graph["engine._core"]
    # inside a function (_core imports the tokenizer lazily)
    assert "engine.tokenizer" in graph["engine._core"]
    # the package's __init__ re-exports
    assert {"engine._core", "engine.errors", "engine.eviction"} <= graph["engine"]


def test_engine_import_graph_is_acyclic():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, ("import circles among engine modules:\n"
                        + "\n".join("  " + " -> ".join(c) for c in cycles)
                        + "\n\nthe graph:\n" + format_graph(graph))


if __name__ == "__main__":
    root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT
    g = import_graph(root)
    print(format_graph(g))
    print(f"\n{len(g)} modules, {sum(len(v) for v in g.values())} arrows")
    found = find_cycles(g)
    for c in found:
        print("circle: " + " -> ".join(c))
    if not found:
        print("no circle")
    sys.exit(1 if found else 0)
