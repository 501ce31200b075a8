"""What the command-line tools share: argument checks, input and output files, data sets by name,
warnings, Ctrl-C and exit statuses.

Exit statuses of every tool: 0 done; 2 the command line or an input is wrong (found before any work,
as argparse does); 1 a failure while working; 130 interrupted (Ctrl-C), after saving what was measured.
Every error is one line on stderr, 'error: ...', never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import textwrap
from typing import Callable, Optional

from .errors import EngineError

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class UsageError(EngineError):
    """The command line or an input file is wrong; nothing has been computed (exit status 2)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a measurement, carrying what was completed: `result` (the tool's result object for
    the completed part, or None), `done` of `total` `unit`s. A KeyboardInterrupt, so callers that catch
    those still do."""

    def __init__(self, result=None, done: int = 0, total: int = 0, unit: str = "chunks"):
        super().__init__(f"{done} of {total} {unit} done")
        self.result, self.done, self.total, self.unit = result, done, total, unit


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def preflight():
    """Errors raised inside are the command line's (exit 2): checks made before any work."""
    try:
        yield
    except UsageError:
        raise
    except EngineError as e:
        raise UsageError(str(e), e.status) from None


def run(body: Callable[[], int], on_interrupt: str = "nothing was measured yet") -> int:
    """Runs a tool's main body, turning errors and Ctrl-C into one line on stderr and an exit status.
    on_interrupt: what a Ctrl-C that the body did not handle itself means."""
    try:
        return body()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except Interrupted as e:
        print(f"\ninterrupted: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"\ninterrupted: {on_interrupt}", file=sys.stderr)
        return EXIT_INTERRUPTED


# ---------------------------------------------------------------- argument parsing

class Parser(argparse.ArgumentParser):
    """argparse with the tools' conventions: description paragraphs filled to the terminal, the epilog
    kept as written (policy lists, tables), and a usage error as one line 'error: ...' (exit 2)."""

    def __init__(self, prog: str, description: str, epilog: Optional[str] = None, **kw):
        width = min(100, max(60, (os.get_terminal_size(2).columns if sys.stderr.isatty() else 100) - 2))
        desc = "\n\n".join(textwrap.fill(" ".join(p.split()), width) for p in description.strip().split("\n\n"))
        super().__init__(prog=prog, description=desc, epilog=epilog,
                         formatter_class=argparse.RawDescriptionHelpFormatter, **kw)

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def count(text: str) -> int:
    """argparse type of counts (--chunks, --limit, --reps, ...): an integer >= 1. Zero and negative
    values are refused: they used to mean 'all' silently; leave the option out for all."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {n} (leave the option out for all)")
    return n


def available_cores() -> int:
    """CPUs this process may run on (the affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_threads(n: Optional[int]) -> Optional[int]:
    """--threads: >= 1; a warning when above the cores available (each extra thread waits for a core at
    every synchronisation point of the forward pass: 1000 threads on 2 cores ran 13x slower)."""
    if n is None:
        return None
    if n < 1:
        raise UsageError(f"--threads must be >= 1, got {n}")
    cores = available_cores()
    if n > cores:
        warn(f"--threads {n} is more than the {cores} core(s) available to this process; "
             f"it will run slower than with --threads {cores}")
    return n


def check_budget(budget) -> float:
    """A KV budget as the engine defines it (src/evict/evict.c): a fraction in (0, 1] of the entries, or an
    integer token count >= 2."""
    what = "a finite number: a fraction in (0, 1] of the entries kept, or a token count (integer >= 2)"
    try:
        b = float(budget)
    except (TypeError, ValueError):
        raise UsageError(f"--budget {budget!r} is not a number; expected {what}") from None
    if not math.isfinite(b):
        raise UsageError(f"--budget {budget}: must be {what}")
    if b <= 0:
        raise UsageError(f"--budget {budget}: must be > 0: {what}")
    if 1 < b < 2:
        raise UsageError(f"--budget {b:g}: between 1 and 2 is neither a fraction in (0, 1] nor a token count >= 2")
    if b >= 2 and b != int(b):
        raise UsageError(f"--budget {b:g}: a budget above 1 is a token count and must be an integer >= 2")
    if b > 2**31 - 1:
        raise UsageError(f"--budget {b:g}: too large a token count")
    return b


# ---------------------------------------------------------------- comma lists

def parse_list(text: str, what: str) -> list[str]:
    """--what a,b,c: the stripped, non-empty items."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise UsageError(f"--{what}: empty list")
    return items


def distinct(values, check: Callable, what: str) -> list:
    """Each value through check (which returns it normalised or raises), the repeats dropped, in order;
    nothing left is an error (the lists of tools: --budgets, --policies, --lengths, --protocol)."""
    out = []
    for v in values:
        v = check(v)
        if v not in out:
            out.append(v)
    if not out:
        raise UsageError(f"{what}: none given")
    return out


def parse_budgets(text: str) -> list[float]:
    """--budgets 1,0.5,256: each checked as --budget is, the repeats dropped."""
    return distinct(parse_list(text, "budgets"), check_budget, "--budgets")


# ---------------------------------------------------------------- input files

def check_input(path: str, what: str = "file") -> str:
    """An existing, readable regular file (else a UsageError naming the problem)."""
    if not os.path.exists(path):
        raise UsageError(f"{what} {path}: no such file")
    if os.path.isdir(path):
        raise UsageError(f"{what} {path}: is a directory, not a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise UsageError(f"{what} {path}: cannot be read ({e.strerror})") from None
    return path


def read_text(path: str, what: str = "text file") -> str:
    """The file decoded as UTF-8; bytes that are not valid UTF-8 become U+FFFD, with a warning (the
    figures then describe a text the user may not have meant)."""
    check_input(path, what)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        text = raw.decode("utf-8", errors="replace")
        bad = text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")
        warn(f"{path} is not valid UTF-8 (first bad byte at offset {e.start}); decoded with {bad} invalid "
             "sequence(s) replaced by U+FFFD")
        return text


# ---------------------------------------------------------------- output files

def _writable_dir(d: str, for_what: str) -> None:
    d = d or "."
    if not os.path.isdir(d):
        raise UsageError(f"{for_what}: folder {d} does not exist")
    if not os.access(d, os.W_OK | os.X_OK):
        raise UsageError(f"{for_what}: folder {d} is not writable")


def check_output(path: Optional[str], option: str = "--json") -> Optional[str]:
    """Checks before the run that `path` can be written (so a long run is not lost at the end)."""
    if path is None:
        return None
    if os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a directory; give a file name")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path}: exists and is not writable")
    _writable_dir(os.path.dirname(os.path.abspath(path)), f"{option} {path}")
    return path


def check_output_dir(path: str, option: str = "--out") -> str:
    """An output folder that exists and is writable, or can be created (its nearest existing parent is
    a writable folder)."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise UsageError(f"{option} {path}: exists and is not a folder")
        _writable_dir(path, f"{option} {path}")
        return path
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"{option} {path}: {parent} is not a folder")
    _writable_dir(parent, f"{option} {path}")
    return path


_UMASK = None


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **kw):
    """open() for writing whose file appears at `path` only once complete: a temporary file in the same
    folder, renamed over `path` (os.replace is atomic there); removed if the writing fails or is
    interrupted, so no half-written output is ever left."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0)
        os.umask(_UMASK)
    d, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kw) as f:
            yield f
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; give it an ordinary file's mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: str, obj, indent: int = 2) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")


def interrupted(e: Interrupted, json_out: Optional[str], to_json: Callable = None) -> int:
    """After Ctrl-C: writes the completed part as a JSON marked "partial": true (when --json was given
    and something was completed), says so in one line and returns exit status 130."""
    msg = f"{e.done} of {e.total} {e.unit} done"
    if json_out and e.result is not None and e.done > 0:
        obj = to_json(e.result) if to_json else e.result
        write_json(json_out, {**obj, "partial": True})
        msg += f"; partial results written to {json_out}"
    elif json_out:
        msg += f"; nothing written to {json_out}"
    print(f"\ninterrupted: {msg}", file=sys.stderr)
    return EXIT_INTERRUPTED


# ---------------------------------------------------------------- data sets by name

# the data set names the evaluation tools take (engine.data's, with its aliases) and the evaluation each
# gets: "wikitext" = perplexity of the text, "lambada" = last-word accuracy (engine.lambada). engine.data's
# "wikitext" and "lambada" are the WikiText-2 test and LAMBADA development files ../shared/data has always
# held, so the commands written before data sets had names keep their figures.
DATASET_KINDS = {"wikitext": "wikitext", "wikitext2": "wikitext", "wikitext-2": "wikitext",
                 "lambada": "lambada", "lambada-dev": "lambada", "lambada-test": "lambada",
                 "lambada-openai": "lambada"}


def dataset_kind(name: str) -> str:
    if name not in DATASET_KINDS:
        raise UsageError(f"unknown data set {name!r} (known: {', '.join(DATASET_KINDS)})")
    return DATASET_KINDS[name]


def dataset_path(name: str, file: Optional[str] = None, data_dir: Optional[str] = None,
                 option: str = "-f") -> str:
    """The file to evaluate: `file` when given (checked), else the data set `name` located (or
    downloaded) by engine.data; its errors say what to download and where to put it."""
    dataset_kind(name)
    if file:
        return check_input(file, option)
    from . import data

    with preflight():
        return check_input(str(data.path(name, data_dir=data_dir)), f"data set {name}")
