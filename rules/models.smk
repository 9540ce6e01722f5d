# Models: fetch into the cache (converted to a local folder, every file's sha256 recorded).


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
