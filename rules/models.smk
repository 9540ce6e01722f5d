# Models: fetch into the cache; covariance statistics of MLP keys per (model, layer, corpus, tokens).


rule fetch_model:
    input:
        code=code_input("fetch_model"),
    output:
        P.model_manifest(),
    params:
        source=lambda w: Canonical(CFG["models"][w.model]["source"]),
    resources:
        mem_mb=8000,
        runtime=60,
    log:
        f"{R}/logs/fetch_model/{{model}}.log",
    script:
        "../workflow_scripts/fetch_model.py"


rule layer_stats:
    input:
        model=P.model_manifest(),
        corpus=P.prepared("{corpus}"),
        code=code_input("layer_stats"),
    output:
        P.layer_stats(),
    params:
        seq_len=COV.get("seq_len", 256),
    threads: THREADS
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
