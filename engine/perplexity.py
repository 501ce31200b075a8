"""Perplexity of a GGUF model on a text file, with llama-perplexity's protocol and a compressed KV cache.

    python -m engine.perplexity --gguf model.gguf -f wiki.test.raw [--ctx 512] [--chunks N]
    python -m engine.perplexity --gguf model.gguf --budget 0.1 --policy snapkv [--protocol prefix|streaming]
    python -m engine.perplexity --gguf model.gguf --dataset lambada [--data FILE] [--limit N] \
        --budget 0.1 --policy snapkv

Full cache (--budget 1, the default), llama.cpp tools/perplexity's protocol, kept exactly so the
figures compare: the whole file is tokenised at once (BOS added only if the vocabulary asks for
it); it is cut into non-overlapping chunks of n_ctx tokens (the remainder is dropped); each chunk
starts from an empty cache, its first token replaced by BOS when the vocabulary adds BOS; the
logits at positions n_ctx/2 .. n_ctx-2 score the next token, i.e. n_ctx - n_ctx/2 - 1 predictions
per chunk.

Compressed cache, protocol "prefix" (the default): the same chunks; the first half of each chunk is
prefilled (with the full cache, as SnapKV-style methods do) and then compressed to the budget by the
policy (prefix schedule; a budget in (0, 1] is a fraction of the half, a budget >= 2 a number of
tokens); the second half is evaluated on top of the compressed cache, its positions continuing from
the true prefix length (--positions original) and scored exactly as above. At budget 1 nothing is
evicted and the figures are llama-perplexity's, bit for bit.

Protocol "streaming": the whole text (the first --chunks x n_ctx tokens with --chunks) flows through
one cache held at budget x n_ctx tokens (budget >= 2: that many tokens) by the policy's streaming
schedule: a session of budget + slack + 1 KV slots, so memory really is bounded; a buffer is cut
back to the budget whenever it would exceed budget + slack (--slack 0: every token). The first
n_ctx tokens warm the cache up; every token after them is scored: len(tokens) - n_ctx predictions.

LAMBADA (--dataset lambada): see engine.lambada.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Optional

import numpy as np

from . import cli
from .eviction import cli_options
from .cli import check_budget  # noqa: F401  (re-exported: the budget check of the library and the tools)
from .errors import EngineError

PROTOCOLS = ("prefix", "streaming")
# policies that never evict (full keeps everything; topk masks attention but keeps every entry): from the
# C core's policy flags
from .eviction import FULL, MASKING, NON_EVICTING  # noqa: E402
# tokens per logprobs call of the streaming protocol (the C core cuts batches at budget + slack itself)
STREAM_PIECE = 512


@dataclass
class PerplexityResult:
    ppl: float
    ppl_stderr: float
    n_chunks: int
    n_ctx: int
    n_scored: int
    n_tokens_file: int
    chunk_ppl: list = field(default_factory=list)  # running estimate after each chunk
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    budget: float = 1.0
    model: str = ""
    text: str = ""
    threads: int = 0
    kv_bytes_peak: int = 0
    # --- compressed-cache figures ---
    dataset: str = "wikitext"
    data: str = ""                 # the data file (same as `text`)
    policy: str = "full"
    protocol: str = "prefix"
    eviction: dict = field(default_factory=dict)  # every engine.eviction.Eviction field, as set
    budget_tokens: int = 0         # prefix: entries kept per buffer per chunk; streaming: the cache size
    kv_bytes_mean: float = 0.0     # prefix: after each compression; streaming: after each piece
    kv_bytes_alloc: int = 0        # KV storage the session allocated
    kv_bytes_full: float = 0.0     # what the full cache holds at the same points (prefix: the prefill;
                                   # streaming: n_ctx tokens)
    n_tokens_evaluated: int = 0
    partial: bool = False          # True: interrupted, the figures cover the chunks completed (n_chunks)


# ---------------------------------------------------------------- shared helpers

def check_policy(policy: str) -> str:
    from .eviction import policies

    known = policies()
    if policy not in known:
        raise EngineError(f"unknown policy {policy!r} (known: {', '.join(known)})")
    return policy


def budget_tokens(budget: float, n: int) -> int:
    """Entries kept out of n for a budget, as the C core counts them (floor, at least 1)."""
    if budget > 1:
        return int(budget)
    return max(1, int(budget * n + 1e-4))


def make_eviction(policy: str = "full", budget: float = 1.0, **params):
    """An engine.eviction.Eviction, with the policy and budget checked (clear errors)."""
    from .eviction import Eviction

    check_policy(policy)
    b = check_budget(budget)
    names = {f.name for f in fields(Eviction)}
    bad = sorted(set(params) - names)
    if bad:
        raise EngineError(f"unknown eviction parameter(s) {', '.join(bad)}")
    return Eviction(policy=policy, budget=b, **params)


def _as_eviction(eviction):
    from .eviction import Eviction

    if eviction is None or isinstance(eviction, Eviction):
        return eviction
    if isinstance(eviction, dict):
        return make_eviction(**eviction)
    raise EngineError(f"eviction must be an Eviction, a dict or None, got {type(eviction).__name__}")


# eviction hyper-parameters exposed on the command line: (option, Eviction field, type, help), built from the C
# core's parameter tables (engine.eviction.cli_options): the shared settings other than budget and schedule
# (positions is added with its choices by add_eviction_args), then every policy parameter
EVICTION_OPTIONS = [(opt, name, typ, hlp) for opt, name, typ, hlp, _ in cli_options() if name != "positions"]
_CHOICES = {name: choices for _, name, _, _, choices in cli_options() if choices}


def add_eviction_args(p: argparse.ArgumentParser, policy_budget: bool = True) -> None:
    """--policy, --budget, --protocol (with policy_budget), --positions and the policy hyper-parameters."""
    from .eviction import Eviction

    d = Eviction()
    g = p.add_argument_group("KV-cache eviction")
    if policy_budget:
        g.add_argument("--budget", type=float, default=1.0,
                       help="KV-cache budget: a fraction in (0, 1] of the entries kept (prefix protocol: of the "
                            "prefilled half; streaming: of --ctx), or an integer >= 2, a number of tokens "
                            "(default 1.0 = the full cache)")
        g.add_argument("--policy", default=None,
                       help="eviction policy, see the list below (default 'full'; needed when --budget < 1)")
    g.add_argument("--protocol", choices=PROTOCOLS, default="prefix",
                   help="prefix: each chunk's first half prefilled and compressed, second half scored on top "
                        "(default; = llama-perplexity at budget 1); streaming: the whole text through a "
                        "cache held at the budget, every token after the first --ctx scored")
    g.add_argument("--positions", choices=_CHOICES["positions"], default=d.positions,
                   help="kept keys keep their RoPE positions (original, default) or are shifted to "
                        "contiguous ones (shift)")
    for opt, name, typ, hlp in EVICTION_OPTIONS:
        g.add_argument(opt, dest=name, type=typ, default=getattr(d, name), choices=_CHOICES.get(name),
                       help=f"{hlp} (default {getattr(d, name)})")


def eviction_params(args) -> dict:
    """The Eviction fields other than policy, budget and schedule, from parsed arguments."""
    return {"positions": args.positions, **{name: getattr(args, name) for _, name, _, _ in EVICTION_OPTIONS}}


def eviction_from_args(args, policy: Optional[str] = None, budget: Optional[float] = None):
    return make_eviction(policy=policy if policy is not None else (args.policy or FULL),
                         budget=budget if budget is not None else args.budget, **eviction_params(args))


def resolve_policy(policy: Optional[str], budget: float, protocol: str = "prefix") -> str:
    """The policy to run: 'full' by default at budget 1; clear errors for meaningless combinations."""
    from .eviction import policies

    budget = check_budget(budget)
    if policy is not None:
        check_policy(policy)
    evicting = ", ".join(p for p in policies() if p not in NON_EVICTING)
    if protocol == "streaming":
        if policy is None or policy in NON_EVICTING:
            raise EngineError(f"the streaming protocol holds the cache at the budget and needs an evicting "
                              f"policy: --policy one of {evicting}"
                              + (f" ('{policy}' evicts nothing)" if policy else ""))
        return policy
    if budget == 1.0:
        return policy or FULL
    if policy is None:
        raise EngineError(f"--budget {budget:g} needs an eviction policy: --policy one of "
                          f"{', '.join(p for p in policies() if p != FULL)}")
    if policy == FULL:
        raise EngineError(f"--budget {budget:g} with --policy full: 'full' keeps every entry; "
                          f"choose an evicting policy ({evicting})")
    return policy


def exp_mean(total: float, count: int) -> float:
    """exp(total / count), the perplexity of `count` predictions of summed NLL `total` (nats): inf when
    it does not fit a float (a mean NLL above ~709, e.g. long LAMBADA targets of binary junk), not an
    OverflowError."""
    mean = total / count
    return math.exp(mean) if mean < 709.0 else float("inf")


def _running(nll_sum: float, nll2_sum: float, count: int) -> tuple[float, float]:
    mean = nll_sum / count
    ppl = exp_mean(nll_sum, count)
    if count < 2:
        return ppl, float("nan")
    var = max(nll2_sum / count - mean * mean, 0.0)
    return ppl, ppl * math.sqrt(var / (count - 1))


def _bar(progress: bool, total: int, unit: str, desc: str, position: int = 0):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True, position=position,
                leave=position == 0)


# ---------------------------------------------------------------- perplexity

def check_ctx(n_ctx: int) -> int:
    if n_ctx < 4 or n_ctx % 2:
        raise EngineError(f"--ctx must be an even number >= 4, got {n_ctx}")
    return n_ctx


def check_chunks(n_ctx: int, n_chunks: Optional[int], n_tokens: int) -> int:
    """The number of chunks to score: n_chunks (None: all) of the n_tokens // n_ctx the text has."""
    check_ctx(n_ctx)
    if n_chunks is not None and n_chunks < 1:
        raise EngineError(f"--chunks must be >= 1 (leave it out for all), got {n_chunks}")
    if n_tokens < 2 * n_ctx:
        raise EngineError(f"need at least 2*ctx = {2 * n_ctx} tokens, the text has {n_tokens}")
    total = n_tokens // n_ctx
    return total if n_chunks is None else min(n_chunks, total)


