"""Perplexity of a GGUF model on a text file, with llama-perplexity's protocol.

    python -m engine.perplexity --gguf model.gguf -f wiki.test.raw [--ctx 512] [--chunks N]

Protocol (llama.cpp tools/perplexity, kept exactly so the figures compare):
the whole file is tokenised at once (BOS added only if the vocabulary asks for
it); it is cut into non-overlapping chunks of n_ctx tokens (the remainder is
dropped); each chunk starts from an empty cache, its first token replaced by
BOS when the vocabulary adds BOS; the logits at positions n_ctx/2 .. n_ctx-2
score the next token, i.e. n_ctx - n_ctx/2 - 1 predictions per chunk.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from .errors import EngineError


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


def _running(nll_sum: float, nll2_sum: float, count: int) -> tuple[float, float]:
    mean = nll_sum / count
    ppl = math.exp(mean)
    if count < 2:
        return ppl, float("nan")
    var = max(nll2_sum / count - mean * mean, 0.0)
    return ppl, ppl * math.sqrt(var / (count - 1))


def perplexity(model, tokens: list[int] | np.ndarray, n_ctx: int = 512, n_chunks: Optional[int] = None,
               n_threads: Optional[int] = None, bos_id: Optional[int] = None, progress: bool = True,
               on_chunk=None) -> PerplexityResult:
    """Scores `tokens` chunk by chunk; bos_id replaces each chunk's first token when not None."""
    tokens = np.asarray(tokens, dtype=np.int32)
    if n_ctx < 4 or n_ctx % 2:
        raise EngineError(f"--ctx must be an even number >= 4, got {n_ctx}")
    if len(tokens) < 2 * n_ctx:
        raise EngineError(f"need at least 2*ctx = {2 * n_ctx} tokens, the text has {len(tokens)}")
    total = len(tokens) // n_ctx
    n = total if not n_chunks or n_chunks < 0 else min(n_chunks, total)
    first = n_ctx // 2
    nll_sum = nll2_sum = 0.0
    count = 0
    running = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, unit="chunk", desc="perplexity", file=sys.stderr, dynamic_ncols=True)
    t0 = time.perf_counter()
    kv_peak = 0
    with model.session(n_ctx=n_ctx, n_threads=n_threads, n_batch=min(512, n_ctx)) as s:
        for i in range(n):
            chunk = tokens[i * n_ctx:(i + 1) * n_ctx].copy()
            if bos_id is not None:
                chunk[0] = bos_id
            s.reset()
            s.eval(chunk[:first], logits=None)
            lp = s.logprobs(chunk[first:]).astype(np.float64)
            kv_peak = max(kv_peak, s.kv_bytes_used)
            nll_sum += float(-lp.sum())
            nll2_sum += float((lp * lp).sum())
            count += len(lp)
            ppl, _ = _running(nll_sum, nll2_sum, count)
            running.append(ppl)
            if bar is not None:
                bar.set_postfix(ppl=f"{ppl:.4f}")
                bar.update(1)
            if on_chunk is not None:
                on_chunk(i, ppl)
    if bar is not None:
        bar.close()
    secs = time.perf_counter() - t0
    ppl, err = _running(nll_sum, nll2_sum, count)
    return PerplexityResult(ppl=ppl, ppl_stderr=err, n_chunks=n, n_ctx=n_ctx, n_scored=count,
                            n_tokens_file=len(tokens), chunk_ppl=running, seconds=secs,
                            tokens_per_second=n * n_ctx / secs if secs > 0 else 0.0, kv_bytes_peak=kv_peak)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engine.perplexity",
        description="Perplexity of a GGUF model on a text file, with llama.cpp's llama-perplexity protocol: "
                    "non-overlapping chunks of --ctx tokens, each from an empty cache, the second half of "
                    "each chunk scored. Prints the running estimate per chunk and "
                    "'Final estimate: PPL = x +/- y'.")
    p.add_argument("--gguf", "-m", required=True, help="path to the GGUF model file")
    p.add_argument("-f", "--file", dest="file", default=None,
                   help="text file to score (default: WikiText-2 test from ../shared/data if found)")
    p.add_argument("--ctx", type=int, default=512, help="tokens per chunk (default 512, as llama-perplexity)")
    p.add_argument("--chunks", type=int, default=None, help="score only the first N chunks (default: all)")
    p.add_argument("--threads", "-t", type=int, default=None, help="worker threads (default: all cores)")
    p.add_argument("--budget", type=float, default=1.0,
                   help="KV-cache budget: fraction of entries kept (1.0 = full cache; eviction policies "
                        "arrive with the eviction work, until then only 1.0 is accepted)")
    p.add_argument("--json", dest="json_out", default=None, help="also write all figures as JSON to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _default_text() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    for base in (os.getcwd(), os.path.join(here, "..")):
        cand = os.path.join(base, "..", "shared", "data", "wikitext-2", "wiki.test.raw")
        if os.path.exists(cand):
            return os.path.normpath(cand)
    return None


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.budget != 1.0:
            raise EngineError(f"--budget {args.budget}: KV eviction is not available in this version; "
                              "only --budget 1.0 (the full cache) works for now")
        path = args.file or _default_text()
        if not path:
            raise EngineError("no text file given (-f FILE) and ../shared/data/wikitext-2/wiki.test.raw not found")
        if not os.path.exists(path):
            raise EngineError(f"{path}: no such file")
        from . import Model

        model = Model(args.gguf, n_threads=args.threads)
        text = open(path, encoding="utf-8", errors="replace").read()
        t0 = time.perf_counter()
        tokens = model.tokenize(text, add_special=True)
        t_tok = time.perf_counter() - t0
        tok = model.tokenizer
        bos = tok.bos_id if tok.add_bos else None
        print(f"model: {model.desc}", file=sys.stderr)
        print(f"text: {path}: {len(tokens)} tokens (tokenised in {t_tok:.1f} s)", file=sys.stderr)
        chunk_line = []

        def on_chunk(i, ppl):
            chunk_line.append(f"[{i + 1}]{ppl:.4f},")

        res = perplexity(model, tokens, n_ctx=args.ctx, n_chunks=args.chunks, n_threads=args.threads,
                         bos_id=bos, progress=not args.no_progress, on_chunk=on_chunk)
        res.model, res.text, res.threads = args.gguf, path, model.session(n_ctx=4).n_threads
        print("".join(chunk_line))
        print(f"Final estimate: PPL = {res.ppl:.4f} +/- {res.ppl_stderr:.5f}")
        print(f"{res.n_chunks} chunks of {res.n_ctx} tokens, {res.n_scored} scored, "
              f"{res.seconds:.1f} s, {res.tokens_per_second:.1f} tokens/s")
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump(asdict(res), f, indent=2)
        return 0
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
