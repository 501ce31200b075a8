"""The command line of python -m engine.perplexity and python -m engine.lambada (the same tool: the
latter is the former with --dataset lambada): the parser, the checks made before any work, the data
read and tokenised, the model opened, the run (engine.eval.protocols or engine.eval.lambada) and its
report (engine.eval.report; --json: the result's fields).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from typing import Optional

from .. import cli
from ..errors import EngineError
from . import lambada as lam
from . import report
from .options import EXIT_HELP, add_eviction_args, eviction_from_args, open_model, resolve_policy
from .protocols import check_ctx, check_run, perplexity


def _parser() -> argparse.ArgumentParser:
    from ..eviction import policy_help

    p = cli.Parser(
        "python -m engine.perplexity",
        "Perplexity of a GGUF model on a text file, with llama.cpp's llama-perplexity protocol: "
        "non-overlapping chunks of --ctx tokens, each from an empty cache, the second half of "
        "each chunk scored. Prints the running estimate per chunk and "
        "'Final estimate: PPL = x +/- y'. With --budget < 1 and --policy, the first half of "
        "each chunk is compressed to the budget before the second half is scored (--protocol "
        "prefix), or the whole text streams through a bounded cache (--protocol streaming). "
        "--dataset lambada scores LAMBADA's last words instead (the same as python -m engine.lambada).",
        epilog=policy_help() + "\n\n" + EXIT_HELP)
    p.add_argument("--gguf", "-m", required=True, help="path to the GGUF model file")
    p.add_argument("-f", "--file", "--data", dest="file", default=None,
                   help="text file to score instead of the --dataset's; with a LAMBADA data set: the LAMBADA "
                        "file (jsonl with 'text', or one passage a line)")
    p.add_argument("--dataset", choices=list(cli.DATASET_KINDS), default="wikitext", metavar="NAME",
                   help="data set, located or downloaded by engine.data (python -m engine.data list): "
                        "wikitext = wikitext2 = wikitext-2 (WikiText-2 raw test, perplexity; the default); "
                        "lambada = lambada-dev, lambada-test, lambada-openai (LAMBADA last-word accuracy and "
                        "perplexity, as python -m engine.lambada)")
    p.add_argument("--data-dir", default=None,
                   help="data set cache folder (default: $RESTKV_DATA, else engine.data's user cache; "
                        "../shared/data is used in place when there)")
    p.add_argument("--ctx", type=int, default=512,
                   help="tokens per chunk (default 512, as llama-perplexity; engine.sweep's default is 2048, "
                        "the long-context setting of its eviction figures)")
    p.add_argument("--chunks", type=cli.count, default=None, help="score only the first N chunks (default: all)")
    p.add_argument("--limit", "--lambada-n", dest="limit", type=cli.count, default=None,
                   help="LAMBADA: score only the first N passages (default: all)")
    p.add_argument("--threads", "-t", type=int, default=None,
                   help="worker threads (default: all cores available to the process)")
    add_eviction_args(p)
    p.add_argument("--json", dest="json_out", default=None,
                   help="also write all figures as JSON to this file (after Ctrl-C: the chunks completed, "
                        "marked \"partial\": true)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    return cli.run(lambda: _main(args))


def lambada_main(argv: Optional[list[str]] = None) -> int:
    """python -m engine.lambada: python -m engine.perplexity --dataset lambada."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return main(["--dataset", "lambada", *argv])


def _main(args) -> int:
    with cli.preflight():
        kind = cli.dataset_kind(args.dataset)
        cli.check_threads(args.threads)
        cli.check_output(args.json_out)
        policy = resolve_policy(args.policy, args.budget, args.protocol)
        args.policy_ev = ev = eviction_from_args(args, policy=policy)
        if kind == "lambada":
            prepared = _prepare_lambada(args)
        else:
            prepared = _prepare_text(args, ev)
    if kind == "lambada":
        return _score_lambada(args, ev, *prepared)
    return _score_text(args, ev, *prepared)


