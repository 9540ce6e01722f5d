"""The papers' figures from the tidy tables: data selection, plots, placeholders, index page.

The notebooks in notebooks/ are thin: each loads the tables, calls one figure function of
this module and `publish`es its result. A figure function returns a `FigureResult`: the
matplotlib figure, the numbers it shows (a tidy frame, saved as CSV next to the PNG), and,
when the dimension it needs is absent from the tables, a `missing` statement saying what
is missing and which config keys produce it. `publish` then draws a placeholder with that
statement, so every rule output exists and no notebook fails for lack of data.

Conventions shared by every figure:

- Scores are the tables' values (fractions in [0, 1]); each task is drawn with its headline
  metric (the first of the task's METRICS, e.g. GSM8K solve rate, MuTual R4@1, SAMSum mean
  ROUGE, CoNLL-03 entity F1), the one the papers report.
- Rows with edits = 0 are the unedited model. The edits axis is symmetric-log: linear on
  [0, 1], logarithmic above, so that 0 edits is on the axis.
- Lines and bars are means over seeds; with several seeds, bands / error bars are ±1 SD.
- Colours come from seaborn's colour-blind-safe palette, and markers / line styles differ
  too, so lines stay apart in greyscale.
- A model counts as a chat (instruction-tuned) model when its config name or its hub id
  contains "chat" or "instruct", or ends in "-it" (`is_chat_model`). Its base model is
  the one whose name is the same without that marker (`model_family`). A model's size is
  the number of parameters stored in its converted safetensors files
  (`count_parameters`), so no config key is needed for either.
"""

from __future__ import annotations

import html
import json
import math
import re
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

COLUMNS = ["model", "dataset", "method", "regulariser", "seed", "edits", "task", "metric", "value"]
TABLES = ("downstream", "editing", "weight_stats")

# Gu et al. 2024's eight zero-shot tasks and Li et al. 2024's seven benchmarks, in the
# papers' order, with the metric each paper reports.
GU_TASKS = {"gsm8k": "solve_rate", "rte": "accuracy", "nq_open": "exact_match", "boolq": "exact_match",
            "mutual": "r4_at_1", "samsum": "rouge_mean", "conll03": "f1", "sst2": "accuracy"}
LI_TASKS = {"mmlu": "accuracy", "bbh": "exact_match", "gsm8k_8shot": "exact_match", "commonsenseqa": "accuracy",
            "triviaqa": "exact_match", "truthfulqa": "mc1", "toxigen": "accuracy"}
HEADLINE_METRICS = {**GU_TASKS, **LI_TASKS}
# Li et al. Sec. 5 groups abilities; NQ (open-domain QA) and Gu's GSM8K join the groups
# they belong to, so that a Gu-task run still gets the figure.
ABILITY_CATEGORIES = {
    "knowledge": ("mmlu", "triviaqa", "nq_open"),
    "reasoning": ("bbh", "gsm8k_8shot", "gsm8k", "commonsenseqa"),
    "safety": ("truthfulqa", "toxigen"),
}
SAFETY_METRICS = (("truthfulqa", "mc1"), ("truthfulqa", "mc2"), ("toxigen", "accuracy"))
GU_REGULARISERS = ("none", "rect-20", "rect-40", "rect-60", "rect-80", "random-40", "pca-40")
EDITING_METRICS = ("reliability", "generalization", "locality")

TASK_LABELS = {"gsm8k": "GSM8K", "gsm8k_8shot": "GSM8K (8-shot)", "rte": "RTE", "nq_open": "Natural Questions",
               "boolq": "BoolQ", "mutual": "MuTual", "samsum": "SAMSum", "conll03": "CoNLL-03", "sst2": "SST-2",
               "mmlu": "MMLU", "bbh": "BBH", "commonsenseqa": "CommonsenseQA", "triviaqa": "TriviaQA",
               "truthfulqa": "TruthfulQA", "toxigen": "ToxiGen"}
METRIC_LABELS = {"solve_rate": "solve rate", "accuracy": "accuracy", "exact_match": "exact match",
                 "r4_at_1": "R4@1", "rouge_mean": "mean ROUGE-1/2/L", "f1": "entity F1", "mc1": "MC1", "mc2": "MC2",
                 "accuracy_norm": "length-normalised accuracy", "strict_match": "strict match"}
METHOD_LABELS = {"rome": "ROME", "memit": "MEMIT", "mend": "MEND", "kn": "KN", "pmet": "PMET", "serac": "SERAC",
                 "grace": "GRACE", "ft": "FT-L", "alphaedit": "AlphaEdit"}
METHOD_ORDER = ("kn", "mend", "rome", "memit", "pmet", "alphaedit", "ft", "serac", "grace")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))
EDITS_LABEL = "number of edits (log scale; 0 = unedited)"
SCORE_LABEL = "score (0–1)"

_CHAT = re.compile(r"chat|instruct|(?:^|[-_])it$", re.IGNORECASE)
_CHAT_SUFFIX = re.compile(r"[-_]?(?:chat|instruct|it)(?=$|[-_])", re.IGNORECASE)


# ---------------------------------------------------------------- loading and selecting


def load_tables(tables_dir: str | Path, names: Iterable[str] = TABLES, verbose: bool = True) -> dict[str, pd.DataFrame]:
    """The tidy tables as frames (an absent table is an empty frame); non-finite values are left out."""
    out = {}
    for name in names:
        path = Path(tables_dir) / f"{name}.csv"
        if not path.exists() or path.stat().st_size == 0:
            out[name] = pd.DataFrame(columns=COLUMNS)
            continue
        df = pd.read_csv(path, dtype={"model": str, "dataset": str, "method": str, "regulariser": str,
                                      "task": str, "metric": str})
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; expected {COLUMNS}")
        df = df[COLUMNS].copy()
        df["value"] = pd.to_numeric(df["value"], errors="raise").astype(float)
        df["seed"] = df["seed"].astype(int)
        df["edits"] = df["edits"].astype(int)
        bad = ~np.isfinite(df["value"].to_numpy())
        if bad.any() and verbose:
            # Infinite relative changes (weights that were exactly 0) cannot be drawn.
            print(f"{name}: leaving out {int(bad.sum())} non-finite values")
        out[name] = df[~bad].reset_index(drop=True)
    return out


def regulariser_key(name: str):
    """Gu et al.'s order: 'none', RECT, Random, PCA, then SVD and any other kind; by K numerically within a kind."""
    kind, _, pct = str(name).partition("-")
    try:
        k = float(pct)
    except ValueError:
        k = -1.0
    kinds = ("rect", "random", "pca", "svd")
    return (name != "none", kinds.index(kind) if kind in kinds else len(kinds), kind, k, name)


def method_key(name: str):
    base = str(name).split("_")[0]
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), name)


def task_key(name: str):
    order = list(GU_TASKS) + [t for t in LI_TASKS if t not in GU_TASKS]
    return (order.index(name) if name in order else len(order), name)


def method_label(name: str) -> str:
    return METHOD_LABELS.get(name, name)


def task_label(task: str, metric: str | None = None) -> str:
    label = TASK_LABELS.get(task, task)
    return f"{label}: {METRIC_LABELS.get(metric, metric)}" if metric else label


