"""Line styles and axis labels shared by the sweep's and the long-context harness's plots.

Matplotlib's default cycle has 10 colours and the policy list has 11 (more with variants), so the
11th line would share the 1st's colour; each series gets a colour and, past ten, another marker
and a dashed line."""
from __future__ import annotations

_MARKERS = "osD^v"


def series_style(k: int) -> dict:
    """Plot keywords of the k-th series: tab10 colour, then marker and line style by round."""
    rnd = k // 10
    return {"color": f"C{k % 10}", "marker": _MARKERS[rnd % len(_MARKERS)],
            "linestyle": "-" if rnd == 0 else "--"}


def plain_log_labels(ax, values) -> None:
    """Plain numbers (12, 15) on a log y axis spanning less than a decade, where matplotlib would
    label the minor ticks as 1.2x10^1."""
    from matplotlib.ticker import FuncFormatter

    vals = [v for v in values if v and v > 0]
    if vals and max(vals) / min(vals) < 10:
        fmt = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(fmt)
        ax.yaxis.set_minor_formatter(fmt)