def check_run(n_tokens: int, n_ctx: int, n_chunks: Optional[int], ev, protocol: str) -> int:
    """Every check of a perplexity() run that needs no model work; the number of chunks."""
    if protocol not in PROTOCOLS:
        raise EngineError(f"unknown protocol {protocol!r} (expected one of {', '.join(PROTOCOLS)})")
    n = check_chunks(n_ctx, n_chunks, n_tokens)
    if ev is not None:
        resolve_policy(ev.policy, ev.budget, protocol)
    if protocol == "streaming":
        if ev is None:
            raise EngineError("the streaming protocol needs an eviction policy (eviction=...)")
        if n_chunks is not None and n < 2:
            raise EngineError(f"the streaming protocol scores the tokens after the first ctx: "
                              f"--chunks {n_chunks} must be >= 2")
        kept = budget_tokens(ev.budget, n_ctx)
        if kept < 2:
            raise EngineError(f"--budget {ev.budget:g} of --ctx {n_ctx} keeps {kept} token(s); "
                              "the streaming protocol needs at least 2")
    return n


def perplexity(model, tokens: list[int] | np.ndarray, n_ctx: int = 512, n_chunks: Optional[int] = None,
               n_threads: Optional[int] = None, bos_id: Optional[int] = None, progress: bool = True,
               on_chunk=None, eviction=None, protocol: str = "prefix", piece: int = STREAM_PIECE,
               on_piece=None, bar_position: int = 0) -> PerplexityResult:
    """Scores `tokens` chunk by chunk; bos_id replaces each chunk's first token when not None.

    eviction: None (the full cache, no eviction settings at all), an engine.eviction.Eviction or a dict
    of its fields. protocol: "prefix" or "streaming" (see the module docstring). on_chunk(i, ppl) after
    each chunk; on_piece(session) after each eval call (the streaming protocol; for tests).
    """
    tokens = np.asarray(tokens, dtype=np.int32)
    ev = _as_eviction(eviction)
    n = check_run(len(tokens), n_ctx, n_chunks, ev, protocol)
    n_file = len(tokens)
    if protocol == "streaming":
        if n_chunks is not None:
            tokens = tokens[:n * n_ctx]
        res = _streaming(model, tokens, n_ctx, ev, n_threads, progress, on_chunk, max(1, int(piece)), on_piece,
                         bar_position)
    else:
        res = _prefix(model, tokens, n_ctx, n, bos_id, ev, n_threads, progress, on_chunk, bar_position)
    res.n_tokens_file = n_file
    if ev is not None:
        res.budget, res.policy, res.eviction = float(ev.budget), ev.policy, ev.as_dict()
    res.protocol = protocol
    return res


