# Glue between the config and the rules, included first: the config read and validated, the
# path helpers, and every input function and config lookup the rules use. What a config
# answers (a method's module, a batch size, a default) is decided in src/editharm/config.py;
# what the workflow computes (chains, checkpoints, paths) in src/editharm/plan.py.

import functools
import os
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from editharm.config import (
    covariance_seq_len,
    edit_batch_size,
    hparams_path,
    method_module,
    method_module_path,
    scoring_batch_size,
    task_sample_size,
    training_dataset,
    validate_config,
)
from editharm.methods import load_hparams
from editharm.plan import Paths, chain_checkpoints, chains, edit_set_size, models_in_use, previous_checkpoint, scored_tasks, base_tasks
from editharm.evaluate.tasks import get_task
from editharm.codehash import Entry, file_entry, module_entry, write_fingerprint
from editharm.datasets import get_format
from editharm.figures import FIGURES
from editharm.regularize import NAME_PATTERN as REGULARISER_NAME
from editharm.ruleparams import Canonical, Untracked
from editharm.tables import TABLES

BASEDIR = Path(workflow.basedir)

# ---------------------------------------------------------------- the config

if not config:
    # No --configfile: the embedded default. (A `configfile:` directive would be merged
    # with --configfile instead of replaced by it, leaking the default's experiments.)
    config.update(yaml.safe_load((BASEDIR / "config.yaml").read_text()))
    CONFIG_SOURCE = str(BASEDIR / "config.yaml")
else:
    CONFIG_SOURCE = ", ".join(map(str, getattr(workflow, "configfiles", []) or ["--config"]))


def _resolve(path):
    """Config paths are relative to the working directory, else to the workflow folder."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return str(p)
    return str(BASEDIR / p) if (BASEDIR / p).exists() else str(p)


for _method in config.get("methods", {}).values():
    if isinstance(_method, dict) and "hparams_dir" in _method:
        _method["hparams_dir"] = _resolve(_method["hparams_dir"])
for _model in config.get("models", {}).values():
    if isinstance(_model, dict):
        for _m, _p in (_model.get("hparams") or {}).items():
            _model["hparams"][_m] = _resolve(_p)

CFG = validate_config(config, CONFIG_SOURCE)
P = Paths(CFG)
R = CFG["results_dir"]
CHAINS = chains(CFG)
MIRROR = CFG["mirror_dir"] if CFG["mirror_dir"] and os.path.isdir(CFG["mirror_dir"]) else None
THREADS = CFG["threads"]
COV = CFG["covariance"]


def alternatives(names):
    """A wildcard pattern matching exactly these names (longest first, so none is cut short)."""
    return "|".join(sorted(map(str, names), key=len, reverse=True)) or "NONE"


# ---------------------------------------------------------------- methods


def method_hparams(model, method):
    return load_hparams(hparams_path(CFG, model, method), method_module(CFG, method).Hparams)


def edits_weights(method):
    return bool(method_module(CFG, method).EDITS_WEIGHTS)


def stats_inputs(model, method):
    """Layer -> covariance statistics file, for the layers the method reads statistics of."""
    hp = method_hparams(model, method)
    layers = getattr(method_module(CFG, method), "stats_layers", lambda h, f: [])(hp, None)
    return {int(layer): P.layer_stats(model, COV["corpus"], COV["tokens"], layer) for layer in layers}


def _trained_as(model, method):
    """Aliases of a trained method (e.g. mend and mend_b10: same module, hyperparameter file and
    training data, another batch size) share one trained artifact: the first such name, sorted."""
    def ident(m):
        return (method_module(CFG, m).__name__, hparams_path(CFG, model, m), training_dataset(CFG, m))
    return min(m for m in CFG["methods"] if ident(m) == ident(method))


def trained_input(model, method):
    if getattr(method_module(CFG, method), "TRAINED", False):
        return P.trained(model, _trained_as(model, method), training_dataset(CFG, method))
    return None


def trained_dir(w):
    trained = trained_input(w.model, w.method)
    return str(Path(trained).parent) if trained else None


# ---------------------------------------------------------------- code fingerprints

# Every job has a `code` input: a small JSON file under <cache_dir>/code/ with the sha256 of
# the code the job runs (its workflow script, the library functions it calls and what they
# import, transitively; editharm/codehash.py). The file is rewritten only when that hash
# changes, so its mtime moves exactly when the job's code does and Snakemake reruns the job
# and what depends on it. Modules a job finds by name at run time (its method, its task, a
# dataset format) are added here, so a change to sst2.py reruns the SST-2 jobs only.
CODE_DIR = Path(CFG["cache_dir"]) / "code"


def _method_entry(method):
    mod = method_module(CFG, method)
    if mod.__name__.split(".")[0] == "editharm":
        return module_entry(mod.__name__)
    return Entry(mod.__name__, mod.__file__)  # a method of one's own, outside the package


@functools.lru_cache(maxsize=None)
def code_input(script, method=None, task=None, fmt=None, notebook=None):
    entries = [file_entry(BASEDIR / "workflow_scripts" / f"{script}.py")]
    if method:
        entries.append(_method_entry(method))
    if task:
        entries.append(module_entry(type(get_task(task)).__module__))
    if fmt:
        normaliser = get_format(fmt)
        entries.append(module_entry(normaliser.__module__, [normaliser.__name__]))
    if notebook:
        entries.append(file_entry(BASEDIR / "notebooks" / f"{notebook}.ipynb"))
    variant = ",".join(f"{k}={v}" for k, v in (("method", method), ("task", task), ("format", fmt), ("notebook", notebook)) if v)
    return write_fingerprint(CODE_DIR / script / f"{variant or 'all'}.json", entries)


def benchmark(rule_name, pattern):
    return f"{R}/benchmarks/{rule_name}/{pattern}.tsv"


# ---------------------------------------------------------------- editing chains

_CHAIN_CHECKPOINTS = {(c.model, c.dataset, c.method, c.regulariser, str(c.seed)): chain_checkpoints(CFG, c) for c in CHAINS}


def n_prev(w):
    """The checkpoint the segment ending at n starts from, on this chain's checkpoints (an experiment may set its own)."""
    cps = _CHAIN_CHECKPOINTS.get((w.model, w.dataset, w.method, w.reg, w.seed), CFG["checkpoints"])
    return previous_checkpoint(cps, int(w.n))