def headline_metric(task: str, available: Iterable[str]) -> str | None:
    """The metric a paper reports for `task`: the first of the task's METRICS that is present."""
    available = [m for m in available if m != "failed"]
    preferred = [HEADLINE_METRICS[task]] if task in HEADLINE_METRICS else []
    if not preferred:
        try:
            from editharm.evaluate.tasks import get_task

            preferred = list(get_task(task).METRICS)
        except (ValueError, ImportError):
            preferred = []
    for m in preferred:
        if m in available:
            return m
    return sorted(available)[0] if available else None


def method_specs(config: dict, methods: Iterable[str] = ()) -> dict[str, dict]:
    """Per method name: `family` (the implementing module's last part, or the name) and `batch_size`.

    A config entry like ``memit_b10: {module: editharm.methods.memit, batch_size: 10}`` is
    MEMIT in batches of 10; a method absent from the config edits one request at a time.
    """
    cfg = (config or {}).get("methods", {}) or {}
    out = {}
    for name in sorted(set(cfg) | set(methods)):
        spec = cfg.get(name) or {}
        module = spec.get("module")
        out[name] = {"family": module.rsplit(".", 1)[-1] if module else name,
                     "batch_size": int(spec.get("batch_size", 1) or 1)}
    return out


def _setting(df: pd.DataFrame) -> pd.Series:
    return df["model"].astype(str) + " · " + df["dataset"].astype(str)


