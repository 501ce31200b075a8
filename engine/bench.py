"""Prefill and decode speed, KV memory and peak RSS, optionally side by side with llama.cpp.

    python -m engine.bench --gguf model.gguf [--threads 2] [--reps 3] [--vs-llama-cpp] [--json OUT]

Measured (random token ids, the same for both engines):
  prefill P     P tokens into an empty cache, logits of the last (P = --prefill, default 512,2048)
  decode D      --gen single-token steps (default 128), each returning the next token's logits,
                on top of a cache holding D tokens (D = --depths, default 0,4096,8192)
  decode D @ B  the same after the D-token cache was compressed to budget B (--budget, default 0.1)
                by --policy (default restkv) with the prefix schedule; our engine only
Each engine prefills every depth once and restores that state before each repetition (ours:
Session.copy_state_from; llama.cpp: save_state/load_state), so only the decode steps are timed.
With --vs-llama-cpp (needs llama-cpp-python: pip install '.[llama]') every measurement of ours is
followed by the same one of llama.cpp, in this process, alternating; the first round is a warm-up
and is discarded; the figures are medians of --reps rounds; ratios = ours / llama.cpp tokens/s (of the
medians; "per round" gives the lowest and highest ratio of one round's pair, a measure of drift).
Peak RSS: each engine in a child process of its own (loads the model, opens a session of the
deepest context and fills it), as the resident memory of one process cannot be split.
Ctrl-C after at least one timed round: the report and --json of the rounds completed (marked
"partial": true), exit status 130.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Optional

import numpy as np

from . import cli
from .errors import EngineError


def _ids(n_vocab: int, n: int, seed: int = 0) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(100 if n_vocab > 200 else 0, n_vocab, n)]


class Ours:
    name = "restkv-engine"

    def __init__(self, gguf, threads, depths, gen, prefills, budget, policy):
        import engine

        self.model = engine.Model(gguf, n_threads=threads)
        self.gen, self.budget, self.policy = gen, budget, policy
        self.prefill_sessions = {p: self.model.session(n_ctx=p, n_batch=512) for p in prefills}
        self.states = {}

    def prepare(self, depth, ids):
        """prefills `depth` tokens once; decode runs restore that state"""
        from engine import Eviction
        from engine.eviction import source_for

        n_ctx = depth + self.gen + 8
        src = self.model.session(n_ctx=n_ctx, n_batch=512)
        src.set_eviction(source_for([Eviction(policy=self.policy)]))  # gathers what the policy needs
        if depth:
            src.eval(ids[:depth], logits=None)
        full = self.model.session(n_ctx=n_ctx, n_batch=512)
        comp = self.model.session(n_ctx=n_ctx, n_batch=512)
        comp.set_eviction(Eviction(policy=self.policy, budget=self.budget))
        self.states[depth] = (src, full, comp)

    def prefill(self, ids):
        s = self.prefill_sessions[len(ids)]
        s.reset()
        t = time.perf_counter()
        s.eval(ids, logits="last")
        return len(ids) / (time.perf_counter() - t)

    def decode(self, depth, ids, compressed=False):
        src, full, comp = self.states[depth]
        s = comp if compressed else full
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
    ids = None
    if engine_name == "ours":
        import engine

        m = engine.Model(gguf, n_threads=threads)
        ids = _ids(m.n_vocab, fill)
        with m.session(n_ctx=n_ctx, n_batch=512) as s:
            s.eval(ids, logits="last")
            kv = s.kv_bytes_alloc
    else:
        from llama_cpp import Llama

        llm = Llama(model_path=gguf, n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=threads,
                    n_threads_batch=threads, verbose=False)
        ids = _ids(llm.n_vocab(), fill)
        llm.eval(ids)
        kv = None
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


# ---------------------------------------------------------------- the run

def check_args(gguf: str, threads: int, reps: int, gen: int, budget: float, policy: str) -> None:
    """Everything run() would refuse, checked before any work."""
    from .perplexity import check_policy

    cli.check_input(gguf, "--gguf")
    if reps < 1 or gen < 1 or threads < 1:
        raise EngineError("--reps, --gen and --threads must be >= 1")
    check_policy(policy)
    cli.check_budget(budget)


def run(gguf: str, threads: Optional[int] = None, reps: int = 3, vs: bool = False, prefills=(512, 2048),
        depths=(0, 4096, 8192), gen: int = 128, budget: float = 0.1, policy: str = "restkv", rss: bool = True,
        log=None) -> dict:
    """threads: None = the cores available to the process. Ctrl-C after a timed round raises
    engine.cli.Interrupted with the report of the rounds completed (None before)."""
    log = log or sys.stderr
    threads = threads or cli.available_cores()  # an explicit count, the same for llama.cpp
    check_args(gguf, threads, reps, gen, budget, policy)
    ours = Ours(gguf, threads, depths, gen, prefills, budget, policy)
    other = LlamaCpp(gguf, threads, depths, gen, prefills) if vs else None
    n_vocab = ours.model.n_vocab
    deepest = max(depths)
    ids = _ids(n_vocab, max(max(prefills), deepest) + gen)
    t0 = time.time()
    for d in depths:
        print(f"bench: prefilling depth {d} once per engine", file=log, flush=True)
        ours.prepare(d, ids)
        if other:
            other.prepare(d, ids)
    cases = [(f"prefill {p}", "prefill", p, False) for p in prefills]
    cases += [(f"decode {gen} @ depth {d}", "decode", d, False) for d in depths]
    cases += [(f"decode {gen} @ depth {d}, {policy} {budget:g}", "decode", d, True) for d in depths if d]
    samples = {c[0]: {"ours": [], "llama.cpp": []} for c in cases}
    kv = {}
    done = 0  # timed rounds completed
    try:
        for rnd in range(reps + 1):
            # a round's samples are kept only once it is complete (an interruption leaves whole rounds)
            got = {c[0]: {"ours": [], "llama.cpp": []} for c in cases}
            for label, kind, n, comp in cases:
                for eng, key in ((ours, "ours"), (other, "llama.cpp")):
                    if eng is None or (comp and eng is other):
                        continue
                    if kind == "prefill":
                        v = eng.prefill(ids[:n])
                    else:
                        v = eng.decode(n, ids[n:n + gen], compressed=comp)
                        if eng is ours:
                            kv[label] = ours.kv_bytes
                    got[label][key].append(v)
            if rnd:  # round 0 warms caches and thread pools up
                for label in got:
                    for key in got[label]:
                        samples[label][key] += got[label][key]
                done = rnd
            print(f"bench: round {rnd}/{reps}{' (warm-up)' if rnd == 0 else ''} done", file=log, flush=True)
    except KeyboardInterrupt:
        ours.close()
        if other:
            other.close()
        partial = None
        if done:
            partial = _report(gguf, threads, done, gen, budget, policy, vs, cases, samples, kv, t0)
            partial["reps_asked"] = reps
        raise cli.Interrupted(partial, done, reps, "timed rounds") from None
    ours.close()
    if other:
        other.close()
    out = _report(gguf, threads, reps, gen, budget, policy, vs, cases, samples, kv, t0)
    if rss:
        n_ctx = deepest + gen + 8
        try:
            out["rss"] = {"n_ctx": n_ctx, "ours": _probe_child("ours", gguf, threads, n_ctx, deepest)}
            if vs:
                out["rss"]["llama.cpp"] = _probe_child("llama", gguf, threads, n_ctx, deepest)
        except KeyboardInterrupt:
            out.pop("rss", None)
            raise cli.Interrupted(out, reps, reps, "timed rounds (peak RSS not measured)") from None
    return out


def _report(gguf, threads, reps, gen, budget, policy, vs, cases, samples, kv, t0) -> dict:
    """The figures of the rounds in `samples`: medians, ratios, the samples themselves."""
    rows = []
    for label, kind, n, comp in cases:
        o = statistics.median(samples[label]["ours"])
        ll = statistics.median(samples[label]["llama.cpp"]) if samples[label]["llama.cpp"] else None
        # a compressed decode is compared with llama.cpp's full-cache decode at the same depth
        theirs = samples[f"decode {gen} @ depth {n}" if comp else label]["llama.cpp"]
        if comp and vs:
            ll = statistics.median(theirs)
        # the same round's pair, measured one after the other: shows how much the machine drifted
        rounds = [round(a / b, 3) for a, b in zip(samples[label]["ours"], theirs)]
        rows.append({"case": label, "ours_tok_s": round(o, 1), "llama_cpp_tok_s": round(ll, 1) if ll else None,
                     "ratio": round(o / ll, 3) if ll else None, "round_ratios": rounds, "kv_bytes": kv.get(label),
                     "ours_samples": samples[label]["ours"], "llama_cpp_samples": samples[label]["llama.cpp"]})
    return {"model": gguf, "threads": threads, "reps": reps, "gen": gen, "budget": budget, "policy": policy,
            "vs_llama_cpp": vs, "rows": rows, "seconds": round(time.time() - t0, 1)}


def print_report(res: dict, file=None) -> None:
    file = file or sys.stdout
    vs = res["vs_llama_cpp"]
    print(f"\nmodel {os.path.basename(res['model'])}, {res['threads']} threads, median of {res['reps']} rounds "
          f"after a warm-up{', alternating with llama.cpp' if vs else ''}", file=file)
    head = ("| case | restkv-engine tok/s |" + (" llama.cpp tok/s | ratio | per round |" if vs else "")
            + " KV in use |")
    print(head, file=file)
    print("|" + "---|" * (head.count("|") - 1), file=file)
    for r in res["rows"]:
        kv = f"{r['kv_bytes'] / 2**20:.1f} MiB" if r["kv_bytes"] is not None else ""
        cells = [r["case"], f"{r['ours_tok_s']:.1f}"]
        if vs:
            cells += [f"{r['llama_cpp_tok_s']:.1f}" if r["llama_cpp_tok_s"] else "",
                      f"{r['ratio']:.2f}x" if r["ratio"] else "",
                      f"{min(r['round_ratios']):.2f}-{max(r['round_ratios']):.2f}" if r.get("round_ratios") else ""]
        print("| " + " | ".join(cells + [kv]) + " |", file=file)
    if "rss" in res:
        r = res["rss"]
        parts = [f"{name} {v['peak_rss_bytes'] / 2**20:.0f} MiB" for name, v in r.items()
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
    ap.add_argument("--prefill", default="512,2048", help="prompt lengths to prefill (default 512,2048)")
    ap.add_argument("--depths", default="0,4096,8192", help="cache depths to decode at (default 0,4096,8192)")
    ap.add_argument("--gen", type=cli.count, default=128, help="decode steps per measurement (default 128)")
    ap.add_argument("--budget", type=float, default=0.1, help="KV budget of the compressed decode (default 0.1)")
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
        check_args(a.gguf, threads, a.reps, a.gen, a.budget, a.policy)
    try:
        res = run(a.gguf, threads, a.reps, a.vs_llama_cpp, prefills, depths, a.gen, a.budget, a.policy, not a.no_rss)
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