def perplexity_many(model, tokens: list[int] | np.ndarray, evictions: list, n_ctx: int = 512,
                    n_chunks: Optional[int] = None, n_threads: Optional[int] = None, bos_id: Optional[int] = None,
                    progress: bool = True, on_chunk=None, bar_position: int = 0) -> list[PerplexityResult]:
    """perplexity() with the prefix protocol for several eviction configurations at once: each chunk's
    first half is prefilled once and shared (engine.shared_prefill), so a sweep of P configurations
    costs about P scorings plus one prefill per chunk instead of P of each. The results are those of
    separate perplexity() calls, bit for bit. on_chunk(i, [ppl per configuration])."""
    tokens = np.asarray(tokens, dtype=np.int32)
    evs = [_as_eviction(e) for e in evictions]
    if not evs:
        raise EngineError("perplexity_many: no eviction configuration given")
    n = check_chunks(n_ctx, n_chunks, len(tokens))
    for ev in evs:
        if ev is not None:
            resolve_policy(ev.policy, ev.budget, "prefix")
    out = _prefix_many(model, tokens, n_ctx, n, bos_id, evs, n_threads, progress, on_chunk, bar_position)
    for res, ev in zip(out, evs):
        if ev is not None:
            res.budget, res.policy, res.eviction = float(ev.budget), ev.policy, ev.as_dict()
        res.protocol = "prefix"
    return out


