# Tidy tables from every per-checkpoint artifact, then the papermill-rendered figure notebook.


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
            elif kind == "logs":
                files.append(P.edit_log(*args))
    return files


TABLES = ["downstream", "editing", "weight_stats", "edit_log", "timings"]


rule aggregate:
    input:
        editing=_chain_files("editing"),
        scores=_chain_files("scores"),
        weights=_chain_files("weights"),
        logs=_chain_files("logs"),
        base=sorted({P.base_score(c.model, t) for c in CHAINS for t in CFG["tasks"]}),
    output:
        **{name: P.table(name) for name in TABLES},
    params:
        config=CFG,
        weight_editing=sorted(m for m in CFG["methods"] if edits_weights(m)),
    resources:
        mem_mb=2000,
        runtime=10,
    log:
        f"{R}/logs/aggregate.log",
    script:
        "../workflow_scripts/aggregate.py"


rule figures:
    input:
        tables=rules.aggregate.output,
        notebook=str(BASEDIR / "notebooks" / "edit_harm.ipynb"),
    output:
        notebook=f"{R}/figures/edit_harm.ipynb",
        html=f"{R}/figures/edit_harm.html",
        downstream=f"{R}/figures/downstream.png",
        editing=f"{R}/figures/editing.png",
    resources:
        mem_mb=2000,
        runtime=10,
    log:
        f"{R}/logs/figures.log",
    script:
        "../workflow_scripts/figures.py"
