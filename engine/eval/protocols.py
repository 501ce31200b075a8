"""Perplexity with llama-perplexity's protocol and a compressed KV cache: the chunk runners.

Full cache (no eviction, or budget 1), llama.cpp tools/perplexity's protocol, kept exactly so the
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
evicted and the figures are llama-perplexity's, bit for bit. Several configurations share each
chunk's prefill (perplexity_many, engine.eval.shared_prefill).

Protocol "streaming": the whole text (the first --chunks x n_ctx tokens with --chunks) flows through
one cache held at budget x n_ctx tokens (budget >= 2: that many tokens) by the policy's streaming
schedule: a session of budget + slack + 1 KV slots, so memory really is bounded; a buffer is cut
back to the budget whenever it would exceed budget + slack (--slack 0: every token). The first
n_ctx tokens warm the cache up; every token after them is scored: len(tokens) - n_ctx predictions.

KV figures (PerplexityResult.kv_bytes_*): bytes of K, V and positions of all layers; those of models
with sliding-window layers (gemma3) also split into the global layers (the only ones evicted from, what
the budget acts on) and the sliding-window layers (rings of n_swa - 1 + n_batch slots per kv-head,
never evicted from): kv_bytes_*_global and kv_bytes_*_window, 0 for the window layers of models without
any (llama, qwen).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from .. import cli
from ..errors import EngineError
from . import report
from .checkpoint import restore_tallies, tallies_state
from .options import PROTOCOLS, as_eviction, budget_tokens, resolve_policy
from .shared_prefill import SharedPrefill

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
    partial: bool = False          # True: interrupted, the figures cover the chunks completed (n_chunks)


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
    ev = as_eviction(eviction)
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


def perplexity_unit(worker, unit: dict) -> PerplexityResult:
    """A whole perplexity() run (the streaming protocol's: one cache through the text) on a worker of
    engine.eval.distributed, its threads the worker's."""
    return perplexity(worker.model, n_threads=worker.n_threads, progress=False, **unit)


def perplexity_many(model, tokens: list[int] | np.ndarray, evictions: list, n_ctx: int = 512,
                    n_chunks: Optional[int] = None, n_threads: Optional[int] = None, bos_id: Optional[int] = None,
                    progress: bool = True, on_chunk=None, bar_position: int = 0,
                    checkpoint=None, pool=None) -> list[PerplexityResult]:
    """perplexity() with the prefix protocol for several eviction configurations at once: each chunk's
    first half is prefilled once and shared (engine.eval.shared_prefill), so a sweep of P configurations
    costs about P scorings plus one prefill per chunk instead of P of each. The results are those of
    separate perplexity() calls, bit for bit. on_chunk(i, [ppl per configuration]). checkpoint: an
    engine.eval.checkpoint.Checkpoint of this call's settings: the chunks it holds are not scored again,
    and the figures are saved as chunks complete (the same results as an uninterrupted call). pool: an
    engine.eval.distributed.Pool: the chunks are scored on its workers (score_chunk_unit), their figures
    folded here in chunk order, so the results are the same bits as without it."""
    tokens = np.asarray(tokens, dtype=np.int32)
    evs = [as_eviction(e) for e in evictions]
    if not evs:
        raise EngineError("perplexity_many: no eviction configuration given")
    n = check_chunks(n_ctx, n_chunks, len(tokens))
    for ev in evs:
        if ev is not None:
            resolve_policy(ev.policy, ev.budget, "prefix")
    out = _prefix_many(model, tokens, n_ctx, n, bos_id, evs, n_threads, progress, on_chunk, bar_position,
                       checkpoint, pool)
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
        self.kv_kept_g, self.kv_kept_w = [], []  # kv_kept of the global and the sliding-window layers
        self.kv_peak = self.kv_peak_g = self.kv_peak_w = 0
        self.seconds = 0.0

    def fold(self, rec: dict) -> float:
        """Adds one chunk's figures (score_chunk's record); the running perplexity. Chunks must come in
        order: the sums are floating-point, so their order is part of the result."""
        self.kv_pre.append(rec["kv_pre"])
        self.kv_kept.append(rec["kv_kept"])
        self.kv_kept_g.append(rec["kv_kept_g"])
        self.kv_kept_w.append(rec["kv_kept_w"])
        self.kv_peak = max(self.kv_peak, rec["used"], rec["kv_pre"])
        self.kv_peak_g = max(self.kv_peak_g, rec["used_g"], rec["kv_pre"] - rec["kv_kept_w"])
        self.kv_peak_w = max(self.kv_peak_w, rec["used_w"], rec["kv_kept_w"])
        self.nll_sum += rec["nll"]
        self.nll2_sum += rec["nll2"]
        self.count += rec["count"]
        ppl, _ = report.running_ppl(self.nll_sum, self.nll2_sum, self.count)
        self.running.append(ppl)
        self.seconds += rec["seconds"]
        return ppl


def chunk_of(tokens: np.ndarray, i: int, n_ctx: int, bos_id: Optional[int]) -> np.ndarray:
    """Chunk i of the prefix protocol, its first token replaced by bos_id when not None."""
    chunk = tokens[i * n_ctx:(i + 1) * n_ctx].copy()
    if bos_id is not None:
        chunk[0] = bos_id
    return chunk


def score_chunk(sp: SharedPrefill, chunk: np.ndarray) -> list[dict]:
    """One chunk for every configuration of `sp`: its first half prefilled once and compressed by each,
    its second half scored. A record per configuration (plain numbers, as _Tally.fold takes them): the
    unit of work shared by the local loop and the workers of engine.eval.distributed."""
    first = len(chunk) // 2
    recs: list = [None] * len(sp.evs)
    for j, s, pf in sp.prefill(chunk[:first]):
        # compression leaves the sliding-window rings alone: their bytes before it are those after
        kept_g, kept_w = s.kv_bytes_used_global, s.kv_bytes_used_window
        t0 = time.perf_counter()
        lp = s.logprobs(chunk[first:]).astype(np.float64)
        recs[j] = {"nll": float(-lp.sum()), "nll2": float((lp * lp).sum()), "count": len(lp),
                   "kv_pre": pf.kv_bytes_full, "kv_kept": pf.kv_bytes_kept, "kv_kept_g": kept_g, "kv_kept_w": kept_w,
                   "used": s.kv_bytes_used, "used_g": s.kv_bytes_used_global, "used_w": s.kv_bytes_used_window,
                   "alloc": sp.kv_bytes_alloc, "alloc_gw": (s.kv_bytes_alloc_global, s.kv_bytes_alloc_window),
                   # what this configuration alone would have taken: its prefill, compression and scoring
                   "seconds": pf.seconds + time.perf_counter() - t0}
    return recs


def score_chunk_unit(worker, unit: dict) -> list[dict]:
    """score_chunk on a worker of engine.eval.distributed (its model, its cached shared prefill)."""
    n_ctx = len(unit["chunk"])
    return score_chunk(worker.prefill(unit["evs"], n_ctx, min(512, n_ctx)), unit["chunk"])


def _prefix(model, tokens, n_ctx, n, bos_id, ev, n_threads, progress, on_chunk, bar_position) -> PerplexityResult:
    cb = None if on_chunk is None else (lambda i, ppls: on_chunk(i, ppls[0]))
    try:
        return _prefix_many(model, tokens, n_ctx, n, bos_id, [ev], n_threads, progress, cb, bar_position)[0]
    except cli.Interrupted as e:
        raise cli.Interrupted(e.result[0] if e.result else None, e.done, e.total, e.unit) from None


def _prefix_many(model, tokens, n_ctx, n, bos_id, evs, n_threads, progress, on_chunk,
                 bar_position, checkpoint=None, pool=None) -> list[PerplexityResult]:
    """The prefix protocol for several eviction configurations, sharing each chunk's prefill; with a
    checkpoint (engine.eval.checkpoint), resumed from its saved chunks and saved as it goes; with a pool
    (engine.eval.distributed), the chunks scored on its workers and folded here in order."""
    tallies = [_Tally() for _ in evs]
    state = checkpoint.load() if checkpoint is not None else None
    start = restore_tallies(state, tallies)
    alloc = state.get("alloc", 0) if start else 0
    alloc_gw = tuple(state["alloc_gw"]) if start else (0, 0)  # kv_bytes_alloc of the global and the
    # sliding-window layers (every session alike)
    bar = report.bar(progress, n, "chunk", "perplexity", bar_position)
    if bar is not None and start:
        bar.update(start)
    sp = chunks = None
    try:
        if pool is None:
            sp = SharedPrefill(model, evs, n_ctx, n_threads, min(512, n_ctx))
            alloc = sp.kv_bytes_alloc
            chunks = (score_chunk(sp, chunk_of(tokens, i, n_ctx, bos_id)) for i in range(start, n))
        else:
            chunks = pool.ordered(score_chunk_unit, ({"evs": evs, "chunk": chunk_of(tokens, i, n_ctx, bos_id)}
                                                     for i in range(start, n)))
        for i, recs in enumerate(chunks, start):
            # a chunk counts in the tallies only once scored for every configuration (an interruption
            # leaves whole chunks)
            for t, rec in zip(tallies, recs):
                t.fold(rec)
            alloc, alloc_gw = recs[-1]["alloc"], tuple(recs[-1]["alloc_gw"])
            if checkpoint is not None and checkpoint.due(i + 1 == n):
                checkpoint.save(tallies_state(i + 1, tallies, alloc_gw=alloc_gw, alloc=alloc))
            if bar is not None:
                bar.set_postfix(ppl=" ".join(f"{t.running[-1]:.4f}" for t in tallies[:4])
                                + (" ..." if len(tallies) > 4 else ""))
                bar.update(1)
            if on_chunk is not None:
                on_chunk(i, [t.running[-1] for t in tallies])
    except KeyboardInterrupt:
        done = min(len(t.running) for t in tallies)
        partial = _prefix_results(tallies, evs, n_ctx, len(tokens), alloc, alloc_gw, partial=True) if done else None
        raise cli.Interrupted(partial, done, n, "chunks") from None
    finally:
        if chunks is not None:
            chunks.close()  # a pool's generator hands back the units still in flight
        if sp is not None:
            sp.close()
        if bar is not None:
            bar.close()
    return _prefix_results(tallies, evs, n_ctx, len(tokens), alloc, alloc_gw)


def _prefix_results(tallies, evs, n_ctx, n_file, alloc, alloc_gw, partial=False) -> list[PerplexityResult]:
    first = n_ctx // 2
    out = []
    for t, ev in zip(tallies, evs):
        n = len(t.running)  # chunks scored
        ppl, err = report.running_ppl(t.nll_sum, t.nll2_sum, t.count) if t.count else (float("nan"), float("nan"))
        out.append(PerplexityResult(
            ppl=ppl, ppl_stderr=err, n_chunks=n, n_ctx=n_ctx, n_scored=t.count, n_tokens_file=n_file,
            chunk_ppl=t.running, seconds=t.seconds,
            tokens_per_second=n * n_ctx / t.seconds if t.seconds > 0 else 0.0, kv_bytes_peak=t.kv_peak,
            budget_tokens=budget_tokens(ev.budget, first) if ev is not None else first,
            kv_bytes_mean=float(np.mean(t.kv_kept)) if n else 0.0, kv_bytes_alloc=alloc,
            kv_bytes_full=float(np.mean(t.kv_pre)) if n else 0.0, n_tokens_evaluated=n * n_ctx, partial=partial,
            kv_bytes_peak_global=t.kv_peak_g, kv_bytes_peak_window=t.kv_peak_w,
            kv_bytes_mean_global=float(np.mean(t.kv_kept_g)) if n else 0.0,
            kv_bytes_mean_window=float(np.mean(t.kv_kept_w)) if n else 0.0,
            kv_bytes_alloc_global=alloc_gw[0], kv_bytes_alloc_window=alloc_gw[1]))
    return out


def _ring_slots(windows, capacity: int, n_batch: int) -> int:
    """Slots per kv-head of the sliding-window layers of a session of `capacity` slots and `n_batch`, summed
    over those layers: n_swa - 1 + n_batch each, as the C core allocates them (src/kv.h
    rk_kv_window_slots; not capped at the capacity: positions run past n_ctx once a policy evicts)."""
    return sum(w - 1 + n_batch for w in windows if w > 0)


def _window_bytes_full(model, alloc_w: int, s_ctx: int, n_ctx: int) -> int:
    """KV bytes of the sliding-window layers of the full cache (a session of n_ctx slots, n_batch
    min(512, n_ctx)) once it holds n_ctx tokens, from alloc_w, those of the streaming session (s_ctx
    slots, n_batch min(512, s_ctx)); 0 without such layers."""
    if not alloc_w:
        return 0
    windows = model.layer_windows
    return alloc_w * _ring_slots(windows, n_ctx, min(512, n_ctx)) // _ring_slots(windows, s_ctx, min(512, s_ctx))


def _streaming(model, tokens, n_ctx, ev, n_threads, progress, on_chunk, piece, on_piece,
               bar_position) -> PerplexityResult:
    n_tok = len(tokens)
    kept = budget_tokens(ev.budget, n_ctx)
    s_ctx = kept + ev.slack + 1
    evs = replace(ev, budget=float(kept), schedule="streaming")
    bar = report.bar(progress, n_tok, "tok", "perplexity (streaming)", bar_position)
    nll_sum = nll2_sum = 0.0
    count = 0
    running = []
    samples, samples_g, samples_w = [], [], []  # all layers, the global ones, the sliding-window ones
    kv_peak = kv_peak_g = kv_peak_w = alloc = alloc_g = alloc_w = 0
    full = 0.0
    next_report = n_ctx  # running estimate after every n_ctx scored tokens
    t0 = time.perf_counter()

    def result(partial: bool = False) -> PerplexityResult:
        secs = time.perf_counter() - t0
        ppl, err = report.running_ppl(nll_sum, nll2_sum, count)
        n_eval = n_ctx + count - 1  # the warm-up and every token scored (all of them when complete)
        return PerplexityResult(ppl=ppl, ppl_stderr=err, n_chunks=len(running), n_ctx=n_ctx, n_scored=count,
                                n_tokens_file=n_tok, chunk_ppl=running, seconds=secs,
                                tokens_per_second=n_eval / secs if secs > 0 else 0.0, kv_bytes_peak=kv_peak,
                                budget_tokens=kept, kv_bytes_mean=float(np.mean(samples)), kv_bytes_alloc=alloc,
                                kv_bytes_full=full, n_tokens_evaluated=n_eval, partial=partial,
                                kv_bytes_peak_global=kv_peak_g, kv_bytes_peak_window=kv_peak_w,
                                kv_bytes_mean_global=float(np.mean(samples_g)),
                                kv_bytes_mean_window=float(np.mean(samples_w)),
                                kv_bytes_alloc_global=alloc_g, kv_bytes_alloc_window=alloc_w)

    def sample(s) -> None:
        nonlocal kv_peak, kv_peak_g, kv_peak_w
        used, used_g, used_w = s.kv_bytes_used, s.kv_bytes_used_global, s.kv_bytes_used_window
        samples.append(used)
        samples_g.append(used_g)
        samples_w.append(used_w)
        kv_peak, kv_peak_g, kv_peak_w = max(kv_peak, used), max(kv_peak_g, used_g), max(kv_peak_w, used_w)

    try:
        with model.session(n_ctx=s_ctx, n_threads=n_threads, n_batch=min(512, s_ctx)) as s:
            s.set_eviction(evs)
            alloc, alloc_g, alloc_w = s.kv_bytes_alloc, s.kv_bytes_alloc_global, s.kv_bytes_alloc_window
            # the full cache of n_ctx tokens: n_ctx slots per global buffer, its rings on the window layers
            full = alloc_g / s_ctx * n_ctx + _window_bytes_full(model, alloc_w, s_ctx, n_ctx)
            # warm-up: tokens[0 .. n_ctx) only fill the cache
            for a in range(0, n_ctx, piece):
                b = min(a + piece, n_ctx)
                s.eval(tokens[a:b], logits=None)
                sample(s)
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
                sample(s)
                if on_piece is not None:
                    on_piece(s)
                nll_sum += float(-lp.sum())
                nll2_sum += float((lp * lp).sum())
                count += len(lp)
                ppl, _ = report.running_ppl(nll_sum, nll2_sum, count)
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
