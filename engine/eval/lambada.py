"""LAMBADA last-word accuracy and perplexity, with the context's KV cache compressed to a budget.

The command line is python -m engine.lambada (engine.eval.command), the same as
python -m engine.perplexity --dataset lambada.

Data: OpenAI-style jsonl (one {"text": ...} a line, as lambada_test.jsonl) or plain text with one
passage a line (default: ../shared/data/lambada/lambada_development_plain_text.txt when found).

Protocol, per passage:
  * the target is the last word: the passage is split on its last space into context and word;
  * ctx = tokenize(context) with the vocabulary's special tokens (BOS when it adds one);
  * target tokens: when ctx is a prefix of tokenize(passage), the passage's tokens after it
    ("continuation": the target is tokenised exactly as in running text); otherwise
    tokenize(" " + word) without special tokens ("separate"). Both counts are reported;
  * all of ctx but its last token is prefilled (full cache) and compressed to the budget with the
    policy's prefix schedule (a fraction in (0, 1] of those tokens, or a number of tokens >= 2);
  * then logprobs([ctx[-1]] + target, return_argmax=True) is evaluated on top of the compressed
    cache, so every scored prediction, the target's first token included, depends on it.
Accuracy: the greedy (argmax) prediction equals every target token. Perplexity: exp of the mean
over passages of the target word's total negative log-likelihood (nats), summed exactly (math.fsum);
inf when that mean passes ~709 (targets of many unlikely tokens), never an overflow error.
KV figures (LambadaResult.kv_bytes_*): all layers, and per layer type as in engine.eval.protocols
(kv_bytes_*_global: the global layers, evicted from; kv_bytes_*_window: the sliding-window rings, never
evicted from, 0 for models without them); the budget applies to the global layers only.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np

from .. import cli
from ..errors import EngineError
from . import report
from .checkpoint import restore_tallies, tallies_state
from .options import as_eviction, resolve_policy
from .shared_prefill import SharedPrefill

CASES = ("continuation", "separate")


@dataclass
class LambadaItem:
    context_ids: list
    target_ids: list
    case: str = "continuation"  # how the target was tokenised, see CASES
    word: str = ""


@dataclass
class LambadaResult:
    accuracy: float
    accuracy_stderr: float
    ppl: float
    n_scored: int                  # passages scored
    n_correct: int
    n_target_tokens: int
    n_skipped: int = 0             # passages with no last word, or a context of fewer than 2 tokens
    target_cases: dict = field(default_factory=dict)  # {"continuation": n, "separate": m}
    running: list = field(default_factory=list)       # (accuracy, ppl) every 10% of the passages
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    dataset: str = "lambada"
    model: str = ""
    data: str = ""
    threads: int = 0
    policy: str = "full"
    budget: float = 1.0
    protocol: str = "prefix"
    eviction: dict = field(default_factory=dict)
    budget_tokens_mean: float = 0.0  # entries kept per buffer (of a global layer), mean over passages
    n_ctx: int = 0                   # KV slots of the session (the longest passage)
    kv_bytes_peak: int = 0           # includes the uncompressed prefill
    kv_bytes_mean: float = 0.0       # after each compression
    kv_bytes_alloc: int = 0
    kv_bytes_full: float = 0.0       # the uncompressed prefill, mean (what the full cache holds there)
    # the same KV figures per layer type: the global layers (evicted from) and the sliding-window layers
    # (rings, never evicted from; 0 without such layers). all = global + window for the means and the
    # allocations; each peak is the maximum over the same points as kv_bytes_peak, so
    # kv_bytes_peak <= kv_bytes_peak_global + kv_bytes_peak_window (equal when both peak together)
    kv_bytes_peak_global: int = 0
    kv_bytes_peak_window: int = 0
    kv_bytes_mean_global: float = 0.0
    kv_bytes_mean_window: float = 0.0
    kv_bytes_alloc_global: int = 0
    kv_bytes_alloc_window: int = 0
    n_tokens_evaluated: int = 0
    partial: bool = False            # True: interrupted, the figures cover the passages completed (n_scored)


def load_passages(path: str, limit: Optional[int] = None) -> list[str]:
    """Passages of a LAMBADA file: jsonl with a 'text' field, or one passage a line."""
    if limit is not None and limit < 1:
        raise EngineError(f"--limit must be >= 1 (leave it out for all), got {limit}")
    text = cli.read_text(path, "LAMBADA file")
    out = []
    # lines as a text-mode file would give them (universal newlines), not str.splitlines()'s
    for ln, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise EngineError(f"{path}:{ln}: not valid JSON: {e}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise EngineError(f"{path}:{ln}: a JSON line needs a 'text' string")
            line = obj["text"].strip()
        out.append(line)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise EngineError(f"{path}: no passages")
    return out


def split_passage(text: str) -> tuple[str, str]:
    """(context, last word): the passage split on its last space; ('', '') when there is none."""
    text = text.strip()
    i = text.rfind(" ")
    if i <= 0:
        return "", ""
    return text[:i], text[i + 1:]


def prepare(model, passages: Iterable[str]) -> tuple[list[LambadaItem], int]:
    """Token ids of each passage's context and target; also the number of passages skipped.

    target: the passage's tokens after the context's when those are a prefix of them
    ("continuation"), else tokenize(" " + word) without special tokens ("separate")."""
    items, skipped = [], 0
    for text in passages:
        text = text.strip()
        context, word = split_passage(text)
        if not word or not context.strip():
            skipped += 1
            continue
        ctx = list(model.tokenize(context, add_special=True))
        full = list(model.tokenize(text, add_special=True))
        if len(full) > len(ctx) and full[:len(ctx)] == ctx:
            target, case = full[len(ctx):], "continuation"
        else:
            target, case = list(model.tokenize(" " + word, add_special=False)), "separate"
        if len(ctx) < 2 or not target:
            skipped += 1
            continue
        items.append(LambadaItem(ctx, target, case, word))
    return items, skipped


def lambada(model, items: Sequence[LambadaItem] | Sequence[str], eviction=None, n_threads: Optional[int] = None,
            progress: bool = True, on_passage=None, bar_position: int = 0) -> LambadaResult:
    """Scores LAMBADA items (or raw passages, tokenised here) with the context compressed per `eviction`.

    eviction: None (the full cache), an engine.eviction.Eviction or a dict of its fields; its schedule
    is forced to "prefix". on_passage(i, correct, nll) after each passage.
    """
    cb = None if on_passage is None else (lambda i, res: on_passage(i, *res[0]))
    return lambada_many(model, items, [eviction], n_threads, progress, cb, bar_position)[0]


class _Tally:
    """One configuration's running figures over the passages."""

    def __init__(self):
        self.cases = {c: 0 for c in CASES}
        self.n_correct = self.n_target = self.n_eval = 0
        self.nlls, self.running, self.kept_tokens, self.kv_pre, self.kv_kept = [], [], [], [], []
        self.kv_kept_g, self.kv_kept_w = [], []  # kv_kept of the global and the sliding-window layers
        self.kv_peak = self.kv_peak_g = self.kv_peak_w = 0
        self.seconds = 0.0

    def ppl(self) -> float:
        """exp(mean target NLL): summed exactly, inf rather than an overflow (see the module docstring)."""
        return report.exp_mean(math.fsum(self.nlls), len(self.nlls))

    def fold(self, rec: dict, i: int, n_items: int, every: int) -> None:
        """Adds passage i's figures (score_passage's record); passages must come in order (the running
        figures are taken every `every` passages)."""
        self.kv_pre.append(rec["kv_pre"])
        self.kv_kept.append(rec["kv_kept"])
        self.kv_kept_g.append(rec["kv_kept_g"])
        self.kv_kept_w.append(rec["kv_kept_w"])
        self.kept_tokens.append(rec["kept_tokens"])
        self.kv_peak = max(self.kv_peak, rec["kv_pre"], rec["used"])
        self.kv_peak_g = max(self.kv_peak_g, rec["kv_pre"] - rec["kv_kept_w"], rec["used_g"])
        self.kv_peak_w = max(self.kv_peak_w, rec["kv_kept_w"], rec["used_w"])
        self.nlls.append(rec["nll"])
        self.n_correct += rec["correct"]
        self.n_target += rec["n_target"]
        self.n_eval += rec["n_eval"]
        self.cases[rec["case"]] = self.cases.get(rec["case"], 0) + 1
        if (i + 1) % every == 0 or i + 1 == n_items:
            self.running.append((self.n_correct / (i + 1), self.ppl()))
        self.seconds += rec["seconds"]


