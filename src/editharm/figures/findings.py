"""What a figure's numbers show, next to what the paper found: the change of each headline score
from the unedited model (edits = 0) to a group's largest number of edits, and sentences built on it.

Signs are such that negative means harm: scores that are fractions in [0, 1] (accuracy, exact
match, ...) change by 100 x (edited - unedited) points; perplexity-like scores (lower is
better, e.g. WikiText word perplexity) change by 100 x (unedited / edited - 1), the percent
change of the inverse perplexity (the mean per-word probability, geometrically): a perplexity
that doubles is -50, one that explodes tends to -100, like an accuracy that falls to 0, so one
collapsed perplexity cannot outweigh every other score in a mean.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .data import method_key, method_label

# Metrics where lower is better (editharm.evaluate.tasks: wikitext, lambada's perplexity).
LOWER_IS_BETTER = frozenset({"word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity",
                             "perplexity"})
# A mean change must pass this many points (or percent) to count as harm, so that a flat run does not
# read as harm by rounding; the mean over tasks, seeds and groups is steadier than one task's score
# (an accuracy near 0.5 on 500 items alone has a standard error of about 2 points).
HARM_THRESHOLD = 1.0


def score_changes(scores: pd.DataFrame, by: Sequence[str], items: Sequence[str] = ("task", "metric"),
                  scale: float = 100.0) -> pd.DataFrame:
    """Per group (`by`) and item (`items`): the mean unedited score (`base`, edits = 0), the mean score at
    the group's largest number of edits (`last`, at `edits`), and `change` (negative = harm; see the module).

    Means are over seeds and any other column not in `by` or `items`. Groups without an unedited
    score or without an edited one are left out. `scale` turns a difference of values into points
    (100 for fractions; 1 for values that are percentages already).
    """
    by, items = list(by), list(items)
    if scores.empty:
        return pd.DataFrame(columns=[*by, *items, "base", "last", "edits", "change"])
    keys = by + items
    base = scores[scores.edits == 0].groupby(keys)["value"].mean().rename("base")
    edited = scores[scores.edits > 0]
    last_n = edited.groupby(by)["edits"].max().rename("edits_last")
    at_last = edited.join(last_n, on=by)
    at_last = at_last[at_last.edits == at_last.edits_last]
    last = at_last.groupby(keys).agg(last=("value", "mean"), edits=("edits", "first"))
    out = last.join(base, how="inner").reset_index()
    lower = out["metric"].isin(LOWER_IS_BETTER) if "metric" in out else pd.Series(False, index=out.index)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = 100.0 * (out["base"] / out["last"] - 1.0)
    out["change"] = np.where(lower, relative, scale * (out["last"] - out["base"]))
    out = out[np.isfinite(out["change"])]
    return out[[*by, *items, "base", "last", "edits", "change"]].reset_index(drop=True)


def group_summary(changes: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Per group: the mean change over its items, how many items, and the largest number of edits."""
    by = list(by)
    return changes.groupby(by).agg(change=("change", "mean"), items=("change", "size"),
                                   edits=("edits", "max")).reset_index()


def _fmt(x: float) -> str:
    return f"{x:+.1f}"


def edits_text(n) -> str:
    return f"{int(n):,} edit{'s' if int(n) != 1 else ''}"


def describe_groups(summary: pd.DataFrame, label) -> str:
    """'ROME: -12.3 after 100 edits (3 tasks); MEMIT: ...' from a group_summary frame."""
    return "; ".join(f"{label(r)}: {_fmt(r.change)} after {edits_text(r.edits)} ({r.items} score"
                     f"{'s' if r.items != 1 else ''})" for r in summary.itertuples())


UNITS = ("points of the headline score, perplexity as the percent change of its inverse; negative = harm; "
         "mean over seeds and tasks")


