"""What an evaluation reports: its statistics (exp_mean, the running perplexity and its error), the
progress bar, and the printed summary (markdown tables, KV memory rows) of python -m engine.perplexity
and engine.lambada. The JSON files are the results' dataclasses as dicts (engine.cli.write_json).
The KV rows are of all layers; a model with sliding-window layers (gemma3) also gets rows of its global
and its window layers (kv_rows), a model without them (llama, qwen) the all-layer rows only.
"""

from __future__ import annotations

import math
import os
import sys

from ..eviction import FULL, MASKING


def exp_mean(total: float, count: int) -> float:
    """exp(total / count), the perplexity of `count` predictions of summed NLL `total` (nats): inf when
    it does not fit a float (a mean NLL above ~709, e.g. long LAMBADA targets of binary junk), not an
    OverflowError."""
    mean = total / count
    return math.exp(mean) if mean < 709.0 else float("inf")


def running_ppl(nll_sum: float, nll2_sum: float, count: int) -> tuple[float, float]:
    """(perplexity, its standard error) of `count` predictions of summed NLL `nll_sum` and summed
    squared NLL `nll2_sum`, as llama-perplexity computes them (nan error below 2 predictions)."""
    mean = nll_sum / count
    ppl = exp_mean(nll_sum, count)
    if count < 2:
        return ppl, float("nan")
    var = max(nll2_sum / count - mean * mean, 0.0)
    return ppl, ppl * math.sqrt(var / (count - 1))


def bar(progress: bool, total: int, unit: str, desc: str, position: int = 0):
    """A tqdm progress bar on stderr, or None without progress."""
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True, position=position,
                leave=position == 0)


def mib(b: float) -> str:
    return f"{b / 2**20:.2f} MiB"


def print_table(rows: list[tuple[str, str]], file=None) -> None:
    """A two-column markdown table."""
    w0 = max(len(k) for k, _ in rows)
    w1 = max(len(v) for _, v in rows)
    print(f"| {'figure'.ljust(w0)} | {'value'.ljust(w1)} |", file=file)
    print(f"|{'-' * (w0 + 2)}|{'-' * (w1 + 2)}|", file=file)
    for k, v in rows:
        print(f"| {k.ljust(w0)} | {v.ljust(w1)} |", file=file)


def budget_label(res) -> str:
    """The budget row of a perplexity result's table."""
    if res.policy == FULL or (res.budget == 1.0 and res.protocol == "prefix"):
        return f"{res.budget:g} (full cache)"
    if res.policy in MASKING:
        return f"{res.budget:g} (top-k attention, nothing evicted)"
    if res.protocol == "streaming":
        return f"{res.budget:g} ({res.budget_tokens} tokens of cache)"
    return f"{res.budget:g} ({res.budget_tokens} entries kept per buffer)"


def kv_rows(res) -> list[tuple[str, str]]:
    """The KV memory rows of a perplexity or LAMBADA result: all layers; for a model with sliding-window
    layers (kv_bytes_alloc_window > 0) also the peak, mean and allocation of the global layers (evicted
    from) and of the window layers (rings, never evicted from), each after its all-layer row."""
    split = getattr(res, "kv_bytes_alloc_window", 0) > 0

    def by_type(label: str, name: str) -> list[tuple[str, str]]:
        if not split:
            return []
        return [(f"{label}, global layers", mib(getattr(res, f"{name}_global"))),
                (f"{label}, window layers", mib(getattr(res, f"{name}_window")))]

    return [("KV bytes peak", mib(res.kv_bytes_peak)), *by_type("KV bytes peak", "kv_bytes_peak"),
            ("KV bytes mean", f"{mib(res.kv_bytes_mean)} ({res.kv_bytes_mean / res.kv_bytes_full:.1%} of full)"
             if res.kv_bytes_full else mib(res.kv_bytes_mean)), *by_type("KV bytes mean", "kv_bytes_mean"),
            ("KV bytes full cache, same point", mib(res.kv_bytes_full)),
            ("KV bytes allocated", mib(res.kv_bytes_alloc)), *by_type("KV bytes allocated", "kv_bytes_alloc")]


def print_perplexity(res, dataset: str, path: str, gguf: str) -> None:
    """The final estimate, the run's counts and the table of a perplexity result (engine.eval.protocols)."""
    print(f"Final estimate: PPL = {res.ppl:.4f} +/- {res.ppl_stderr:.5f}")
    if res.protocol == "prefix":
        print(f"{res.n_chunks} chunks of {res.n_ctx} tokens, {res.n_scored} scored, "
              f"{res.seconds:.1f} s, {res.tokens_per_second:.1f} tokens/s")
    else:
        print(f"{res.n_tokens_evaluated + 1} tokens streamed through a cache of {res.budget_tokens} tokens, "
              f"{res.n_scored} scored, {res.seconds:.1f} s, {res.tokens_per_second:.1f} tokens/s")
    print()
    print_table([("dataset", f"{dataset} ({os.path.basename(path)})"), ("model", os.path.basename(gguf)),
                 ("policy", res.policy), ("budget", budget_label(res)), ("protocol", res.protocol),
                 ("ctx", str(res.n_ctx)), ("perplexity", f"{res.ppl:.4f} +/- {res.ppl_stderr:.5f}"),
                 ("predictions scored", str(res.n_scored)), *kv_rows(res),
                 ("tokens/s", f"{res.tokens_per_second:.1f}"), ("seconds", f"{res.seconds:.1f}")])


def print_lambada(res, dataset: str, path: str, gguf: str) -> None:
    """The accuracy, the run's counts and the table of a LAMBADA result (engine.eval.lambada)."""
    cases = ", ".join(f"{k} {v}" for k, v in res.target_cases.items())
    print(f"LAMBADA: accuracy = {res.accuracy:.4f} +/- {res.accuracy_stderr:.4f} ({res.n_correct}/{res.n_scored}), "
          f"ppl = {res.ppl:.4f}")
    print(f"{res.n_scored} passages, {res.n_target_tokens} target tokens (target tokenisation: {cases}), "
          f"{res.seconds:.1f} s, {res.tokens_per_second:.1f} tokens/s")
    print()
    if res.policy == FULL or res.budget == 1.0:
        blabel = f"{res.budget:g} (full cache)"
    else:
        blabel = f"{res.budget:g} ({res.budget_tokens_mean:.1f} entries kept per buffer, mean)"
    print_table([("dataset", f"{dataset} ({os.path.basename(path)})"), ("model", os.path.basename(gguf)),
                 ("policy", res.policy), ("budget", blabel), ("protocol", res.protocol),
                 ("accuracy", f"{res.accuracy:.4f} +/- {res.accuracy_stderr:.4f} ({res.n_correct}/{res.n_scored})"),
                 ("perplexity", f"{res.ppl:.4f}"), ("target tokenisation", cases),
                 ("passages skipped", str(res.n_skipped)), *kv_rows(res),
                 ("tokens/s", f"{res.tokens_per_second:.1f}"), ("seconds", f"{res.seconds:.1f}")])
