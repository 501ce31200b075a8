"""What the long-context evaluation reports: per (length, protocol, policy@budget) the mean score of each
task and of all, with 95% intervals; the markdown tables; the CSV of the runs; the files of DIR.

Intervals: the Wilson score interval on a mean score of n samples (exact for 0/1 scores: niah, passkey
and most RULER tasks at one answer; an approximation for partial-credit scores: string_match_all over
several answers, ROUGE-1). The average over tasks weighs the tasks equally (RULER's and kvpress's
benchmark score) and gets the Wilson interval of its mean over all its samples (each task having the
same number of samples, that is the pooled mean).
"""

from __future__ import annotations

import csv
import math
import os
from typing import Optional

from .. import cli
from ..eviction import FULL, MASKING

Z95 = 1.959963984540054

# RULER's short column names (spec §5.4); other tasks keep their names
SHORT = {"niah_single_1": "s1", "niah_single_2": "s2", "niah_single_3": "s3", "niah_multikey_1": "mk1",
         "niah_multikey_2": "mk2", "niah_multikey_3": "mk3", "niah_multivalue": "mv", "niah_multiquery": "mq"}

CSV_FIELDS = ["task", "ctx", "index", "protocol", "policy", "budget", "label", "budget_kind", "score", "prediction",
              "answers", "metric", "depth", "n_prompt", "n_span", "n_rest", "kept_mean", "kept_min", "kept_max",
              "kept_fraction", "evicted", "same_as_full", "run_as", "n_generated", "stop_reason", "max_new_tokens",
              "first_token_from", "sample_seed", "prefill_seconds", "prefill_shared", "compress_seconds",
              "append_seconds", "decode_seconds", "decode_tokens_per_second", "seconds", "finished"]


def wilson(mean: float, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high) of the Wilson score interval of a proportion `mean` observed over n trials."""
    if n <= 0:
        return float("nan"), float("nan")
    p = min(max(mean, 0.0), 1.0)
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if p == 0.0 else min(lo, p)), (1.0 if p == 1.0 else max(hi, p))  # exact ends, no rounding residue


def stats(scores: list) -> dict:
    n = len(scores)
    mean = sum(scores) / n if n else float("nan")
    lo, hi = wilson(mean, n)
    return {"n": n, "mean": mean, "ci95_low": lo, "ci95_high": hi, "ci95_half": (hi - lo) / 2}


def _order(configs) -> list[tuple]:
    """(protocol, policy, budget) in the plan's order."""
    return [(c.protocol, c.policy, c.budget) for c in configs]


def summarize(runs: list[dict], meta: dict, configs) -> dict:
    """{"rows": one per (ctx, protocol, policy@budget) with its tasks' and average stats, the KV kept and
    the mean times; "needle": per (ctx, protocol, policy@budget, depth) the needle test's mean score}."""
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["ctx"], r["protocol"], r["policy"], r["budget"]), []).append(r)
    rows = []
    tasks = list(meta["tasks"])
    for ctx in meta["lengths"]:
        for proto, pol, b in _order(configs):
            rs = groups.get((ctx, proto, pol, b))
            if not rs:
                continue
            per = {}
            for t in tasks:
                sc = [r["score"] for r in rs if r["task"] == t]
                if sc:
                    per[t] = stats(sc)
            means = [s["mean"] for s in per.values()]
            n_all = sum(s["n"] for s in per.values())
            avg = sum(means) / len(means)
            lo, hi = wilson(avg, n_all)
            rows.append({
                "ctx": ctx, "protocol": proto, "policy": pol, "budget": b, "label": rs[0]["label"],
                "tasks": per, "avg": {"n_tasks": len(per), "n": n_all, "mean": avg, "ci95_low": lo, "ci95_high": hi,
                                      "ci95_half": (hi - lo) / 2},
                "complete": len(per) == len(tasks) and all(s["n"] == meta["samples"] for s in per.values()),
                "n_span_mean": _mean(r["n_span"] for r in rs),
                "kept_fraction_mean": _mean(r["kept_fraction"] for r in rs),
                # the budget as a fraction of the span (a token budget: B / the mean span, at most 1)
                "budget_fraction": 1.0 if pol == FULL or b == 1.0 else b if b < 1 else
                min(1.0, b / _mean(r["n_span"] for r in rs)),
                "kept_mean": _mean(r["kept_mean"] for r in rs),
                "n_generated_mean": _mean(r["n_generated"] for r in rs),
                "prefill_seconds_mean": _mean(r["prefill_seconds"] for r in rs),
                "seconds_mean": _mean(r["seconds"] for r in rs),
                "decode_tokens_per_second_mean": _mean(r["decode_tokens_per_second"] for r in rs),
            })
    needle = []
    nd: dict = {}
    for r in runs:
        if r.get("depth") is not None:
            key = (r["ctx"], r["protocol"], r["policy"], r["budget"], r["task"], r["depth"])
            nd.setdefault(key, []).append(r["score"])
    for (ctx, proto, pol, b, task, depth), sc in sorted(nd.items(), key=lambda kv: (kv[0][:2], str(kv[0][2:]))):
        needle.append({"ctx": ctx, "protocol": proto, "policy": pol, "budget": b, "label": _label(pol, b),
                       "task": task, "depth": depth, "n": len(sc), "mean": sum(sc) / len(sc)})
    return {"rows": rows, "needle": needle, "paired": paired(runs, meta, configs),
            "interval": "Wilson score interval, 95%, on the mean score; avg: over the tasks, weighed equally; "
                        "paired: a difference of averages on the same prompts, its 95% bootstrap interval (pairs "
                        "resampled) and sign-flip p-value"}


