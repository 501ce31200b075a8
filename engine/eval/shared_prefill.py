"""One prefill, many eviction configurations (the prefix schedule's sweeps).

Under the prefix schedule a prefill runs with the full cache whatever the policy, so a sweep of
policies x budgets over the same text need not repeat it: the prefix is evaluated once in a
source session set, at budget 1, to a policy that gathers every statistic the group's policies
score with (engine.eviction.source_for, from the C core's "gathers" bits: the window's queries,
the accumulated attention), and each configuration then takes a copy of that state
(Session.copy_state_from), compresses it and continues. The results are bit for bit those of
separate runs (tests/test_shared_prefill.py). A policy that masks attention (`topk`) changes the
prefill itself (sparse attention from the first query on), so it gets a prefill of its own, as does a
lone configuration.

prefill_stages extends this to prompts compressed at different points (engine.longctx's protocols:
context only, context + question, the whole prompt): the source evaluates the segments one after
the other and each configuration is copied out at its own stage. The forward pass gives the same
bits whether a text is evaluated in one call or in pieces (tests/test_ruler_protocols.py checks
it), so a configuration compressed at stage k sees exactly the state of a prefill of the first k+1
segments in one call. With logits=True each configuration also gets the logits of the last
prefilled position, computed on the full cache before its compression.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Iterator, Optional, Sequence

import numpy as np

from ..eviction import POLICIES, Eviction, source_for


@dataclass
class Prefilled:
    kv_bytes_full: int   # KV bytes of the uncompressed prefill
    kv_bytes_kept: int   # after the compression
    seconds: float       # what this configuration alone would have spent: its prefill and compression
    # (added for prefill_stages; defaults keep the older callers' constructor calls working)
    prefill_seconds: float = 0.0           # the prefill this state came from (shared: counted for each member)
    compress_seconds: float = 0.0          # the copy (if shared) and the compression
    shared: bool = False                   # copied from a shared source (else: its own prefill)
    stage: int = 0                         # prefill_stages: the stage the configuration was compressed at
    logits: Optional[np.ndarray] = None    # logits=True: of the last prefilled position, before compression


def _own_prefill(ev: Optional[Eviction]) -> bool:
    return ev is not None and POLICIES[ev.policy].masks_attention


class SharedPrefill:
    """prefill(ids) yields (i, session, Prefilled) for each configuration i: the session holds the
    prefill of ids compressed by evs[i] (prefix schedule; nothing evicted for None); the caller
    continues it before asking for the next one. Use as a context manager (closes sessions)."""

    def __init__(self, model, evs: Sequence[Optional[Eviction]], n_ctx: int, n_threads: Optional[int] = None,
                 n_batch: int = 512):
        self.evs = [None if ev is None else replace(ev, schedule="prefix") for ev in evs]
        self._sessions = []
        mk = lambda: self._keep(model.session(n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch))  # noqa: E731
        # groups of configurations sharing a prefill: one per observation window
        self.groups: dict = {}
        self.own: dict = {}
        for i, ev in enumerate(self.evs):
            if _own_prefill(ev):
                self.own[i] = None
            else:
                self.groups.setdefault(None if ev is None else ev.window, []).append(i)
        # the full cache has no window: it joins any group
        if None in self.groups and len(self.groups) > 1:
            full = self.groups.pop(None)
            next(iter(self.groups.values())).extend(full)
        for key, members in list(self.groups.items()):
            if len(members) == 1:  # nothing to share: prefill in the configuration's own session
                self.own[members[0]] = None
                del self.groups[key]
        self.sources = {}
        for key in self.groups:
            src = mk()
            src.set_eviction(source_for([self.evs[i] for i in self.groups[key]], window=key))
            self.sources[key] = src
        self.dst = mk() if self.groups else None
        for i in self.own:
            s = mk()
            if self.evs[i] is not None:
                s.set_eviction(self.evs[i])
            self.own[i] = s

    def _keep(self, s):
        self._sessions.append(s)
        return s

    def prefill(self, ids, logits: bool = False) -> Iterator[tuple[int, object, "Prefilled"]]:
        return self.prefill_stages([ids], logits=logits)

    def prefill_stages(self, segments: Sequence, stage_of: Optional[Sequence[int]] = None,
                       logits: bool = False) -> Iterator[tuple[int, object, "Prefilled"]]:
        """Like prefill(concatenation of segments), configuration i being compressed once the first
        stage_of[i] + 1 segments are evaluated (default: all of them). A source session evaluates the
        segments in turn; configurations of its group are copied out at their stage. Those with a
        prefill of their own evaluate their stage's whole span in one call."""
        segs = list(segments)
        if not segs:
            raise ValueError("prefill_stages needs at least one segment")
        last = len(segs) - 1
        stage_of = [last] * len(self.evs) if stage_of is None else [int(k) for k in stage_of]
        if len(stage_of) != len(self.evs) or any(not 0 <= k <= last for k in stage_of):
            raise ValueError(f"stage_of must give a stage in 0..{last} for each of the {len(self.evs)} configurations")
        mode = "last" if logits else None
        for key, members in self.groups.items():
            src = self.sources[key]
            src.reset()
            secs, out = 0.0, None
            for k in range(max(stage_of[i] for i in members) + 1):
                if len(segs[k]):
                    t0 = time.perf_counter()
                    out = src.eval(segs[k], logits=mode)
                    secs += time.perf_counter() - t0
                at = [i for i in members if stage_of[i] == k]
                if at and not src.n_past:
                    raise ValueError("prefill_stages: nothing to prefill before a compression (empty segments)")
                for i in at:
                    t0 = time.perf_counter()
                    self.dst.set_eviction(self.evs[i] if self.evs[i] is not None else Eviction())
                    self.dst.copy_state_from(src)
                    p = self._compress(self.dst, i, secs + time.perf_counter() - t0)
                    p.prefill_seconds, p.compress_seconds = secs, p.seconds - secs
                    p.shared, p.stage, p.logits = True, k, out
                    yield i, self.dst, p
        for i, s in self.own.items():
            k = stage_of[i]
            span = segs[0] if k == 0 else np.concatenate([np.asarray(x, dtype=np.int64) for x in segs[:k + 1]])
            if not len(span):
                raise ValueError("prefill_stages: nothing to prefill before a compression (empty segments)")
            t0 = time.perf_counter()
            s.reset()
            out = s.eval(span, logits=mode)
            secs = time.perf_counter() - t0
            p = self._compress(s, i, secs)
            p.prefill_seconds, p.compress_seconds = secs, p.seconds - secs
            p.stage, p.logits = k, out
            yield i, s, p

    def _compress(self, s, i: int, secs: float) -> "Prefilled":
        pre = s.kv_bytes_used
        t0 = time.perf_counter()
        if self.evs[i] is not None:
            s.compress()
        return Prefilled(pre, s.kv_bytes_used, secs + time.perf_counter() - t0)

    @property
    def kv_bytes_alloc(self) -> int:
        return self._sessions[0].kv_bytes_alloc

    def close(self) -> None:
        for s in self._sessions:
            s.close()
        self._sessions = []

    def __enter__(self) -> "SharedPrefill":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PrefillCache:
    """The SharedPrefill (its sessions) of the last sample, reused by the next one with the same configurations
    and n_ctx, instead of allocating its KV caches again (as engine.eval.protocols reuses one for every chunk;
    each worker of engine.eval.distributed keeps one)."""

    def __init__(self):
        self.key, self.sp = None, None

    def get(self, model, evs, n_ctx: int, n_threads: Optional[int], n_batch: int = 512) -> SharedPrefill:
        key = (id(model), n_ctx, n_threads, n_batch,
               tuple(None if ev is None else json.dumps(ev.as_dict(), sort_keys=True) for ev in evs))
        if key != self.key:
            self.close()
            self.sp, self.key = SharedPrefill(model, evs, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch), key
        return self.sp

    def close(self) -> None:
        if self.sp is not None:
            self.sp.close()
        self.key, self.sp = None, None
