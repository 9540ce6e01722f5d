# Editing metrics (reliability, generalization, locality) over all edits so far, per checkpoint,
# and the unedited model's answers that locality is measured against.


rule locality_reference:
    # The unedited model's predictions on the locality prompts (zsRE locality = agreement with them).
    input:
        model=P.model_manifest(),
        editset=P.editset(),
        code=code_input("locality_reference"),
    output:
        P.locality_reference(),
    params:
        # only as many requests as the longest chain on this edit set will measure
        n=locality_reference_size,
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=1,
    log:
        f"{R}/logs/locality_reference/{{model}}_{{dataset}}_seed{{seed}}.log",
    script:
        "../workflow_scripts/locality_reference.py"


rule edit_metrics:
    input:
        unpack(checkpoint_inputs),
        editset=P.editset(),
        reference=P.locality_reference(),
        code=lambda w: code_input("edit_metrics", method=w.method),
    output:
        P.edit_metrics(),
    params:
        module=lambda w: method_module_path(CFG, w.method),
        trained_dir=trained_dir,
        batch_size=CFG["editing_metrics"]["batch_size"],
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    log:
        f"{R}/logs/edit_metrics/{{model}}_{{dataset}}_{{method}}_{{reg}}_seed{{seed}}_n{{n}}.log",
    benchmark:
        benchmark("edit_metrics", "{model}_{dataset}_{method}_{reg}_seed{seed}_n{n}")
    script:
        "../workflow_scripts/edit_metrics.py"