class _Tally:
    """One configuration's running figures over the chunks of the prefix protocol."""

    def __init__(self):
        self.nll_sum = self.nll2_sum = 0.0
        self.count = 0
        self.running, self.kv_kept, self.kv_pre = [], [], []
        self.kv_peak = 0
        self.seconds = 0.0

    def add(self, lp: np.ndarray) -> float:
        self.nll_sum += float(-lp.sum())
        self.nll2_sum += float((lp * lp).sum())
        self.count += len(lp)
        ppl, _ = _running(self.nll_sum, self.nll2_sum, self.count)
        self.running.append(ppl)
        return ppl


def _prefix(model, tokens, n_ctx, n, bos_id, ev, n_threads, progress, on_chunk, bar_position) -> PerplexityResult:
    cb = None if on_chunk is None else (lambda i, ppls: on_chunk(i, ppls[0]))
    try:
        return _prefix_many(model, tokens, n_ctx, n, bos_id, [ev], n_threads, progress, cb, bar_position)[0]
    except cli.Interrupted as e:
        raise cli.Interrupted(e.result[0] if e.result else None, e.done, e.total, e.unit) from None


def _prefix_many(model, tokens, n_ctx, n, bos_id, evs, n_threads, progress, on_chunk,
                 bar_position) -> list[PerplexityResult]:
    """The prefix protocol for several eviction configurations, sharing each chunk's prefill."""
    from .shared_prefill import SharedPrefill

    first = n_ctx // 2
    tallies = [_Tally() for _ in evs]
    bar = _bar(progress, n, "chunk", "perplexity", bar_position)
    alloc = 0
    try:
        with SharedPrefill(model, evs, n_ctx, n_threads, min(512, n_ctx)) as sp:
            alloc = sp.kv_bytes_alloc
            for i in range(n):
                chunk = tokens[i * n_ctx:(i + 1) * n_ctx].copy()
                if bos_id is not None:
                    chunk[0] = bos_id
                for j, s, pf in sp.prefill(chunk[:first]):
                    t = tallies[j]
                    t0 = time.perf_counter()
                    lp = s.logprobs(chunk[first:]).astype(np.float64)
                    # a chunk counts in a tally only once scored (an interruption leaves whole chunks)
                    t.kv_pre.append(pf.kv_bytes_full)
                    t.kv_kept.append(pf.kv_bytes_kept)
                    t.kv_peak = max(t.kv_peak, s.kv_bytes_used, t.kv_pre[-1])
                    t.add(lp)
                    # what this configuration alone would have taken: its prefill, compression and scoring
                    t.seconds += pf.seconds + time.perf_counter() - t0
                if bar is not None:
                    bar.set_postfix(ppl=" ".join(f"{t.running[-1]:.4f}" for t in tallies[:4])
                                    + (" ..." if len(tallies) > 4 else ""))
                    bar.update(1)
                if on_chunk is not None:
                    on_chunk(i, [t.running[-1] for t in tallies])
    except KeyboardInterrupt:
        done = min(len(t.running) for t in tallies)
        partial = _prefix_results(tallies, evs, n_ctx, len(tokens), alloc, partial=True) if done else None
        raise cli.Interrupted(partial, done, n, "chunks") from None
    finally:
        if bar is not None:
            bar.close()
    return _prefix_results(tallies, evs, n_ctx, len(tokens), alloc)


