"""Prefill and decode tokens/s of restkv-engine and llama.cpp (llama-cpp-python), same model, one process.

    python python/speed_compare.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2 --reps 3

A/B alternated, warm-up round discarded, medians and ratios printed. Prefill = 512 random
tokens into an empty cache (logits of the last one); decode = 128 single-token steps, each
returning the next token's logits. (engine.bench, with deeper contexts and budgets, supersedes
this once the CPU-speed work lands.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    a = ap.parse_args(argv)

    import engine
    from llama_cpp import Llama

    n_ctx = a.prompt + a.gen + 8
    model = engine.Model(a.gguf, n_threads=a.threads)
    ours = model.session(n_ctx=n_ctx, n_batch=512)
    llm = Llama(model_path=a.gguf, n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=a.threads,
                n_threads_batch=a.threads, verbose=False)
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in rng.integers(100, model.n_vocab, a.prompt)]

    def ours_prefill():
        ours.reset()
        t = time.perf_counter()
        ours.eval(prompt)
        return a.prompt / (time.perf_counter() - t)

    def ours_decode():
        ours.reset()
        ours.eval(prompt[:1])
        t = time.perf_counter()
        for i in range(a.gen):
            ours.eval([prompt[i + 1]])
        return a.gen / (time.perf_counter() - t)

    def llama_prefill():
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        return a.prompt / (time.perf_counter() - t)

    def llama_decode():
        llm.reset()
        llm.eval(prompt[:1])
        t = time.perf_counter()
        for i in range(a.gen):
            llm.eval([prompt[i + 1]])
        return a.gen / (time.perf_counter() - t)

    res = {k: [] for k in ("ours_prefill", "llama_prefill", "ours_decode", "llama_decode")}
    for rep in range(a.reps + 1):
        vals = {"ours_prefill": ours_prefill(), "llama_prefill": llama_prefill(),
                "ours_decode": ours_decode(), "llama_decode": llama_decode()}
        if rep:  # round 0 is warm-up
            for k, v in vals.items():
                res[k].append(v)
    med = {k: statistics.median(v) for k, v in res.items()}
    out = {"threads": a.threads, "reps": a.reps, "prompt": a.prompt, "gen": a.gen, **{k: round(v, 1) for k, v in med.items()},
           "prefill_ratio": round(med["ours_prefill"] / med["llama_prefill"], 3),
           "decode_ratio": round(med["ours_decode"] / med["llama_decode"], 3)}
    print(f"prefill {a.prompt}: ours {med['ours_prefill']:.1f} tok/s, llama.cpp {med['llama_prefill']:.1f} tok/s, "
          f"ratio {out['prefill_ratio']:.2f}")
    print(f"decode {a.gen}:  ours {med['ours_decode']:.1f} tok/s, llama.cpp {med['llama_decode']:.1f} tok/s, "
          f"ratio {out['decode_ratio']:.2f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
