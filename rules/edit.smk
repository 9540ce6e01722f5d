# Sequential editing as a chain of segment jobs: 0 -> 1 -> 10 -> 100 -> 1000.
# Each segment reads the previous checkpoint; a method's code (its module and the library code
# it imports: the `code` input) and hyperparameter file are inputs, so changing them reruns that
# method's segments and what depends on them only.


_CHAIN_CHECKPOINTS = {(c.model, c.dataset, c.method, c.regulariser, str(c.seed)): chain_checkpoints(CFG, c) for c in CHAINS}


def _n_prev(w):
    """The checkpoint the segment ending at n starts from, on this chain's checkpoints (an experiment may set its own)."""
    cps = _CHAIN_CHECKPOINTS.get((w.model, w.dataset, w.method, w.reg, w.seed), CFG["checkpoints"])
    return previous_checkpoint(cps, int(w.n))


def stats_inputs(model, method):
    hp = method_hparams(model, method)
    layers = getattr(method_module(method), "stats_layers", lambda h, f: [])(hp, None)
    return {int(layer): P.layer_stats(model, COV["corpus"], COV["tokens"], layer) for layer in layers}


def _trained_as(model, method):
    """Aliases of a trained method (e.g. mend and mend_b10: same module, hyperparameter file and
    training data, another batch size) share one trained artifact: the first such name, sorted."""
    def ident(m):
        return (method_module(m).__name__, hparams_path(CFG, model, m), CFG["methods"][m].get("training_dataset"))
    return min(m for m in CFG["methods"] if ident(m) == ident(method))


def trained_input(model, method):
    spec = CFG["methods"][method]
    if getattr(method_module(method), "TRAINED", False):
        return P.trained(model, _trained_as(model, method), spec["training_dataset"])
    return None


def edit_segment_inputs(w):
    n_prev = _n_prev(w)
    inputs = {
        "model": P.model_manifest(w.model),
        "editset": P.editset(w.dataset, w.seed),
        "hparams": hparams_path(CFG, w.model, w.method),
        "code": code_input("edit_segment", method=w.method),
        "stats": list(stats_inputs(w.model, w.method).values()),
    }
    if n_prev > 0:
        inputs["prev_tensors"] = P.checkpoint(w.model, w.dataset, w.method, w.reg, w.seed, n_prev)
        inputs["prev_meta"] = P.checkpoint_meta(w.model, w.dataset, w.method, w.reg, w.seed, n_prev)
    trained = trained_input(w.model, w.method)
    if trained:
        inputs["trained"] = trained
    return inputs


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
        module=lambda w: CFG["methods"][w.method].get("module"),
        seed=CFG["seeds"][0],
    threads: THREADS
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
        n_prev=_n_prev,
        module=lambda w: CFG["methods"][w.method].get("module"),
        batch_size=lambda w: CFG["methods"][w.method].get("batch_size", 1),
        stats=lambda w: Canonical(stats_inputs(w.model, w.method)),
    threads: THREADS
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