def _prefix_results(tallies, evs, n_ctx, n_file, alloc, partial=False) -> list[PerplexityResult]:
    first = n_ctx // 2
    out = []
    for t, ev in zip(tallies, evs):
        n = len(t.running)  # chunks scored
        ppl, err = _running(t.nll_sum, t.nll2_sum, t.count) if t.count else (float("nan"), float("nan"))
        out.append(PerplexityResult(
            ppl=ppl, ppl_stderr=err, n_chunks=n, n_ctx=n_ctx, n_scored=t.count, n_tokens_file=n_file,
            chunk_ppl=t.running, seconds=t.seconds,
            tokens_per_second=n * n_ctx / t.seconds if t.seconds > 0 else 0.0, kv_bytes_peak=t.kv_peak,
            budget_tokens=budget_tokens(ev.budget, first) if ev is not None else first,
            kv_bytes_mean=float(np.mean(t.kv_kept)) if n else 0.0, kv_bytes_alloc=alloc,
            kv_bytes_full=float(np.mean(t.kv_pre)) if n else 0.0, n_tokens_evaluated=n * n_ctx, partial=partial))
    return out


def _streaming(model, tokens, n_ctx, ev, n_threads, progress, on_chunk, piece, on_piece,
               bar_position) -> PerplexityResult:
    n_tok = len(tokens)
    kept = budget_tokens(ev.budget, n_ctx)
    s_ctx = kept + ev.slack + 1
    evs = replace(ev, budget=float(kept), schedule="streaming")
    bar = _bar(progress, n_tok, "tok", "perplexity (streaming)", bar_position)
    nll_sum = nll2_sum = 0.0
    count = 0
    running = []
    samples = []
    kv_peak = alloc = 0
    per_token = 0.0
    next_report = n_ctx  # running estimate after every n_ctx scored tokens
    t0 = time.perf_counter()

    def result(partial: bool = False) -> PerplexityResult:
        secs = time.perf_counter() - t0
        ppl, err = _running(nll_sum, nll2_sum, count)
        n_eval = n_ctx + count - 1  # the warm-up and every token scored (all of them when complete)
        return PerplexityResult(ppl=ppl, ppl_stderr=err, n_chunks=len(running), n_ctx=n_ctx, n_scored=count,
                                n_tokens_file=n_tok, chunk_ppl=running, seconds=secs,
                                tokens_per_second=n_eval / secs if secs > 0 else 0.0, kv_bytes_peak=kv_peak,
                                budget_tokens=kept, kv_bytes_mean=float(np.mean(samples)), kv_bytes_alloc=alloc,
                                kv_bytes_full=per_token * n_ctx, n_tokens_evaluated=n_eval, partial=partial)

    try:
        with model.session(n_ctx=s_ctx, n_threads=n_threads, n_batch=min(512, s_ctx)) as s:
            s.set_eviction(evs)
            alloc = s.kv_bytes_alloc
            per_token = alloc / s_ctx
            # warm-up: tokens[0 .. n_ctx) only fill the cache
            for a in range(0, n_ctx, piece):
                b = min(a + piece, n_ctx)
                s.eval(tokens[a:b], logits=None)
                used = s.kv_bytes_used
                samples.append(used)
                kv_peak = max(kv_peak, used)
                if on_piece is not None:
                    on_piece(s)
                if bar is not None:
                    bar.update(b - a)
            # scored: tokens[t], t = n_ctx .. n_tok-1, each predicted from everything before it; score_first
            # makes each piece's first token predicted from the previous piece's last, so every prediction
            # is scored exactly once and no token is evaluated twice
            a = n_ctx
            while a < n_tok:
                # pieces end on the chunk boundaries (every n_ctx scored), where the running estimate is taken
                b = min(a + piece, n_tok, n_ctx + next_report)
                lp = s.logprobs(tokens[a:b], score_first=True).astype(np.float64)
                used = s.kv_bytes_used
                samples.append(used)
                kv_peak = max(kv_peak, used)
                if on_piece is not None:
                    on_piece(s)
                nll_sum += float(-lp.sum())
                nll2_sum += float((lp * lp).sum())
                count += len(lp)
                ppl, _ = _running(nll_sum, nll2_sum, count)
                if count == next_report or b == n_tok:
                    running.append(ppl)
                    if on_chunk is not None:
                        on_chunk(len(running) - 1, ppl)
                    next_report += n_ctx
                if bar is not None:
                    bar.set_postfix(ppl=f"{ppl:.4f}")
                    bar.update(b - a)
                a = b
    except KeyboardInterrupt:
        raise cli.Interrupted(result(partial=True) if count else None, count, n_tok - n_ctx,
                              "tokens scored") from None
    finally:
        if bar is not None:
            bar.close()
    return result()


