"""llama.cpp's figures for the same inputs, through llama-cpp-python (dev-time tool).

    python tools/llamacpp_reference.py ppl  --gguf M -f TEXT [--ctx 512] [--chunks 40] [--threads 2]
    python tools/llamacpp_reference.py tokens --gguf M -f TEXT [--out ids.npy]
    python tools/llamacpp_reference.py speed --gguf M [--threads 2]

`ppl` follows llama-perplexity's protocol (tools/perplexity/perplexity.cpp): the whole
text tokenised at once with add_special, non-overlapping n_ctx chunks from an empty
cache, first token replaced by BOS when the vocabulary adds BOS, logits at positions
n_ctx/2 .. n_ctx-2 scoring the next token. Needs `pip install llama-cpp-python`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np


def _llama(path, n_ctx, threads, logits_all):
    from llama_cpp import Llama

    return Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=min(n_ctx, 512), n_threads=threads,
                 n_threads_batch=threads, logits_all=logits_all, verbose=False)


def tokens(path, text):
    from llama_cpp import Llama

    vocab = Llama(model_path=path, vocab_only=True, verbose=False)
    return vocab.tokenize(text.encode("utf-8"), add_bos=True, special=False)


def ppl(path, text, n_ctx=512, n_chunks=None, threads=2):
    llm = _llama(path, n_ctx, threads, True)
    toks = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    add_bos = llm._model.add_bos_token() if hasattr(llm._model, "add_bos_token") else False
    bos = llm.token_bos()
    n = len(toks) // n_ctx if not n_chunks else min(n_chunks, len(toks) // n_ctx)
    first = n_ctx // 2
    nll = nll2 = 0.0
    count = 0
    t0 = time.perf_counter()
    for i in range(n):
        chunk = list(toks[i * n_ctx:(i + 1) * n_ctx])
        if add_bos:
            chunk[0] = bos
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[first:n_ctx - 1], dtype=np.float64)
        mx = logits.max(axis=1, keepdims=True)
        lse = (mx[:, 0] + np.log(np.exp(logits - mx).sum(axis=1)))
        tgt = np.asarray(chunk[first + 1:n_ctx])
        lp = logits[np.arange(len(tgt)), tgt] - lse
        nll -= lp.sum()
        nll2 += (lp * lp).sum()
        count += len(lp)
        print(f"[{i + 1}]{math.exp(nll / count):.4f},", end="", file=sys.stderr, flush=True)
    secs = time.perf_counter() - t0
    mean = nll / count
    p = math.exp(mean)
    err = p * math.sqrt(max(nll2 / count - mean * mean, 0) / (count - 1))
    print(file=sys.stderr)
    return {"ppl": p, "ppl_stderr": err, "n_chunks": n, "n_ctx": n_ctx, "n_tokens_file": len(toks),
            "seconds": secs, "tokens_per_second": n * n_ctx / secs}


def speed(path, threads=2, n_prompt=512, n_gen=128, reps=3):
    llm = _llama(path, max(n_prompt, n_gen + 1), threads, False)
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in rng.integers(100, llm.n_vocab(), n_prompt)]
    pre, dec = [], []
    for _ in range(reps + 1):  # first round is warm-up
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        pre.append(n_prompt / (time.perf_counter() - t0))
        llm.reset()
        llm.eval([prompt[0]])
        t0 = time.perf_counter()
        for i in range(n_gen):
            llm.eval([prompt[i % n_prompt]])
        dec.append(n_gen / (time.perf_counter() - t0))
    return {"prefill_tps": float(np.median(pre[1:])), "decode_tps": float(np.median(dec[1:])),
            "n_prompt": n_prompt, "n_gen": n_gen, "threads": threads}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["ppl", "tokens", "speed"])
    p.add_argument("--gguf", required=True)
    p.add_argument("-f", "--file")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out")
    a = p.parse_args(argv)
    if a.what == "ppl":
        print(json.dumps(ppl(a.gguf, open(a.file, encoding="utf-8").read(), a.ctx, a.chunks, a.threads)))
    elif a.what == "tokens":
        ids = tokens(a.gguf, open(a.file, encoding="utf-8").read())
        if a.out:
            np.save(a.out, np.asarray(ids, dtype=np.int32))
        print(len(ids))
    else:
        print(json.dumps(speed(a.gguf, a.threads)))


if __name__ == "__main__":
    main()
