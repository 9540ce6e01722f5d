# Weight-change statistics of the cumulative change against the base weights, per checkpoint.


rule weight_stats:
    input:
        model=P.model_manifest(),
        tensors=P.checkpoint(),
        meta=P.checkpoint_meta(),
        code=code_input("weight_stats"),
    output:
        stats=P.weight_stats(),
        heatmaps=P.heatmaps(),
    params:
        settings=Canonical(CFG["weight_stats"]),
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    log:
        f"{R}/logs/weight_stats/{{model}}_{{dataset}}_{{method}}_{{reg}}_seed{{seed}}_n{{n}}.log",
    benchmark:
        benchmark("weight_stats", "{model}_{dataset}_{method}_{reg}_seed{seed}_n{n}")
    script:
        "../workflow_scripts/weight_stats.py"
