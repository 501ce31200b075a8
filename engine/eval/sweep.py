"""Sweep: perplexity and LAMBADA per eviction policy and KV budget, resumable, with a table and plots.

    python -m engine.sweep --gguf model.gguf [--policies all|p1,p2] [--budgets 1,0.5,0.25,0.1,0.05]
        [--datasets wikitext,lambada] [--ctx 2048] [--chunks N] [--lambada-n N] [--out DIR]

Runs every (dataset, policy, budget) combination with engine.eval.protocols and engine.eval.lambada.
Budget 1 is the full cache, the same for every policy, so it runs once (policy "full") and fills
the budget-1 column of every policy (with --protocol streaming the budget-1 cache of --ctx tokens
still evicts, so there it runs per policy). The prefix-protocol runs of one dataset go together:
each chunk's (passage's) prefill is computed once and shared by every policy and budget
(engine.eval.shared_prefill; the figures are those of separate runs, bit for bit): measured on
SmolLM2-135M, 37 configurations took a third less time on WikiText and four fifths less on LAMBADA.

Writes, after every batch of runs sharing prefills (the batch in progress saves its running figures in
DIR/sweep.batch.json as its chunks and passages complete, at most every 30 s, and an interrupted batch
resumes from there, with the figures of an uninterrupted run):
  DIR/sweep.json   {"runs": [...], "errors": [...]}: every figure of every run and its settings
  DIR/sweep.csv    one row per run (KV bytes of all layers, and of the global and the sliding-window layers)
  DIR/sweep.md     the markdown tables printed at the end (rows = policies, columns = budgets)
  DIR/ppl_vs_budget.png, DIR/lambada_vs_budget.png   when matplotlib is installed
Resumable: a combination already in DIR/sweep.json with the same settings (model, ctx, chunks,
protocol, data file, passages, eviction hyper-parameters) is skipped. Runs that fail (e.g. a policy
this build does not implement yet) are reported, recorded under "errors", and retried next time.
Every file is written whole or not at all (a temporary file renamed over it), so Ctrl-C leaves the
results of the batches completed and the same command resumes from there.

--ray [ADDRESS] (docs/ray.md; engine.eval.distributed): the chunks and passages of each batch (a unit each,
for every configuration of the batch) are scored on the workers of a Ray cluster and folded here in order,
so the files and figures are those of a local run; streaming-protocol runs are a unit each.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from dataclasses import asdict, fields
from typing import Optional

import numpy as np

from .. import cli
from ..errors import EngineError
from ..eviction import FULL, NON_EVICTING, Eviction
from . import lambada as lam
from .checkpoint import Checkpoint
from .plotstyle import plain_log_labels, series_style
from .options import (EXIT_HELP, PROTOCOLS, add_eviction_args, add_ray_args, base_policy, check_policy,
                      eviction_params, make_eviction, parse_budgets, parse_list, parse_policies, ray_options,
                      split_variant)
from .protocols import perplexity, perplexity_many, perplexity_unit

CHECKPOINT = "sweep.batch.json"  # the running tallies of the shared batch in progress
DATASETS = ("wikitext", "lambada")  # the kinds of evaluation; --datasets also takes engine.data's names
DEFAULT_BUDGETS = (1.0, 0.5, 0.25, 0.1, 0.05)
# the KV figures per layer type (engine.eval.protocols.PerplexityResult, engine.eval.lambada.LambadaResult)
KV_SPLIT = [f"kv_bytes_{f}_{kind}" for kind in ("global", "window") for f in ("peak", "mean", "alloc")]

# the run's figures (the KV ones of all layers, then of the global and of the sliding-window layers: 0 for
# models without such layers, empty for runs recorded before these figures existed), then every eviction
# setting (the C core's tables: the shared settings other than budget and schedule, then each policy
# parameter), then when it finished
CSV_FIELDS = (["dataset", "policy", "budget", "protocol", "ppl", "ppl_stderr", "accuracy", "accuracy_stderr",
               "n_scored", "n_ctx", "chunks", "lambada_n", "kv_bytes_peak", "kv_bytes_mean", "kv_bytes_alloc",
               "kv_bytes_full"] + KV_SPLIT + ["tokens_per_second", "seconds", "model", "data"]
              + [f.name for f in fields(Eviction) if f.name not in ("policy", "budget", "schedule")] + ["finished"])


def plan(policies: list[str], budgets: list[float], datasets: list[str], protocol: str = "prefix") -> list[tuple]:
    """(dataset, policy, budget, protocol) of every run, the shared full-cache runs first."""
    runs = []
    for ds in datasets:
        proto = "prefix" if ds == "lambada" else protocol
        if 1.0 in budgets and proto == "prefix":
            runs.append((ds, FULL, 1.0, proto))
        for b in budgets:
            if b == 1.0 and proto == "prefix":
                continue
            for p in policies:
                if p == FULL or (proto == "streaming" and base_policy(p) in NON_EVICTING):
                    continue  # full is the budget-1 run; the streaming protocol needs an evicting policy
                runs.append((ds, p, b, proto))
    return runs


def _settings(ds: str, policy: str, budget: float, protocol: str, cfg: dict) -> dict:
    """Everything a run's figures depend on: its identity for resuming."""
    s = {"dataset": ds, "policy": policy, "budget": float(budget), "protocol": protocol, "model": cfg["model"],
         "eviction": cfg["eviction"]}
    if ds == "wikitext":
        s.update(n_ctx=cfg["ctx"], chunks=cfg["chunks"], data=cfg["wikitext"])
    else:
        s.update(lambada_n=cfg["lambada_n"], data=cfg["lambada"])
    return s


