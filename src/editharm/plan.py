"""What the workflow computes: editing chains, their checkpoints, and result paths.

Pure functions of the validated config, shared by the Snakefile (to build the DAG) and
the tests. A chain is one sequence of edits: (model, dataset, method, regulariser, seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, order=True)
class Chain:
    model: str
    dataset: str
    method: str
    regulariser: str
    seed: int
    max_edits: int


def chains(config: dict) -> list[Chain]:
    """Every chain of every experiment; a chain in several experiments runs once, to its largest max_edits."""
    longest: dict[tuple, int] = {}
    for exp in config["experiments"].values():
        for seed in exp.get("seeds", config["seeds"]):
            for model in exp["models"]:
                for dataset in exp["datasets"]:
                    for method in exp["methods"]:
                        for reg in exp["regularisers"]:
                            key = (model, dataset, method, reg, seed)
                            longest[key] = max(longest.get(key, 0), exp["max_edits"])
    return sorted(Chain(*key, max_edits=n) for key, n in longest.items())


def _in_experiment(config: dict, exp: dict, chain: Chain) -> bool:
    return (chain.model in exp["models"] and chain.dataset in exp["datasets"] and chain.method in exp["methods"]
            and chain.regulariser in exp["regularisers"] and chain.seed in exp.get("seeds", config["seeds"]))


def chain_checkpoints(config: dict, chain: Chain) -> list[int]:
    """Where a chain saves and is scored: its experiments' checkpoints (an experiment's own
    `checkpoints`, else the global list), merged, up to the chain's max_edits.

    An experiment's own list serves batch editing: checkpoints [30] with batch size 30 is one
    edit operation of 30 requests, where the global [1, 10, 100, ...] would cut it into 1, 9, 20.
    """
    cps: set[int] = set()
    for exp in config["experiments"].values():
        if _in_experiment(config, exp, chain):
            cps.update(exp.get("checkpoints", config["checkpoints"]))
    return sorted(n for n in (cps or config["checkpoints"]) if n <= chain.max_edits)


def task_schedule(config: dict, task: str) -> str:
    """When a task is scored: "every" checkpoint (the default), or "final": on the unedited model and at
    the last checkpoint of each experiment that asks for final tasks (`experiments.<name>.final_tasks`)."""
    return (config["tasks"][task] or {}).get("at", "every")


def scored_tasks(config: dict, chain: Chain, n: int) -> list[str]:
    """The tasks scored at checkpoint n of a chain, in the config's task order.

    Tasks scheduled `at: final` are expensive paper benchmarks: a chain scores them where one of its
    experiments ends (n equals that experiment's max_edits), unless the experiment sets
    `final_tasks: false`. A chain in several experiments can therefore score them more than once.
    """
    final_here = any(_in_experiment(config, exp, chain) and exp.get("final_tasks", True)
                     and exp["max_edits"] == n for exp in config["experiments"].values())
    return [t for t in config["tasks"] if task_schedule(config, t) == "every" or final_here]


def base_tasks(config: dict, model: str) -> list[str]:
    """The tasks the unedited model is scored on: every task some chain on it scores, since the
    figures compare each checkpoint's score with the unedited one."""
    wanted = {t for c in chains(config) if c.model == model
              for n in chain_checkpoints(config, c) for t in scored_tasks(config, c, n)}
    return [t for t in config["tasks"] if t in wanted]


def previous_checkpoint(checkpoints: list[int], n: int) -> int:
    """The checkpoint a segment ending at n starts from (0 = the unedited model)."""
    if n not in checkpoints:
        raise ValueError(f"{n} is not a checkpoint; checkpoints are {checkpoints}")
    earlier = [c for c in checkpoints if c < n]
    return earlier[-1] if earlier else 0


def edit_set_size(config: dict) -> int:
    return max([*config["checkpoints"], *(n for exp in config["experiments"].values() for n in exp.get("checkpoints", []))])


def models_in_use(config: dict) -> list[str]:
    return sorted({c.model for c in chains(config)})


class Paths:
    """Where every artifact lives. Wildcard patterns for Snakemake and concrete paths for code."""

    def __init__(self, config: dict):
        self.results = Path(config["results_dir"])
        self.cache = Path(config["cache_dir"])

    # data
    def raw_manifest(self, dataset="{dataset}"):
        return str(self.cache / "data" / "raw" / dataset / "manifest.json")

    def prepared(self, dataset="{dataset}"):
        return str(self.cache / "data" / "prepared" / f"{dataset}.jsonl")

    def editset(self, dataset="{dataset}", seed="{seed}"):
        return str(self.results / "editsets" / dataset / f"seed{seed}.jsonl")

    # models
    def model_dir(self, model="{model}"):
        return str(self.cache / "models" / model)

    def model_manifest(self, model="{model}"):
        return str(Path(self.model_dir(model)) / "editharm_model.json")

    def layer_stats(self, model="{model}", corpus="{corpus}", tokens="{tokens}", layer="{layer}"):
        return str(self.cache / "stats" / model / f"{corpus}-{tokens}" / f"layer{layer}.safetensors")

    def trained(self, model="{model}", method="{method}", dataset="{dataset}"):
        return str(self.cache / "trained" / model / method / dataset / "summary.json")

    # editing
    def _chain(self, kind, model, dataset, method, reg, seed, n):
        return self.results / kind / model / dataset / method / reg / f"seed{seed}" / f"n{n}"

    def checkpoint(self, model="{model}", dataset="{dataset}", method="{method}", reg="{reg}", seed="{seed}", n="{n}"):
        return str(self._chain("edits", model, dataset, method, reg, seed, n) / "checkpoint.safetensors")

    def checkpoint_meta(self, model="{model}", dataset="{dataset}", method="{method}", reg="{reg}", seed="{seed}", n="{n}"):
        return str(self._chain("edits", model, dataset, method, reg, seed, n) / "checkpoint.json")

    def edit_log(self, model="{model}", dataset="{dataset}", method="{method}", reg="{reg}", seed="{seed}", n="{n}"):
        return str(self._chain("edits", model, dataset, method, reg, seed, n) / "edit_log.jsonl")

    # measurements
    def locality_reference(self, model="{model}", dataset="{dataset}", seed="{seed}"):
        return str(self.results / "metrics" / model / dataset / f"seed{seed}" / "reference.json")

    def edit_metrics(self, model="{model}", dataset="{dataset}", method="{method}", reg="{reg}", seed="{seed}", n="{n}"):
        return str(self._chain("metrics", model, dataset, method, reg, seed, n) / "editing.json")

    def weight_stats(self, model="{model}", dataset="{dataset}", method="{method}", reg="{reg}", seed="{seed}", n="{n}"):
        return str(self._chain("weightstats", model, dataset, method, reg, seed, n) / "weights.json")

    def heatmaps(self, model="{model}", dataset="{dataset}", method="{method}", reg="{reg}", seed="{seed}", n="{n}"):
        return str(self._chain("weightstats", model, dataset, method, reg, seed, n) / "heatmaps.safetensors")

    def score(self, model="{model}", dataset="{dataset}", method="{method}", reg="{reg}", seed="{seed}", n="{n}", task="{task}"):
        return str(self._chain("scores", model, dataset, method, reg, seed, n) / f"{task}.json")

    def base_score(self, model="{model}", task="{task}"):
        return str(self.results / "scores" / model / "base" / f"{task}.json")

    # outputs
    def table(self, name):
        return str(self.results / "tables" / f"{name}.csv")
