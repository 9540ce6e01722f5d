"""Drawing primitives the figures are made of: panels of lines, grouped bars, a table, a placeholder.

- The edits axis is symmetric-log: linear on [0, 1], logarithmic above, so that 0 edits
  is on the axis.
- Lines and bars are means over seeds; with several seeds, bands / error bars are ±1 SD.
"""

from __future__ import annotations

import math
import textwrap
from typing import Sequence

import numpy as np
import pandas as pd

from .style import LINESTYLES, MARKERS, _pyplot, palette

EDITS_LABEL = "number of edits (log scale; 0 = unedited)"
SCORE_LABEL = "score (0–1)"
PERPLEXITY_LABEL = "perplexity (log scale; lower is better)"


def _fmt_tick(v: float) -> str:
    return f"{int(v):,}" if float(v).is_integer() else f"{v:g}"


def _seed_stats(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    # First average anything but the seed that shares a key (should not happen), then over seeds.
    per_seed = df.groupby(keys + ["seed"], dropna=False, sort=False)["value"].mean().reset_index()
    return (per_seed.groupby(keys, dropna=False, sort=False)["value"]
            .agg(mean="mean", sd="std", n="count").reset_index())


def facet_lines(df: pd.DataFrame, *, x: str, hue: str, col: str, row: str | None = None, style: str | None = None,
                hue_order: Sequence | None = None, style_order: Sequence | None = None,
                col_order: Sequence | None = None, row_order: Sequence | None = None,
                xscale: str | None = "symlog", xlabel: str = EDITS_LABEL, ylabel: str = SCORE_LABEL,
                title: str = "", subtitle: str = "", reference: pd.DataFrame | None = None,
                reference_label: str = "unedited model", col_wrap: int = 4, ylim: tuple | None = None,
                hue_title: str | None = None, style_title: str | None = None, hue_labels: dict | None = None):
    """Lines of value against `x`, one per hue (and style) level, in a grid of panels.

    Means over seeds; a ±1 SD band where a point has several seeds. `reference` (columns
    `col`, optional `row`, `value`) draws a dashed horizontal line per panel.
    """
    if df.empty:
        return None  # publish() draws a placeholder that says so
    plt = _pyplot()
    from matplotlib.lines import Line2D

    hue_order = list(hue_order) if hue_order is not None else sorted(df[hue].unique())
    col_order = list(col_order) if col_order is not None else sorted(df[col].unique())
    single = None  # the one row level, named in every panel's title instead of a grid row
    if row is not None:
        row_order = list(row_order) if row_order is not None else sorted(df[row].unique())
        if len(row_order) == 1:
            row, single = None, row_order[0]
    style_order = (list(style_order) if style_order is not None else sorted(df[style].unique())) if style else [None]
    colours = palette(hue_order)
    hue_labels = hue_labels or {}

    if row is None:
        n = len(col_order)
        ncols = min(col_wrap, n)
        nrows = math.ceil(n / ncols)
        cells = [(None, c) for c in col_order]
    else:
        ncols, nrows = len(col_order), len(row_order)
        cells = [(r, c) for r in row_order for c in col_order]
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.5 * ncols + 0.5, 2.9 * nrows + 0.2), squeeze=False)
    keys = [k for k in (row, col, hue, style, x) if k is not None]
    stats = _seed_stats(df, keys)
    several = bool(len(stats)) and stats["n"].max() > 1
    xs = sorted(df[x].unique())

    for i, ax in enumerate(axes.flat):
        if i >= len(cells):
            ax.set_visible(False)
            continue
        r, c = cells[i]
        panel = stats[stats[col] == c]
        if r is not None:
            panel = panel[panel[row] == r]
        for h_i, h in enumerate(hue_order):
            for s_i, s in enumerate(style_order):
                line = panel[panel[hue] == h]
                if style:
                    line = line[line[style] == s]
                if line.empty:
                    continue
                line = line.sort_values(x)
                marker = MARKERS[(s_i if style else h_i) % len(MARKERS)]
                ax.plot(line[x], line["mean"], color=colours[h], marker=marker, markersize=5,
                        linestyle=LINESTYLES[s_i % len(LINESTYLES)] if style else "-", linewidth=1.8)
                if several:
                    sd = line["sd"].fillna(0.0)
                    ax.fill_between(line[x], line["mean"] - sd, line["mean"] + sd, color=colours[h], alpha=0.15,
                                    linewidth=0)
        if reference is not None and len(reference):
            ref = reference[reference[col] == c]
            if r is not None and row in ref:
                ref = ref[ref[row] == r]
            if len(ref):
                ax.axhline(float(ref["value"].mean()), color="0.35", linestyle="--", linewidth=1.2, zorder=0)
        if panel.empty:
            ax.axis("off")
            ax.text(0.5, 0.5, f"{r}\n{c}\nnot run" if r is not None else f"{c}\nnot run", ha="center",
                    va="center", color="0.4", transform=ax.transAxes)
            continue
        if xscale == "symlog":
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xlim(left=0 if min(xs, default=0) >= 0 else None)
        elif xscale == "log":
            ax.set_xscale("log")
        if xs:
            ax.set_xticks(xs)
            ax.set_xticklabels([_fmt_tick(v) for v in xs], rotation=0 if len(xs) < 6 else 45)
            ax.minorticks_off()
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_title(f"{r}\n{c}" if r is not None else f"{single}\n{c}" if single is not None else str(c))
        first_col = (i % ncols) == 0
        last_row = (i // ncols) == nrows - 1 or (row is None and i + ncols >= len(cells))
        # A perplexity panel (unbounded, lower is better) among 0–1 scores gets its own label and a
        # log axis: a collapse to 1e50 would flatten its line on a linear one.
        perplexity = ylabel == SCORE_LABEL and float(panel["mean"].max()) > 1.0
        if perplexity:
            ax.set_yscale("log")
        ax.set_ylabel(PERPLEXITY_LABEL if perplexity else ylabel if first_col else "")
        ax.set_xlabel(xlabel if last_row else "")

    handles = [Line2D([], [], color=colours[h], marker=MARKERS[i % len(MARKERS)] if not style else None,
                      linewidth=2, label=hue_labels.get(h, str(h))) for i, h in enumerate(hue_order)]
    legend = fig.legend(handles=handles, title=hue_title or hue, loc="upper left", bbox_to_anchor=(1.0, 0.92),
                        frameon=False)
    if style:
        fig.add_artist(legend)
        style_handles = [Line2D([], [], color="0.25", marker=MARKERS[i % len(MARKERS)],
                                linestyle=LINESTYLES[i % len(LINESTYLES)], label=str(s))
                         for i, s in enumerate(style_order)]
        fig.legend(handles=style_handles, title=style_title or style, loc="upper left",
                   bbox_to_anchor=(1.0, 0.92 - 0.05 * (len(hue_order) + 2)), frameon=False)
    if reference is not None and len(reference):
        fig.legend(handles=[Line2D([], [], color="0.35", linestyle="--", label=reference_label)],
                   loc="lower left", bbox_to_anchor=(1.0, 0.05), frameon=False)
    fig.suptitle(title + (f"\n{subtitle}" if subtitle else ""), y=1.0, va="bottom")
    fig.tight_layout()
    return fig


def facet_bars(df: pd.DataFrame, *, x: str, hue: str, panel: str, x_order: Sequence, hue_order: Sequence,
               panel_order: Sequence, ylabel: str = SCORE_LABEL, title: str = "", subtitle: str = "",
               ylim: tuple | None = (0, 1.05), hue_title: str | None = None, col_wrap: int = 3):
    """Grouped bars: groups = `x` levels, bars = `hue` levels, one panel per `panel` level; ±1 SD over seeds."""
    if df.empty or not len(panel_order):
        return None
    plt = _pyplot()
    from matplotlib.patches import Patch

    n = len(panel_order)
    ncols = min(col_wrap, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(4.8, 0.55 * len(hue_order) * len(x_order)) * ncols,
                                                    3.4 * nrows + 0.2), squeeze=False)
    hue_order = list(hue_order)
    colours = palette(hue_order)
    stats = _seed_stats(df, [panel, x, hue])
    hatches = ("", "//", "..", "xx", "\\\\", "oo", "--", "++")
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_visible(False)
            continue
        p = panel_order[i]
        sub = stats[stats[panel] == p]
        here = [h for h in hue_order if h in set(sub[hue])]
        width = 0.8 / max(len(here), 1)
        for h in here:
            h_i, k = hue_order.index(h), here.index(h)
            bars = sub[sub[hue] == h].set_index(x).reindex(x_order)
            pos = np.arange(len(x_order)) + (k - (len(here) - 1) / 2) * width
            err = bars["sd"].fillna(0).to_numpy() if stats["n"].max() > 1 else None
            ax.bar(pos, bars["mean"].to_numpy(), width=width * 0.95, color=colours[h], yerr=err, capsize=2,
                   hatch=hatches[h_i % len(hatches)], edgecolor="white", linewidth=0.5)
        ax.set_xticks(np.arange(len(x_order)))
        ax.set_xticklabels(list(x_order))
        ax.grid(axis="x", visible=False)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_title(str(p))
        ax.set_ylabel(ylabel if i % ncols == 0 else "")
    handles = [Patch(facecolor=colours[h], hatch=hatches[i % len(hatches)], edgecolor="white", label=str(h))
               for i, h in enumerate(hue_order)]
    fig.legend(handles=handles, title=hue_title or hue, loc="upper left", bbox_to_anchor=(1.0, 0.92), frameon=False)
    fig.suptitle(title + (f"\n{subtitle}" if subtitle else ""), y=1.0, va="bottom")
    fig.tight_layout()
    return fig