PAIRED_REFERENCE = "restkv"  # the engine's subject: every other policy is compared with it
BOOTSTRAP = 4000


def paired(runs: list[dict], meta: dict, configs, reference: str = PAIRED_REFERENCE, seed: int = 0) -> list[dict]:
    """`reference` against each other policy at the same (length, protocol, budget), and against the full
    cache, on the same prompts: the difference of their task averages (reference minus other), the samples
    each scores higher on, a 95% bootstrap interval and a sign-flip p-value. Two policies' Wilson
    intervals overlap long after a paired comparison separates them, since both see the same easy and
    hard prompts.

    Each (task, sample) pair weighs 1 / (tasks x the task's samples), as in the averages. The interval
    resamples the pairs (all tasks pooled: with 1-3 samples a task, resampling within each task would
    give a task whose samples agree no spread at all). The p-value is the two-sided randomization test
    of "no difference": every pair's sign flipped at random (exactly, over every sign pattern, when at
    most 16 pairs differ): 3 losses and no win give p = 0.25. Read the p-value where few samples differ:
    a bootstrap never draws a sign it has not seen, so when every differing sample goes one way its
    interval can exclude 0 at p = 0.125."""
    import numpy as np

    score: dict = {}  # (ctx, protocol, policy, budget) -> {(task, sample index): score}
    for r in runs:
        score.setdefault((r["ctx"], r["protocol"], r["policy"], r["budget"]), {})[(r["task"], r["index"])] = r["score"]
    order = _order(configs)
    out = []
    for ctx in meta["lengths"]:
        for proto, pol, b in order:
            if pol != reference:
                continue
            for proto2, other, b2 in order:
                if proto2 != proto or other == reference or (b2 != b and other != FULL):
                    continue
                diffs: dict = {}
                theirs = score.get((ctx, proto, other, b2), {})
                for (task, idx), sc in score.get((ctx, proto, reference, b), {}).items():
                    if (task, idx) in theirs:
                        diffs.setdefault(task, []).append(sc - theirs[(task, idx)])
                if not diffs:
                    continue
                d = np.concatenate([np.asarray(v, dtype=np.float64) for _, v in sorted(diffs.items())])
                w = np.concatenate([np.full(len(v), 1.0 / (len(diffs) * len(v))) for _, v in sorted(diffs.items())])
                delta = float(w @ d)
                rng = np.random.default_rng(seed)
                pick = rng.integers(0, d.size, size=(BOOTSTRAP, d.size))
                boot = (w[pick] * d[pick]).sum(axis=1) / w[pick].sum(axis=1)
                lo, hi = np.percentile(boot, [2.5, 97.5])
                out.append({"ctx": ctx, "protocol": proto, "budget": b, "reference": reference, "other": other,
                            "other_label": _label(other, b2), "n_tasks": len(diffs), "n": int(d.size),
                            "delta": delta, "ci95_low": float(lo), "ci95_high": float(hi),
                            "p": sign_flip_p(w * d, rng), "wins": int((d > 0).sum()), "losses": int((d < 0).sum())})
    return out


