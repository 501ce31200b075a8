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
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Iterator, Optional, Sequence

from ..eviction import POLICIES, Eviction, source_for


@dataclass
class Prefilled:
    kv_bytes_full: int   # KV bytes of the uncompressed prefill
    kv_bytes_kept: int   # after the compression
    seconds: float       # what this configuration alone would have spent: its prefill and compression


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

    def prefill(self, ids) -> Iterator[tuple[int, object, "Prefilled"]]:
        for key, members in self.groups.items():
            src = self.sources[key]
            t0 = time.perf_counter()
            src.reset()
            src.eval(ids, logits=None)
            secs = time.perf_counter() - t0
            for i in members:
                t0 = time.perf_counter()
                self.dst.set_eviction(self.evs[i] if self.evs[i] is not None else Eviction())
                self.dst.copy_state_from(src)
                yield i, self.dst, self._compress(self.dst, i, secs + time.perf_counter() - t0)
        for i, s in self.own.items():
            t0 = time.perf_counter()
            s.reset()
            s.eval(ids, logits=None)
            yield i, s, self._compress(s, i, time.perf_counter() - t0)

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
