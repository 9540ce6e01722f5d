# Downstream task scores per checkpoint; the unedited model (n = 0) is scored once per model
# and task and reused by every chain.


rule score_task:
    input:
        unpack(checkpoint_inputs),
        unpack(task_data),
        code=lambda w: code_input("score_task", method=w.method, task=w.task),
    output:
        P.score(),
    params:
        module=lambda w: method_module_path(CFG, w.method),
        trained_dir=trained_dir,
        n=lambda w: task_sample_size(CFG, w.task),
        batch_size=lambda w: scoring_batch_size(CFG, w.model, w.task),
        task_seed=CFG["task_seed"],
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1,
    log:
        f"{R}/logs/score_task/{{model}}_{{dataset}}_{{method}}_{{reg}}_seed{{seed}}_n{{n}}_{{task}}.log",
    benchmark:
        benchmark("score_task", "{model}_{dataset}_{method}_{reg}_seed{seed}_n{n}_{task}")
    script:
        "../workflow_scripts/score_task.py"


rule score_base:
    input:
        unpack(task_data),
        model=P.model_manifest(),
        code=lambda w: code_input("score_task", task=w.task),
    output:
        P.base_score(),
    params:
        n=lambda w: task_sample_size(CFG, w.task),
        batch_size=lambda w: scoring_batch_size(CFG, w.model, w.task),
        task_seed=CFG["task_seed"],
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1,
    log:
        f"{R}/logs/score_base/{{model}}_{{task}}.log",
    benchmark:
        benchmark("score_base", "{model}_{task}")
    script:
        "../workflow_scripts/score_task.py"
