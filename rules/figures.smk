# The papermill-rendered figure notebooks, from the tables (rules/tables.smk):
#   edit_harm   the overview notebook (downstream.png, editing.png, weight_stats.png)
#   figure      one job per paper figure notebook, notebooks/<fig>.ipynb -> results/figures/<fig>.{png,csv,json,ipynb,html}
#   figures     results/figures/index.html, linking every figure with the config, versions and seeds
# A figure's code is its notebook plus the library code it and workflow_scripts/figures.py import
# (of src/editharm/figures/ only the definitions its F.<figure> uses, so editing one figure reruns
# its notebook alone): the notebook and that code's fingerprint are inputs, so editing either
# reruns the figure and nothing upstream. Its inputs: figure_inputs in rules/common.smk.


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


rule figure:
    input:
        unpack(figure_inputs),
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