# ---------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    from .eviction import policy_help

    p = cli.Parser(
        "python -m engine.perplexity",
        "Perplexity of a GGUF model on a text file, with llama.cpp's llama-perplexity protocol: "
        "non-overlapping chunks of --ctx tokens, each from an empty cache, the second half of "
        "each chunk scored. Prints the running estimate per chunk and "
        "'Final estimate: PPL = x +/- y'. With --budget < 1 and --policy, the first half of "
        "each chunk is compressed to the budget before the second half is scored (--protocol "
        "prefix), or the whole text streams through a bounded cache (--protocol streaming). "
        "--dataset lambada scores LAMBADA's last words instead (the same as python -m engine.lambada).",
        epilog=policy_help() + "\n\n" + EXIT_HELP)
    p.add_argument("--gguf", "-m", required=True, help="path to the GGUF model file")
    p.add_argument("-f", "--file", "--data", dest="file", default=None,
                   help="text file to score instead of the --dataset's; with a LAMBADA data set: the LAMBADA "
                        "file (jsonl with 'text', or one passage a line)")
    p.add_argument("--dataset", choices=list(cli.DATASET_KINDS), default="wikitext", metavar="NAME",
                   help="data set, located or downloaded by engine.data (python -m engine.data list): "
                        "wikitext = wikitext2 = wikitext-2 (WikiText-2 raw test, perplexity; the default); "
                        "lambada = lambada-dev, lambada-test, lambada-openai (LAMBADA last-word accuracy and "
                        "perplexity, as python -m engine.lambada)")
    p.add_argument("--data-dir", default=None,
                   help="data set cache folder (default: $RESTKV_DATA, else engine.data's user cache; "
                        "../shared/data is used in place when there)")
    p.add_argument("--ctx", type=int, default=512,
                   help="tokens per chunk (default 512, as llama-perplexity; engine.sweep's default is 2048, "
                        "the long-context setting of its eviction figures)")
    p.add_argument("--chunks", type=cli.count, default=None, help="score only the first N chunks (default: all)")
    p.add_argument("--limit", "--lambada-n", dest="limit", type=cli.count, default=None,
                   help="LAMBADA: score only the first N passages (default: all)")
    p.add_argument("--threads", "-t", type=int, default=None,
                   help="worker threads (default: all cores available to the process)")
    add_eviction_args(p)
    p.add_argument("--json", dest="json_out", default=None,
                   help="also write all figures as JSON to this file (after Ctrl-C: the chunks completed, "
                        "marked \"partial\": true)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


# how every tool ends (engine.cli)
EXIT_HELP = ("exit status: 0 done, 2 bad command line or input (nothing computed), 1 failure while running, "
             "130 interrupted (Ctrl-C).")


def _mib(b: float) -> str:
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
    if res.policy == FULL or (res.budget == 1.0 and res.protocol == "prefix"):
        return f"{res.budget:g} (full cache)"
    if res.policy in MASKING:
        return f"{res.budget:g} (top-k attention, nothing evicted)"
    if res.protocol == "streaming":
        return f"{res.budget:g} ({res.budget_tokens} tokens of cache)"
    return f"{res.budget:g} ({res.budget_tokens} entries kept per buffer)"


def kv_rows(res) -> list[tuple[str, str]]:
    return [("KV bytes peak", _mib(res.kv_bytes_peak)),
            ("KV bytes mean", f"{_mib(res.kv_bytes_mean)} ({res.kv_bytes_mean / res.kv_bytes_full:.1%} of full)"
             if res.kv_bytes_full else _mib(res.kv_bytes_mean)),
            ("KV bytes full cache, same point", _mib(res.kv_bytes_full)),
            ("KV bytes allocated", _mib(res.kv_bytes_alloc))]


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    return cli.run(lambda: _main(args))


def open_model(args):
    """The model of --gguf and the threads its sessions get; checks the eviction settings against the
    C core (a bad --kernel, --window, ... is reported before any work)."""
    from . import Model

    model = Model(args.gguf, n_threads=args.threads)
    with model.session(n_ctx=8) as s:
        if args.policy_ev is not None:
            s.set_eviction(replace(args.policy_ev, schedule="prefix"))
        return model, s.n_threads


def _main(args) -> int:
    with cli.preflight():
        kind = cli.dataset_kind(args.dataset)
        cli.check_threads(args.threads)
        cli.check_output(args.json_out)
        policy = resolve_policy(args.policy, args.budget, args.protocol)
        args.policy_ev = ev = eviction_from_args(args, policy=policy)
        if kind == "lambada":
            from . import lambada

            prepared = lambada.prepare_cli(args)
        else:
            prepared = _prepare_text(args, ev)
    if kind == "lambada":
        return lambada.score_cli(args, ev, *prepared)
    return _score_text(args, ev, *prepared)


def _prepare_text(args, ev) -> tuple:
    """The text read and tokenised, the model open: _score_text's arguments."""
    check_ctx(args.ctx)
    path = cli.dataset_path(args.dataset, args.file, args.data_dir)
    text = cli.read_text(path)
    model, threads = open_model(args)
    t0 = time.perf_counter()
    tokens = model.tokenize(text, add_special=True)
    t_tok = time.perf_counter() - t0
    check_run(len(tokens), args.ctx, args.chunks, ev, args.protocol)
    return model, threads, path, tokens, t_tok


def _score_text(args, ev, model, threads, path, tokens, t_tok) -> int:
    tok = model.tokenizer
    bos = tok.bos_id if tok.add_bos else None
    print(f"model: {model.desc}", file=sys.stderr)
    print(f"text: {path}: {len(tokens)} tokens (tokenised in {t_tok:.1f} s)", file=sys.stderr)
    if args.protocol == "streaming" and ev.positions == "original":
        n_stream = len(tokens) if not args.chunks else min(len(tokens), args.chunks * args.ctx)
        if n_stream > model.n_ctx_train:
            cli.warn(f"streaming {n_stream} tokens with --positions original uses positions beyond "
                     f"the model's training context ({model.n_ctx_train}); --positions shift keeps them "
                     "within the cache")
    chunk_line = []

    def on_chunk(i, ppl):
        chunk_line.append(f"[{i + 1}]{ppl:.4f},")

    def label(res):
        res.model, res.text, res.data, res.threads = args.gguf, path, path, threads
        return asdict(res)

    try:
        res = perplexity(model, tokens, n_ctx=args.ctx, n_chunks=args.chunks, n_threads=args.threads,
                         bos_id=bos, progress=not args.no_progress, on_chunk=on_chunk, eviction=ev,
                         protocol=args.protocol)
    except cli.Interrupted as e:
        if e.result is not None:  # from the result: the last chunk's on_chunk may not have run
            print("".join(f"[{i + 1}]{p:.4f}," for i, p in enumerate(e.result.chunk_ppl)))
        return cli.interrupted(e, args.json_out, label)
    label(res)
    print("".join(chunk_line))
    print(f"Final estimate: PPL = {res.ppl:.4f} +/- {res.ppl_stderr:.5f}")
    if args.protocol == "prefix":
        print(f"{res.n_chunks} chunks of {res.n_ctx} tokens, {res.n_scored} scored, "
              f"{res.seconds:.1f} s, {res.tokens_per_second:.1f} tokens/s")
    else:
        print(f"{res.n_tokens_evaluated + 1} tokens streamed through a cache of {res.budget_tokens} tokens, "
              f"{res.n_scored} scored, {res.seconds:.1f} s, {res.tokens_per_second:.1f} tokens/s")
    print()
    print_table([("dataset", f"{args.dataset} ({os.path.basename(path)})"), ("model", os.path.basename(args.gguf)),
                 ("policy", res.policy), ("budget", budget_label(res)), ("protocol", res.protocol),
                 ("ctx", str(res.n_ctx)), ("perplexity", f"{res.ppl:.4f} +/- {res.ppl_stderr:.5f}"),
                 ("predictions scored", str(res.n_scored)), *kv_rows(res),
                 ("tokens/s", f"{res.tokens_per_second:.1f}"), ("seconds", f"{res.seconds:.1f}")])
    if args.json_out:
        cli.write_json(args.json_out, asdict(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