def _row(run: dict) -> dict:
    r, st = run["result"], run["settings"]
    row = {"dataset": st["dataset"], "policy": st["policy"], "budget": st["budget"], "protocol": st["protocol"],
           "ppl": r.get("ppl"), "ppl_stderr": r.get("ppl_stderr"), "accuracy": r.get("accuracy"),
           "accuracy_stderr": r.get("accuracy_stderr"), "n_scored": r.get("n_scored"), "n_ctx": r.get("n_ctx"),
           "chunks": st.get("chunks"), "lambada_n": st.get("lambada_n"), "model": st["model"], "data": st["data"],
           "finished": run.get("finished")}
    for k in ("kv_bytes_peak", "kv_bytes_mean", "kv_bytes_alloc", "kv_bytes_full", *KV_SPLIT, "tokens_per_second",
              "seconds"):
        row[k] = r.get(k)
    row.update(st["eviction"])
    row.update(split_variant(st["policy"])[1])  # a policy variant's own settings
    return row


def load(out: str) -> dict:
    path = os.path.join(out, "sweep.json")
    if not os.path.exists(path):
        return {"runs": [], "errors": []}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise EngineError(f"{path}: cannot resume from it ({e}); move it away or use another --out") from None
    data.setdefault("runs", [])
    data.setdefault("errors", [])
    return data


