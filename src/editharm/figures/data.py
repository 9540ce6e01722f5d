"""The tidy tables as the figures read them: loading, the sort orders and labels of methods,
regularisers and tasks, each task's headline metric, and the row selections figures share.

- Scores are the tables' values (fractions in [0, 1]); each task is drawn with its headline
  metric (the first of the task's METRICS, e.g. GSM8K solve rate, MuTual R4@1, SAMSum mean
  ROUGE, CoNLL-03 entity F1), the one the papers report.
- Rows with edits = 0 are the unedited model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from editharm.config import ENTRY_DEFAULTS

COLUMNS = ["model", "dataset", "method", "regulariser", "seed", "edits", "task", "metric", "value"]
TABLES = ("downstream", "editing", "weight_stats")

# Gu et al. 2024's eight zero-shot tasks and Li et al. 2024's seven benchmarks, in the
# papers' order, with the metric each paper reports.
GU_TASKS = {"gsm8k": "solve_rate", "rte": "accuracy", "nq_open": "exact_match", "boolq": "exact_match",
            "mutual": "r4_at_1", "samsum": "rouge_mean", "conll03": "f1", "sst2": "accuracy"}
LI_TASKS = {"mmlu": "accuracy", "bbh": "exact_match", "gsm8k_8shot": "exact_match", "commonsenseqa": "accuracy",
            "triviaqa": "exact_match", "truthfulqa": "mc1", "toxigen": "accuracy"}
HEADLINE_METRICS = {**GU_TASKS, **LI_TASKS}

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
    # Imported here: editharm.regularize imports torch, which importing the figures need not.
    from editharm.regularize import parse_regulariser

    kinds = ("rect", "random", "pca", "svd")
    try:
        # The config's grammar (editharm.regularize): K is compared exactly, as the Fraction it is parsed to.
        reg = parse_regulariser(str(name))
    except ValueError:
        # A kind registered by a module of one's own is not registered in the process drawing
        # the figures: such a name sorts after the known kinds, by its text.
        return (True, len(kinds) + 1, str(name), -1, str(name))
    k = reg.percent if reg.percent is not None else -1
    return (reg.kind != "none", kinds.index(reg.kind) if reg.kind in kinds else len(kinds), reg.kind, k, str(name))


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
                     "batch_size": int(spec.get("batch_size") or ENTRY_DEFAULTS["methods"]["batch_size"])}
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
    """The paper's tasks that were run, then every other task that was run (with a note saying which).

    The others follow rather than disappear: a small model's harm shows on the harm suite
    (LAMBADA, PIQA, ARC, HellaSwag, WinoGrande, WikiText) long before it does on tasks it
    scores near chance on, and a paper task scored at a few checkpoints must not hide them.
    """
    ran = set(downstream.task)
    present = [t for t in paper_tasks if t in ran]
    others = sorted(ran - set(present), key=task_key)
    if present:
        absent = [t for t in paper_tasks if t not in present]
        if absent:
            notes.append(f"Not run (add them under `tasks:` in the config to include them): "
                         f"{', '.join(absent)}.")
        if others:
            notes.append(f"After {paper}'s tasks come the other tasks that were scored, which are not the "
                         f"paper's (e.g. the harm suite): {', '.join(others)}.")
        return present + others
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


def _scored(tables: dict, notes: list[str]) -> pd.DataFrame | None:
    """The downstream table without failed checkpoints (listed in notes); None when nothing was scored."""
    ds = tables["downstream"]
    return None if ds.empty else _drop_failed(ds, notes)