def _prepare_text(args, ev) -> tuple:
    """The text read and tokenised, the model open: _score_text's arguments."""
    check_ctx(args.ctx)
    path = cli.dataset_path(args.dataset, args.file, args.data_dir)
    text = cli.read_text(path)
    model, threads = open_model(args)
    t0 = time.perf_counter()
    tokens = model.tokenize(text, add_special=True)
    t_tok = time.perf_counter() - t0
    check_run(len(tokens), args.ctx, args.chunks, ev, args.protocol)
    return model, threads, path, tokens, t_tok


def _score_text(args, ev, model, threads, path, tokens, t_tok) -> int:
    tok = model.tokenizer
    bos = tok.bos_id if tok.add_bos else None
    print(f"model: {model.desc}", file=sys.stderr)
    print(f"text: {path}: {len(tokens)} tokens (tokenised in {t_tok:.1f} s)", file=sys.stderr)
    if args.protocol == "streaming" and ev.positions == "original":
        n_stream = len(tokens) if not args.chunks else min(len(tokens), args.chunks * args.ctx)
        if n_stream > model.n_ctx_train:
            cli.warn(f"streaming {n_stream} tokens with --positions original uses positions beyond "
                     f"the model's training context ({model.n_ctx_train}); --positions shift keeps them "
                     "within the cache")
    chunk_line = []

    def on_chunk(i, ppl):
        chunk_line.append(f"[{i + 1}]{ppl:.4f},")

    def label(res):
        res.model, res.text, res.data, res.threads = args.gguf, path, path, threads
        return asdict(res)

    try:
        res = perplexity(model, tokens, n_ctx=args.ctx, n_chunks=args.chunks, n_threads=args.threads,
                         bos_id=bos, progress=not args.no_progress, on_chunk=on_chunk, eviction=ev,
                         protocol=args.protocol)
    except cli.Interrupted as e:
        if e.result is not None:  # from the result: the last chunk's on_chunk may not have run
            print("".join(f"[{i + 1}]{p:.4f}," for i, p in enumerate(e.result.chunk_ppl)))
        return cli.interrupted(e, args.json_out, label)
    label(res)
    print("".join(chunk_line))
    report.print_perplexity(res, args.dataset, path, args.gguf)
    if args.json_out:
        cli.write_json(args.json_out, asdict(res))
    return 0


def _prepare_lambada(args) -> tuple:
    """python -m engine.perplexity --dataset lambada (args from its parser, checked there), up to the
    scoring: the data read and tokenised, the model open. Returns _score_lambada's arguments."""
    if args.protocol != "prefix":
        raise EngineError("LAMBADA is scored with the prefix protocol only (--protocol prefix)")
    path = cli.dataset_path(args.dataset, args.file, args.data_dir)
    passages = lam.load_passages(path, args.limit)
    model, threads = open_model(args)
    t0 = time.perf_counter()
    items, skipped = lam.prepare(model, passages)
    print(f"model: {model.desc}", file=sys.stderr)
    print(f"data: {path}: {len(passages)} passages, {len(items)} scored, {skipped} skipped "
          f"(tokenised in {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    if not items:
        raise EngineError(f"{path}: no passage with a context and a last word")
    return model, threads, path, items, skipped


def _score_lambada(args, ev, model, threads, path, items, skipped) -> int:
    """The scoring and report of python -m engine.perplexity --dataset lambada, after _prepare_lambada."""
    def label(res):
        res.n_skipped = skipped
        res.model, res.data, res.threads = args.gguf, path, threads
        return asdict(res)

    try:
        res = lam.lambada(model, items, eviction=ev, n_threads=args.threads, progress=not args.no_progress)
    except cli.Interrupted as e:
        return cli.interrupted(e, args.json_out, label)
    label(res)
    report.print_lambada(res, args.dataset, path, args.gguf)
    if args.json_out:
        cli.write_json(args.json_out, asdict(res))
    return 0
