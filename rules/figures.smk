# Tidy tables from every per-checkpoint artifact, then the papermill-rendered figure notebooks:
#   edit_harm   the overview notebook (downstream.png, editing.png, weight_stats.png)
#   figure      one job per paper figure notebook, notebooks/<fig>.ipynb -> results/figures/<fig>.{png,csv,json,ipynb,html}
#   figures     results/figures/index.html, linking every figure with the config, versions and seeds
# A figure's code is its notebook plus the library code it and workflow_scripts/figures.py import
# (src/editharm/figures.py, ...): the notebook and that code's fingerprint are inputs, so editing
# either reruns the figures and nothing upstream.

from editharm.figures import FIGURES
from editharm.plan import models_in_use


def _chain_files(kind):
    files = []
    for c in CHAINS:
        for n in chain_checkpoints(CFG, c):
            args = (c.model, c.dataset, c.method, c.regulariser, c.seed, n)
            if kind == "editing":
                files.append(P.edit_metrics(*args))
            elif kind == "scores":
                files += [P.score(*args, task) for task in CFG["tasks"]]
            elif kind == "weights" and edits_weights(c.method):
                files.append(P.weight_stats(*args))
            elif kind == "heatmaps" and edits_weights(c.method):
                files.append(P.heatmaps(*args))
            elif kind == "logs":
                files.append(P.edit_log(*args))
    return files


TABLES = ["downstream", "editing", "weight_stats", "edit_log", "timings"]
FIGURE_NOTEBOOKS = list(FIGURES)
FIGURE_FILES = ["png", "csv", "json", "ipynb", "html"]
# What the notebooks are told about the run: batch sizes and modules of the methods (gu_fig4),
# the models (li_fig3, li_fig4), the experiments, seeds and checkpoints.
FIGURE_CONFIG = {k: CFG[k] for k in ("methods", "models", "experiments", "seeds", "checkpoints", "tasks", "weight_stats")
                 if k in CFG}


rule aggregate:
    input:
        editing=_chain_files("editing"),
        scores=_chain_files("scores"),
        weights=_chain_files("weights"),
        logs=_chain_files("logs"),
        base=sorted({P.base_score(c.model, t) for c in CHAINS for t in CFG["tasks"]}),
        code=code_input("aggregate"),
    output:
        **{name: P.table(name) for name in TABLES},
    params:
        config=Canonical(CFG),
        weight_editing=sorted(m for m in CFG["methods"] if edits_weights(m)),
    resources:
        mem_mb=2000,
        runtime=10,
    log:
        f"{R}/logs/aggregate.log",
    script:
        "../workflow_scripts/aggregate.py"


rule edit_harm:
    input:
        tables=rules.aggregate.output,
        notebook=str(BASEDIR / "notebooks" / "edit_harm.ipynb"),
        code=code_input("figures", notebook="edit_harm"),
    output:
        notebook=f"{R}/figures/edit_harm.ipynb",
        html=f"{R}/figures/edit_harm.html",
        downstream=f"{R}/figures/downstream.png",
        editing=f"{R}/figures/editing.png",
        weight_stats=f"{R}/figures/weight_stats.png",
    resources:
        mem_mb=2000,
        runtime=10,
    log:
        f"{R}/logs/figures/edit_harm.log",
    script:
        "../workflow_scripts/figures.py"


def _figure_inputs(w):
    inputs = {
        "tables": list(rules.aggregate.output),
        "notebook": str(BASEDIR / "notebooks" / f"{w.fig}.ipynb"),
        "code": code_input("figures", notebook=w.fig),
    }
    if w.fig == "gu_fig5":
        inputs["heatmaps"] = _chain_files("heatmaps")
    if w.fig in ("li_fig3", "li_fig4"):
        # Chat flag and parameter count of each model come from its converted files.
        inputs["models"] = [P.model_manifest(m) for m in models_in_use(CFG)]
    return inputs


rule figure:
    input:
        unpack(_figure_inputs),
    output:
        png=f"{R}/figures/{{fig}}.png",
        csv=f"{R}/figures/{{fig}}.csv",
        meta=f"{R}/figures/{{fig}}.json",
        notebook=f"{R}/figures/{{fig}}.ipynb",
        html=f"{R}/figures/{{fig}}.html",
    params:
        config=Canonical(FIGURE_CONFIG),
    wildcard_constraints:
        fig="|".join(FIGURE_NOTEBOOKS),
    resources:
        mem_mb=2000,
        runtime=10,
    log:
        f"{R}/logs/figures/{{fig}}.log",
    script:
        "../workflow_scripts/figures.py"


rule figures:
    input:
        overview=rules.edit_harm.output,
        figures=expand(f"{R}/figures/{{fig}}.{{ext}}", fig=FIGURE_NOTEBOOKS, ext=FIGURE_FILES),
        tables=rules.aggregate.output,
        code=code_input("figures"),
    output:
        index=f"{R}/figures/index.html",
    params:
        config=Canonical(CFG),
        # The file the config was read from, shown on the page: the same config under
        # another name makes the same figures, so it does not rerun the job.
        config_source=Untracked(CONFIG_SOURCE),
        names=FIGURE_NOTEBOOKS,
    resources:
        mem_mb=1000,
        runtime=5,
    log:
        f"{R}/logs/figures/index.log",
    script:
        "../workflow_scripts/figures.py"