SIGN_FLIPS = 20000


def sign_flip_p(x, rng) -> float:
    """Two-sided p of the randomization test that the terms x sum to 0 by chance: each nonzero term's
    sign flipped with probability 1/2; every pattern when there are at most 16, else SIGN_FLIPS random
    ones (then (1 + hits) / (1 + draws))."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    x = x[x != 0]
    if x.size == 0:
        return 1.0
    obs = abs(x.sum()) * (1 - 1e-12)  # (rounding: the observed pattern itself counts)
    if x.size <= 16:
        signs = 1 - 2 * ((np.arange(2 ** x.size)[:, None] >> np.arange(x.size)) & 1)
        return float(np.mean(np.abs(signs @ x) >= obs))
    signs = rng.choice(np.array([-1.0, 1.0]), size=(SIGN_FLIPS, x.size))
    return float((1 + np.sum(np.abs(signs @ x) >= obs)) / (1 + SIGN_FLIPS))


def _label(policy: str, budget: float) -> str:
    return FULL if policy == FULL else f"{policy}@{budget:g}"


def _mean(xs) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _pct(x: Optional[float]) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def groups(obj: dict):
    """(length, protocol, summary rows) of each (length, protocol) that has rows, in the run's order."""
    rows = obj["summary"]["rows"]
    for ctx in obj["meta"]["lengths"]:
        for proto in obj["meta"]["protocols"]:
            rs = [r for r in rows if r["ctx"] == ctx and r["protocol"] == proto]
            if rs:
                yield ctx, proto, rs


def _budget_name(b: float) -> str:
    return f"{b:g}" if b < 1 else f"{b:g} tok"