def _drop_failed(df: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    failed = df[df.metric == "failed"]
    if len(failed):
        where = ", ".join(sorted({f"{r.method}/{r.regulariser} at {r.edits} edits on {r.task}"
                                  for r in failed.itertuples()})[:8])
        notes.append(f"{len(failed)} score(s) are missing because the edited model collapsed "
                     f"(NaN/Inf or no valid output): {where}. The reason is in the score JSON.")
    return df[df.metric != "failed"]


def headline_scores(downstream: pd.DataFrame, tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Downstream rows of each task's headline metric (of `tasks` when given), with a `panel` label."""
    df = downstream if tasks is None else downstream[downstream.task.isin(list(tasks))]
    df = df[df.metric != "failed"]
    keep = []
    for task, group in df.groupby("task", sort=False):
        metric = headline_metric(task, group.metric.unique())
        keep.append(group[group.metric == metric])
    if not keep:
        return df.iloc[0:0].assign(panel=pd.Series(dtype=str))
    out = pd.concat(keep, ignore_index=True)
    return out.assign(panel=[task_label(t, m) for t, m in zip(out.task, out.metric)])


def _paper_tasks(downstream: pd.DataFrame, paper_tasks: Sequence[str], paper: str, notes: list[str]) -> list[str]:
    """The paper's tasks that were run; else every task that was run, with a note."""
    present = [t for t in paper_tasks if t in set(downstream.task)]
    if present:
        absent = [t for t in paper_tasks if t not in present]
        if absent:
            notes.append(f"Not run (add them under `tasks:` in the config to include them): "
                         f"{', '.join(absent)}.")
        return present
    others = sorted(set(downstream.task), key=task_key)
    if others:
        notes.append(f"None of {paper}'s tasks ({', '.join(paper_tasks)}) are in the tables; showing the tasks "
                     "that were run instead. Add them under `tasks:` (e.g. configs/li2024.yaml) for the paper's "
                     "figure.")
    return others


def _describe(df: pd.DataFrame, spread: str = "bands/bars: ±1 SD over seeds") -> str:
    parts = []
    if "model" in df and len(df):
        parts.append("model: " + ", ".join(sorted(df.model.unique())))
    if "dataset" in df and len(df):
        parts.append("edits from: " + ", ".join(sorted(df.dataset.unique())))
    if "seed" in df and len(df):
        n = df.seed.nunique()
        parts.append(f"{n} seed{'s' if n > 1 else ''}" + (f"; {spread}" if n > 1 else ""))
    return "; ".join(parts)


# ---------------------------------------------------------------- results and publishing


@dataclass
class FigureResult:
    """One figure: what it is, the matplotlib figure, its numbers, and what is missing (if anything)."""

    name: str
    title: str
    paper: str
    figure: Any = None
    data: pd.DataFrame = field(default_factory=pd.DataFrame)
    missing: str | None = None
    notes: list[str] = field(default_factory=list)
    table: pd.DataFrame | None = None   # a paper table: saved as the CSV (with its index) instead of `data`
    shown: pd.DataFrame | None = None   # the table as displayed (formatted cells)

    @property
    def status(self) -> str:
        return "missing" if self.missing else "ok"


def _pyplot():
    import matplotlib

    if "inline" not in matplotlib.get_backend().lower() and not _in_notebook():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        shell = get_ipython()
        return shell is not None and hasattr(shell, "kernel")  # a Jupyter kernel (papermill), not a terminal
    except ImportError:
        return False


def setup_style() -> None:
    """Seaborn's whitegrid theme, colour-blind palette and font sizes legible at print size."""
    import seaborn as sns

    _pyplot()
    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind", font_scale=1.05)
    import matplotlib as mpl

    mpl.rcParams.update({"axes.titlesize": 11, "axes.labelsize": 11, "xtick.labelsize": 9.5,
                         "ytick.labelsize": 9.5, "legend.fontsize": 10, "legend.title_fontsize": 10.5,
                         "figure.titlesize": 13, "savefig.facecolor": "white"})


def palette(levels: Sequence) -> dict:
    import seaborn as sns

    colours = sns.color_palette("colorblind", max(len(levels), 1))
    return {level: colours[i % len(colours)] for i, level in enumerate(levels)}


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


def publish(result: FigureResult, out_dir: str | Path, dpi: int = 150, show: bool = True) -> Path:
    """Write <name>.png, <name>.csv (the numbers shown) and <name>.json (for the index); show them inline."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if result.missing:
        print(f"{result.title}: {result.missing}")
    for note in result.notes:
        print(f"Note: {note}")
    if result.figure is None:
        if not result.missing:
            result.missing = ("no data left to draw after selecting this figure's rows"
                              + (f" ({' '.join(result.notes)})" if result.notes else "") + ".")
            print(f"{result.title}: {result.missing}")
        result.figure = placeholder_figure(result.title, result.missing)
    png = out / f"{result.name}.png"
    result.figure.savefig(png, dpi=dpi, bbox_inches="tight")
    data = result.table if result.table is not None else result.data
    data.to_csv(out / f"{result.name}.csv", index=result.table is not None)
    meta = {"name": result.name, "title": result.title, "paper": result.paper, "status": result.status,
            "missing": result.missing, "notes": result.notes, "png": png.name,
            "created_unix": time.time(), "versions": figure_versions()}
    for col in ("model", "dataset", "method", "regulariser", "seed", "edits", "task", "tensor"):
        if col in result.data:
            meta[col + "s" if not col.endswith("s") else col] = sorted(
                {v.item() if hasattr(v, "item") else v for v in result.data[col].dropna().unique()},
                key=lambda v: (str(type(v)), v))
    (out / f"{result.name}.json").write_text(json.dumps(meta, indent=1, default=str))
    if show and _in_notebook():
        from IPython.display import Markdown, display

        if result.missing:
            display(Markdown(f"**Missing:** {result.missing}"))
        for note in result.notes:
            display(Markdown(f"*Note:* {note}"))
        _pyplot().show()
        if result.shown is not None or result.table is not None:
            display(result.shown if result.shown is not None else result.table)
        elif len(result.data):
            display(result.data.head(20))
    else:
        _pyplot().close(result.figure)
    return png


def figure_versions() -> dict[str, str]:
    from importlib import metadata

    from editharm.io import package_versions

    versions = package_versions()
    for name in ("matplotlib", "seaborn", "papermill", "nbconvert", "safetensors"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


# ---------------------------------------------------------------- drawing


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
        ax.set_ylabel(ylabel if first_col else "")
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


# ---------------------------------------------------------------- Gu et al. 2024


GU = "Gu et al. 2024 (EMNLP)"
LI = "Li et al. 2024 (NeurIPS)"


def _scored(tables: dict, notes: list[str]) -> pd.DataFrame | None:
    """The downstream table without failed checkpoints (listed in notes); None when nothing was scored."""
    ds = tables["downstream"]
    return None if ds.empty else _drop_failed(ds, notes)


def _no_downstream(name, title, paper):
    return FigureResult(name, title, paper, missing=(
        "no downstream scores in results/tables/downstream.csv. Set `tasks:` (e.g. the gu2024 tasks gsm8k, rte, "
        "nq_open, boolq, mutual, samsum, conll03, sst2) and at least one entry under `experiments:`."))


def _need_none(name, title, paper, data):
    regs = ", ".join(sorted(set(data.regulariser), key=regulariser_key)) or "none run"
    return FigureResult(name, title, paper, missing=(
        f"this figure shows unregularised editing, but no chain has regulariser `none` (found: {regs}). "
        "Add `none` to `experiments.<name>.regularisers`."))


def gu_fig3(tables: dict, config: dict | None = None) -> FigureResult:
    """Gu Fig. 3: downstream scores against the number of sequential instance edits, per method."""
    name, title = "gu_fig3", "Downstream scores after sequential instance editing (Gu et al. Fig. 3)"
    notes: list[str] = []
    ds = _scored(tables, notes)
    if ds is None:
        return _no_downstream(name, title, GU)
    specs = method_specs(config or {}, ds.method.unique())
    instance = [m for m in ds.method.unique() if specs[m]["batch_size"] == 1]
    if not instance:
        return FigureResult(name, title, GU, missing=(
            "every method in the tables edits in batches (methods.<name>.batch_size > 1); instance editing needs a "
            "method entry without batch_size (or batch_size: 1), e.g. `methods: {rome: {hparams_dir: "
            "configs/methods/rome}}`, listed in an experiment."), notes=notes)
    ds = ds[ds.method.isin(instance)]
    if "none" not in set(ds.regulariser):
        return _need_none(name, title, GU, ds)
    ds = ds[ds.regulariser == "none"]
    tasks = _paper_tasks(ds, list(GU_TASKS), "Gu et al.", notes)
    data = headline_scores(ds, tasks).assign(setting=lambda d: _setting(d))
    if len(data.method.unique()) == 1:
        notes.append("Only one method was run; list more under `experiments.<name>.methods` "
                     "(Gu et al.: kn, mend, rome, memit) to compare them.")
    methods = sorted(data.method.unique(), key=method_key)
    fig = facet_lines(data, x="edits", hue="method", hue_order=methods, col="panel",
                      col_order=[task_label(t, headline_metric(t, data[data.task == t].metric.unique()))
                                 for t in tasks if t in set(data.task)],
                      row="setting", title=title, subtitle=_describe(data), hue_title="method",
                      hue_labels={m: method_label(m) for m in methods})
    return FigureResult(name, title, GU, fig, data.drop(columns=["setting"]), notes=notes)


def _batch_missing(name, title, extra=""):
    return FigureResult(name, title, GU, missing=(
        "no batch-editing method in the tables. Batch size is a property of a method entry; add one per batch size, "
        "e.g. `methods: {memit_b10: {hparams_dir: configs/methods/memit, module: editharm.methods.memit, "
        "batch_size: 10}, memit_b100: {..., batch_size: 100}}`, list them in an experiment, and make each batch size "
        "a checkpoint of it (`experiments.<name>.checkpoints: [10, 20, ...]`, or the global `checkpoints`), "
        "not above `max_edits`." + extra))


def gu_fig4(tables: dict, config: dict | None = None) -> FigureResult:
    """Gu Fig. 4: batch-single editing: downstream scores after one batch of B edits, against B."""
    name, title = "gu_fig4", "Downstream scores after one batch edit, by batch size (Gu et al. Fig. 4)"
    notes: list[str] = []
    ds = _scored(tables, notes)
    if ds is None:
        return _no_downstream(name, title, GU)
    specs = method_specs(config or {}, ds.method.unique())
    batch = [m for m in ds.method.unique() if specs[m]["batch_size"] > 1]
    if not batch:
        return _batch_missing(name, title)
    ds = ds[ds.regulariser == "none"] if "none" in set(ds.regulariser) else ds
    families = {specs[m]["family"] for m in batch}
    # Batch size B: the checkpoint after the first batch, n = B; batch size 1: n = 1 of an instance chain.
    rows = []
    for m in ds.method.unique():
        spec = specs[m]
        if spec["family"] not in families:
            continue
        sel = ds[(ds.method == m) & (ds.edits == spec["batch_size"])]
        rows.append(sel.assign(batch_size=spec["batch_size"], family=spec["family"]))
    data = pd.concat(rows, ignore_index=True) if rows else ds.iloc[0:0]
    # Only (model, dataset) settings and families that have a batch size above 1 there.
    batched = data[data.batch_size > 1][["model", "dataset", "family"]].drop_duplicates()
    data = data.merge(batched, on=["model", "dataset", "family"])
    if data.empty:
        sizes = ", ".join(f"{m}: {specs[m]['batch_size']}" for m in sorted(batch))
        return _batch_missing(name, title, f" Found batch methods ({sizes}) but no checkpoint equal to their batch "
                                           "size in the tables.")
    tasks = _paper_tasks(data, list(GU_TASKS), "Gu et al.", notes)
    data = headline_scores(data, tasks).assign(setting=lambda d: _setting(d))
    base = headline_scores(ds[(ds.edits == 0) & ds.method.isin(batch)], tasks).assign(setting=lambda d: _setting(d))
    fam = sorted(data.family.unique(), key=method_key)
    fig = facet_lines(data, x="batch_size", hue="family", hue_order=fam, col="panel", row="setting",
                      xscale="log", xlabel="batch size (edits in one operation, log scale)",
                      reference=base[["setting", "panel", "value"]], title=title, subtitle=_describe(data),
                      hue_title="method", hue_labels={f: method_label(f) for f in fam})
    return FigureResult(name, title, GU, fig, data.drop(columns=["setting"]), notes=notes)


def gu_batch_sequential(tables: dict, config: dict | None = None) -> FigureResult:
    """Gu et al. batch-sequential editing: downstream scores against edits made in batches, per batch size."""
    name = "gu_batch_sequential"
    title = "Downstream scores after sequential batch editing (Gu et al., batch-sequential)"
    notes: list[str] = []
    ds = _scored(tables, notes)
    if ds is None:
        return _no_downstream(name, title, GU)
    specs = method_specs(config or {}, ds.method.unique())
    batch = [m for m in ds.method.unique() if specs[m]["batch_size"] > 1]
    if not batch:
        return _batch_missing(name, title, " Batch-sequential editing also needs max_edits above the batch size "
                                           "(several batches in a row).")
    ds = ds[ds.regulariser == "none"] if "none" in set(ds.regulariser) else ds
    families = {specs[m]["family"] for m in batch}
    data = ds[ds.method.map(lambda m: specs[m]["family"] in families)]
    data = data.assign(batch_size=data.method.map(lambda m: specs[m]["batch_size"]),
                       family=data.method.map(lambda m: specs[m]["family"]))
    batched = data[data.batch_size > 1][["model", "dataset", "family"]].drop_duplicates()
    data = data.merge(batched, on=["model", "dataset", "family"])
    several = data[(data.batch_size > 1) & (data.edits > data.batch_size)]
    if several.empty:
        notes.append("No batch chain has more than one batch yet (max_edits equals the batch size); raise "
                     "`experiments.<name>.max_edits` to see batches in a row.")
    tasks = _paper_tasks(data, list(GU_TASKS), "Gu et al.", notes)
    data = headline_scores(data, tasks)
    data = data.assign(setting=data.model + " · " + data.dataset + " · " + data.family.map(method_label),
                       batch=data.batch_size.map(lambda b: f"batch {b}"))
    order = [f"batch {b}" for b in sorted(data.batch_size.unique())]
    fig = facet_lines(data, x="edits", hue="batch", hue_order=order, col="panel", row="setting", title=title,
                      subtitle=_describe(data), hue_title="edits per operation")
    return FigureResult(name, title, GU, fig, data.drop(columns=["setting", "batch"]), notes=notes)


def _threshold_of(metric: str) -> float:
    return float(metric.removeprefix("share_above_"))


def weight_change_table(weight_stats: pd.DataFrame) -> pd.DataFrame:
    """Per (model, dataset, method, regulariser, seed, edits): share of elements whose relative change
    |dW/W| exceeds each threshold over all edited tensors (weighted by their sizes), and the Manhattan
    distance sum |dW| summed over them."""
    ws = weight_stats
    keys = ["model", "dataset", "method", "regulariser", "seed", "edits"]
    wide = ws.pivot_table(index=keys + ["task"], columns="metric", values="value", aggfunc="first")
    shares = sorted([c for c in wide.columns if c.startswith("share_above_")], key=_threshold_of)
    numel = wide["numel"] if "numel" in wide else pd.Series(1.0, index=wide.index)
    out = pd.DataFrame(index=wide.droplevel("task").index.unique())
    grouped = wide.groupby(level=keys)
    weights = numel.groupby(level=keys).sum()
    for s in shares:
        out[s] = (wide[s] * numel).groupby(level=keys).sum() / weights
    if "manhattan" in wide:
        out["manhattan"] = grouped["manhattan"].sum()
    out["tensors"] = grouped.size()
    return out.reset_index()


def gu_table1(tables: dict, config: dict | None = None) -> FigureResult:
    """Gu Table 1: share of elements over relative-change thresholds and Manhattan distance, by edits."""
    name, title = "gu_table1", "Change of the edited weights (Gu et al. Table 1)"
    ws = tables["weight_stats"]
    if ws.empty:
        return FigureResult(name, title, GU, missing=(
            "no weight statistics in results/tables/weight_stats.csv. They exist for methods that change weights "
            "(ROME, MEMIT, KN, MEND, PMET, FT, AlphaEdit; not SERAC or GRACE); list one in an experiment. "
            "Thresholds come from `weight_stats.thresholds`."))
    per_seed = weight_change_table(ws)
    keys = ["model", "dataset", "method", "regulariser", "edits"]
    metrics = [c for c in per_seed.columns if c.startswith("share_above_") or c == "manhattan"]
    mean = per_seed.groupby(keys)[metrics].mean()
    sd = per_seed.groupby(keys)[metrics].std()
    seeds = per_seed.seed.nunique()
    order = sorted(mean.index, key=lambda k: (k[0], k[1], method_key(k[2]), regulariser_key(k[3]), k[4]))
    mean, sd = mean.loc[order], sd.loc[order]

    def cell(m, s, pct):
        text = f"{100 * m:.2f}%" if pct else f"{m:,.0f}" if abs(m) >= 100 else f"{m:.4g}"
        if seeds > 1 and np.isfinite(s):
            text += f" ± {100 * s:.2f}" if pct else f" ± {s:,.0f}" if abs(s) >= 100 else f" ± {s:.2g}"
        return text

    shown = pd.DataFrame(index=mean.index)
    for c in metrics:
        label = f"|ΔW/W| > {_threshold_of(c):g}" if c != "manhattan" else "Manhattan Σ|ΔW|"
        shown[label] = [cell(m, s, c != "manhattan") for m, s in zip(mean[c], sd[c])]
    # The CSV holds the numbers (shares as fractions), mean and SD over seeds.
    table = mean.join(sd.add_suffix("_sd")) if seeds > 1 else mean.copy()
    table["seeds"] = seeds
    subtitle = ("|ΔW/W| > t: share of the edited tensors' elements whose relative change exceeds t; Manhattan: "
                "Σ|ΔW| over them, against the unedited weights\n"
                + _describe(per_seed, spread="cells: mean ± SD over seeds"))
    display = shown
    notes = []
    if len(display) > 40 and "none" in set(display.index.get_level_values("regulariser")):
        display = display[display.index.get_level_values("regulariser") == "none"]
    if len(display) > 40:
        display = display.iloc[:40]
    if len(display) < len(shown):
        notes.append(f"The PNG shows {len(display)} of {len(shown)} rows (unregularised first); the CSV, the notebook "
                     "and index.html hold them all.")
    fig = table_figure(display, title, subtitle)
    return FigureResult(name, title, GU, fig, per_seed, notes=notes, table=table, shown=shown)


def _chain_of(path: str | Path) -> dict:
    # results/weightstats/<model>/<dataset>/<method>/<reg>/seed<s>/n<N>/heatmaps.safetensors
    p = Path(path).parts
    return {"model": p[-7], "dataset": p[-6], "method": p[-5], "regulariser": p[-4],
            "seed": int(p[-3].removeprefix("seed")), "edits": int(p[-2].removeprefix("n")), "path": str(path)}


def gu_fig5(heatmaps: Sequence[str], config: dict | None = None, max_rows: int = 12) -> FigureResult:
    """Gu Fig. 5: heat maps of |dW| (cumulative change, mean-pooled) per chain (rows) and checkpoint (columns)."""
    name, title = "gu_fig5", "Where the edits change the weights: |ΔW| heat maps (Gu et al. Fig. 5)"
    files = [h for h in heatmaps if Path(h).exists()]
    if not files:
        return FigureResult(name, title, GU, missing=(
            "no heat maps (results/weightstats/.../heatmaps.safetensors). They come from the weight_stats jobs of "
            "weight-editing methods (ROME, MEMIT, KN, MEND, PMET, FT, AlphaEdit); list one in an experiment. "
            "Their resolution is `weight_stats.heatmap_size`."))
    from safetensors.numpy import load_file

    index = pd.DataFrame([_chain_of(h) for h in files])
    notes = []
    seed = int(index.seed.min())
    if index.seed.nunique() > 1:
        notes.append(f"Heat maps of seed {seed} only (of {index.seed.nunique()} seeds).")
    index = index[index.seed == seed]
    chain_keys = ["model", "dataset", "method", "regulariser"]
    chains = sorted({tuple(r) for r in index[chain_keys].itertuples(index=False)},
                    key=lambda k: (k[0], k[1], method_key(k[2]), regulariser_key(k[3])))
    if len(chains) > max_rows:
        notes.append(f"Showing {max_rows} of {len(chains)} chains (unregularised first); the CSV lists all.")
    edits = sorted(index.edits.unique())
    maps, rows = {}, []
    for key in chains:
        sub = index[(index[chain_keys] == pd.Series(key, index=chain_keys)).all(axis=1)]
        last = load_file(sub.sort_values("edits").path.iloc[-1])
        # The tensor that changed most at the last checkpoint (MEMIT and PMET edit several).
        tensor = max(last, key=lambda t: float(np.abs(last[t]).sum()))
        for r in sub.itertuples():
            loaded = load_file(r.path)
            for t, m in loaded.items():
                rows.append({**dict(zip(chain_keys, key)), "seed": seed, "edits": r.edits, "tensor": t,
                             "shown": t == tensor, "mean_abs_change": float(np.mean(m)),
                             "max_abs_change": float(np.max(m)), "share_cells_changed": float(np.mean(m > 0)),
                             "heatmap_shape": "x".join(map(str, m.shape))})
            if tensor in loaded:
                maps[(key, r.edits)] = (tensor, loaded[tensor])
    shown_chains = chains[:max_rows]
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    values = np.concatenate([m.ravel() for (k, _), (_, m) in maps.items() if k in shown_chains])
    positive = values[values > 0]
    vmax = float(positive.max()) if positive.size else 1.0
    vmin = max(float(np.quantile(positive, 0.01)) if positive.size else vmax * 1e-4, vmax * 1e-4)
    norm = LogNorm(vmin=vmin, vmax=vmax)
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad(cmap(0.0))
    nrows, ncols = len(shown_chains), len(edits)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.5 * ncols + 2.2, 2.3 * nrows + 1.0), squeeze=False,
                             layout="constrained")
    several_models = len({k[0] for k in shown_chains}) > 1
    image = None
    for i, key in enumerate(shown_chains):
        for j, n in enumerate(edits):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if (key, n) not in maps:
                ax.text(0.5, 0.5, "not run", ha="center", va="center", color="0.4", transform=ax.transAxes)
                ax.grid(False)
                continue
            tensor, m = maps[(key, n)]
            image = ax.imshow(np.where(m > 0, m, np.nan), norm=norm, cmap=cmap, aspect="auto",
                              interpolation="nearest")
            ax.grid(False)
            if i == 0:
                ax.set_title(f"after {n:,} edit{'s' if n > 1 else ''}")
            if j == 0:
                short = tensor.removeprefix("model.").removesuffix(".weight")
                who = f"{key[0]}\n" if several_models else ""
                ax.set_ylabel(f"{who}{method_label(key[2])} · {key[3]}\n{short}\nrows (pooled)", fontsize=9.5)
            if i == nrows - 1:
                ax.set_xlabel("columns (pooled)", fontsize=9.5)
    if image is not None:
        bar = fig.colorbar(image, ax=axes, shrink=0.8, pad=0.02)
        bar.set_label("mean |ΔW| per cell (weight units, log scale)")
    models = ", ".join(sorted({k[0] for k in shown_chains}))
    shape = "x".join(map(str, next(iter(maps.values()))[1].shape))
    fig.suptitle(f"{title}\nmodel: {models}; seed {seed}; cumulative change against the unedited weights,\n"
                 f"mean-pooled to {shape} cells; darkest colour = no change; one colour scale for all panels")
    return FigureResult(name, title, GU, fig, pd.DataFrame(rows), notes=notes)


def gu_fig7(tables: dict, config: dict | None = None) -> FigureResult:
    """Gu Fig. 7: reliability, generalization and locality per regulariser (bars), at the last common checkpoint."""
    name, title = "gu_fig7", "Editing performance per regulariser (Gu et al. Fig. 7)"
    ed = tables["editing"]
    ed = ed[ed.metric.isin(EDITING_METRICS)]
    if ed.empty:
        return FigureResult(name, title, GU, missing=(
            "no editing metrics (reliability, generalization, locality) in results/tables/editing.csv; "
            "list at least one experiment under `experiments:`."))
    regs = sorted(ed.regulariser.unique(), key=regulariser_key)
    if len(regs) < 2:
        return FigureResult(name, title, GU, missing=(
            f"only one regulariser was run ({regs[0]}); this figure compares them. Set "
            f"`experiments.<name>.regularisers: [{', '.join(GU_REGULARISERS)}]`."))
    notes = []
    absent = [r for r in GU_REGULARISERS if r not in regs]
    if absent:
        notes.append(f"Gu et al.'s regularisers not run: {', '.join(absent)} "
                     "(add them to `experiments.<name>.regularisers`).")
    parts = []
    for key, group in ed.groupby(["model", "dataset", "method"]):
        regs_here = group.regulariser.unique()
        common = set.intersection(*[set(group[group.regulariser == r].edits) for r in regs_here])
        if len(regs_here) < 2 or not common:
            continue  # nothing to compare in this (model, dataset, method)
        n = max(common)
        label = f"{method_label(key[2])} after {n:,} edits\n{key[0]} · {key[1]}"
        parts.append(group[group.edits == n].assign(panel=label))
    if not parts:
        return FigureResult(name, title, GU, missing=(
            "no (model, dataset, method) was run with more than one regulariser up to a common checkpoint; put the "
            f"regularisers in the same experiment: `regularisers: [{', '.join(GU_REGULARISERS)}]`."), notes=notes)
    data = pd.concat(parts, ignore_index=True)
    panels = sorted(data.panel.unique(), key=lambda p: method_key(data[data.panel == p].method.iloc[0]))
    fig = facet_bars(data, x="metric", hue="regulariser", panel="panel",
                     x_order=[m for m in EDITING_METRICS if m in set(data.metric)],
                     hue_order=[r for r in regs if r in set(data.regulariser)], panel_order=panels,
                     title=title, subtitle=_describe(data) + "; at the largest checkpoint every regulariser reached",
                     ylabel="score (fraction of edits, 0–1)")
    return FigureResult(name, title, GU, fig, data.drop(columns=["panel"]), notes=notes)


def gu_fig8(tables: dict, config: dict | None = None) -> FigureResult:
    """Gu Fig. 8: downstream scores against edits, one line per regulariser."""
    name, title = "gu_fig8", "Downstream scores per regulariser after sequential editing (Gu et al. Fig. 8)"
    notes: list[str] = []
    ds = _scored(tables, notes)
    if ds is None:
        return _no_downstream(name, title, GU)
    regs = sorted(ds.regulariser.unique(), key=regulariser_key)
    if len(regs) < 2:
        return FigureResult(name, title, GU, missing=(
            f"only one regulariser was run ({regs[0]}); this figure compares them. Set "
            f"`experiments.<name>.regularisers: [{', '.join(GU_REGULARISERS)}]`."), notes=notes)
    tasks = _paper_tasks(ds, list(GU_TASKS), "Gu et al.", notes)
    data = headline_scores(ds, tasks)
    data = data.assign(setting=data.model + " · " + data.dataset + " · " + data.method.map(method_label))
    # Only settings run with several regularisers: the others have nothing to compare.
    counts = data.groupby("setting").regulariser.nunique()
    data = data[data.setting.isin(counts[counts >= 2].index)]
    regs = [r for r in regs if r in set(data.regulariser)]
    fig = facet_lines(data, x="edits", hue="regulariser", hue_order=regs, col="panel", row="setting", title=title,
                      subtitle=_describe(data),
                      col_order=[p for t in tasks for p in sorted(data[data.task == t].panel.unique())])
    return FigureResult(name, title, GU, fig, data.drop(columns=["setting"]), notes=notes)


# ---------------------------------------------------------------- Li et al. 2024


def li_fig2(tables: dict, config: dict | None = None) -> FigureResult:
    """Li Fig. 2: every benchmark against the number of edits, one panel per method."""
    name, title = "li_fig2", "Benchmark scores against the number of edits, per method (Li et al. Fig. 2)"
    notes: list[str] = []
    ds = _scored(tables, notes)
    if ds is None:
        return _no_downstream(name, title, LI)
    if "none" not in set(ds.regulariser):
        return _need_none(name, title, LI, ds)
    ds = ds[ds.regulariser == "none"]
    tasks = _paper_tasks(ds, list(LI_TASKS), "Li et al.", notes)
    data = headline_scores(ds, tasks)
    data = data.assign(setting=data.model + " · " + data.dataset,
                       method_panel=data.method.map(method_label))
    methods = [method_label(m) for m in sorted(data.method.unique(), key=method_key)]
    panels = [p for t in tasks for p in sorted(data[data.task == t].panel.unique())]
    fig = facet_lines(data, x="edits", hue="panel", hue_order=panels, col="method_panel", col_order=methods,
                      row="setting", title=title, subtitle=_describe(data), hue_title="benchmark: metric")
    return FigureResult(name, title, LI, fig, data.drop(columns=["setting", "method_panel"]), notes=notes)


def is_chat_model(name: str, spec: dict | None = None) -> bool:
    """A chat / instruction-tuned model: its name or hub id contains 'chat' or 'instruct', or ends in '-it'."""
    source = (spec or {}).get("source", {}) or {}
    texts = [name, source.get("hub_id") or "", Path(source.get("file") or "").stem]
    return any(_CHAT.search(t.split("/")[-1]) for t in texts if t)


def model_family(name: str) -> str:
    """The base model's name: the chat marker removed ('llama2-7b-chat' -> 'llama2-7b')."""
    return _CHAT_SUFFIX.sub("", name) or name


def count_parameters(model_dir: str | Path) -> int | None:
    """Parameters stored in a model folder's safetensors files (headers only; tied weights count once)."""
    total, found = 0, False
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with open(f, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
        for key, entry in header.items():
            if key != "__metadata__":
                total += int(np.prod(entry["shape"])) if entry["shape"] else 1
                found = True
    return total if found else None


def model_info(config: dict, model_dirs: dict[str, str | Path]) -> dict[str, dict]:
    """Per model: parameter count (from its converted files, None if absent), chat flag, family, hub id."""
    out = {}
    for name, spec in (config.get("models") or {}).items():
        d = model_dirs.get(name)
        out[name] = {"params": count_parameters(d) if d and Path(d).exists() else None,
                     "chat": is_chat_model(name, spec), "family": model_family(name),
                     "hub_id": ((spec or {}).get("source") or {}).get("hub_id")}
    return out


def _info(model: str, info: dict) -> dict:
    return {"params": None, "chat": is_chat_model(model), "family": model_family(model), **(info.get(model) or {})}


def human_count(n: int | float | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(int(n))


def li_fig3(tables: dict, config: dict | None = None, model_info: dict | None = None) -> FigureResult:
    """Li Fig. 3: a base model against its chat (instruction-tuned) version, scores against edits."""
    name, title = "li_fig3", "Base against chat (instruction-tuned) models (Li et al. Fig. 3)"
    notes: list[str] = []
    ds = _scored(tables, notes)
    if ds is None:
        return _no_downstream(name, title, LI)
    info = {m: _info(m, model_info or {}) for m in ds.model.unique()}
    kinds = {m: "chat" if i["chat"] else "base" for m, i in info.items()}
    found = ", ".join(f"{m} ({k})" for m, k in sorted(kinds.items()))
    if set(kinds.values()) != {"base", "chat"}:
        return FigureResult(name, title, LI, missing=(
            f"needs a base model and a chat model in the tables; found only {found}. A model counts as chat when its "
            "config name or `source.hub_id` contains 'chat' or 'instruct' (or ends in '-it'); its base model is the "
            "one named the same without that marker. Add both under `models:` and to an experiment's `models:`, e.g. "
            "`llama2-7b: {family: llama, source: {kind: hub, hub_id: meta-llama/Llama-2-7b-hf}}` and "
            "`llama2-7b-chat: {family: llama, source: {kind: hub, hub_id: meta-llama/Llama-2-7b-chat-hf}}`."),
            notes=notes)
    if "none" in set(ds.regulariser):
        ds = ds[ds.regulariser == "none"]
    tasks = _paper_tasks(ds, list(LI_TASKS), "Li et al.", notes)
    data = headline_scores(ds, tasks)
    data = data.assign(variant=data.model.map(kinds), family=data.model.map(lambda m: info[m]["family"]),
                       setting=data.method.map(method_label) + " · " + data.dataset)
    # Only (family, setting) pairs where both the base and the chat model were edited.
    both = data.groupby(["family", "setting"]).variant.nunique()
    both = both[both == 2].reset_index()[["family", "setting"]]
    unpaired = sorted(set(data.model) - set(data.merge(both, on=["family", "setting"]).model))
    if both.empty:
        return _li_fig3_across_families(name, title, data, found, notes)
    if unpaired:
        notes.append(f"Left out (no base/chat partner with the same method and dataset): {', '.join(unpaired)}. "
                     "Partners are named the same without '-chat'/'-instruct'.")
    data = data.merge(both, on=["family", "setting"])
    families = sorted(data.family.unique())
    fig = facet_lines(data, x="edits", hue="family", hue_order=families, style="variant",
                      style_order=["base", "chat"], col="panel", row="setting", title=title,
                      subtitle=_describe(data) + "; solid: base, dashed: chat", hue_title="model",
                      style_title="variant")
    return FigureResult(name, title, LI, fig, data.drop(columns=["setting"]), notes=notes)


def _li_fig3_across_families(name: str, title: str, data: pd.DataFrame, found: str, notes: list[str]) -> FigureResult:
    """Li Fig. 3 without a base/chat pair of one model: base and chat models of different families that
    were edited with the same method and dataset (the default run: SmolLM2-135M-Instruct, Gemma-3-270M base)."""
    variants = data.groupby("setting").variant.nunique()
    data = data[data.setting.isin(variants[variants == 2].index)]
    if data.empty:
        return FigureResult(name, title, LI, missing=(
            f"no base model was edited together with a chat model (same method and dataset); found {found}. "
            "A chat model's base is the model named the same without '-chat'/'-instruct' (llama2-7b-chat -> "
            "llama2-7b); put both in the same experiment."), notes=notes)
    notes.append(
        f"No base model was edited together with its own chat version; shown instead are base and chat models of "
        f"different families ({found}). They differ in architecture, training data and size as well as in "
        "instruction tuning, so a gap between the lines cannot be attributed to instruction tuning (Li et al.'s "
        "question); the figure shows whether editing harms a base and a chat model alike, not why. For the "
        "paper's comparison, add a base model and its chat version (e.g. the li2024 preset's Llama-2-7B pair).")
    models = sorted(data.model.unique())
    fig = facet_lines(data, x="edits", hue="model", hue_order=models, style="variant", style_order=["base", "chat"],
                      col="panel", row="setting", title=title,
                      subtitle=_describe(data) + "; solid: base, dashed: chat (different model families)",
                      hue_title="model", style_title="variant")
    return FigureResult(name, title, LI, fig, data.drop(columns=["setting"]), notes=notes)


def li_fig4(tables: dict, config: dict | None = None, model_info: dict | None = None) -> FigureResult:
    """Li Fig. 4: models of several sizes, scores against edits, one line per model size."""
    name, title = "li_fig4", "Model scale: scores against edits by model size (Li et al. Fig. 4)"
    notes: list[str] = []
    ds = _scored(tables, notes)
    if ds is None:
        return _no_downstream(name, title, LI)
    info = {m: _info(m, model_info or {}) for m in ds.model.unique()}
    sized = {m: i["params"] for m, i in info.items() if i["params"]}
    if len(set(sized.values())) < 2:
        found = ", ".join(f"{m} ({human_count(info[m]['params'])} parameters)" for m in sorted(info)) or "none"
        return FigureResult(name, title, LI, missing=(
            f"needs at least two models of different sizes in the tables; found {found}. Sizes are counted from "
            "each model's converted weights (cache/models/<model>/). Add models of several sizes under `models:` "
            "and to an experiment's `models:`, e.g. the Pythia suite: `pythia-160m: {family: gpt_neox, source: "
            "{kind: hub, hub_id: EleutherAI/pythia-160m}}`, `pythia-410m`, `pythia-1b`, ..."), notes=notes)
    unsized = sorted(set(info) - set(sized))
    if unsized:
        notes.append(f"Left out (size unknown: converted weights not found): {', '.join(unsized)}.")
    arch = {m: ((config or {}).get("models", {}).get(m) or {}).get("family") for m in sized}
    if len(set(arch.values())) > 1 or len({info[m]["chat"] for m in sized}) > 1:
        notes.append(
            "The models differ in more than size (" + ", ".join(
                f"{m}: {arch[m] or '?'} family, {'chat' if info[m]['chat'] else 'base'}" for m in sorted(sized))
            + "): architecture, training data and instruction tuning change with them, so the lines cannot isolate "
            "scale (Li et al. compare sizes of one series). For that, use models of one suite (e.g. Pythia).")
    ds = ds[ds.model.isin(list(sized))]
    if "none" in set(ds.regulariser):
        ds = ds[ds.regulariser == "none"]
    tasks = _paper_tasks(ds, list(LI_TASKS), "Li et al.", notes)
    data = headline_scores(ds, tasks)
    labels = {m: f"{m} ({human_count(p)})" for m, p in sized.items()}
    data = data.assign(size=data.model.map(labels), params=data.model.map(sized),
                       setting=data.method.map(method_label) + " · " + data.dataset)
    # Only settings (method, dataset) with models of at least two sizes.
    sizes = data.groupby("setting").params.nunique()
    data = data[data.setting.isin(sizes[sizes >= 2].index)]
    if data.empty:
        return FigureResult(name, title, LI, missing=(
            "models of different sizes were not edited with the same method and dataset; put them in the same "
            "experiment (`experiments.<name>.models`)."), notes=notes)
    order = [labels[m] for m in sorted(sized, key=lambda m: (sized[m], m)) if labels[m] in set(data["size"])]
    fig = facet_lines(data, x="edits", hue="size", hue_order=order, col="panel", row="setting", title=title,
                      subtitle=_describe(data), hue_title="model (parameters)")
    return FigureResult(name, title, LI, fig, data.drop(columns=["setting"]), notes=notes)


def relative_to_unedited(scores: pd.DataFrame, notes: list[str] | None = None) -> pd.DataFrame:
    """`value` as a percentage of the same chain's unedited score (edits = 0) on the same task and metric."""
    keys = ["model", "dataset", "method", "regulariser", "seed", "task", "metric"]
    base = scores[scores.edits == 0].groupby(keys)["value"].mean().rename("base")
    out = scores.join(base, on=keys)
    zero = out.base.isna() | (out.base <= 0)
    if zero.any() and notes is not None:
        notes.append("Left out (unedited score 0 or missing, so no relative change): "
                     + ", ".join(sorted(set(out[zero].task))) + ".")
    out = out[~zero]
    return out.assign(value=100.0 * out.value / out.base)


def li_fig5(tables: dict, config: dict | None = None) -> FigureResult:
    """Li Fig. 5: abilities (knowledge, reasoning, safety) relative to the unedited model, against edits."""
    name, title = "li_fig5", "Abilities after editing, relative to the unedited model (Li et al. Fig. 5)"
    notes: list[str] = []
    ds = _scored(tables, notes)
    if ds is None:
        return _no_downstream(name, title, LI)
    category = {t: c for c, ts in ABILITY_CATEGORIES.items() for t in ts}
    listing = "; ".join(f"{c}: {', '.join(ts)}" for c, ts in ABILITY_CATEGORIES.items())
    present = sorted(set(ds.task) & set(category), key=task_key)
    if not present:
        return FigureResult(name, title, LI, missing=(
            f"none of the categorised tasks were run ({listing}); found {', '.join(sorted(set(ds.task)))}. "
            "Add them under `tasks:` (see configs/li2024.yaml)."), notes=notes)
    absent = [c for c, ts in ABILITY_CATEGORIES.items() if not set(ts) & set(present)]
    if absent:
        notes.append(f"Categories without a task run: {', '.join(absent)} ({listing}).")
    if "none" in set(ds.regulariser):
        ds = ds[ds.regulariser == "none"]
    scores = headline_scores(ds, present)
    rel = relative_to_unedited(scores, notes)
    if rel.empty:
        return FigureResult(name, title, LI, missing=(
            f"the unedited model scored 0 on every categorised task that was run ({', '.join(present)}), so no "
            "relative change can be computed; a larger sample (`tasks.<task>.n`) or a stronger model is needed."),
            notes=notes)
    rel = rel.assign(category=rel.task.map(category))
    keys = ["model", "dataset", "method", "regulariser", "seed", "edits", "category"]
    data = rel.groupby(keys)["value"].mean().reset_index()
    members = {c: ", ".join(TASK_LABELS.get(t, t) for t in present if category[t] == c)
               for c in ABILITY_CATEGORIES}
    data = data.assign(method_panel=data.method.map(method_label), setting=data.model + " · " + data.dataset,
                       label=data.category.map(lambda c: f"{c} ({members[c]})"))
    cats = [f"{c} ({members[c]})" for c in ABILITY_CATEGORIES if c in set(data.category)]
    methods = [method_label(m) for m in sorted(data.method.unique(), key=method_key)]
    fig = facet_lines(data, x="edits", hue="label", hue_order=cats, col="method_panel", col_order=methods,
                      row="setting", ylabel="% of the unedited model's score", title=title,
                      subtitle=_describe(data) + "; mean over the category's tasks",
                      reference=pd.DataFrame({"method_panel": methods, "value": 100.0}),
                      reference_label="unedited (100%)", hue_title="ability (tasks)")
    return FigureResult(name, title, LI, fig, data.drop(columns=["method_panel", "setting", "label"]), notes=notes)


def li_fig6(tables: dict, config: dict | None = None) -> FigureResult:
    """Li Fig. 6: safety (TruthfulQA MC1/MC2, ToxiGen accuracy) against the number of edits, per method."""
    name, title = "li_fig6", "Safety after editing: TruthfulQA and ToxiGen (Li et al. Fig. 6)"
    notes: list[str] = []
    ds = _scored(tables, notes)
    if ds is None:
        return _no_downstream(name, title, LI)
    wanted = pd.MultiIndex.from_tuples(SAFETY_METRICS)
    data = ds[pd.MultiIndex.from_arrays([ds.task, ds.metric]).isin(wanted)]
    if data.empty:
        return FigureResult(name, title, LI, missing=(
            f"the safety benchmarks were not run (found tasks: {', '.join(sorted(set(ds.task)))}). Add "
            "`truthfulqa: {n: ...}` and `toxigen: {n: ...}` under `tasks:` (ToxiGen has no mirror copy: it needs its "
            "hub source, see configs/datasets_tasks.yaml)."), notes=notes)
    absent = sorted({t for t, _ in SAFETY_METRICS} - set(data.task))
    if absent:
        notes.append(f"Not run: {', '.join(absent)} (add under `tasks:`).")
    if "none" in set(data.regulariser):
        data = data[data.regulariser == "none"]
    data = data.assign(panel=[task_label(t, m) for t, m in zip(data.task, data.metric)],
                       setting=data.model + " · " + data.dataset)
    methods = sorted(data.method.unique(), key=method_key)
    panels = [task_label(t, m) for t, m in SAFETY_METRICS if task_label(t, m) in set(data.panel)]
    fig = facet_lines(data, x="edits", hue="method", hue_order=methods, col="panel", col_order=panels,
                      row="setting", title=title, subtitle=_describe(data), hue_title="method",
                      hue_labels={m: method_label(m) for m in methods})
    return FigureResult(name, title, LI, fig, data.drop(columns=["setting"]), notes=notes)


# ---------------------------------------------------------------- the index page

# name -> (function, paper, what it shows); the rule in rules/figures.smk runs one notebook per name.
FIGURES = {
    "gu_fig3": (gu_fig3, GU, "downstream scores vs number of sequential instance edits, per method"),
    "gu_fig4": (gu_fig4, GU, "downstream scores vs batch size, batch-single editing"),
    "gu_batch_sequential": (gu_batch_sequential, GU, "downstream scores vs edits made in batches"),
    "gu_table1": (gu_table1, GU, "share of elements over relative-change thresholds, Manhattan distance"),
    "gu_fig5": (gu_fig5, GU, "heat maps of |ΔW|"),
    "gu_fig7": (gu_fig7, GU, "reliability, generalization, locality per regulariser"),
    "gu_fig8": (gu_fig8, GU, "downstream scores vs edits per regulariser"),
    "li_fig2": (li_fig2, LI, "benchmarks vs edits per method"),
    "li_fig3": (li_fig3, LI, "base vs chat model"),
    "li_fig4": (li_fig4, LI, "model scale"),
    "li_fig5": (li_fig5, LI, "abilities by category, relative to the unedited model"),
    "li_fig6": (li_fig6, LI, "safety: TruthfulQA, ToxiGen"),
}
OVERVIEW = {"name": "edit_harm", "title": "Overview: downstream, editing and weight change vs edits, per regulariser",
            "pngs": ["downstream.png", "editing.png", "weight_stats.png"]}


def _esc(x: Any) -> str:
    return html.escape(str(x))


def write_index(out_path: str | Path, figures_dir: str | Path, names: Sequence[str], config: dict,
                config_source: str = "", tables_dir: str | Path | None = None) -> None:
    """results/figures/index.html: every figure (PNG, executed notebook as HTML and ipynb, its numbers as CSV),
    its status and the seeds, models and methods it shows, with the config and package versions."""
    import yaml

    figures_dir = Path(figures_dir)
    versions = figure_versions()
    seeds = sorted(set(config.get("seeds", [])) | {s for e in (config.get("experiments") or {}).values()
                                                    for s in e.get("seeds", [])})
    tables_seeds: set = set()
    if tables_dir is not None:
        for t in TABLES:
            p = Path(tables_dir) / f"{t}.csv"
            if p.exists() and p.stat().st_size:
                try:
                    tables_seeds |= set(pd.read_csv(p, usecols=["seed"]).seed.astype(int))
                except (ValueError, KeyError):
                    pass
    css = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
           ".fig{border-top:1px solid #ccc;padding:1em 0}.fig img{max-width:100%;border:1px solid #eee}"
           ".ok{color:#0072B2}.missing{color:#D55E00}table{border-collapse:collapse;font-size:90%}"
           "td,th{border:1px solid #ddd;padding:2px 6px}pre{background:#f6f6f6;padding:1em;overflow:auto}"
           "code{background:#f2f2f2}")
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>editharm figures</title>"
           f"<style>{css}</style></head><body>",
           "<h1>editharm: figures</h1>",
           f"<p>Made {time.strftime('%Y-%m-%d %H:%M:%S %Z')} from config <code>{_esc(config_source or '?')}</code>. "
           f"Seeds in the config: {_esc(seeds)}; in the tables: {_esc(sorted(tables_seeds))}.</p>",
           "<p>Package versions: " + ", ".join(f"{_esc(k)} {_esc(v)}" for k, v in versions.items()) + "</p>",
           "<ul>" + "".join(f"<li><a href='#{_esc(n)}'>{_esc(n)}</a></li>" for n in [OVERVIEW["name"], *names])
           + "</ul>"]
    # The overview notebook (edit_harm.ipynb).
    out.append(f"<div class='fig' id='{OVERVIEW['name']}'><h2>{_esc(OVERVIEW['title'])}</h2>"
               f"<p><a href='edit_harm.html'>notebook (HTML)</a> · <a href='edit_harm.ipynb'>notebook (ipynb)</a></p>")
    for png in OVERVIEW["pngs"]:
        if (figures_dir / png).exists():
            out.append(f"<p><a href='{png}'><img src='{png}' alt='{png}' loading='lazy'></a></p>")
    out.append("</div>")
    for n in names:
        meta_path = figures_dir / f"{n}.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"title": n, "status": "not rendered"}
        status = meta.get("status", "?")
        out.append(f"<div class='fig' id='{_esc(n)}'><h2>{_esc(meta.get('title', n))}</h2>")
        out.append(f"<p>{_esc(meta.get('paper', ''))} · status: <b class='{_esc(status)}'>{_esc(status)}</b> · "
                   f"<a href='{n}.png'>PNG</a> · <a href='{n}.html'>notebook (HTML)</a> · "
                   f"<a href='{n}.ipynb'>notebook (ipynb)</a> · <a href='{n}.csv'>data (CSV)</a></p>")
        if meta.get("missing"):
            out.append(f"<p class='missing'><b>Missing:</b> {_esc(meta['missing'])}</p>")
        for note in meta.get("notes", []):
            out.append(f"<p><i>Note:</i> {_esc(note)}</p>")
        facts = [f"{k}: {_esc(', '.join(map(str, meta[k])))}" for k in
                 ("models", "datasets", "methods", "regularisers", "tasks", "tensors", "seeds", "edits")
                 if meta.get(k)]
        if facts:
            out.append("<p>" + "; ".join(facts) + "</p>")
        out.append(f"<p><a href='{n}.png'><img src='{n}.png' alt='{_esc(n)}' loading='lazy'></a></p>")
        if n == "gu_table1" and status == "ok" and (figures_dir / f"{n}.csv").exists():
            table = pd.read_csv(figures_dir / f"{n}.csv")
            out.append("<details open><summary>Table 1 as numbers (shares as fractions)</summary>"
                       + table.to_html(index=False, float_format=lambda v: f"{v:.4g}") + "</details>")
        out.append("</div>")
    out.append("<h2>Config</h2><pre>" + _esc(yaml.safe_dump(config, sort_keys=False)) + "</pre></body></html>")
    Path(out_path).write_text("\n".join(out), encoding="utf-8")
