"""Workflow configuration: schema validation with readable errors, defaults, and checks
that need the library (known methods, regularisers, tasks, hyperparameter files).

`validate_config(config, source)` runs in the Snakefile before the DAG is built, so a
bad config fails before any compute, naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.json"

DEFAULTS: dict[str, Any] = {
    "mirror_dir": None,
    "threads": 2,
    "task_seed": 1234,
    "editing_metrics": {"batch_size": 32},
    "weight_stats": {
        "thresholds": [0.01, 0.05, 0.077, 0.1, 0.171, 0.5, 1.0],
        "quantiles": [0.5, 0.8, 0.9, 0.99],
        "heatmap_size": [64, 64],
    },
}

# Defaults of keys inside an entry (every method, every model) or inside `covariance`. They are
# not filled into the config: jobs record the config (or its methods and models) as a param,
# and a filled-in default would change that record and rerun those jobs on existing results.
# The lookup functions at the end of this module apply them; nothing else should.
ENTRY_DEFAULTS: dict[str, dict[str, Any]] = {
    "covariance": {"seq_len": 256},  # tokens per chunk of the statistics corpus
    "methods": {"batch_size": 1},    # requests per edit operation: instance editing
    "models": {"batch_size": 16},    # scoring batch size, unless the task sets its own
}


class ConfigError(ValueError):
    """The configuration is invalid; the message says where, what and how to fix it."""


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _where(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _explain(error: jsonschema.ValidationError) -> str:
    key = _where(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"key {key}: unknown key(s) {', '.join(map(repr, extra))}{hint}"
    if error.validator == "required":
        return f"key {key}: {error.message}"
    if error.validator == "enum":
        return f"key {key}: value {error.instance!r} is not allowed; allowed: {', '.join(map(repr, error.validator_value))}"
    if error.validator == "pattern":
        return f"key {key}: value {error.instance!r} does not match the pattern {error.validator_value!r}"
    if error.validator == "type":
        return f"key {key}: value {error.instance!r} should be of type {error.validator_value}"
    desc = schema.get("description")
    return f"key {key}: value {error.instance!r} is invalid: {error.message}" + (f" ({desc})" if desc else "")


def with_defaults(config: dict) -> dict:
    merged = copy.deepcopy(config)
    for key, value in DEFAULTS.items():
        if isinstance(value, dict):
            merged[key] = {**value, **(merged.get(key) or {})}
        else:
            merged.setdefault(key, value)
    return merged


def validate_config(config: dict, source: str = "config") -> dict:
    """Validate against the schema and the library; return the config with defaults filled in."""
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = "\n  - ".join(_explain(e) for e in errors[:10])
        raise ConfigError(f"{source}: the configuration does not match schemas/config.schema.json:\n  - {lines}")
    config = with_defaults(config)
    mirror = config["mirror_dir"]
    if mirror and not Path(mirror).is_dir():
        # Not an error: without the mirror every file comes from its canonical source (online).
        print(f"warning: {source}: key mirror_dir: the folder {mirror!r} does not exist (relative to {Path.cwd()}); "
              "every dataset file will be downloaded from its canonical source. Fix mirror_dir if it is a typo.",
              file=sys.stderr)
    problems = _semantic_problems(config)
    if problems:
        raise ConfigError(f"{source}: invalid configuration:\n  - " + "\n  - ".join(problems))
    return config


def _semantic_problems(config: dict) -> list[str]:
    from editharm.methods import UnknownMethodError
    from editharm.regularize import parse_regulariser

    problems: list[str] = []
    checked: set[tuple[str, str]] = set()  # (model, method) pairs whose hyperparameter file was read
    cps = config["checkpoints"]
    if cps != sorted(cps):
        problems.append(f"key checkpoints: {cps} must be increasing, e.g. {sorted(cps)}")
    if config["covariance"]["corpus"] not in config["datasets"]:
        problems.append(f"key covariance.corpus: {config['covariance']['corpus']!r} is not a dataset in `datasets` "
                        f"(defined: {', '.join(config['datasets'])})")
    for name, spec in config["methods"].items():
        try:
            module = method_module(config, name)
        except UnknownMethodError as e:
            problems.append(f"key methods.{name}: {e}")
            continue
        if getattr(module, "TRAINED", False) and training_dataset(config, name) not in config["datasets"]:
            problems.append(f"key methods.{name}.training_dataset: {training_dataset(config, name)!r} must name a dataset "
                            f"in `datasets` ({name} is trained before editing)")
        if edit_batch_size(config, name) > 1 and not module.SUPPORTS_BATCH:
            problems.append(f"key methods.{name}.batch_size: {spec['batch_size']} > 1 but {name} edits one request at a time; use 1")
    for exp_name, exp in config["experiments"].items():
        where = f"experiments.{exp_name}"
        for kind, defined in (("models", config["models"]), ("datasets", config["datasets"]), ("methods", config["methods"])):
            for item in exp[kind]:
                if item not in defined:
                    problems.append(f"key {where}.{kind}: {item!r} is not defined under `{kind}` (defined: {', '.join(defined)})")
        exp_cps = exp.get("checkpoints", cps)
        if exp_cps != sorted(exp_cps):
            problems.append(f"key {where}.checkpoints: {exp_cps} must be increasing, e.g. {sorted(exp_cps)}")
        if exp["max_edits"] > max(exp_cps):
            problems.append(f"key {where}.max_edits: {exp['max_edits']} exceeds the largest checkpoint {max(exp_cps)}")
        elif exp["max_edits"] not in exp_cps:
            problems.append(f"key {where}.max_edits: {exp['max_edits']} must be one of checkpoints {exp_cps}")
        for reg in exp["regularisers"]:
            try:
                parse_regulariser(reg)
            except ValueError as e:
                problems.append(f"key {where}.regularisers: {e}")
                continue
            if reg == "none":
                continue
            for method in exp["methods"]:
                if method not in config["methods"]:
                    continue
                try:
                    module = method_module(config, method)
                except UnknownMethodError:
                    continue
                if not module.EDITS_WEIGHTS:
                    problems.append(
                        f"key {where}.regularisers: {reg!r} cannot apply to method {method!r}: its edit is a state change "
                        "(codebook/memory), not a weight update, so there is nothing to regularise; use 'none' for it "
                        "in a separate experiment"
                    )
        for model in exp["models"]:
            if model not in config["models"]:
                continue
            for method in exp["methods"]:
                if method in config["methods"]:
                    path = hparams_path(config, model, method)
                    if not Path(path).exists():
                        problems.append(f"key {where}: hyperparameter file {path} for method {method!r} on model {model!r} "
                                        "does not exist; add it or set models.<model>.hparams.<method>")
                    elif (model, method) not in checked:
                        checked.add((model, method))
                        problems.extend(_hparams_problems(config, model, method, path))
    from editharm.evaluate.tasks import get_task

    for task_name in config["tasks"]:
        try:
            task = get_task(task_name)
        except ValueError as e:
            problems.append(f"key tasks.{task_name}: {e}")
            continue
        for ds in filter(None, (task.DATASET, task.SHOTS_DATASET)):
            if ds not in config["datasets"]:
                problems.append(f"key tasks.{task_name}: the task reads dataset {ds!r}, which is not defined under `datasets`")
    finals = [t for t, spec in config["tasks"].items() if (spec or {}).get("at") == "final"]
    if finals and not any(exp.get("final_tasks", True) for exp in config["experiments"].values()):
        # Without one experiment that scores them, these tasks would silently never run.
        problems.append(f"key tasks: {', '.join(finals)} {'is' if len(finals) == 1 else 'are'} scheduled `at: final`, but "
                        "every experiment sets `final_tasks: false`, so nothing would score them; set `final_tasks: true` "
                        "(or remove the key) on one experiment, or schedule them `at: every`")
    return problems


def model_layer_problems(config: dict, model: str, model_dir: str) -> list[str]:
    """After fetching `model` into `model_dir`: layers in the hyperparameter files of every method
    run on it that the model lacks. This is the first moment a hub model's depth is known."""
    from editharm.models import fetched_layer_count

    n_layers = fetched_layer_count(model_dir)
    if n_layers is None:
        raise FileNotFoundError(f"{model_dir} holds no config.json; fetch_model did not produce a model folder")
    problems: list[str] = []
    for method in sorted({m for exp in config["experiments"].values() if model in exp["models"] for m in exp["methods"]}):
        path = hparams_path(config, model, method)
        if Path(path).exists():
            problems.extend(_hparams_problems(config, model, method, path, n_layers))
    return problems


