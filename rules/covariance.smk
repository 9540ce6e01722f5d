# Covariance statistics: second moments of the MLP keys per (model, layer, corpus, tokens), the C
# that ROME, MEMIT, PMET and AlphaEdit read (editing segments list them as inputs: stats_inputs).


rule layer_stats:
    input:
        model=P.model_manifest(),
        corpus=P.prepared("{corpus}"),
        code=code_input("layer_stats"),
    output:
        P.layer_stats(),
    params:
        seq_len=covariance_seq_len(CFG),
    threads: THREADS
    priority: 10  # before scoring, as edit_segment (rules/edit.smk)
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    log:
        f"{R}/logs/layer_stats/{{model}}_{{corpus}}-{{tokens}}_layer{{layer}}.log",
    benchmark:
        benchmark("layer_stats", "{model}_{corpus}-{tokens}_layer{layer}")
    script:
        "../workflow_scripts/layer_stats.py"