def harm_finding(summary: pd.DataFrame, label, what: str = "mean change",
                 units: str = UNITS) -> tuple[str | None, bool | None]:
    """The finding of a figure whose paper reports harm: the groups' mean changes, and whether the mean
    over the groups lies below -HARM_THRESHOLD. (None, None) when no group has an unedited and an edited score."""
    if summary.empty:
        return None, None
    overall = float(summary.change.mean())
    agrees = overall < -HARM_THRESHOLD
    several = len(summary) > 1
    text = (f"{what} from the unedited model ({units}): {describe_groups(summary, label)}."
            + (f" Mean over the {len(summary)} groups: {_fmt(overall)}." if several else "")
            + f" Criterion: agree when the mean change{' over the groups' if several else ''} is below "
            f"-{HARM_THRESHOLD:g} (harm).")
    return text, agrees


def no_baseline(what: str) -> str:
    return f"no {what} has both an unedited score (edits = 0) and an edited one, so no change can be measured."


CHAIN = ["model", "dataset", "method", "regulariser", "seed"]


def collapsed(downstream: pd.DataFrame, shown: pd.DataFrame) -> pd.DataFrame:
    """The checkpoints at which a chain that `shown` draws collapsed: rows with metric 'failed' (the
    edited model gave NaN/Inf or no valid output), which the figures leave out of their scores."""
    failed = downstream[(downstream.metric == "failed") & (downstream.edits > 0)]
    if failed.empty or shown.empty:
        return failed.iloc[0:0]
    return failed.merge(shown[CHAIN].drop_duplicates(), on=CHAIN)


def harm_of(scores: pd.DataFrame, group: Sequence[str], label, settings: Sequence[str] = ("model", "dataset"),
            items: Sequence[str] = ("task", "metric"), scale: float = 100.0, what: str = "mean change",
            units: str = UNITS, failed: pd.DataFrame | None = None) -> tuple[str, bool | None]:
    """harm_finding of `scores` grouped by `group`; changes are taken within each setting (an unedited
    model is the one of its own model and dataset) and then averaged per group. `failed` (see
    `collapsed`): a collapse has no score to average, but it is the strongest harm, so it agrees."""
    keys = list(dict.fromkeys([*settings, *group]))
    summary = group_summary(score_changes(scores, keys, items, scale), group)
    if "method" in summary:  # the papers' order of methods, as in the legends
        summary = summary.iloc[sorted(range(len(summary)), key=lambda i: method_key(summary.method.iloc[i]))]
    text, agrees = harm_finding(summary, label, what, units) if len(summary) else (no_baseline("group"), None)
    if failed is not None and len(failed):
        points = failed[[*CHAIN, "edits"]].drop_duplicates()
        methods = ", ".join(method_label(m) for m in sorted(set(points.method), key=method_key))
        text += (f" The edited model collapsed (NaN/Inf or no valid output, so no score) at {len(points)} "
                 f"checkpoint(s) of {methods}, from "
                 f"{edits_text(points.edits.min())} on; a collapse is harm, so it counts as agreement.")
        agrees = True
    return text, agrees


def robustness_finding(summary: pd.DataFrame, key: str, robust: str, fragile: str, label, claim: str,
                       caveat: str = "") -> tuple[str, bool | None]:
    """Compare two groups (values of column `key`) of a group_summary frame, `robust` being the one the
    paper finds harmed less: agree when its mean change is above the fragile one's while at least one
    of them is harmed (below -HARM_THRESHOLD); with no harm there is nothing to compare (None)."""
    by = summary.set_index(key)
    if robust not in by.index or fragile not in by.index:
        return no_baseline(f"{robust} or {fragile} model"), None
    r, f = by.loc[robust], by.loc[fragile]
    text = (f"mean change from the unedited model ({UNITS}): {label(robust)} {_fmt(r.change)} after "
            f"{edits_text(r.edits)}, {label(fragile)} {_fmt(f.change)} after {edits_text(f.edits)}. Criterion: "
            f"agree when the change of {label(robust)} is above that of {label(fragile)} ({claim}) while at least "
            f"one is below -{HARM_THRESHOLD:g}.")
    if caveat:
        text += " " + caveat
    if min(r.change, f.change) >= -HARM_THRESHOLD:
        return text + " Neither model is harmed beyond the threshold, so there is no drop to compare.", None
    return text, bool(r.change > f.change)
