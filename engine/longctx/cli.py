"""The command line of python -m engine.ruler: the parser, the checks, the run (engine.longctx.runner) and
what it prints."""

from __future__ import annotations

import os
import sys
from typing import Optional

from .. import cli
from ..errors import EngineError
from ..eval.options import (_CHOICES, EVICTION_OPTIONS, EXIT_HELP, add_ray_args, parse_budgets, parse_list,
                            parse_policies, ray_options)
from .protocols import PROTOCOLS, TEMPLATES

DEFAULTS = {"tasks": "ruler11", "lengths": "4096", "samples": 10, "policies": "full,snapkv,restkv",
            "budgets": "0.5,0.25,0.1", "protocol": "agnostic", "seed": 42, "template": "auto", "out": "ruler_out"}

BUDGETS_HELP = """\
budgets (--budgets, a comma list; every policy runs at every budget):
  a fraction f in (0, 1)   each (layer, kv-head) keeps max(1, floor(f * n)) of the n tokens of the compressed
                           span, BOS and the chat prefix included (kvpress: compression_ratio = 1 - f)
  an integer B >= 2        each (layer, kv-head) keeps B tokens, the protected recent window included
                           (ReST-KV's max_capacity_prompt); nothing is evicted when n <= B
  1                        the full cache (also: the policy 'full'); run once per sample and protocol
  A configuration that evicts nothing is the full cache's run, recorded under its own name.

protocols (--protocol, a comma list), the prompt being P (BOS, chat prefix) C (context) Q (question)
S (end of the user turn, assistant header) A (answer prefix):
  agnostic     P+C compressed; Q+S+A then evaluated on the compressed cache (kvpress's default)
  aware        P+C+Q compressed; S+A appended (kvpress --query_aware)
  aware-full   the whole prompt compressed (ReST-KV / KVCache-Factory); the first generated token
               comes from the prefill's last logits (full cache), the rest from the compressed cache
Kept keys keep their positions (--positions original); decoding is greedy, up to each task's
max_new_tokens, stopping at the model's end-of-generation ids (and at a newline for the needle test)."""


def parse_lengths(text: str) -> list[int]:
    out = []
    for x in parse_list(text, "lengths"):
        k = x.lower()
        try:
            n = int(float(k[:-1]) * 1024) if k.endswith("k") else int(k)
        except ValueError:
            raise EngineError(f"--lengths: {x!r} is not a number of tokens (e.g. 4096 or 4k)") from None
        out.append(n)
    return out


