"""Prefill and decode speed, KV memory and peak RSS, optionally side by side with llama.cpp.

    python -m engine.bench --gguf model.gguf [--threads 2] [--reps 3] [--vs-llama-cpp] [--vs-build DIR]
                           [--json OUT]

Measured (random token ids, the same for every engine):
  prefill P     P tokens into an empty cache, logits of the last (P = --prefill, default 512,2048)
  decode D      --gen single-token steps (default 128), each returning the next token's logits,
                on top of a cache holding D tokens (D = --depths, default 0,4096,8192)
  decode D @ B  the same after the D-token cache was compressed to budget B (--budget, default 0.1; a
                comma list gives a case per budget) by --policy (default restkv) with the prefix
                schedule; our engine only
Each engine prefills every depth once and restores that state before each repetition (ours:
Session.copy_state_from; llama.cpp: save_state/load_state), so only the decode steps are timed.
With --vs-llama-cpp (needs llama-cpp-python: pip install '.[llama]') every measurement of ours is
followed by the same one of llama.cpp, in this process, alternating; the first round is a warm-up
and is discarded; the figures are medians of --reps rounds; ratios = ours / llama.cpp tokens/s (of the
medians; "per round" gives the lowest and highest ratio of one round's pair, a measure of drift).
With --vs-build DIR, another build of this engine (e.g. the commit before a change: `git worktree add
OLD COMMIT; pip install --no-deps --no-build-isolation --target DIR OLD`; or a source checkout with
its core built by cmake under build/, or BUILD:CHECKOUT as in PYTHONPATH) is measured the same way:
two builds of the package cannot share a process, so this build and that one each run in a worker
process of its own (the measuring code is this file's, sent to the worker; only the engine API that
every build since 166bd20 has), asked case by case over pipes, alternating as above (llama.cpp, if
asked too, stays in this process); "new/old" = this build / DIR's, its "per round" the lowest and
highest ratio of one round's pair. The same build on both sides measures the noise (an A/A run).
Peak RSS: each engine in a child process of its own (loads the model, opens a session of the
deepest context and fills it), as the resident memory of one process cannot be split.
Ctrl-C after at least one timed round: the report and --json of the rounds completed (marked
"partial": true), exit status 130.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.machinery
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

import numpy as np

from . import cli
from .errors import EngineError

# _ids, peak_rss, budgets_of, Ours, _rss_ours and _worker_main also run in --vs-build's worker processes, whose `engine`
# may be another build (an older one included): they use only the imports below (_WORKER_HEADER) and
# the engine API every build since 166bd20 has.


def machine_info(vs: bool) -> dict:
    """the CPU, the kernels this engine chose on it and, with --vs-llama-cpp, the features llama.cpp
    was built with: a ratio means little without them (llama.cpp uses AVX-512 where the CPU has it)"""
    import engine

    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "restkv_kernels": engine.cpu_features()}
    if vs:
        try:
            import llama_cpp

            info["llama_cpp"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
        except Exception:  # an older binding without it: the table still stands
            pass
    return info


def _ids(n_vocab: int, n: int, seed: int = 0) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(100 if n_vocab > 200 else 0, n_vocab, n)]


def budgets_of(budget) -> tuple:
    """--budget as a tuple: one number, or a sequence of them"""
    return tuple(float(b) for b in budget) if isinstance(budget, (list, tuple)) else (float(budget),)


class Ours:
    name = "restkv-engine"

    def __init__(self, gguf, threads, depths, gen, prefills, budget, policy):
        import engine

        self.model = engine.Model(gguf, n_threads=threads)
        self.gen, self.budgets, self.policy = gen, budgets_of(budget), policy
        self.prefill_sessions = {p: self.model.session(n_ctx=p, n_batch=512) for p in prefills}
        self.states = {}

    def prepare(self, depth, ids):
        """prefills `depth` tokens once; decode runs restore that state"""
        from engine import Eviction

        try:
            from engine.eviction import source_for
            gather = source_for([Eviction(policy=self.policy)])  # gathers what the policy needs
        except ImportError:  # a build before core v2 (--vs-build): h2o gathered every statistic
            gather = Eviction(policy="h2o", budget=1.0)
        n_ctx = depth + self.gen + 8
        src = self.model.session(n_ctx=n_ctx, n_batch=512)
        src.set_eviction(gather)
        if depth:
            src.eval(ids[:depth], logits=None)
        full = self.model.session(n_ctx=n_ctx, n_batch=512)
        comp = {}  # a session per budget
        for b in self.budgets:
            comp[b] = self.model.session(n_ctx=n_ctx, n_batch=512)
            comp[b].set_eviction(Eviction(policy=self.policy, budget=b))
        self.states[depth] = (src, full, comp)

    def prefill(self, ids):
        s = self.prefill_sessions[len(ids)]
        s.reset()
        t = time.perf_counter()
        s.eval(ids, logits="last")
        return len(ids) / (time.perf_counter() - t)

    def decode(self, depth, ids, compressed=False):
        """compressed: False (the full cache) or the budget to compress to (True: the first)"""
        src, full, comp = self.states[depth]
        s = full if compressed is False else comp[self.budgets[0] if compressed is True else compressed]
        s.copy_state_from(src)
        if compressed:
            s.compress()
        self.kv_bytes = s.kv_bytes_used
        t = time.perf_counter()
        for tok in ids[:self.gen]:
            s.eval([tok], logits="last")
        return self.gen / (time.perf_counter() - t)

    def close(self):
        self.model.close()


class LlamaCpp:
    name = "llama.cpp"

    def __init__(self, gguf, threads, depths, gen, prefills):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise EngineError("--vs-llama-cpp needs llama-cpp-python: pip install '.[llama]'") from None
        self.gen = gen
        mk = lambda n_ctx: Llama(model_path=gguf, n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=threads,  # noqa
                                 n_threads_batch=threads, verbose=False)
        self.llms = {p: mk(p) for p in prefills}
        self.deep = {}
        self.states = {}
        self._mk = mk

    def prepare(self, depth, ids):
        llm = self._mk(depth + self.gen + 8)
        llm.reset()
        if depth:
            llm.eval(ids[:depth])
        self.deep[depth] = llm
        self.states[depth] = llm.save_state()

    def prefill(self, ids):
        llm = self.llms[len(ids)]
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        return len(ids) / (time.perf_counter() - t)

    def decode(self, depth, ids, compressed=False):
        llm = self.deep[depth]
        llm.load_state(self.states[depth])
        t = time.perf_counter()
        for tok in ids[:self.gen]:
            llm.eval([tok])
        return self.gen / (time.perf_counter() - t)

    def close(self):
        for llm in list(self.llms.values()) + list(self.deep.values()):
            llm.close()


# ---------------------------------------------------------------- peak RSS, one process per engine

def rss_probe(engine_name: str, gguf: str, threads: int, n_ctx: int, fill: int) -> dict:
    if engine_name == "ours":
        return _rss_ours(gguf, threads, n_ctx, fill)
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    llm.eval(_ids(llm.n_vocab(), fill))
    return {"peak_rss_bytes": peak_rss(), "kv_bytes_alloc": None, "n_ctx": n_ctx, "filled": fill}


def _rss_ours(gguf: str, threads: int, n_ctx: int, fill: int) -> dict:
    import engine

    m = engine.Model(gguf, n_threads=threads)
    with m.session(n_ctx=n_ctx, n_batch=512) as s:
        s.eval(_ids(m.n_vocab, fill), logits="last")
        kv = s.kv_bytes_alloc
    return {"peak_rss_bytes": peak_rss(), "kv_bytes_alloc": kv, "n_ctx": n_ctx, "filled": fill}


def peak_rss() -> int:
    """This process image's peak resident memory. Not getrusage's ru_maxrss: Linux carries that over
    fork and exec, so a child started by a big parent would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _probe_child(which: str, gguf: str, threads: int, n_ctx: int, fill: int) -> Optional[dict]:
    cmd = [sys.executable, "-m", "engine.bench", "--rss-probe", which, "--gguf", gguf, "--threads", str(threads),
           "--rss-ctx", str(n_ctx), "--rss-fill", str(fill)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        print(f"bench: RSS probe of {which} failed: {r.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- --vs-build: each build in a worker process

def build_path(spec: str) -> list[str]:
    """The sys.path entries that import the build named by --vs-build: a folder holding both the engine
    package and its compiled core _restkv_ffi (`pip install --target DIR .`); a source checkout whose
    core was built by cmake in exactly one folder under DIR/build; or folders separated by os.pathsep, as
    in PYTHONPATH (CHECKOUT/build/dev:CHECKOUT). A cli.UsageError says what is missing."""
    parts = [os.path.abspath(p) for p in spec.split(os.pathsep) if p]
    if not parts:
        raise cli.UsageError("--vs-build: expected a folder")
    for p in parts:
        if not os.path.isdir(p):
            raise cli.UsageError(f"--vs-build {spec}: {p} is not a folder" if os.path.exists(p)
                                 else f"--vs-build {spec}: no such folder {p}")
    if not any(os.path.isfile(os.path.join(p, "engine", "__init__.py")) for p in parts):
        raise cli.UsageError(f"--vs-build {spec}: no engine package (engine/__init__.py) there; expected a "
                             "`pip install --target` folder, a source checkout built under its build/, or "
                             f"BUILD{os.pathsep}CHECKOUT")

    def cores(pattern: str, suffixes: list[str]) -> list[str]:
        return [f for s in suffixes for f in glob.glob(os.path.join(pattern, "_restkv_ffi" + s))]

    if any(cores(glob.escape(p), importlib.machinery.all_suffixes()) for p in parts):
        return parts
    if len(parts) == 1:  # a source checkout: its compiled core in a cmake build folder
        found = sorted({os.path.dirname(f) for f in cores(os.path.join(glob.escape(parts[0]), "build", "*"),
                                                           importlib.machinery.EXTENSION_SUFFIXES)})
        if len(found) == 1:
            return found + parts
        if found:
            names = [os.path.basename(f) for f in found]
            raise cli.UsageError(f"--vs-build {spec}: {len(found)} builds of the compiled core under "
                                 f"{parts[0]}/build ({', '.join(names)}); name one: --vs-build "
                                 f"{os.path.join(parts[0], 'build', 'NAME')}{os.pathsep}{parts[0]}")
    raise cli.UsageError(f"--vs-build {spec}: an engine package but no compiled core (_restkv_ffi) there; build "
                         "it (pip install --target DIR CHECKOUT, or cmake into CHECKOUT/build/NAME) or add its "
                         f"folder: BUILD{os.pathsep}CHECKOUT")


def this_build() -> tuple[list[str], dict]:
    """The sys.path entries that import the build this process runs (the package's folder and its compiled
    core's, in this process's order, which found them) and the files they must import."""
    import _restkv_ffi

    expect = {"engine": os.path.dirname(os.path.abspath(__file__)), "core": os.path.abspath(_restkv_ffi.__file__)}
    dirs = list(dict.fromkeys([os.path.dirname(expect["engine"]), os.path.dirname(expect["core"])]))
    here = [os.path.abspath(p or ".") for p in sys.path]
    dirs.sort(key=lambda d: here.index(d) if d in here else len(here))
    return dirs, expect


def _worker_main() -> None:
    """A worker: imports the engine found first on the paths of argv[1] (JSON: [paths, the files
    expected or null]), says which it got (one line), then answers JSON-line requests on stdin (load,
    prepare, prefill, decode, rss), one reply line each; ends at the end of its input. Ctrl-C is the
    parent's (it then kills the worker)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the engine prints goes to stderr, not into the replies
    sys.stdout = sys.stderr

    def send(**kw):
        reply.write(json.dumps(kw) + "\n")
        reply.flush()

    paths, expect = json.loads(sys.argv[1])
    cwd = os.getcwd()  # `python -c` looks in the working folder first, which may hold another engine
    sys.path[:] = paths + [p for p in sys.path if p and os.path.abspath(p) != cwd]
    where = os.pathsep.join(paths)
    try:
        import _restkv_ffi

        import engine

        got = {"engine": os.path.dirname(os.path.abspath(engine.__file__)),
               "core": os.path.abspath(_restkv_ffi.__file__)}
        for k, f in got.items():  # (a folder of symbolic links to a build is one too)
            if expect and os.path.realpath(f) != os.path.realpath(expect[k]) or not expect and not any(
                    f.startswith(os.path.join(os.path.abspath(p), "")) for p in paths):
                raise ImportError(f"{k} {f} imported, not the one {'expected' if expect else 'there'}")
        hello = {**got, "policies": engine.policies(), "cpu": engine.cpu_features(),
                 "version": getattr(engine, "__version__", None)}
    except BaseException as e:
        send(ok=False, error=f"cannot import an engine build from {where}: {type(e).__name__}: {e}")
        return
    send(ok=True, **hello)
    eng = None
    for line in sys.stdin:
        req = json.loads(line)
        op = req.pop("op")
        try:
            if op == "load":
                eng = Ours(**req)
                send(ok=True, n_vocab=eng.model.n_vocab)
            elif op == "prepare":
                eng.prepare(req["depth"], req["ids"])
                send(ok=True)
            elif op == "prefill":
                send(ok=True, tok_s=eng.prefill(req["ids"]))
            elif op == "decode":
                send(ok=True, tok_s=eng.decode(req["depth"], req["ids"], req["compressed"]), kv_bytes=eng.kv_bytes)
            elif op == "rss":
                send(ok=True, **_rss_ours(**req))
            else:
                send(ok=False, error=f"unknown request {op!r}")
        except Exception as e:
            send(ok=False, error=f"{op}: {type(e).__name__}: {e}")
    if eng is not None:
        eng.close()


_WORKER_HEADER = """\
from __future__ import annotations
import json, os, resource, sys, time
import numpy as np
"""


# a worker's command line: its code comes as the first line of its input (a JSON string)
_WORKER_BOOT = "import json, sys; exec(compile(json.loads(sys.stdin.readline()), '<engine.bench worker>', 'exec'))"


def _worker_source() -> str:
    parts = (_ids, peak_rss, budgets_of, Ours, _rss_ours, _worker_main)
    return _WORKER_HEADER + "\n\n".join(inspect.getsource(f) for f in parts) + "\n_worker_main()\n"


class Worker:
    """One build of this engine in a child process of its own, measured as Ours measures in-process
    (the same code, sent to the child): --vs-build runs this build and the other one each in a Worker.
    Its requests and replies are JSON lines on its stdin and stdout; what it prints goes to a file whose
    tail the error names if it dies."""

    def __init__(self, paths: list[str], label: str, expect: Optional[dict] = None):
        """paths: sys.path entries, first; expect: the engine folder and core file they must import
        (else: any under paths)."""
        self.paths, self.label, self.kv_bytes = paths, label, None
        self._err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER_BOOT, json.dumps([paths, expect])],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True)
        try:
            self.proc.stdin.write(json.dumps(_worker_source()) + "\n")  # its code: the first line of its input
            self.proc.stdin.flush()
        except OSError:
            pass  # died at once: the reply below says how
        line = self.proc.stdout.readline()
        if not line:  # died before saying which engine it imported
            msg = f"cannot import an engine build from {os.pathsep.join(paths)}: its worker process {self._death()}"
            self.close()
            if label == "this build":
                raise EngineError(msg)
            raise cli.UsageError(f"{label}: {msg}")
        self.hello = json.loads(line)
        if not self.hello["ok"]:
            self.close()
            if label == "this build":
                raise EngineError(self.hello["error"])
            raise cli.UsageError(f"{label}: {self.hello['error']}")
        with open(self.hello["core"], "rb") as f:
            self.hello["core_sha256"] = hashlib.sha256(f.read()).hexdigest()[:16]

    def _died(self) -> EngineError:
        return EngineError(f"the worker process of {self.label} ({os.pathsep.join(self.paths)}) {self._death()}")

    def _death(self) -> str:
        """'died (how): the last lines it wrote on stderr', once it has ended"""
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._err.seek(0)
        lines = [ln.strip() for ln in self._err.read().decode(errors="replace").splitlines() if ln.strip()]
        tail = " | ".join(lines[-3:])[-600:] or "nothing on stderr"
        how = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
        return f"died ({how}): {tail}"

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise self._died()
        return json.loads(line)

    def call(self, op: str, **kw) -> dict:
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died() from None
        rep = self._reply()
        if not rep.pop("ok"):
            raise EngineError(f"{self.label} ({os.pathsep.join(self.paths)}): {rep['error']}")
        return rep

    def check_policy(self, policy: str) -> None:
        if policy not in self.hello["policies"]:
            raise cli.UsageError(f"--policy {policy}: {self.label} ({os.pathsep.join(self.paths)}) has no such "
                                 f"policy (it has {', '.join(self.hello['policies'])})")

    def load(self, gguf, threads, depths, gen, prefills, budget, policy) -> int:
        self.check_policy(policy)
        return self.call("load", gguf=gguf, threads=threads, depths=list(depths), gen=gen, prefills=list(prefills),
                         budget=budget, policy=policy)["n_vocab"]

    def prepare(self, depth, ids):
        self.call("prepare", depth=depth, ids=ids[:depth])

    def prefill(self, ids):
        return self.call("prefill", ids=ids)["tok_s"]

    def decode(self, depth, ids, compressed=False):
        rep = self.call("decode", depth=depth, ids=ids, compressed=compressed)
        self.kv_bytes = rep["kv_bytes"]
        return rep["tok_s"]

    def close(self, kill: bool = False):
        """Ends the worker: at the end of its input, or at once (kill: after Ctrl-C, it may be busy)."""
        if self.proc.poll() is None:
            if not kill:
                try:
                    self.proc.stdin.close()
                    self.proc.wait(timeout=60)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            if self.proc.poll() is None:
                self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self._err):
            try:
                f.close()
            except OSError:
                pass

    def build(self) -> dict:
        """What this worker imported: the sys.path entries, the engine package, its core and its digest."""
        return {"path": self.paths, "engine": self.hello["engine"], "core": self.hello["core"],
                "core_sha256": self.hello["core_sha256"], "cpu": self.hello["cpu"]}


def _probe_worker(paths: list[str], label: str, gguf: str, threads: int, n_ctx: int, fill: int,
                  expect: Optional[dict] = None) -> Optional[dict]:
    """Peak RSS of a build in a fresh worker of its own (as _probe_child for the in-process build)."""
    w = None
    try:
        w = Worker(paths, label, expect)
        return w.call("rss", gguf=gguf, threads=threads, n_ctx=n_ctx, fill=fill)
    except EngineError as e:
        print(f"bench: RSS probe of {label} failed: {e}", file=sys.stderr)
        return None
    finally:
        if w is not None:
            w.close()


# ---------------------------------------------------------------- the run

def check_args(gguf: str, threads: int, reps: int, gen: int, budget, policy: str) -> None:
    """Everything run() would refuse, checked before any work."""
    from .perplexity import check_policy

    cli.check_input(gguf, "--gguf")
    if reps < 1 or gen < 1 or threads < 1:
        raise EngineError("--reps, --gen and --threads must be >= 1")
    check_policy(policy)
    for b in budgets_of(budget):
        cli.check_budget(b)


def run(gguf: str, threads: Optional[int] = None, reps: int = 3, vs: bool = False, prefills=(512, 2048),
        depths=(0, 4096, 8192), gen: int = 128, budget=0.1, policy: str = "restkv", rss: bool = True,
        log=None, vs_build: Optional[str] = None) -> dict:
    """threads: None = the cores available to the process. vs_build: another build of this engine (see
    build_path), measured alongside; this build and that one then each run in a Worker process. Ctrl-C
    after a timed round raises engine.cli.Interrupted with the report of the rounds completed (None before)."""
    log = log or sys.stderr
    threads = threads or cli.available_cores()  # an explicit count, the same for llama.cpp
    check_args(gguf, threads, reps, gen, budget, policy)
    old_path = build_path(vs_build) if vs_build else None
    # (key, engine), in the order each case measures them
    engines: list = []
    builds = None
    interrupted = False
    try:
        if vs_build:
            old = Worker(old_path, "--vs-build")  # first: a DIR that does not import fails at once
            engines.append(("old", old))
            new_path, new_files = this_build()
            ours = Worker(new_path, "this build", new_files)
            engines.insert(0, ("ours", ours))
            old.check_policy(policy)
            n_vocab = ours.load(gguf, threads, depths, gen, prefills, budget, policy)
            if old.load(gguf, threads, depths, gen, prefills, budget, policy) != n_vocab:
                raise EngineError(f"--vs-build {vs_build}: the two builds read a different vocabulary size")
            builds = {"new": ours.build(), "old": old.build()}
        else:
            ours = Ours(gguf, threads, depths, gen, prefills, budget, policy)
            engines.append(("ours", ours))
            n_vocab = ours.model.n_vocab
        if vs:
            engines.append(("llama.cpp", LlamaCpp(gguf, threads, depths, gen, prefills)))
        keys = [k for k, _ in engines]
        deepest = max(depths)
        ids = _ids(n_vocab, max(max(prefills), deepest) + gen)
        t0 = time.time()
        for d in depths:
            print(f"bench: prefilling depth {d} once per engine", file=log, flush=True)
            for _, eng in engines:
                eng.prepare(d, ids)
        cases = [(f"prefill {p}", "prefill", p, False) for p in prefills]
        cases += [(f"decode {gen} @ depth {d}", "decode", d, False) for d in depths]
        cases += [(f"decode {gen} @ depth {d}, {policy} {b:g}", "decode", d, b) for d in depths if d
                  for b in budgets_of(budget)]
        samples = {c[0]: {k: [] for k in keys} for c in cases}
        kv = {k: {} for k in ("ours", "old")}
        done = 0  # timed rounds completed
        report = lambda n: _report(gguf, threads, n, gen, budget, policy, vs, cases, samples, kv, t0,  # noqa
                                   vs_build, builds)
        try:
            for rnd in range(reps + 1):
                # a round's samples are kept only once it is complete (an interruption leaves whole rounds)
                got = {c[0]: {k: [] for k in keys} for c in cases}
                for label, kind, n, comp in cases:
                    for key, eng in engines:
                        if comp is not False and key == "llama.cpp":
                            continue
                        if kind == "prefill":
                            v = eng.prefill(ids[:n])
                        else:
                            v = eng.decode(n, ids[n:n + gen], compressed=comp)
                            if key in kv:
                                kv[key][label] = eng.kv_bytes
                        got[label][key].append(v)
                if rnd:  # round 0 warms caches and thread pools up
                    for label in got:
                        for key in got[label]:
                            samples[label][key] += got[label][key]
                    done = rnd
                print(f"bench: round {rnd}/{reps}{' (warm-up)' if rnd == 0 else ''} done", file=log, flush=True)
        except KeyboardInterrupt:
            interrupted = True
            partial = None
            if done:
                partial = report(done)
                partial["reps_asked"] = reps
            raise cli.Interrupted(partial, done, reps, "timed rounds") from None
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        for _, eng in engines:
            eng.close(kill=True) if interrupted and isinstance(eng, Worker) else eng.close()
    out = report(reps)
    if rss:
        n_ctx = deepest + gen + 8
        try:
            if vs_build:  # both builds the same way: a fresh worker each
                out["rss"] = {"n_ctx": n_ctx,
                              "ours": _probe_worker(new_path, "this build", gguf, threads, n_ctx, deepest, new_files),
                              "old": _probe_worker(old_path, "--vs-build", gguf, threads, n_ctx, deepest)}
            else:
                out["rss"] = {"n_ctx": n_ctx, "ours": _probe_child("ours", gguf, threads, n_ctx, deepest)}
            if vs:
                out["rss"]["llama.cpp"] = _probe_child("llama", gguf, threads, n_ctx, deepest)
        except KeyboardInterrupt:
            out.pop("rss", None)
            raise cli.Interrupted(out, reps, reps, "timed rounds (peak RSS not measured)") from None
    return out


def _ratios(ours: list, theirs: list) -> tuple[Optional[float], list, Optional[list]]:
    """ratio of the medians, the ratio of each round's pair (measured one after the other: shows how much
    the machine drifted) and the lowest and highest of those"""
    if not ours or not theirs:
        return None, [], None
    rounds = [round(a / b, 3) for a, b in zip(ours, theirs)]
    return round(statistics.median(ours) / statistics.median(theirs), 3), rounds, [min(rounds), max(rounds)]


def _report(gguf, threads, reps, gen, budget, policy, vs, cases, samples, kv, t0, vs_build=None, builds=None) -> dict:
    """The figures of the rounds in `samples`: medians, ratios, the samples themselves."""
    rows = []
    for label, kind, n, comp in cases:
        s = samples[label]
        o = statistics.median(s["ours"])
        # a compressed decode is compared with llama.cpp's full-cache decode at the same depth
        theirs = samples[f"decode {gen} @ depth {n}" if comp is not False else label].get("llama.cpp", [])
        ratio, rounds, spread = _ratios(s["ours"], theirs)
        row = {"case": label, "ours_tok_s": round(o, 1),
               "llama_cpp_tok_s": round(statistics.median(theirs), 1) if theirs else None,
               "ratio": ratio, "round_ratios": rounds}
        if vs:
            row["ratio_spread"] = spread
        row["kv_bytes"] = kv["ours"].get(label)
        if vs_build:
            r_old, rounds_old, spread_old = _ratios(s["ours"], s["old"])
            row.update({"old_tok_s": round(statistics.median(s["old"]), 1), "ratio_vs_old": r_old,
                        "round_ratios_vs_old": rounds_old, "ratio_vs_old_spread": spread_old,
                        "old_kv_bytes": kv["old"].get(label), "old_samples": s["old"]})
        row.update({"ours_samples": s["ours"], "llama_cpp_samples": s.get("llama.cpp", [])})
        rows.append(row)
    bs = budgets_of(budget)
    out = {"model": gguf, "threads": threads, "reps": reps, "gen": gen, "budget": bs[0] if len(bs) == 1 else list(bs),
           "budgets": list(bs), "policy": policy,
           "vs_llama_cpp": vs, "vs_build": vs_build, "machine": machine_info(vs)}
    if builds:
        out["builds"] = builds
    out.update({"rows": rows, "seconds": round(time.time() - t0, 1)})
    return out


def print_report(res: dict, file=None) -> None:
    file = file or sys.stdout
    vs, ab = res["vs_llama_cpp"], res.get("vs_build")
    with_ = " and ".join((["the build in --vs-build"] if ab else []) + (["llama.cpp"] if vs else []))
    print(f"\nmodel {os.path.basename(res['model'])}, {res['threads']} threads, median of {res['reps']} rounds "
          f"after a warm-up{', alternating with ' + with_ if with_ else ''}", file=file)
    mi = res.get("machine") or {}
    if mi:
        print(f"cpu: {mi.get('cpu')}; restkv-engine kernels: {mi.get('restkv_kernels')}", file=file)
        if mi.get("llama_cpp"):
            print(f"llama.cpp: {mi['llama_cpp']}", file=file)
    if ab:
        for k, b in res.get("builds", {}).items():
            print(f"{k}: {b['engine']} (core {os.path.basename(b['core'])} sha256 {b['core_sha256']}), "
                  f"a worker process", file=file)
    spread = lambda s: f"{s[0]:.2f}-{s[1]:.2f}" if s else ""  # noqa
    head = "| case |" + (" new tok/s | old tok/s | new/old | per round |" if ab else " restkv-engine tok/s |")
    if vs:
        head += " llama.cpp tok/s |" + (" new/llama.cpp |" if ab else " ratio |") + " per round |"
    head += " KV in use |"
    print(head, file=file)
    print("|" + "---|" * (head.count("|") - 1), file=file)
    for r in res["rows"]:
        kv = f"{r['kv_bytes'] / 2**20:.1f} MiB" if r["kv_bytes"] is not None else ""
        cells = [r["case"], f"{r['ours_tok_s']:.1f}"]
        if ab:
            cells += [f"{r['old_tok_s']:.1f}", f"{r['ratio_vs_old']:.3f}x", spread(r["ratio_vs_old_spread"])]
        if vs:
            cells += [f"{r['llama_cpp_tok_s']:.1f}" if r["llama_cpp_tok_s"] else "",
                      f"{r['ratio']:.2f}x" if r["ratio"] else "",
                      spread(r.get("ratio_spread") or (r["round_ratios"] and
                                                       [min(r["round_ratios"]), max(r["round_ratios"])]))]
        print("| " + " | ".join(cells + [kv]) + " |", file=file)
    if "rss" in res:
        r = res["rss"]
        names = {"ours": "new", "old": "old"} if ab else {}
        parts = [f"{names.get(name, name)} {v['peak_rss_bytes'] / 2**20:.0f} MiB" for name, v in r.items()
                 if isinstance(v, dict) and v]
        print(f"peak RSS, context {r['n_ctx']} filled: " + ", ".join(parts), file=file)
    print(f"({res['seconds']:.0f} s)", file=file)


def _ints(text: str, what: str, least: int = 0) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise EngineError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < least:
        raise EngineError(f"{what}: expected integers >= {least}, got {text!r}")
    return vals


def main(argv: Optional[list[str]] = None) -> int:
    ap = cli.Parser("python -m engine.bench", __doc__.split("\n\n")[0],
                    epilog="\n".join(__doc__.strip().split("\n")[2:]) + "\n\n" + _policies_help())
    ap.add_argument("--gguf", "-m", required=True, help="path to the GGUF model file")
    ap.add_argument("--threads", "-t", type=int, default=None,
                    help="threads for both engines (default: all cores available to the process, as the other "
                         "tools; the README's figures use 2 on a 2-core machine)")
    ap.add_argument("--reps", type=cli.count, default=3, help="timed rounds after the warm-up (default 3)")
    ap.add_argument("--vs-llama-cpp", action="store_true", help="measure llama.cpp alongside (llama-cpp-python)")
    ap.add_argument("--vs-build", metavar="DIR",
                    help="measure another build of this engine alongside, e.g. an older commit: a `pip install "
                         "--no-deps --target DIR CHECKOUT` folder, a source checkout whose core was built (cmake) "
                         f"in one folder under DIR/build, or BUILD{os.pathsep}CHECKOUT as in PYTHONPATH; each build "
                         "then runs in a worker process of its own; ratios new/old (new = this build)")
    ap.add_argument("--prefill", default="512,2048", help="prompt lengths to prefill (default 512,2048)")
    ap.add_argument("--depths", default="0,4096,8192", help="cache depths to decode at (default 0,4096,8192)")
    ap.add_argument("--gen", type=cli.count, default=128, help="decode steps per measurement (default 128)")
    ap.add_argument("--budget", default="0.1",
                    help="KV budget of the compressed decode, or a comma list of budgets, a case each (fractions "
                         "in (0, 1) or token counts; default 0.1)")
    ap.add_argument("--policy", default="restkv", help="policy of the compressed decode (default restkv)")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS child processes")
    ap.add_argument("--json", dest="json_out",
                    help="also write every figure as JSON to this file (after Ctrl-C: the rounds completed, "
                         "marked \"partial\": true)")
    ap.add_argument("--rss-probe", choices=("ours", "llama"), help=argparse.SUPPRESS)
    ap.add_argument("--rss-ctx", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--rss-fill", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    return cli.run(lambda: _main(a))


def _policies_help() -> str:
    from .eviction import policy_help
    from .perplexity import EXIT_HELP

    return (policy_help(options=False) + "\n(the compressed decode uses each policy's default parameters)\n\n"
            + EXIT_HELP)


def _main(a) -> int:
    if a.rss_probe:
        print(json.dumps(rss_probe(a.rss_probe, a.gguf, a.threads, a.rss_ctx, a.rss_fill)))
        return 0
    with cli.preflight():
        threads = cli.check_threads(a.threads) or cli.available_cores()
        cli.check_output(a.json_out)
        prefills, depths = _ints(a.prefill, "--prefill", 1), _ints(a.depths, "--depths")
        budgets = tuple(cli.check_budget(x.strip()) for x in a.budget.split(","))
        check_args(a.gguf, threads, a.reps, a.gen, budgets, a.policy)
        if a.vs_build is not None:
            build_path(a.vs_build)
    try:
        res = run(a.gguf, threads, a.reps, a.vs_llama_cpp, prefills, depths, a.gen,
                  budgets[0] if len(budgets) == 1 else budgets, a.policy, not a.no_rss,
                  vs_build=a.vs_build)
    except cli.Interrupted as e:
        if e.result is not None:
            print_report(e.result)
        return cli.interrupted(e, a.json_out)
    print_report(res)
    if a.json_out:
        cli.write_json(a.json_out, res, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
