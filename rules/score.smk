# Scoring: editing metrics over all edits so far, and downstream tasks, per checkpoint;
# the unedited model (n = 0) is scored once per model and task and reused.


def _task_data(task_name):
    task = get_task(task_name)
    data = {"data": P.prepared(task.DATASET)}
    if task.SHOTS_DATASET:
        data["shots"] = P.prepared(task.SHOTS_DATASET)
    return data


def checkpoint_inputs(w):
    return {
        "model": P.model_manifest(w.model),
        "tensors": P.checkpoint(w.model, w.dataset, w.method, w.reg, w.seed, w.n),
        "meta": P.checkpoint_meta(w.model, w.dataset, w.method, w.reg, w.seed, w.n),
    }


def _trained_dir(w):
    trained = trained_input(w.model, w.method)
    return str(Path(trained).parent) if trained else None


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
        n=lambda w: max(c.max_edits for c in CHAINS if (c.model, c.dataset, str(c.seed)) == (w.model, w.dataset, w.seed)),
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
        module=lambda w: CFG["methods"][w.method].get("module"),
        trained_dir=_trained_dir,
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


rule score_task:
    input:
        unpack(checkpoint_inputs),
        unpack(lambda w: _task_data(w.task)),
        code=lambda w: code_input("score_task", method=w.method, task=w.task),
    output:
        P.score(),
    params:
        module=lambda w: CFG["methods"][w.method].get("module"),
        trained_dir=_trained_dir,
        n=lambda w: CFG["tasks"][w.task].get("n"),
        batch_size=lambda w: CFG["tasks"][w.task].get("batch_size", CFG["models"][w.model].get("batch_size", 16)),
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
        unpack(lambda w: _task_data(w.task)),
        model=P.model_manifest(),
        code=lambda w: code_input("score_task", task=w.task),
    output:
        P.base_score(),
    params:
        n=lambda w: CFG["tasks"][w.task].get("n"),
        batch_size=lambda w: CFG["tasks"][w.task].get("batch_size", CFG["models"][w.model].get("batch_size", 16)),
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
