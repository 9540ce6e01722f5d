# editharm: from dataset download to figures. See README.md and ../shared/DESIGN.md.
#
#   snakemake --cores 2                              # the embedded default, config.yaml
#   snakemake --cores 2 --configfile configs/ci.yaml  # another config (replaces config.yaml)
#
# The config is validated against schemas/config.schema.json (and the library: known
# methods, regularisers, tasks, hyperparameter files) before the DAG is built.

import functools
import os
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from editharm.config import validate_config, hparams_path
from editharm.methods import load_hparams, load_method
from editharm.plan import Paths, chain_checkpoints, chains, previous_checkpoint, edit_set_size
from editharm.evaluate.tasks import get_task
from editharm.codehash import Entry, file_entry, module_entry, write_fingerprint
from editharm.datasets import get_format
from editharm.ruleparams import Canonical, Untracked

BASEDIR = Path(workflow.basedir)

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


def _alternatives(names):
    return "|".join(sorted(map(str, names), key=len, reverse=True)) or "NONE"


wildcard_constraints:
    model=_alternatives(CFG["models"]),
    dataset=_alternatives(CFG["datasets"]),
    method=_alternatives(CFG["methods"]),
    reg=r"none|[a-z]+-[0-9]+(\.[0-9]+)?",
    seed=r"\d+",
    n=r"\d+",
    layer=r"\d+",
    tokens=r"\d+",
    task=_alternatives(CFG["tasks"]),
    corpus=_alternatives(CFG["datasets"]),


def method_module(method):
    return load_method(method, CFG["methods"][method].get("module"))


def method_hparams(model, method):
    return load_hparams(hparams_path(CFG, model, method), method_module(method).Hparams)


def edits_weights(method):
    return bool(method_module(method).EDITS_WEIGHTS)


def benchmark(rule_name, pattern):
    return f"{R}/benchmarks/{rule_name}/{pattern}.tsv"


# Every job has a `code` input: a small JSON file under <cache_dir>/code/ with the sha256 of
# the code the job runs (its workflow script, the library functions it calls and what they
# import, transitively; editharm/codehash.py). The file is rewritten only when that hash
# changes, so its mtime moves exactly when the job's code does and Snakemake reruns the job
# and what depends on it. Modules a job finds by name at run time (its method, its task, a
# dataset format) are added here, so a change to sst2.py reruns the SST-2 jobs only.
CODE_DIR = Path(CFG["cache_dir"]) / "code"


def _method_entry(method):
    mod = method_module(method)
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


include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/edit.smk"
include: "rules/score.smk"
include: "rules/stats.smk"
include: "rules/figures.smk"


rule all:
    default_target: True
    input:
        rules.figures.output,
