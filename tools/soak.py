"""Soak test: one streaming session scores a very long token stream at a fixed KV budget.

    python tools/soak.py --gguf MODEL [--tokens 1000000] [--budget 256] [--policy restkv]
                         [--slack 64] [--piece 512] [--text FILE] [--json OUT]

The stream is FILE's tokens repeated (or random ids without --text), fed piece by piece through
Session.logprobs(score_first=True) with the streaming schedule, so the cache is evicted forever
while every token is scored. Reported per tenth of the stream: KV bytes in use and allocated,
the process's RSS, tokens/s; checked throughout: every log-probability finite. Exit status 1
when KV bytes allocated or RSS grow by more than --tolerance (5%) after the first tenth (the
warm-up), when KV bytes in use exceed those allocated,
when tokens/s of the last tenth falls below half of the second's, or when a value is not finite.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def soak(model, stream_tokens: np.ndarray, n_tokens: int, budget: int, policy: str, slack: int, piece: int,
         n_threads=None, progress: bool = True, log=sys.stderr) -> dict:
    from engine import Eviction
    from engine.errors import EngineError

    if len(stream_tokens) < 2:
        raise EngineError("the token stream needs at least 2 tokens")
    s = model.session(n_ctx=budget + slack + 1, n_threads=n_threads, n_batch=min(512, budget + slack + 1))
    s.set_eviction(Eviction(policy=policy, budget=budget, schedule="streaming", slack=slack,
                            window=min(32, budget // 2)))
    tenth = max(piece, n_tokens // 10)
    rows, done, t_seg, seg_tokens, bad = [], 0, time.perf_counter(), 0, 0
    nll = 0.0
    t0 = time.perf_counter()
    s.eval(stream_tokens[:1], logits=None)
    done = 1
    pos = 1
    while done < n_tokens:
        n = min(piece, n_tokens - done)
        idx = (np.arange(pos, pos + n) % len(stream_tokens))
        pos += n
        lp = s.logprobs(stream_tokens[idx], score_first=True)
        fin = np.isfinite(lp)
        bad += int((~fin).sum())
        nll -= float(lp[fin].astype(np.float64).sum())
        done += n
        seg_tokens += n
        if seg_tokens >= tenth or done >= n_tokens:
            now = time.perf_counter()
            rows.append({"tokens": done, "kv_bytes_used": s.kv_bytes_used, "kv_bytes_alloc": s.kv_bytes_alloc,
                         # per layer type: the global layers (evicted to the budget) and the
                         # sliding-window layers (rings of a fixed size; 0 for models without them)
                         "kv_bytes_used_global": s.kv_bytes_used_global,
                         "kv_bytes_alloc_global": s.kv_bytes_alloc_global,
                         "kv_bytes_used_window": s.kv_bytes_used_window,
                         "kv_bytes_alloc_window": s.kv_bytes_alloc_window,
                         "rss_bytes": rss_bytes(), "tokens_per_second": seg_tokens / (now - t_seg),
                         "ppl_so_far": float(np.exp(nll / (done - 1))), "n_past": s.n_past})
            if progress:
                r = rows[-1]
                win = (f" (window layers {r['kv_bytes_used_window'] / 2**20:.2f})"
                       if r["kv_bytes_alloc_window"] else "")
                print(f"soak: {done:>9} tokens  KV {r['kv_bytes_used'] / 2**20:7.2f} MiB used{win} / "
                      f"{r['kv_bytes_alloc'] / 2**20:7.2f} MiB  RSS {r['rss_bytes'] / 2**20:8.1f} MiB  "
                      f"{r['tokens_per_second']:9.1f} tok/s  ppl {r['ppl_so_far']:.3f}", file=log, flush=True)
            t_seg, seg_tokens = now, 0
    s.close()
    return {"tokens": done, "seconds": time.perf_counter() - t0, "non_finite": bad, "rows": rows,
            "budget": budget, "slack": slack, "policy": policy, "piece": piece}


def verdict(res: dict, tolerance: float = 0.05, speed: bool = True) -> list[str]:
    """What failed: growth of KV or RSS after the warm-up tenth, a slowdown (speed=False leaves it
    out: a short soak's tenths last milliseconds, and their rates say more about the machine's
    load than about the engine), non-finite values."""
    rows = res["rows"]
    problems = []
    if res["non_finite"]:
        problems.append(f"{res['non_finite']} log-probabilities were not finite")
    if len(rows) >= 3:
        base = rows[0]
        keys = ["kv_bytes_alloc", "rss_bytes"] + [k for k in ("kv_bytes_alloc_global", "kv_bytes_alloc_window",
                                                              "kv_bytes_used_window") if k in base]
        for key in keys:
            hi = max(r[key] for r in rows[1:])
            if hi > base[key] * (1 + tolerance):
                problems.append(f"{key} grew from {base[key]} to {hi} (> {tolerance:.0%})")
        # the entries in use swing between the budget and budget + slack as evictions come and go:
        # they must stay within what was allocated at the start
        hi = max(r["kv_bytes_used"] for r in rows)
        if hi > base["kv_bytes_alloc"]:
            problems.append(f"kv_bytes_used reached {hi}, above the {base['kv_bytes_alloc']} allocated")
        if speed and rows[-1]["tokens_per_second"] < 0.5 * rows[1]["tokens_per_second"]:
            problems.append(f"tokens/s fell from {rows[1]['tokens_per_second']:.0f} to "
                            f"{rows[-1]['tokens_per_second']:.0f}")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", "-m", required=True, help="model file")
    ap.add_argument("--tokens", type=int, default=1_000_000, help="tokens to stream (default 1,000,000)")
    ap.add_argument("--budget", type=int, default=256, help="KV entries kept per (layer, kv-head) (default 256)")
    ap.add_argument("--policy", default="restkv", help="eviction policy (default restkv)")
    ap.add_argument("--slack", type=int, default=64, help="evict when a buffer holds budget + slack (default 64)")
    ap.add_argument("--piece", type=int, default=512, help="tokens per logprobs call (default 512)")
    ap.add_argument("--text", help="text file whose tokens are repeated (default: random ids)")
    ap.add_argument("--threads", "-t", type=int, default=None)
    ap.add_argument("--tolerance", type=float, default=0.05, help="allowed growth after the warm-up (0.05)")
    ap.add_argument("--json", dest="json_out", help="write every figure as JSON here")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import engine

    try:
        model = engine.Model(args.gguf, n_threads=args.threads)
        if args.text:
            toks = np.asarray(model.tokenize(open(args.text, encoding="utf-8", errors="replace").read()),
                              dtype=np.int32)
        else:
            toks = np.random.default_rng(0).integers(0, model.n_vocab, 1 << 16).astype(np.int32)
        res = soak(model, toks, args.tokens, args.budget, args.policy, args.slack, args.piece, args.threads)
    except engine.EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res.update(model=args.gguf, model_desc=model.desc, text=args.text)
    problems = verdict(res, args.tolerance)
    res["problems"] = problems
    r0, r1 = res["rows"][0], res["rows"][-1]
    print(f"soak: {res['tokens']} tokens in {res['seconds']:.0f} s; RSS {r0['rss_bytes'] / 2**20:.1f} -> "
          f"{r1['rss_bytes'] / 2**20:.1f} MiB; KV {r0['kv_bytes_used']} -> {r1['kv_bytes_used']} bytes; "
          f"tok/s {res['rows'][1]['tokens_per_second'] if len(res['rows']) > 1 else 0:.0f} -> "
          f"{r1['tokens_per_second']:.0f}; non-finite {res['non_finite']}: "
          + ("OK" if not problems else "FAILED: " + "; ".join(problems)))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(res, f, indent=1)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
