"""The long-context evaluation's figures (matplotlib, optional: none without it).

  acc_vs_budget_<len>_<protocol>.png   mean score vs the budget as a fraction of the compressed span (a token
                                       budget B at B / mean span, so both kinds share one axis), one panel
                                       per task and one for the average, a line per policy, the full cache
                                       dashed
  needle_<policy>_<budget>_<protocol>.png   the needle test's heat map, depth (%) x length, ReST-KV's style
                                       (mean ROUGE-1 x 10 per cell, 0 red .. 10 green)
  needle_all_<protocol>.png            those maps side by side, one colour scale (2 or more configurations)
"""

from __future__ import annotations

import math
import os

from .. import cli
from ..eval.plotstyle import series_style
from ..eviction import FULL
from .report import groups

# run_needle_in_haystack.py's colour map (red, yellow, green)
NEEDLE_COLOURS = ["#F0496E", "#EBB839", "#0CD79F"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(plt, fig, path: str) -> str:
    with cli.atomic_write(path, "wb") as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)
    return path


def write_plots(out: str, obj: dict) -> list[str]:
    plt = _pyplot()
    if plt is None:
        return []
    return _acc_vs_budget(plt, out, obj) + _needle_maps(plt, out, obj)


def _fname(x) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(x))


def _acc_vs_budget(plt, out: str, obj: dict) -> list[str]:
    tasks = list(obj["meta"]["tasks"])
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    written = []
    for ctx, proto, rs in groups(obj):
        panels = tasks + (["avg"] if len(tasks) > 1 else [])
        ncol = min(4, len(panels))
        nrow = math.ceil(len(panels) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.3 * nrow), squeeze=False)
        full = next((r for r in rs if r["policy"] == FULL), None)
        policies = list(dict.fromkeys(r["policy"] for r in rs if r["policy"] != FULL))
        for k, name in enumerate(panels):
            ax = axes[k // ncol][k % ncol]

            def value(r):
                s = r["avg"] if name == "avg" else r["tasks"].get(name)
                return None if s is None else 100 * s["mean"]

            for j, p in enumerate(policies):
                pts = sorted((r["budget_fraction"], value(r)) for r in rs
                             if r["policy"] == p and value(r) is not None and r["budget_fraction"])
                if pts:
                    ax.plot([x for x, _ in pts], [y for _, y in pts], label=p, **series_style(j))
            if full is not None and value(full) is not None:
                ax.axhline(value(full), color="k", linestyle="--", linewidth=0.8, label="full cache")
            ax.set_xscale("log")
            xs = sorted({round(r["budget_fraction"], 3) for r in rs if r["budget_fraction"]})
            ax.xaxis.set_major_locator(FixedLocator(xs))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.3g}"))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.tick_params(axis="x", labelsize=7, rotation=45)
            ax.set_ylim(-3, 103)
            ax.set_title("average" if name == "avg" else name, fontsize=10)
            ax.set_xlabel("budget (fraction of the compressed span)", fontsize=8)
            ax.set_ylabel("score x 100", fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
        for k in range(len(panels), nrow * ncol):
            axes[k // ncol][k % ncol].axis("off")
        handles, labels = axes[0][0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), fontsize=8)
        fig.suptitle(f"{os.path.basename(obj['meta']['model'])}: {ctx} tokens, protocol {proto}", fontsize=11)
        fig.tight_layout(rect=(0, 0.1 if nrow == 1 else 0.05, 1, 1))
        written.append(_save(plt, fig, os.path.join(out, f"acc_vs_budget_{ctx}_{_fname(proto)}.png")))
    return written


def _needle_grid(cs: list) -> tuple[list, list, list]:
    """(lengths, depths, grid[depth][length] = mean score x 10, NaN where not run) of one configuration's cells"""
    lengths = sorted({c["ctx"] for c in cs})
    depths = sorted({c["depth"] for c in cs})
    grid = [[float("nan")] * len(lengths) for _ in depths]
    for c in cs:
        grid[depths.index(c["depth"])][lengths.index(c["ctx"])] = 10 * c["mean"]
    return lengths, depths, grid


def _draw_needle(ax, cmap, cs: list, title: str, labels: bool = True, xlabel: bool = True, fontsize: int = 7):
    lengths, depths, grid = _needle_grid(cs)
    im = ax.imshow(grid, cmap=cmap, vmin=0, vmax=10, aspect="auto", origin="upper")
    ax.set_xticks(range(len(lengths)))
    ax.set_xticklabels([str(n) for n in lengths], rotation=45 if len(lengths) > 6 else 0)
    ax.set_yticks(range(len(depths)))
    ax.set_yticklabels([f"{d:g}" for d in depths] if labels else [])
    if xlabel:
        ax.set_xlabel("context length (tokens)")
    if labels:
        ax.set_ylabel("needle depth (%)")
    for i in range(len(depths)):
        for j in range(len(lengths)):
            if not math.isnan(grid[i][j]):
                ax.text(j, i, f"{grid[i][j]:.1f}", ha="center", va="center", fontsize=fontsize)
    ax.set_title(title, fontsize=10)
    return im


def _needle_maps(plt, out: str, obj: dict) -> list[str]:
    """a heat map per (protocol, policy, budget), and per protocol with several configurations one figure
    holding them all side by side (needle_all_<protocol>.png), on one colour scale"""
    cells = [c for c in obj["summary"].get("needle") or [] if c["task"] == "needle"]
    if not cells:
        return []
    from matplotlib.colors import LinearSegmentedColormap

    cmap = LinearSegmentedColormap.from_list("restkv_needle", NEEDLE_COLOURS)
    written = []
    keys = list(dict.fromkeys((c["protocol"], c["policy"], c["budget"]) for c in cells))
    of = {k: [c for c in cells if (c["protocol"], c["policy"], c["budget"]) == k] for k in keys}
    label = {k: FULL if k[1] == FULL else f"{k[1]}@{k[2]:g}" for k in keys}
    for key in keys:
        proto, pol, b = key
        lengths, depths, _ = _needle_grid(of[key])
        fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(lengths) + 2.5), 0.45 * len(depths) + 1.8))
        im = _draw_needle(ax, cmap, of[key], f"needle: {label[key]}, {proto}")
        fig.colorbar(im, ax=ax, label="score (ROUGE-1 x 10)")
        fig.tight_layout()
        written.append(_save(plt, fig, os.path.join(out, f"needle_{_fname(pol)}_{b:g}_{_fname(proto)}.png")))
    for proto in dict.fromkeys(k[0] for k in keys):
        ks = [k for k in keys if k[0] == proto]
        if len(ks) < 2:
            continue
        ncol = min(4, len(ks))
        nrow = (len(ks) + ncol - 1) // ncol
        lengths, depths, _ = _needle_grid(cells)
        w, h = max(3.0, 0.8 * len(lengths) + 1.2), 0.4 * len(depths) + 1.6
        fig, axes = plt.subplots(nrow, ncol, figsize=(w * ncol + 1.2, h * nrow), squeeze=False)
        for n, k in enumerate(ks):
            im = _draw_needle(axes[n // ncol][n % ncol], cmap, of[k], label[k], labels=n % ncol == 0,
                              xlabel=n + ncol >= len(ks), fontsize=6)
        for n in range(len(ks), nrow * ncol):
            axes[n // ncol][n % ncol].axis("off")
        fig.subplots_adjust(hspace=0.35)
        fig.colorbar(im, ax=axes, label="score (ROUGE-1 x 10)", shrink=0.8)
        fig.suptitle(f"needle in a haystack, {proto}: depth x length per policy@budget", fontsize=11)
        written.append(_save(plt, fig, os.path.join(out, f"needle_all_{_fname(proto)}.png")))
    return written