def edit_segment_inputs(w):
    prev = n_prev(w)
    inputs = {
        "model": P.model_manifest(w.model),
        "editset": P.editset(w.dataset, w.seed),
        "hparams": hparams_path(CFG, w.model, w.method),
        "code": code_input("edit_segment", method=w.method),
        "stats": list(stats_inputs(w.model, w.method).values()),
    }
    if prev > 0:
        inputs["prev_tensors"] = P.checkpoint(w.model, w.dataset, w.method, w.reg, w.seed, prev)
        inputs["prev_meta"] = P.checkpoint_meta(w.model, w.dataset, w.method, w.reg, w.seed, prev)
    trained = trained_input(w.model, w.method)
    if trained:
        inputs["trained"] = trained
    return inputs


def locality_reference_size(w):
    """Requests of the edit set the locality reference covers: as many as the longest chain on it measures."""
    return max(c.max_edits for c in CHAINS if (c.model, c.dataset, str(c.seed)) == (w.model, w.dataset, w.seed))


def checkpoint_inputs(w):
    return {
        "model": P.model_manifest(w.model),
        "tensors": P.checkpoint(w.model, w.dataset, w.method, w.reg, w.seed, w.n),
        "meta": P.checkpoint_meta(w.model, w.dataset, w.method, w.reg, w.seed, w.n),
    }


def task_data(w):
    task = get_task(w.task)
    data = {"data": P.prepared(task.DATASET)}
    if task.SHOTS_DATASET:
        data["shots"] = P.prepared(task.SHOTS_DATASET)
    return data


# ---------------------------------------------------------------- tables and figures


def chain_files(kind):
    """Every per-checkpoint artifact of one kind, over all chains, in chain then checkpoint order."""
    files = []
    for c in CHAINS:
        for n in chain_checkpoints(CFG, c):
            args = (c.model, c.dataset, c.method, c.regulariser, c.seed, n)
            if kind == "editing":
                files.append(P.edit_metrics(*args))
            elif kind == "scores":
                files += [P.score(*args, task) for task in scored_tasks(CFG, c, n)]
            elif kind == "weights" and edits_weights(c.method):
                files.append(P.weight_stats(*args))
            elif kind == "heatmaps" and edits_weights(c.method):
                files.append(P.heatmaps(*args))
            elif kind == "logs":
                files.append(P.edit_log(*args))
    return files


def base_score_files():
    return sorted({P.base_score(m, t) for m in models_in_use(CFG) for t in base_tasks(CFG, m)})


FIGURE_NOTEBOOKS = list(FIGURES)
FIGURE_FILES = ["png", "csv", "json", "ipynb", "html"]
# What the notebooks are told about the run: batch sizes and modules of the methods (gu_fig4),
# the models (li_fig3, li_fig4), the experiments, seeds and checkpoints.
FIGURE_CONFIG = {k: CFG[k] for k in ("methods", "models", "experiments", "seeds", "checkpoints", "tasks", "weight_stats")
                 if k in CFG}


def figure_inputs(w):
    inputs = {
        "tables": list(rules.aggregate.output),
        "notebook": str(BASEDIR / "notebooks" / f"{w.fig}.ipynb"),
        "code": code_input("figures", notebook=w.fig),
    }
    if w.fig == "gu_fig5":
        inputs["heatmaps"] = chain_files("heatmaps")
    if w.fig in ("li_fig3", "li_fig4"):
        # Chat flag and parameter count of each model come from its converted files.
        inputs["models"] = [P.model_manifest(m) for m in models_in_use(CFG)]
    return inputs
