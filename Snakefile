# editharm: from dataset download to figures. See README.md and ../shared/DESIGN.md.
#
#   snakemake --cores 2                              # the embedded default, config.yaml
#   snakemake --cores 2 --configfile configs/ci.yaml  # another config (replaces config.yaml)
#
# The config is validated against schemas/config.schema.json (and the library: known
# methods, regularisers, tasks, hyperparameter files) before the DAG is built
# (rules/common.smk, which also holds the input functions and config lookups of the rules).
# The README's "The DAG" section maps each rule to its file.


include: "rules/common.smk"


wildcard_constraints:
    model=alternatives(CFG["models"]),
    dataset=alternatives(CFG["datasets"]),
    method=alternatives(CFG["methods"]),
    # the one grammar of regulariser names (editharm.regularize), not a copy of it
    reg=REGULARISER_NAME,
    seed=r"\d+",
    n=r"\d+",
    layer=r"\d+",
    tokens=r"\d+",
    task=alternatives(CFG["tasks"]),
    corpus=alternatives(CFG["datasets"]),


include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/covariance.smk"
include: "rules/edit.smk"
include: "rules/edit_metrics.smk"
include: "rules/score.smk"
include: "rules/weight_stats.smk"
include: "rules/tables.smk"
include: "rules/figures.smk"


rule all:
    default_target: True
    input:
        rules.figures.output,
