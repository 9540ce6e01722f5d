"""Gu et al. 2024 (EMNLP), "Model Editing Harms General Abilities of Large Language Models:
Regularization to the Rescue": Figs. 3, 4, 5, 7, 8, Table 1 and batch-sequential editing."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .data import (GU_TASKS, _describe, _paper_tasks, _scored, _setting, headline_metric, headline_scores,
                   method_key, method_label, method_specs, regulariser_key, task_label)
from .draw import facet_bars, facet_lines, table_figure
from .findings import HARM_THRESHOLD, UNITS, collapsed, edits_text, group_summary, harm_of, no_baseline, score_changes
from .result import FigureResult, _need_none, _no_downstream, register_paper_findings
from .style import _pyplot

GU = "Gu et al. 2024 (EMNLP)"
GU_REGULARISERS = ("none", "rect-20", "rect-40", "rect-60", "rect-80", "random-40", "pca-40")
EDITING_METRICS = ("reliability", "generalization", "locality")
# What the paper reports for each figure, in our words (checked against the paper's abstract and
# text; where a detail could not be checked, the statement stays at the level that could).
PAPER_FINDINGS = {
    "gu_fig3": "Sequential instance editing with KN, MEND, ROME and MEMIT lowers the scores on the eight "
               "downstream tasks, and the loss grows as edits accumulate.",
    "gu_fig4": "Editing many facts in one batch also harms general abilities: after a single batch edit the "
               "downstream scores lie below the unedited model's.",
    "gu_batch_sequential": "Editing in batches, one batch after another, lowers the downstream scores as the "
                           "total number of edits grows.",
    "gu_table1": "Editing changes the original weights a lot (many elements change by a large fraction of their "
                 "value); the authors trace the side effects to this excessive change, which overfits the model "
                 "to the edited facts.",
    "gu_fig5": "Heat maps of the weight update show where and how strongly editing changes the edited matrix, "
               "illustrating the excessive change the authors blame for the side effects.",
    "gu_fig7": "RECT keeps most of the editing performance (over 94% of it) while regularising the update, and "
               "does better than keeping random or PCA-chosen elements at the same share K.",
    "gu_fig8": "With RECT the downstream scores fall much less as edits accumulate than with unregularised "
               "editing.",
}
register_paper_findings(PAPER_FINDINGS)


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
    finding, agrees = harm_of(data, ["method"], lambda r: method_label(r.method),
                              failed=collapsed(tables["downstream"], data))
    return FigureResult(name, title, GU, fig, data.drop(columns=["setting"]), notes=notes, finding=finding,
                        agrees=agrees)


def _batch_label(r) -> str:
    return f"{method_label(r.family)} batch {int(r.batch_size)}"


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
    # The change of one batch of B edits: from the unedited model (each method's edits = 0 rows) to n = B;
    # a collapse counts here only where it happened in that first batch.
    failed = collapsed(tables["downstream"], data)
    unedited = headline_scores(ds[(ds.edits == 0) & ds.method.isin(set(data.method))], tasks)
    unedited = unedited.assign(batch_size=unedited.method.map(lambda m: specs[m]["batch_size"]),
                               family=unedited.method.map(lambda m: specs[m]["family"]))
    finding, agrees = harm_of(pd.concat([data.drop(columns=["setting"]), unedited], ignore_index=True),
                              ["family", "batch_size"], _batch_label, what="mean change after one batch",
                              failed=failed[failed.edits == failed.method.map(lambda m: specs[m]["batch_size"])])
    return FigureResult(name, title, GU, fig, data.drop(columns=["setting"]), notes=notes, finding=finding,
                        agrees=agrees)


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
    finding, agrees = harm_of(data, ["family", "batch_size"], _batch_label,
                              failed=collapsed(tables["downstream"], data))
    return FigureResult(name, title, GU, fig, data.drop(columns=["setting", "batch"]), notes=notes,
                        finding=finding, agrees=agrees)


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
    return FigureResult(name, title, GU, fig, per_seed, notes=notes, table=table, shown=shown,
                        finding=_table1_finding(per_seed), agrees=None)


def _table1_finding(per_seed: pd.DataFrame) -> str | None:
    """Per method (unregularised when run), at its largest checkpoint: the share of elements over the
    smallest threshold and the Manhattan distance. Descriptive: the paper states no number to test."""
    shares = sorted([c for c in per_seed.columns if c.startswith("share_above_")], key=_threshold_of)
    if per_seed.empty or not shares:
        return None
    df = per_seed[per_seed.regulariser == "none"] if "none" in set(per_seed.regulariser) else per_seed
    df = df[df.edits == df.groupby("method").edits.transform("max")]
    share = shares[0]
    parts = []
    for method, group in sorted(df.groupby("method"), key=lambda kv: method_key(kv[0])):
        text = (f"{method_label(method)} after {edits_text(group.edits.iloc[0])}: {100 * group[share].mean():.2f}% "
                f"of the edited elements changed by more than {_threshold_of(share):g} of their value")
        if "manhattan" in group:
            text += f" (Manhattan Σ|ΔW| {group.manhattan.mean():,.4g})"
        parts.append(text)
    return ("; ".join(parts) + ". Descriptive (regulariser none where run, mean over seeds): the paper gives no "
            "threshold to test against, so agreement is not judged.")


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
    rows = pd.DataFrame(rows)
    return FigureResult(name, title, GU, fig, rows, notes=notes, finding=_fig5_finding(rows), agrees=None)


def _fig5_finding(rows: pd.DataFrame) -> str | None:
    """Per chain shown: mean |ΔW| per cell of the drawn tensor at the first and the last checkpoint."""
    shown = rows[rows.shown] if len(rows) else rows
    if shown.empty:
        return None
    parts = []
    for (method, reg), group in shown.groupby(["method", "regulariser"]):
        per_n = group.groupby("edits").mean_abs_change.mean().sort_index()
        first, last = per_n.iloc[0], per_n.iloc[-1]
        grow = f" (x{last / first:.3g})" if first > 0 and len(per_n) > 1 else ""
        parts.append(f"{method_label(method)} · {reg}: mean |ΔW| per cell {first:.3g} after "
                     f"{edits_text(per_n.index[0])}, {last:.3g} after {edits_text(per_n.index[-1])}{grow}")
    return "; ".join(parts) + ". Descriptive: heat maps have no pass/fail criterion, so agreement is not judged."


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
    finding, agrees = _fig7_finding(data)
    return FigureResult(name, title, GU, fig, data.drop(columns=["panel"]), notes=notes, finding=finding,
                        agrees=agrees)


# RECT may cost this much reliability or generalization (fractions) against unregularised editing and
# still count as keeping it: the paper's 94% of a near-perfect editor leaves about 0.06.
RECT_TOLERANCE = 0.1


def _fig7_finding(data: pd.DataFrame) -> tuple[str | None, bool | None]:
    """RECT's reliability and generalization against unregularised editing's, at the same checkpoint."""
    mean = data.groupby(["model", "dataset", "method", "regulariser", "metric"])["value"].mean()
    parts, diffs = [], []
    for (model, dataset, method), group in mean.groupby(level=[0, 1, 2]):
        group = group.droplevel([0, 1, 2])
        regs = set(group.index.get_level_values("regulariser"))
        if "none" not in regs:
            continue
        for reg in sorted((r for r in regs if r.startswith("rect")), key=regulariser_key):
            here = []
            for metric in ("reliability", "generalization"):
                if (reg, metric) in group.index and ("none", metric) in group.index:
                    d = float(group[(reg, metric)] - group[("none", metric)])
                    diffs.append(d)
                    here.append(f"{metric} {group[(reg, metric)]:.2f} vs {group[('none', metric)]:.2f} ({d:+.2f})")
            if here:
                n = data[(data.model == model) & (data.dataset == dataset) & (data.method == method)].edits.max()
                who = f"{model} · " if data.model.nunique() > 1 else ""
                parts.append(f"{who}{method_label(method)} after {edits_text(n)}, {reg} against none: "
                             + ", ".join(here))
    if not diffs:
        return ("no RECT regulariser was run next to `none` on the same method, so RECT's cost in editing "
                "performance cannot be measured."), None
    return ("; ".join(parts) + f". Criterion: agree when RECT is within {RECT_TOLERANCE:g} of none on every "
            "reliability and generalization score shown."), bool(min(diffs) >= -RECT_TOLERANCE)


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
    finding, agrees = _fig8_finding(data)
    return FigureResult(name, title, GU, fig, data.drop(columns=["setting"]), notes=notes, finding=finding,
                        agrees=agrees)


def _fig8_finding(data: pd.DataFrame) -> tuple[str | None, bool | None]:
    """Per setting: each regulariser's mean change up to the largest checkpoint all of them reached; agree
    when every RECT regulariser is harmed less than `none` wherever `none` is harmed."""
    edited = data[data.edits > 0]
    common = edited.groupby(["setting", "regulariser"]).edits.max().groupby(level="setting").min()
    data = data[data.edits <= data.setting.map(common)]
    summary = group_summary(score_changes(data, ["setting", "regulariser"]), ["setting", "regulariser"])
    if summary.empty:
        return no_baseline("regulariser"), None
    parts, verdicts = [], []
    for setting, group in summary.groupby("setting"):
        group = group.set_index("regulariser").loc[sorted(group.regulariser, key=regulariser_key)]
        n = int(group.edits.max())
        parts.append(f"{setting}, after {edits_text(n)}: "
                     + ", ".join(f"{r} {c:+.1f}" for r, c in group.change.items()))
        rects = [r for r in group.index if str(r).startswith("rect")]
        if "none" in group.index and rects and group.change["none"] < -HARM_THRESHOLD:
            verdicts.append(all(group.change[r] > group.change["none"] for r in rects))
    text = (f"mean change of the headline scores from the unedited model ({UNITS}): " + "; ".join(parts) + f". Criterion: agree when every RECT regulariser's "
            f"change is above none's in each setting where none is below -{HARM_THRESHOLD:g}.")
    if not verdicts:
        return text + " No setting has both RECT and a harmed unregularised run, so it cannot be judged.", None
    return text, all(verdicts)