def save(out: str, data: dict) -> None:
    """sweep.json and sweep.csv, each written whole or not at all (engine.cli.atomic_write)."""
    cli.write_json(os.path.join(out, "sweep.json"), data, indent=1)
    with cli.atomic_write(os.path.join(out, "sweep.csv"), newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for run in data["runs"]:
            w.writerow(_row(run))


def _fmt_budget(b: float) -> str:
    return f"{b:g}"


def _cell_value(run: Optional[dict], metric: str) -> Optional[float]:
    if run is None:
        return None
    v = run["result"].get(metric)
    return None if v is None else float(v)


def tables(runs: list[dict], policies: list[str], budgets: list[float], datasets: list[str],
           names: Optional[dict] = None) -> str:
    """Markdown tables, rows = policies, columns = budgets (budget 1: the full cache).

    names: {"wikitext": "WikiText-2 (wiki.test.raw)", ...}, the titles' dataset names."""
    names = {"wikitext": "WikiText-2", "lambada": "LAMBADA", **(names or {})}
    by = {(r["settings"]["dataset"], r["settings"]["policy"], r["settings"]["budget"]): r for r in runs}
    cols = sorted(budgets, key=lambda b: (b > 1, -b if b <= 1 else b))
    metrics = []
    if "wikitext" in datasets:
        metrics.append(("wikitext", "ppl", f"Perplexity (lower is better): {names['wikitext']}",
                        lambda v: f"{v:.2f}"))
    if "lambada" in datasets:
        metrics.append(("lambada", "accuracy", f"LAMBADA last-word accuracy, % (higher is better): {names['lambada']}",
                        lambda v: f"{100 * v:.1f}"))
        metrics.append(("lambada", "ppl", f"LAMBADA last-word perplexity (lower is better): {names['lambada']}",
                        lambda v: f"{v:.2f}"))
    rows_p = [p for p in policies if p != FULL] or [FULL]
    out = []
    for ds, metric, title, fmt in metrics:
        out.append(f"**{title}**\n")
        out.append("| policy | " + " | ".join(_fmt_budget(b) for b in cols) + " |")
        out.append("|---|" + "---:|" * len(cols))
        for p in rows_p:
            cells = []
            for b in cols:
                run = by.get((ds, p, b))
                if run is None and b == 1.0:
                    run = by.get((ds, FULL, 1.0))
                v = _cell_value(run, metric)
                cells.append("–" if v is None or math.isnan(v) else "inf" if math.isinf(v) else fmt(v))
            out.append(f"| {p} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def plots(out: str, runs: list[dict], policies: list[str], titles: Optional[dict] = None) -> list[str]:
    """ppl_vs_budget.png and lambada_vs_budget.png (fraction budgets, log x); [] without matplotlib.

    titles: {"wikitext": ..., "lambada": ...}, the figures' dataset names."""
    titles = {"wikitext": "WikiText-2", "lambada": "LAMBADA", **(titles or {})}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    by = {(r["settings"]["dataset"], r["settings"]["policy"], r["settings"]["budget"]): r for r in runs}

    def series(ds, p, metric):
        pts = []
        for (d, pp, b), run in by.items():
            if d == ds and b <= 1 and (pp == p or (pp == FULL and b == 1.0)):
                v = _cell_value(run, metric)
                if v is not None and math.isfinite(v):
                    pts.append((b, v))
        pts.sort()
        return [b for b, _ in pts], [v for _, v in pts]

    names = [p for p in policies if p != FULL]
    specs = [("wikitext", "ppl_vs_budget.png", [("ppl", "perplexity", True)], titles["wikitext"]),
             ("lambada", "lambada_vs_budget.png", [("accuracy", "last-word accuracy", False),
                                                    ("ppl", "last-word perplexity", True)], titles["lambada"])]
    for ds, fname, metrics, title in specs:
        if not any(k[0] == ds for k in by):
            continue
        fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4.5), squeeze=False)
        for ax, (metric, label, logy) in zip(axes[0], metrics):
            full = _cell_value(by.get((ds, FULL, 1.0)), metric)
            shown = []
            for k, p in enumerate(names):
                x, y = series(ds, p, metric)
                if x:
                    ax.plot(x, y, label=p, **series_style(k))
                    shown += y
            if full is not None and math.isfinite(full):
                ax.axhline(full, color="k", linestyle="--", linewidth=0.8, label="full cache")
            ax.set_xscale("log")
            ticks = sorted({b for (d, _, b) in by if d == ds and b <= 1})
            ax.set_xticks(ticks)
            ax.set_xticks([], minor=True)
            ax.set_xticklabels([f"{b:g}" for b in ticks])
            if logy:
                ax.set_yscale("log")
                plain_log_labels(ax, shown + ([full] if full is not None else []))
            ax.set_xlabel("KV budget (fraction of entries kept)")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(f"{title}: {label} vs KV budget")
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out, fname)
        with cli.atomic_write(path, "wb") as f:
            fig.savefig(f, dpi=120, format="png")
        plt.close(fig)
        written.append(path)
    return written


