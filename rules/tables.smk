# Tidy tables (results/tables/*.csv) from every per-checkpoint artifact. The job reads exactly the
# files listed here (src/editharm/tables.py takes them from snakemake.input), so this list is the
# one enumeration of what the tables hold.


rule aggregate:
    input:
        editing=chain_files("editing"),
        scores=chain_files("scores"),
        weights=chain_files("weights"),
        logs=chain_files("logs"),
        base=base_score_files(),
        code=code_input("aggregate"),
    output:
        **{name: P.table(name) for name in TABLES},
    params:
        # where the artifacts live, to read each file's chain and checkpoint off its path, and
        # the benchmark files (written by Snakemake, not an input) for the timings table
        dirs=Canonical({key: CFG[key] for key in ("results_dir", "cache_dir")}),
    resources:
        mem_mb=2000,
        runtime=10,
    log:
        f"{R}/logs/aggregate.log",
    script:
        "../workflow_scripts/aggregate.py"
