"""Evaluation grids on a Ray cluster (python -m engine.sweep / engine.ruler --ray; docs/ray.md).

The unit of work is one shared prefill (a WikiText chunk, a LAMBADA passage, a RULER sample) evaluated for
every configuration sharing it: the very function the local loops call (engine.eval.protocols.score_chunk_unit,
engine.eval.lambada.score_passage_unit, engine.longctx.runner.sample_unit), run on a worker. A worker is a Ray
actor holding one engine.Model (loaded once from the path the driver gives: it must exist on every node) and
the sessions of its last shared prefill, so consecutive units of a batch reuse them as the local loop does.
Its threads are the CPUs it was given (--ray-cpus-per-worker).

Pool.unordered yields each unit's result as it completes; Pool.in_order / ordered in the units' order (the
perplexity and LAMBADA tallies are floating-point sums: folded on the driver in the local order, the figures
are the local run's, bit for bit). A worker that dies (a crash, a lost node) is restarted by Ray and its unit
submitted again, to whichever worker is free; a unit that fails (an EngineError, e.g. a configuration the C
core refuses) comes back as a UnitError, once, and the other units go on.

Ray is an optional dependency (pip install 'restkv-engine[ray]'): this module imports it only when a Pool
is made, and only the --ray code paths import this module.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from typing import Callable, Iterable, Iterator, Optional

from ..errors import EngineError
from .shared_prefill import PrefillCache

RAY_INSTALL = "pip install 'restkv-engine[ray]' (or pip install 'ray>=2.9')"

DEFAULT_CPUS_PER_WORKER = 2
PROBE_SECONDS, MAX_PROBES = 0.5, 600  # a worker Ray is restarting is asked every 0.5 s, for 5 minutes at most
# tests: the path of a marker file; the first worker to take a unit while it does not exist creates it
# and dies on the spot (os._exit), as a crashed or preempted node would
DIE_ONCE_ENV = "RESTKV_RAY_DIE_ONCE"


class UnitError:
    """A unit that failed on its worker: the error's message (the other units are not affected)."""

    def __init__(self, message: str):
        self.message = message

    def __repr__(self) -> str:
        return f"UnitError({self.message!r})"