def table_figure(table: pd.DataFrame, title: str, subtitle: str = ""):
    """A table drawn as a figure (for the PNG of a paper table)."""
    plt = _pyplot()
    flat = table.reset_index()
    n_rows, n_cols = flat.shape
    fig, ax = plt.subplots(figsize=(max(6.0, 1.45 * n_cols + 1), 0.3 * (n_rows + 1)))
    ax.axis("off")
    t = ax.table(cellText=flat.astype(str).to_numpy(), colLabels=[str(c) for c in flat.columns],
                 bbox=[0, 0, 1, 1], cellLoc="right", colLoc="center")
    t.auto_set_font_size(False)
    t.set_fontsize(10)
    t.auto_set_column_width(list(range(n_cols)))
    for (r, _), cell in t.get_celld().items():
        if r == 0:
            cell.set_text_props(fontweight="bold")
            cell.set_facecolor("#e8e8e8")
        elif r % 2 == 0:
            cell.set_facecolor("#f6f6f6")
    fig.suptitle(title + (f"\n{subtitle}" if subtitle else ""), y=1.0, va="bottom")
    return fig


def placeholder_figure(title: str, message: str):
    """A figure that states what is missing, so the rule's PNG exists and says why it is empty."""
    plt = _pyplot()
    lines = []
    for para in message.split("\n"):
        lines += textwrap.wrap(para, 95) or [""]
    fig, ax = plt.subplots(figsize=(9.5, 1.4 + 0.24 * len(lines)))
    ax.axis("off")
    ax.text(0.0, 1.0, title, ha="left", va="top", fontsize=13, fontweight="bold", transform=ax.transAxes)
    ax.text(0.0, 0.82 if len(lines) > 4 else 0.7, "\n".join(lines), ha="left", va="top", fontsize=10.5,
            family="monospace", transform=ax.transAxes)
    return fig