def _parser():
    from ..eviction import Eviction, policy_help

    p = cli.Parser(
        "python -m engine.ruler",
        "Long-context accuracy under KV budgets: RULER's synthetic tasks, the needle-in-a-haystack test and "
        "passkey retrieval (generated with the model's own tokenizer to each length), every policy at every "
        "budget under the compression protocols of kvpress (agnostic, aware) and ReST-KV (aware-full). Each "
        "sample is prefilled once and the prefill shared by all configurations (bit for bit the results of "
        "separate runs). Resumable: finished runs are appended to DIR/ruler.jsonl, and the same command goes on "
        "after Ctrl-C; a folder holding runs of other settings (model, template, seed, hyper-parameters) is "
        "refused. With --ray, the samples are run on a Ray cluster (docs/ray.md), with the same results. "
        "Writes DIR/ruler.json ({meta, runs, summary}), ruler.csv (a row per run), ruler.md (a table "
        "per length and protocol: rows policy@budget, columns the tasks and their average +/- 95% interval) "
        "and, with matplotlib, acc_vs_budget_<len>_<protocol>.png and needle_<policy>_<budget>_<protocol>.png.",
        epilog=BUDGETS_HELP + "\n\n" + policy_help() + "\n\n" + EXIT_HELP)
    p.add_argument("--gguf", "-m", required=True, help="path to the GGUF model file")
    p.add_argument("--tasks", default=DEFAULTS["tasks"],
                   help="ruler11 (RULER's 13 tasks less the two QA ones), needle (ReST-KV's needle test), "
                        "passkey, or a comma list of task names and groups (default ruler11)")
    p.add_argument("--lengths", default=DEFAULTS["lengths"],
                   help="comma list of prompt lengths in tokens, max new tokens included (4096 or 4k; default 4096)")
    p.add_argument("--samples", type=cli.count, default=DEFAULTS["samples"],
                   help="samples per task and length (default 10; the needle test's sample i sits at depth "
                        "i mod 10 of its 10 depths)")
    p.add_argument("--policies", default=DEFAULTS["policies"],
                   help="comma list of eviction policies (see below), or 'all' (default full,snapkv,restkv); an "
                        "entry may be a variant of a policy, its own parameters set after colons, e.g. "
                        "restkv:distance=none (a row of its own, sharing the prefills)")
    p.add_argument("--budgets", default=DEFAULTS["budgets"],
                   help="comma list of KV budgets: fractions in (0, 1) of the compressed span, token counts >= 2 "
                        "per layer and KV head, 1 = the full cache (see below; default 0.5,0.25,0.1)")
    p.add_argument("--protocol", "--protocols", dest="protocol", default=DEFAULTS["protocol"],
                   help=f"{', '.join(PROTOCOLS)}, or a comma list of them (see below; default agnostic)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="seed of the generated samples (default 42)")
    p.add_argument("--template", choices=TEMPLATES, default=DEFAULTS["template"],
                   help="auto: the GGUF's chat template around one user message (context + question), split at a "
                        "sentinel into the chat prefix and suffix, as kvpress does; raw (also auto when the GGUF "
                        "has no template): BOS (when the vocabulary adds one) + text, and a newline before the "
                        "answer prefix (default auto)")
    p.add_argument("--out", default=DEFAULTS["out"], help="output folder (default ./ruler_out)")
    p.add_argument("--data-root", default=None,
                   help="folder holding paul_graham_essays/ (the haystacks; default: the generators' own search, "
                        "../shared/data)")
    p.add_argument("--threads", "-t", type=int, default=None,
                   help="worker threads (default: all cores available to the process)")
    p.add_argument("--json", dest="json_out", default=None,
                   help="also write {meta, runs, summary} as JSON to this file (after Ctrl-C: the runs completed, "
                        "marked \"partial\": true)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    d = Eviction()
    g = p.add_argument_group("eviction hyper-parameters (the same for every policy that reads them)")
    g.add_argument("--positions", choices=_CHOICES["positions"], default=d.positions,
                   help="kept keys keep their RoPE positions (original, default; as kvpress and ReST-KV) or are "
                        "shifted to contiguous ones (shift)")
    for opt, name, typ, hlp in EVICTION_OPTIONS:
        if name == "slack":  # the streaming schedule's: this tool compresses once (prefix schedule)
            continue
        g.add_argument(opt, dest=name, type=typ, default=getattr(d, name), choices=_CHOICES.get(name),
                       help=f"{hlp} (default {getattr(d, name)})")
    add_ray_args(p)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    return cli.run(lambda: _main(args))


def _main(args) -> int:
    from .runner import run

    with cli.preflight():
        cli.check_threads(args.threads)
        lengths = parse_lengths(args.lengths)
        policies = parse_policies(args.policies, include_full=True)
        budgets = parse_budgets(args.budgets)
        protocols = parse_list(args.protocol, "protocol")
        if args.data_root is not None and not os.path.isdir(args.data_root):
            raise EngineError(f"--data-root {args.data_root}: no such folder")
        ray = ray_options(args)
    eviction = {"positions": args.positions,
                **{name: getattr(args, name) for _, name, _, _ in EVICTION_OPTIONS if name != "slack"}}
    try:
        r = run(args.gguf, args.tasks, lengths, samples=args.samples, policies=policies, budgets=budgets,
                protocols=protocols, seed=args.seed, template=args.template, out=args.out, n_threads=args.threads,
                eviction=eviction, data_root=args.data_root, progress=not args.no_progress, json_out=args.json_out,
                ray=ray)
    except cli.Interrupted as e:
        res = e.result or {}
        print(res.get("tables", ""))
        print(f"\ninterrupted: {e.done} of {e.total} runs done this time, all finished runs kept in "
              f"{os.path.join(args.out, 'ruler.jsonl')}; partial results in {os.path.join(args.out, 'ruler.json')}"
              + (f" and {args.json_out}" if args.json_out else "") + "; the same command resumes", file=sys.stderr)
        return cli.EXIT_INTERRUPTED
    print(r["tables"])
    print(f"{r['ran']} run(s) done, {r['skipped']} already done; wrote {', '.join(r['files'])}"
          + (f", {args.json_out}" if args.json_out else ""))
    if not any(f.endswith(".png") for f in r["files"]):
        print("(no plots: matplotlib is not installed; pip install matplotlib)", file=sys.stderr)
    if r.get("errors"):
        print("failed (run again next time): " + "; ".join(f"{e['task']} {e['ctx']} #{e['index']}: {e['error']}"
                                                         for e in r["errors"]), file=sys.stderr)
        return cli.EXIT_FAILED
    return 0
