"""Li et al. 2024 (NeurIPS), "Should We Really Edit Language Models? On the Evaluation of Edited
Language Models": Figs. 2 to 6."""

from __future__ import annotations

import pandas as pd

from .data import (LI_TASKS, TASK_LABELS, _describe, _paper_tasks, _scored, headline_scores, method_key,
                   method_label, task_key, task_label)
from .draw import facet_lines
from .findings import collapsed, group_summary, harm_of, robustness_finding, score_changes
from .models import _info, human_count
from .result import FigureResult, _need_none, _no_downstream, register_paper_findings

LI = "Li et al. 2024 (NeurIPS)"
# Li et al. Sec. 5 groups abilities; NQ (open-domain QA) and Gu's GSM8K join the groups
# they belong to, so that a Gu-task run still gets the figure.
ABILITY_CATEGORIES = {
    "knowledge": ("mmlu", "triviaqa", "nq_open"),
    "reasoning": ("bbh", "gsm8k_8shot", "gsm8k", "commonsenseqa"),
    "safety": ("truthfulqa", "toxigen"),
}
SAFETY_METRICS = (("truthfulqa", "mc1"), ("truthfulqa", "mc2"), ("toxigen", "accuracy"))
# What the paper reports for each figure, in our words (checked against the paper's abstract; where a
# detail could not be checked, the statement stays at the level that could).
PAPER_FINDINGS = {
    "li_fig2": "General-benchmark scores hold for up to a few dozen edits and then fall as edits grow; with "
               "more edits some methods break the model's knowledge structure outright (scores collapse).",
    "li_fig3": "Instruction-tuned (chat) models are more robust to editing than their base models: their "
               "general-benchmark scores drop less after the same edits.",
    "li_fig4": "Comparing sizes of one model series, larger models hold their general abilities better under "
               "the same edits.",
    "li_fig5": "Relative to the unedited model, knowledge, reasoning and safety scores all fall as edits "
               "accumulate.",
    "li_fig6": "Editing weakens safety: TruthfulQA and ToxiGen scores fall after editing, safety-aligned models "
               "included.",
}
register_paper_findings(PAPER_FINDINGS)


def _method_row_label(r) -> str:
    return method_label(r.method)


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
    finding, agrees = harm_of(data, ["method"], _method_row_label, failed=collapsed(tables["downstream"], data))
    return FigureResult(name, title, LI, fig, data.drop(columns=["setting", "method_panel"]), notes=notes,
                        finding=finding, agrees=agrees)

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
        return _li_fig3_across_families(name, title, data, found, notes, _by_size(data.model.unique(), info))
    if unpaired:
        notes.append(f"Left out (no base/chat partner with the same method and dataset): {', '.join(unpaired)}. "
                     "Partners are named the same without '-chat'/'-instruct'.")
    data = data.merge(both, on=["family", "setting"])
    families = sorted(data.family.unique())
    fig = facet_lines(data, x="edits", hue="family", hue_order=families, style="variant",
                      style_order=["base", "chat"], col="panel", row="setting", title=title,
                      subtitle=_describe(data) + "; solid: base, dashed: chat", hue_title="model",
                      style_title="variant")
    finding, agrees = _variant_finding(data, confounded=False)
    return FigureResult(name, title, LI, fig, data.drop(columns=["setting"]), notes=notes, finding=finding,
                        agrees=agrees)


def _variant_finding(data: pd.DataFrame, confounded: bool) -> tuple[str, bool | None]:
    """Chat against base: the mean change of each variant's scores, changes taken per model."""
    changes = score_changes(data, ["model", "dataset", "method", "regulariser", "variant"])
    caveat = ("The chat and base models here are of different families, so a difference mixes instruction tuning "
              "with architecture, data and size." if confounded else "")
    return robustness_finding(group_summary(changes, ["variant"]), "variant", "chat", "base",
                              lambda v: f"{v} models", "chat models are harmed less", caveat)


def _by_size(models, info: dict) -> list[str]:
    """Models from smallest to largest (unknown sizes last), the order of Fig. 4's legend: Fig. 3 uses it too,
    so that a model has the same colour in both."""
    return sorted(models, key=lambda m: (info[m]["params"] or float("inf"), m))


def _li_fig3_across_families(name: str, title: str, data: pd.DataFrame, found: str, notes: list[str],
                             models: list[str]) -> FigureResult:
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
    models = [m for m in models if m in set(data.model)]
    fig = facet_lines(data, x="edits", hue="model", hue_order=models, style="variant", style_order=["base", "chat"],
                      col="panel", row="setting", title=title,
                      subtitle=_describe(data) + "; solid: base, dashed: chat (different model families)",
                      hue_title="model", style_title="variant")
    finding, agrees = _variant_finding(data, confounded=True)
    return FigureResult(name, title, LI, fig, data.drop(columns=["setting"]), notes=notes, finding=finding,
                        agrees=agrees)


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
    mixed = len(set(arch.values())) > 1 or len({info[m]["chat"] for m in sized}) > 1
    if mixed:
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
    order = [labels[m] for m in _by_size(sized, info) if labels[m] in set(data["size"])]
    fig = facet_lines(data, x="edits", hue="size", hue_order=order, col="panel", row="setting", title=title,
                      subtitle=_describe(data), hue_title="model (parameters)")
    finding, agrees = _scale_finding(data, sized, labels, mixed)
    return FigureResult(name, title, LI, fig, data.drop(columns=["setting"]), notes=notes, finding=finding,
                        agrees=agrees)


def _scale_finding(data: pd.DataFrame, sized: dict, labels: dict, mixed: bool) -> tuple[str, bool | None]:
    """The largest model against the smallest one shown: the mean change of each one's scores."""
    changes = score_changes(data, ["model", "dataset", "method", "regulariser"])
    shown = sorted(set(changes.model), key=lambda m: (sized[m], m))
    if len(shown) < 2:
        return robustness_finding(group_summary(changes, ["model"]), "model", "largest", "smallest", str, "")
    caveat = ("The models differ in more than size (family or instruction tuning), so this does not isolate scale."
              if mixed else "")
    return robustness_finding(group_summary(changes, ["model"]), "model", shown[-1], shown[0],
                              lambda m: labels[m], "the larger model is harmed less", caveat)


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
    # Values are percentages of the unedited score already: changes are in percentage points of it.
    finding, agrees = harm_of(data, ["method"], _method_row_label, items=("category",), scale=1.0,
                              what="mean change of the ability categories",
                              units="percentage points of the unedited model's score, mean over seeds and "
                                    "categories; negative = harm", failed=collapsed(tables["downstream"], data))
    return FigureResult(name, title, LI, fig, data.drop(columns=["method_panel", "setting", "label"]), notes=notes,
                        finding=finding, agrees=agrees)


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
            "`truthfulqa: {n: ...}` and `toxigen: {n: ...}` under `tasks:` (both are in the mirror and have a "
            "pinned download, see configs/datasets_tasks.yaml)."), notes=notes)
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
    finding, agrees = harm_of(data, ["method"], _method_row_label, what="mean change of the safety scores",
                              failed=collapsed(tables["downstream"], data))
    return FigureResult(name, title, LI, fig, data.drop(columns=["setting"]), notes=notes, finding=finding,
                        agrees=agrees)