def overview(obj: dict) -> str:
    """One markdown table per length, the one to compare policies by: rows the policies, columns each
    protocol's budgets, cells the average over the tasks (x 100; the full cache in the first budget's
    column of each protocol). Empty when a length has a single protocol and budget."""
    meta = obj["meta"]
    out = []
    for ctx in meta["lengths"]:
        rows = [r for r in obj["summary"]["rows"] if r["ctx"] == ctx]
        cols = []  # (protocol, budget) in the run's order, the full cache left out
        for r in rows:
            if r["policy"] != FULL and (r["protocol"], r["budget"]) not in cols:
                cols.append((r["protocol"], r["budget"]))
        if len(cols) < 2:
            continue
        policies = []
        for r in rows:
            if r["policy"] not in policies:
                policies.append(r["policy"])
        cell = {(r["policy"], r["protocol"], r["budget"]): r for r in rows}
        n_tasks = max(r["avg"]["n_tasks"] for r in rows)
        out.append(f"**{ctx} tokens, average over {n_tasks} task(s), x 100** (columns: protocol budget; the full "
                   f"cache under each protocol's first column; * not every task has all its samples yet)\n")
        out.append("| policy | " + " | ".join(f"{p} {_budget_name(b)}" for p, b in cols) + " |")
        out.append("|---|" + "---:|" * len(cols))
        for pol in policies:
            cells = []
            for i, (proto, b) in enumerate(cols):
                first = i == 0 or cols[i - 1][0] != proto
                r = cell.get((pol, proto, 1.0 if pol == FULL else b)) if pol != FULL or first else None
                cells.append("" if r is None else _pct(r["avg"]["mean"]) + ("" if r["complete"] else "*"))
            out.append(f"| {pol} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _signed(x: float) -> str:
    return f"{100 * x:+.1f}"


def paired_tables(obj: dict) -> str:
    """Per (length, protocol): the reference policy minus each other policy (rows) at each budget
    (columns), x 100, with the 95% bootstrap interval, the samples won/lost and the sign-flip p."""
    pr = obj["summary"].get("paired") or []
    out = []
    for ctx in obj["meta"]["lengths"]:
        for proto in obj["meta"]["protocols"]:
            rs = [r for r in pr if r["ctx"] == ctx and r["protocol"] == proto]
            if not rs:
                continue
            budgets, others = [], []
            for r in rs:
                if r["budget"] not in budgets:
                    budgets.append(r["budget"])
                if r["other"] not in others:
                    others.append(r["other"])
            cell = {(r["other"], r["budget"]): r for r in rs}
            ref = rs[0]["reference"]
            out.append(f"**{ctx} tokens, protocol {proto}: {ref} minus each policy at the same budget, on the same "
                       f"prompts** (x 100; [95% bootstrap interval]; samples where {ref} scored higher / lower; "
                       f"p of no difference, sign-flip test)\n")
            out.append("| other | " + " | ".join(_budget_name(b) for b in budgets) + " |")
            out.append("|---|" + "---:|" * len(budgets))
            for o in others:
                cells = []
                for b in budgets:
                    r = cell.get((o, b))
                    cells.append("" if r is None else f"{_signed(r['delta'])} [{_signed(r['ci95_low'])}, "
                                                      f"{_signed(r['ci95_high'])}] {r['wins']}/{r['losses']} "
                                                      f"p={r['p']:.2g}")
                out.append(f"| {o} | " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out)


def tables(obj: dict, configs=None) -> str:
    """The overview (per length: policies x protocol budgets, task averages), then one markdown table per
    (length, protocol): rows policy@budget, columns the tasks (mean score x 100), their average with its
    95% interval, the KV kept (mean fraction of the compressed span)."""
    meta = obj["meta"]
    tasks = list(meta["tasks"])
    model = os.path.basename(meta["model"])
    ov = overview(obj)
    out = [ov] if ov else []
    pt = paired_tables(obj)
    if pt:
        out.append(pt)
    for ctx, proto, rs in groups(obj):
        ns = sorted({s["n"] for r in rs for s in r["tasks"].values()})
        nsamp = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
        out.append(f"**{ctx} tokens, protocol {proto}**: {model}, template {meta['template']['mode']}, seed "
                   f"{meta['seed']}, {nsamp} sample(s) per task{' (partial)' if obj.get('partial') else ''}; "
                   f"scores x 100; avg over {len(tasks)} task(s) +/- 95% interval (Wilson)\n")
        cols = [SHORT.get(t, t) for t in tasks]
        avg_name = f"avg{len(tasks)}" if len(tasks) > 1 else "avg"
        out.append("| policy@budget | " + " | ".join(cols) + f" | {avg_name} | KV kept |")
        out.append("|---|" + "---:|" * (len(cols) + 2))
        for r in rs:
            cells = [_pct(r["tasks"][t]["mean"]) if t in r["tasks"] else "–" for t in tasks]
            a = r["avg"]
            avg = f"{_pct(a['mean'])} ± {100 * a['ci95_half']:.1f}" + ("" if r["complete"] else "*")
            kept = "100%" if r["policy"] == FULL else f"{100 * r['kept_fraction_mean']:.1f}%"
            if r["policy"].split(":", 1)[0] in MASKING:
                kept += " (top-k attention)"
            out.append(f"| {r['label']} | " + " | ".join(cells) + f" | {avg} | {kept} |")
        if any(not r["complete"] for r in rs):
            out.append("\n\\* not every task has all its samples yet")
        out.append("")
    return "\n".join(out)


def _csv_value(k: str, v):
    if k == "answers" and isinstance(v, list):
        return " | ".join(str(x) for x in v)
    return v


def write_outputs(out: str, obj: dict, configs) -> list[str]:
    """DIR/ruler.json, ruler.csv and ruler.md, each written whole or not at all (the plots: plots.write_plots)."""
    files = [os.path.join(out, "ruler.json"), os.path.join(out, "ruler.csv"), os.path.join(out, "ruler.md")]
    cli.write_json(files[0], obj, indent=1)
    with cli.atomic_write(files[1], newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in obj["runs"]:
            w.writerow({k: _csv_value(k, r.get(k)) for k in CSV_FIELDS})
    with cli.atomic_write(files[2]) as f:
        f.write(tables(obj, configs))
    return files
