# Sequential editing as a chain of segment jobs: 0 -> 1 -> 10 -> 100 -> 1000, and the training
# some methods need before they edit.
# Each segment reads the previous checkpoint; a method's code (its module and the library code
# it imports: the `code` input) and hyperparameter file are inputs, so changing them reruns that
# method's segments and what depends on them only.


rule train_method:
    # MEND's hypernetwork, SERAC's classifier: trained once per (model, method, training data).
    input:
        model=P.model_manifest(),
        data=P.prepared("{dataset}"),
        hparams=lambda w: hparams_path(CFG, w.model, w.method),
        code=lambda w: code_input("train_method", method=w.method),
    output:
        P.trained(),
    params:
        module=lambda w: method_module_path(CFG, w.method),
        seed=CFG["seeds"][0],
    threads: THREADS
    priority: 10  # before scoring, as edit_segment
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=1,
    log:
        f"{R}/logs/train_method/{{model}}_{{method}}_{{dataset}}.log",
    benchmark:
        benchmark("train_method", "{model}_{method}_{dataset}")
    script:
        "../workflow_scripts/train_method.py"


rule edit_segment:
    input:
        unpack(edit_segment_inputs),
    output:
        tensors=P.checkpoint(),
        meta=P.checkpoint_meta(),
        log=P.edit_log(),
    params:
        n_prev=n_prev,
        module=lambda w: method_module_path(CFG, w.method),
        batch_size=lambda w: edit_batch_size(CFG, w.method),
        stats=lambda w: Canonical(stats_inputs(w.model, w.method)),
    threads: THREADS
    # The editing chains are the run's critical path (each segment waits for the one before),
    # so they start before scoring jobs, which can fill the other core at any time.
    priority: 10
    resources:
        mem_mb=16000,
        runtime=720,
        gpu=1,
    log:
        f"{R}/logs/edit_segment/{{model}}_{{dataset}}_{{method}}_{{reg}}_seed{{seed}}_n{{n}}.log",
    benchmark:
        benchmark("edit_segment", "{model}_{dataset}_{method}_{reg}_seed{seed}_n{n}")
    script:
        "../workflow_scripts/edit_segment.py"