def import_ray():
    """The ray module, or an EngineError saying how to install it (never an ImportError's traceback)."""
    try:
        import ray
    except ImportError:
        raise EngineError(f"--ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    if not hasattr(ray, "init"):
        # a folder named ray on sys.path (Ray's own /tmp/ray session folder, when run from /tmp) imports as an
        # empty namespace package where Ray is not installed
        where = ", ".join(getattr(ray, "__path__", [])) or "?"
        raise EngineError(f"--ray needs Ray, which is not installed (`import ray` found only the folder {where}): "
                          f"{RAY_INSTALL}")
    return ray


class Worker:
    """The actor's class (made remote by Pool): one model, loaded once, reused for every unit."""

    def __init__(self, model_path: str, n_threads: int):
        from .. import Model

        self.n_threads, self.error, self.model = n_threads, None, None
        # which node this process is on, for the driver's count of units per node
        import ray

        self.node = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"
        self.prefills = PrefillCache()
        try:
            self.model = Model(model_path, n_threads=n_threads)
        except EngineError as e:  # e.g. the model is not on this node: Pool says so at start, not a crash loop
            self.error = (f"worker on {socket.gethostname()}: {e} (the model must exist at the same path on every "
                          "node, or be fetched there with python -m engine.models fetch NAME)")

    def ping(self) -> Optional[str]:
        """None when ready; else why this worker cannot work (its model did not load)."""
        return self.error

    def prefill(self, evs, n_ctx: int, n_batch: int):
        """The SharedPrefill of these configurations, reused while the next units ask for the same."""
        return self.prefills.get(self.model, evs, n_ctx, self.n_threads, n_batch)

    def run(self, fn: Callable, unit) -> tuple[str, object, str]:
        """(status, value, node): status ok (value = fn's result), error (value = its message) or fatal."""
        if self.error:
            return "fatal", self.error, self.node
        marker = os.environ.get(DIE_ONCE_ENV)
        if marker:
            try:
                open(marker, "x").close()
                os._exit(1)
            except FileExistsError:
                pass
        try:
            return "ok", fn(self, unit), self.node
        except EngineError as e:
            return "error", str(e), self.node
        except Exception as e:  # noqa: BLE001 (a bug shows with its type; the other units go on)
            return "error", f"{type(e).__name__}: {e}", self.node


class Pool:
    """Workers on a Ray cluster, one per cpus_per_worker CPUs (or `workers`), each with the model at
    model_path. address: None starts a local cluster, 'auto' joins the one on this machine, HOST:PORT
    another; a Ray already initialised in this process is used as it is (and left running)."""

    def __init__(self, model_path: str, address: Optional[str] = None, cpus_per_worker: int = DEFAULT_CPUS_PER_WORKER,
                 workers: Optional[int] = None, max_retries: int = 3, log=sys.stderr):
        ray = self.ray = import_ray()
        self.log, self.max_retries, self.started = log, max_retries, False
        self.units_per_node: dict = {}  # units completed per node (host/node id), reported by close()
        if not ray.is_initialized():
            opts = {"include_dashboard": False, "logging_level": logging.WARNING, "configure_logging": False}
            try:
                ray.init(address=address, **opts)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise EngineError(f"--ray {address or ''}: cannot start or join a Ray cluster: {e} (start one with "
                                  "ray start --head, or give --ray alone for a local one)") from None
            self.started = True
        # one worker per cpus_per_worker CPUs of each node (an actor cannot span nodes)
        per_node = [int(nd["Resources"].get("CPU", 0)) for nd in ray.nodes() if nd.get("Alive")]
        cpus, fits = sum(per_node), sum(c // cpus_per_worker for c in per_node)
        if not fits:
            self.close()
            raise EngineError(f"--ray-cpus-per-worker {cpus_per_worker}: no node of the cluster has that many CPUs "
                              f"(they have {', '.join(map(str, per_node)) or 'none'})")
        n = workers or fits
        # Ray restarts a dead worker (a new process, the model loaded again); its unit is resubmitted here
        remote = ray.remote(num_cpus=cpus_per_worker, max_restarts=max_retries, max_task_retries=0)(Worker)
        self.actors = [remote.remote(os.path.abspath(model_path), cpus_per_worker) for _ in range(n)]
        self.resting: list = []  # workers that failed, until a probe finds them back (Pool.unordered)
        # every worker has loaded the model (or says why not) before any unit is sent: a model missing on a
        # node stops the run here, before any work, rather than failing each unit
        errors = sorted({e for e in ray.get([a.ping.remote() for a in self.actors]) if e})
        if errors:
            self.close()
            raise EngineError("; ".join(errors))
        print(f"ray: {n} worker(s) of {cpus_per_worker} CPU(s) each, on a cluster of {cpus} CPU(s)", file=log)

    def unordered(self, fn: Callable, units: Iterable) -> Iterator[tuple[int, object]]:
        """(index, fn(worker, unit)) of each unit as it completes; a UnitError for a unit that failed.
        Units are taken from the iterable as workers free up (one unit in flight per worker)."""
        ray = self.ray
        todo = iter(enumerate(units))
        resting = self.resting  # (actor, when, probes): workers that failed, probed from `when` until back
        free, retry, exhausted = [a for a in self.actors if all(a is not r[0] for r in resting)], [], False
        inflight = {}  # ref -> (index, unit, actor, tries); index None: a probe (tries: the probes so far)
        try:
            while True:
                now = time.monotonic()
                for r in [r for r in resting if r[1] <= now]:
                    resting.remove(r)
                    inflight[r[0].ping.remote()] = (None, None, r[0], r[2] + 1)
                while free and (retry or not exhausted):
                    if retry:
                        i, unit, tries = retry.pop(0)
                    else:
                        nxt = next(todo, None)
                        if nxt is None:
                            exhausted = True
                            break
                        (i, unit), tries = nxt, 0
                    actor = free.pop(0)
                    inflight[actor.run.remote(fn, unit)] = (i, unit, actor, tries)
                busy = any(v[0] is not None for v in inflight.values())
                if exhausted and not retry and not busy:
                    return  # every unit done (a probe still in flight is left to finish alone)
                if not free and not inflight and not resting:
                    raise EngineError("ray: every worker died (more often than Ray restarts them)")
                if not inflight:
                    time.sleep(PROBE_SECONDS)
                    continue
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=PROBE_SECONDS if resting else None)
                if not ready:
                    continue
                i, unit, actor, tries = inflight.pop(ready[0])
                try:
                    out = ray.get(ready[0])
                except ray.exceptions.RayActorError as e:
                    # dead for good (its restarts spent, or never back): dropped; else probed until Ray has
                    # restarted it (calls made meanwhile can fail as well)
                    if i is not None:
                        resting.append((actor, time.monotonic() + PROBE_SECONDS, 0))
                    elif not isinstance(e, ray.exceptions.ActorDiedError) and tries < MAX_PROBES:
                        resting.append((actor, time.monotonic() + PROBE_SECONDS, tries))
                    else:
                        self.actors.remove(actor)
                    if i is None:
                        continue
                    if tries + 1 > self.max_retries:
                        yield i, UnitError(f"its worker died {tries + 1} times ({type(e).__name__})")
                    else:
                        print(f"ray: a worker died ({type(e).__name__}); unit {i} submitted again", file=self.log)
                        retry.append((i, unit, tries + 1))
                    continue
                if i is None:  # a probe: the worker is back (a new process: it may not find the model)
                    if out:
                        raise EngineError(out)
                    free.append(actor)
                    continue
                free.append(actor)
                status, value, node = out
                self.units_per_node[node] = self.units_per_node.get(node, 0) + 1
                if status == "fatal":
                    raise EngineError(value)
                yield i, (value if status == "ok" else UnitError(value))
        finally:
            for ref, (i, _, actor, tries) in inflight.items():
                if i is None:  # a probe: asked again by the next call
                    resting.append((actor, time.monotonic(), tries))
                    continue
                try:  # stopped early (Ctrl-C, an error): the units in flight are not waited for
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001 (a running actor call cannot always be cancelled; ignored)
                    pass

    def in_order(self, fn: Callable, units: Iterable) -> Iterator[object]:
        """fn(worker, unit), or a UnitError, of each unit in the units' order (those completed early wait
        here; the workers go on with the next units meanwhile)."""
        waiting, nxt = {}, 0
        results = self.unordered(fn, units)
        try:
            for i, res in results:
                waiting[i] = res
                while nxt in waiting:
                    yield waiting.pop(nxt)
                    nxt += 1
        finally:
            results.close()

    def ordered(self, fn: Callable, units: Iterable) -> Iterator[object]:
        """in_order, a unit that failed raising its EngineError when its turn comes."""
        results = self.in_order(fn, units)
        try:
            for res in results:
                if isinstance(res, UnitError):
                    raise EngineError(res.message)
                yield res
        finally:
            results.close()

    def close(self) -> None:
        if getattr(self, "units_per_node", None):
            spread = ", ".join(f"{n}: {c}" for n, c in sorted(self.units_per_node.items()))
            print(f"ray: units completed per node: {spread}", file=self.log)
            self.units_per_node = {}
        for a in getattr(self, "actors", ()):
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 (already gone)
                pass
        self.actors = []
        if self.started:
            self.ray.shutdown()
            self.started = False

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