def _hparams_problems(config: dict, model: str, method: str, path: str, n_layers: int | None = None) -> list[str]:
    """Read a hyperparameter file now (names, types, ranges) and check its layers against the model
    when the model's depth is known, instead of failing inside the first job that uses it."""
    from editharm.methods import UnknownMethodError, hparams_layer_problems, load_hparams
    from editharm.models import known_layer_count
    from editharm.plan import Paths

    try:
        module = method_module(config, method)
        hparams = load_hparams(path, module.Hparams)
    except UnknownMethodError:
        return []  # reported under methods.<name>
    except ValueError as e:
        return [f"key models.{model}.hparams.{method} (method {method!r} on model {model!r}): {e}"]
    if n_layers is None:
        n_layers = known_layer_count(config["models"][model]["source"], Paths(config).model_dir(model))
    if n_layers is None:
        return []  # a hub model not fetched yet: checked again when a job loads it
    return hparams_layer_problems(path, hparams, n_layers, model)


def hparams_path(config: dict, model: str, method: str) -> str:
    override = config["models"][model].get("hparams", {}).get(method)
    if override:
        return override
    family = config["models"][model]["family"]
    return str(Path(config["methods"][method]["hparams_dir"]) / f"{family}.yaml")


# ---------------------------------------------------------------- lookups
# One function per question the workflow asks of a validated config, each with its default,
# so the rules, the jobs and the checks above ask the same way.


def method_module_path(config: dict, method: str) -> str | None:
    """The import path of a method's module, as configured; None means editharm.methods.<method>."""
    return config["methods"][method].get("module")


def method_module(config: dict, method: str):
    """The loaded module of a configured method (UnknownMethodError if there is none)."""
    from editharm.methods import load_method

    return load_method(method, method_module_path(config, method))


def edit_batch_size(config: dict, method: str) -> int:
    """Requests per edit operation of a configured method."""
    return config["methods"][method].get("batch_size", ENTRY_DEFAULTS["methods"]["batch_size"])


def training_dataset(config: dict, method: str) -> str | None:
    """The dataset a trained method (MEND, SERAC) learns from; None for the others."""
    return config["methods"][method].get("training_dataset")


def task_sample_size(config: dict, task: str) -> int | None:
    """Items of a task that are scored; None scores them all."""
    return config["tasks"][task].get("n")


def scoring_batch_size(config: dict, model: str, task: str) -> int:
    """Batch size for scoring a task on a model: the task's own, else the model's."""
    own = config["tasks"][task].get("batch_size")
    if own is not None:
        return own
    return config["models"][model].get("batch_size", ENTRY_DEFAULTS["models"]["batch_size"])


def covariance_seq_len(config: dict) -> int:
    """Tokens per chunk when the covariance statistics read their corpus."""
    return config["covariance"].get("seq_len", ENTRY_DEFAULTS["covariance"]["seq_len"])