def sweep(gguf: str, policies: list[str], budgets: list[float], datasets: list[str], out: str, ctx: int = 2048,
          chunks: Optional[int] = None, lambada_n: Optional[int] = None, protocol: str = "prefix",
          eviction: Optional[dict] = None, wikitext: Optional[str] = None, lambada_file: Optional[str] = None,
          n_threads: Optional[int] = None, progress: bool = True, log=sys.stderr,
          data_dir: Optional[str] = None, ray: Optional[dict] = None) -> dict:
    """Runs the missing combinations; returns {"runs", "errors", "ran", "skipped", "failed", "tables", "plots"}.

    datasets: names of engine.cli.DATASET_KINDS (wikitext, wikitext2, lambada, lambada-test, ...), at most
    one of each kind (wikitext, lambada); each kind's file is `wikitext` / `lambada_file` when given, else
    the data set resolved by name (engine.data, from data_dir). Ctrl-C: engine.cli.Interrupted, after
    the completed batches were saved. ray: engine.eval.distributed.Pool's options (address,
    cpus_per_worker): the chunks and passages are scored on a Ray cluster's workers, the figures folded and
    written here as they come (the same files, and figures, as without it)."""
    from .. import Model

    by_kind = {}
    for name in datasets:
        kind = cli.dataset_kind(name)
        if kind in by_kind:
            raise cli.UsageError(f"--datasets: {by_kind[kind]} and {name} are both {kind} data sets; give one")
        by_kind[kind] = name
    datasets = list(by_kind)
    policies = [check_policy(p) for p in policies]  # variants in their canonical spelling: the resume keys
    if protocol not in PROTOCOLS:
        raise EngineError(f"unknown protocol {protocol!r} (expected one of {', '.join(PROTOCOLS)})")
    if ctx < 4 or ctx % 2:
        raise EngineError(f"--ctx must be an even number >= 4, got {ctx}")
    cli.check_input(gguf, "--gguf")
    if chunks is not None and chunks < 1 or lambada_n is not None and lambada_n < 1:
        raise EngineError("--chunks and --lambada-n must be >= 1 (leave them out for all)")
    cli.check_output_dir(out)
    # every hyper-parameter, defaults included, so the resume keys do not depend on how they were given
    ev_params = {k: v for k, v in make_eviction(FULL, 1.0, **dict(eviction or {})).as_dict().items()
                 if k not in ("policy", "budget", "schedule")}
    given = {"wikitext": wikitext, "lambada": lambada_file}
    files = {kind: cli.dataset_path(name, given[kind], data_dir, option=f"--{kind}") for kind, name in by_kind.items()}
    cfg = {"model": os.path.abspath(gguf), "eviction": ev_params, "ctx": ctx, "chunks": chunks,
           "lambada_n": lambada_n, "wikitext": os.path.abspath(files["wikitext"]) if "wikitext" in files else None,
           "lambada": os.path.abspath(files["lambada"]) if "lambada" in files else None}
    os.makedirs(out, exist_ok=True)
    data = load(out)
    done = {json.dumps(r["settings"], sort_keys=True) for r in data["runs"]}
    todo, skipped = [], 0
    for ds, p, b, proto in plan(policies, budgets, datasets, protocol):
        st = _settings(ds, p, b, proto, cfg)
        if json.dumps(st, sort_keys=True) in done:
            skipped += 1
        else:
            todo.append(st)
    print(f"sweep: {len(todo) + skipped} runs, {skipped} already in {os.path.join(out, 'sweep.json')}, "
          f"{len(todo)} to run", file=log)
    data["errors"] = [e for e in data["errors"]
                      if json.dumps(e["settings"], sort_keys=True) not in {json.dumps(t, sort_keys=True) for t in todo}]
    ran, failed = 0, []
    if todo:
        model = Model(gguf, n_threads=n_threads)  # here only to tokenise with ray (the workers load their own)
        cache = {}
        pool = stream = None
        if ray is not None:
            from .distributed import Pool

            pool = Pool(gguf, log=log, **ray)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), unit="run", desc="sweep", file=sys.stderr, dynamic_ncols=True, position=0)
        # prefix-protocol runs of one dataset share each prefill (engine.eval.shared_prefill)
        batches, shared = [], {}
        for st in todo:
            if st["protocol"] == "prefix":
                if st["dataset"] not in shared:
                    shared[st["dataset"]] = []
                    batches.append(shared[st["dataset"]])
                shared[st["dataset"]].append(st)
            else:
                batches.append([st])
        try:
            while batches:
                batch = batches.pop(0)
                ds, proto = batch[0]["dataset"], batch[0]["protocol"]
                labels = [f"{ds} {st['policy']} @ {st['budget']:g} ({proto})" for st in batch]
                if bar is not None:
                    bar.set_postfix_str(labels[0] if len(batch) == 1 else f"{ds}: {len(batch)} runs sharing prefills")
                t0 = time.time()
                # a shared batch checkpoints its tallies as its chunks (passages) complete
                ckpt = Checkpoint(os.path.join(out, CHECKPOINT), batch) if proto == "prefix" else None
                try:
                    evs = [make_eviction(st["policy"], st["budget"], **ev_params) for st in batch]
                    if ds == "wikitext":
                        if "wt" not in cache:
                            text = cli.read_text(files["wikitext"])
                            cache["wt"] = np.asarray(model.tokenize(text, add_special=True), dtype=np.int32)
                        tok = model.tokenizer
                        bos = tok.bos_id if tok.add_bos else None
                        if proto == "prefix":
                            results = perplexity_many(model, cache["wt"], evs, n_ctx=ctx, n_chunks=chunks,
                                                      n_threads=n_threads, bos_id=bos, progress=progress,
                                                      bar_position=1, checkpoint=ckpt, pool=pool)
                        elif pool is not None:  # a unit per run (its cache runs through the text), all at once
                            if stream is None:
                                runs = [batch] + [b for b in batches if b[0]["protocol"] != "prefix"]
                                stream = _streaming_runs(pool, runs, cache["wt"], ctx, chunks, bos, ev_params)
                            results = [next(stream)]
                            if isinstance(results[0], EngineError):
                                raise results[0]
                        else:
                            results = [perplexity(model, cache["wt"], n_ctx=ctx, n_chunks=chunks, n_threads=n_threads,
                                                  bos_id=bos, progress=progress, eviction=evs[0], protocol=proto,
                                                  bar_position=1)]
                        for res in results:
                            res.text = res.data = cfg["wikitext"]
                        figures = [f"ppl {res.ppl:.4f}" for res in results]
                    else:
                        if "lb" not in cache:
                            cache["lb"] = lam.prepare(model, lam.load_passages(files["lambada"], lambada_n))
                        items, n_skip = cache["lb"]
                        results = lam.lambada_many(model, items, evs, n_threads=n_threads, progress=progress,
                                                   bar_position=1, checkpoint=ckpt, pool=pool)
                        for res in results:
                            res.n_skipped, res.data = n_skip, cfg["lambada"]
                        figures = [f"accuracy {res.accuracy:.4f}, ppl {res.ppl:.4f}" for res in results]
                except EngineError as e:
                    if len(batch) > 1:  # find out which configuration failed: run them one by one
                        msg = f"sweep: {ds}: a shared run failed ({e}); running its {len(batch)} runs one by one"
                        (bar.write(msg, file=sys.stderr) if bar is not None else print(msg, file=log))
                        batches[:0] = [[st] for st in batch]
                        continue
                    for st, label in zip(batch, labels):
                        failed.append(label)
                        data["errors"].append({"settings": st, "error": str(e)})
                    save(out, data)
                    msg = f"sweep: {', '.join(labels)}: failed: {e}"
                    (bar.write(msg, file=sys.stderr) if bar is not None else print(msg, file=log))
                    if bar is not None:
                        bar.update(len(batch))
                    continue
                wall = (time.time() - t0) / len(batch)
                for st, label, res, figure in zip(batch, labels, results, figures):
                    res.model = gguf
                    data["runs"].append({"settings": st, "result": asdict(res),
                                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_seconds": wall})
                    ran += 1
                    msg = f"sweep: {label}: {figure} ({res.seconds:.1f} s)"
                    (bar.write(msg, file=sys.stderr) if bar is not None else print(msg, file=log))
                save(out, data)
                if ckpt is not None:
                    ckpt.clear()
                if bar is not None:
                    bar.update(len(batch))
        except KeyboardInterrupt:
            # the batches completed are in sweep.json already; the one in progress resumes from its checkpoint
            raise cli.Interrupted(None, ran, len(todo), "runs") from None
        finally:
            if bar is not None:
                bar.close()
            if stream is not None:
                stream.close()
            if pool is not None:
                pool.close()
    else:
        save(out, data)
    wanted = {json.dumps(_settings(ds, p, b, proto, cfg), sort_keys=True)
              for ds, p, b, proto in plan(policies, budgets, datasets, protocol)}
    current = [r for r in data["runs"] if json.dumps(r["settings"], sort_keys=True) in wanted]
    names = {"wikitext": f"{os.path.basename(files['wikitext'])}, ctx {ctx}"
                         + (f", {chunks} chunks" if chunks else "") + f", {protocol} protocol"
                         if "wikitext" in files else "",
             "lambada": os.path.basename(files["lambada"])
                        + (f", {lambada_n} passages" if lambada_n else "") if "lambada" in files else ""}
    md = tables(current, policies, budgets, datasets, names)
    with cli.atomic_write(os.path.join(out, "sweep.md")) as f:
        f.write(md)
    pngs = plots(out, current, policies, {ds: os.path.basename(path) for ds, path in files.items()})
    return {"runs": data["runs"], "errors": data["errors"], "ran": ran, "skipped": skipped, "failed": failed,
            "tables": md, "plots": pngs}


def _streaming_runs(pool, batches: list, tokens, ctx: int, chunks: Optional[int], bos: Optional[int], ev_params: dict):
    """ray: the streaming-protocol runs (a batch of one each; they follow one another in the plan) submitted
    at once, one unit each; yields each one's PerplexityResult, or its EngineError, in their order."""
    from .distributed import UnitError

    units, failed = [], {}
    for k, (st,) in enumerate(batches):
        try:
            units.append(dict(tokens=tokens, n_ctx=ctx, n_chunks=chunks, bos_id=bos, protocol=st["protocol"],
                              eviction=make_eviction(st["policy"], st["budget"], **ev_params)))
        except EngineError as e:
            failed[k] = e
    results = pool.in_order(perplexity_unit, units)
    try:
        for k in range(len(batches)):
            res = failed[k] if k in failed else next(results)
            yield EngineError(res.message) if isinstance(res, UnitError) else res
    finally:
        results.close()


def _parser() -> argparse.ArgumentParser:
    from ..eviction import policy_help

    p = cli.Parser(
        "python -m engine.sweep",
        "Perplexity (WikiText-2) and LAMBADA accuracy per KV eviction policy and budget. Resumable: "
        "combinations already in DIR/sweep.json are skipped, and the batch in progress (the runs sharing "
        "prefills) resumes from the chunks and passages saved in DIR/sweep.batch.json, so after Ctrl-C the same "
        "command goes on. With --ray, the chunks and passages are scored on a Ray cluster (docs/ray.md), "
        "with the same results. Writes "
        "DIR/sweep.csv, sweep.json, sweep.md and, with matplotlib, ppl_vs_budget.png and lambada_vs_budget.png; "
        "prints markdown tables (rows = policies, columns = budgets).",
        epilog=policy_help() + "\n\n" + EXIT_HELP + " A sweep with failed runs exits 1; they are retried next time.")
    p.add_argument("--gguf", "-m", required=True, help="path to the GGUF model file")
    p.add_argument("--policies", default="all",
                   help="'all' (every policy of this build but full) or a comma-separated list (default all); "
                        "an entry may be a variant of a policy, its own parameters set after colons, e.g. "
                        "restkv:pooling=none:ema_alpha=0.5 (a row of its own, sharing the prefills)")
    p.add_argument("--budgets", default=",".join(f"{b:g}" for b in DEFAULT_BUDGETS),
                   help="comma-separated budgets: fractions in (0, 1] or token counts >= 2; 1 = the full "
                        "cache, run once for all policies (default 1,0.5,0.25,0.1,0.05)")
    p.add_argument("--datasets", default="wikitext,lambada",
                   help="comma-separated data set names (engine.data), at most one WikiText (wikitext, "
                        "wikitext2: perplexity) and one LAMBADA (lambada = lambada-dev, lambada-test, "
                        "lambada-openai: last-word accuracy) (default wikitext,lambada)")
    p.add_argument("--data-dir", default=None,
                   help="data set cache folder (default: $RESTKV_DATA, else engine.data's user cache; "
                        "../shared/data is used in place when there)")
    p.add_argument("--ctx", type=int, default=2048,
                   help="wikitext: tokens per chunk (default 2048, the long-context setting of the eviction "
                        "figures; engine.perplexity's default is llama-perplexity's 512)")
    p.add_argument("--chunks", type=cli.count, default=None, help="wikitext: only the first N chunks (default all)")
    p.add_argument("--lambada-n", type=cli.count, default=None,
                   help="lambada: only the first N passages (default all)")
    p.add_argument("--wikitext", default=None, help="the WikiText-like text file (default: by --datasets name)")
    p.add_argument("--lambada", dest="lambada_file", default=None,
                   help="the LAMBADA file (default: by --datasets name)")
    p.add_argument("--out", default="sweep_out", help="output folder (default ./sweep_out)")
    p.add_argument("--threads", "-t", type=int, default=None,
                   help="worker threads (default: all cores available to the process)")
    add_eviction_args(p, policy_budget=False)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_ray_args(p)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    return cli.run(lambda: _main(args))


def _main(args) -> int:
    try:
        # sweep() checks everything before its first run, and records the runs that fail without raising
        with cli.preflight():
            cli.check_threads(args.threads)
            cli.check_output_dir(args.out)
            ray = ray_options(args)
            r = sweep(args.gguf, parse_policies(args.policies), parse_budgets(args.budgets),
                      parse_list(args.datasets, "datasets"), args.out, ctx=args.ctx, chunks=args.chunks,
                      lambada_n=args.lambada_n, protocol=args.protocol, eviction=eviction_params(args),
                      wikitext=args.wikitext, lambada_file=args.lambada_file, n_threads=args.threads,
                      progress=not args.no_progress, data_dir=args.data_dir, ray=ray)
    except cli.Interrupted as e:
        print(f"\ninterrupted: {e.done} of {e.total} runs done and saved in {os.path.join(args.out, 'sweep.json')}; "
              "the same command resumes with the others (the batch in progress from its last saved chunk or "
              "passage)", file=sys.stderr)
        return cli.EXIT_INTERRUPTED
    print(r["tables"])
    out = args.out
    files = ["sweep.json", "sweep.csv", "sweep.md"] + [os.path.basename(p) for p in r["plots"]]
    print(f"{r['ran']} run(s) done, {r['skipped']} already done, {len(r['failed'])} failed; "
          f"wrote {', '.join(os.path.join(out, f) for f in files)}")
    if not r["plots"]:
        print("(no plots: matplotlib is not installed; pip install matplotlib)", file=sys.stderr)
    if r["failed"]:
        print("failed (retried next time): " + "; ".join(r["failed"]), file=sys.stderr)
        return cli.EXIT_FAILED
    return 0