def score_passage(sp: SharedPrefill, it: LambadaItem, n_ctx: int) -> list[dict]:
    """One passage for every configuration of `sp` (sessions of n_ctx slots): its context but the last
    token prefilled once and compressed by each, then the target scored. A record per configuration
    (plain numbers, as _Tally.fold takes them): the unit of work shared by the local loop and the workers
    of engine.eval.distributed."""
    ctx, target = it.context_ids, it.target_ids
    alloc = sp.kv_bytes_alloc
    recs: list = [None] * len(sp.evs)
    for j, s, pf in sp.prefill(ctx[:-1]):
        alloc_g = s.kv_bytes_alloc_global
        # compression leaves the sliding-window rings alone: their bytes before it are those after
        kept_g, kept_w = s.kv_bytes_used_global, s.kv_bytes_used_window
        t0 = time.perf_counter()
        lp, am = s.logprobs([ctx[-1]] + list(target), return_argmax=True)
        recs[j] = {"kv_pre": pf.kv_bytes_full, "kv_kept": pf.kv_bytes_kept, "kv_kept_g": kept_g, "kv_kept_w": kept_w,
                   # entries per (global layer, kv-head) buffer: n_ctx slots each
                   "kept_tokens": kept_g * n_ctx / alloc_g if alloc_g else pf.kv_bytes_kept * n_ctx / alloc,
                   "used": s.kv_bytes_used, "used_g": s.kv_bytes_used_global, "used_w": s.kv_bytes_used_window,
                   "correct": bool(np.array_equal(am, np.asarray(target, dtype=np.int32))),
                   "nll": float(-lp.astype(np.float64).sum()), "n_target": len(target),
                   "n_eval": len(ctx) + len(target), "case": it.case, "alloc": alloc,
                   "alloc_gw": (alloc_g, s.kv_bytes_alloc_window),
                   "seconds": pf.seconds + time.perf_counter() - t0}
    return recs


def score_passage_unit(worker, unit: dict) -> list[dict]:
    """score_passage on a worker of engine.eval.distributed (its model, its cached shared prefill)."""
    n_ctx = unit["n_ctx"]
    return score_passage(worker.prefill(unit["evs"], n_ctx, min(512, n_ctx)), unit["item"], n_ctx)


def lambada_many(model, items: Sequence[LambadaItem] | Sequence[str], evictions: list,
                 n_threads: Optional[int] = None, progress: bool = True, on_passage=None,
                 bar_position: int = 0, checkpoint=None, pool=None) -> list[LambadaResult]:
    """lambada() for several eviction configurations, sharing each passage's prefill
    (engine.eval.shared_prefill): the results of separate lambada() calls, bit for bit, at about the cost
    of one. on_passage(i, [(correct, nll) per configuration]). checkpoint: an
    engine.eval.checkpoint.Checkpoint of this call's settings (items included): the passages it holds are
    not scored again, and the figures are saved as passages complete. pool: an
    engine.eval.distributed.Pool: the passages are scored on its workers (score_passage_unit), their
    figures folded here in passage order, so the results are the same bits as without it."""
    evs = [as_eviction(e) for e in evictions]
    if not evs:
        raise EngineError("lambada_many: no eviction configuration given")
    for ev in evs:
        if ev is not None:
            resolve_policy(ev.policy, ev.budget, "prefix")
    skipped = 0
    if items and isinstance(items[0], str):
        items, skipped = prepare(model, items)
    if not items:
        raise EngineError("no LAMBADA passage to score (each needs a context and a last word)")
    n_ctx = max(len(it.context_ids) + len(it.target_ids) for it in items)
    tallies = [_Tally() for _ in evs]
    every = max(1, len(items) // 10)
    state = checkpoint.load() if checkpoint is not None else None
    start = restore_tallies(state, tallies)
    for t in tallies:
        t.running = [tuple(r) for r in t.running]  # (accuracy, ppl) pairs, lists in JSON
    alloc = state.get("alloc", 0) if start else 0
    alloc_gw = tuple(state["alloc_gw"]) if start else (0, 0)  # kv_bytes_alloc of the global and the
    # sliding-window layers (every session alike)
    bar = report.bar(progress, len(items), "passage", "lambada", bar_position)
    if bar is not None and start:
        bar.update(start)
    sp = passages = None
    try:
        if pool is None:
            sp = SharedPrefill(model, evs, n_ctx, n_threads, min(512, n_ctx))
            alloc = sp.kv_bytes_alloc
            passages = (score_passage(sp, items[i], n_ctx) for i in range(start, len(items)))
        else:
            passages = pool.ordered(score_passage_unit, ({"evs": evs, "item": items[i], "n_ctx": n_ctx}
                                                         for i in range(start, len(items))))
        for i, recs in enumerate(passages, start):
            # a passage counts in the tallies only once scored for every configuration (an interruption
            # leaves whole passages)
            for t, rec in zip(tallies, recs):
                t.fold(rec, i, len(items), every)
            alloc, alloc_gw = recs[-1]["alloc"], tuple(recs[-1]["alloc_gw"])
            if checkpoint is not None and checkpoint.due(i + 1 == len(items)):
                checkpoint.save(tallies_state(i + 1, tallies, alloc_gw=alloc_gw, alloc=alloc))
            if bar is not None:
                t = tallies[0]
                bar.set_postfix(acc=f"{t.n_correct / (i + 1):.4f}", ppl=f"{t.ppl():.3f}")
                bar.update(1)
            if on_passage is not None:
                on_passage(i, [(rec["correct"], rec["nll"]) for rec in recs])
    except KeyboardInterrupt:
        done = min(len(t.nlls) for t in tallies)
        partial = _results(tallies, evs, skipped, n_ctx, alloc, alloc_gw, partial=True) if done else None
        raise cli.Interrupted(partial, done, len(items), "passages") from None
    finally:
        if passages is not None:
            passages.close()  # a pool's generator hands back the units still in flight
        if sp is not None:
            sp.close()
        if bar is not None:
            bar.close()
    return _results(tallies, evs, skipped, n_ctx, alloc, alloc_gw)


def _results(tallies, evs, skipped, n_ctx, alloc, alloc_gw, partial=False) -> list[LambadaResult]:
    out = []
    for t, ev in zip(tallies, evs):
        n = len(t.nlls)  # passages scored
        acc = t.n_correct / n if n else float("nan")
        res = LambadaResult(accuracy=acc, accuracy_stderr=math.sqrt(acc * (1 - acc) / n) if n else float("nan"),
                            ppl=t.ppl() if n else float("nan"), n_scored=n, n_correct=t.n_correct,
                            n_target_tokens=t.n_target, n_skipped=skipped,
                            target_cases=t.cases, running=t.running, seconds=t.seconds,
                            tokens_per_second=t.n_eval / t.seconds if t.seconds > 0 else 0.0, n_ctx=n_ctx,
                            budget_tokens_mean=float(np.mean(t.kept_tokens)), kv_bytes_peak=t.kv_peak,
                            kv_bytes_mean=float(np.mean(t.kv_kept)), kv_bytes_alloc=alloc,
                            kv_bytes_full=float(np.mean(t.kv_pre)), n_tokens_evaluated=t.n_eval,
                            partial=partial, kv_bytes_peak_global=t.kv_peak_g, kv_bytes_peak_window=t.kv_peak_w,
                            kv_bytes_mean_global=float(np.mean(t.kv_kept_g)),
                            kv_bytes_mean_window=float(np.mean(t.kv_kept_w)),
                            kv_bytes_alloc_global=alloc_gw[0], kv_bytes_alloc_window=alloc_gw[1])
        if ev is not None:
            res.policy, res.budget, res.eviction = ev.policy, float(ev.budget), ev.as_dict()
        out.append(res)
    return out
