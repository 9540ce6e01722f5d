"""Tidy tables from the per-checkpoint JSON artifacts: one row per observation.

Columns of every table: model, dataset, method, regulariser, seed, edits, task, metric, value.
`task` is the downstream task, "editing" for editing metrics, or the tensor name for
weight statistics. The unedited model's scores appear at edits = 0 in every chain so a
line per regulariser starts from the same point.

The tables hold exactly the files they are given (the aggregate rule's inputs): which
chains, checkpoints and tasks there are is read off each file's path, through the path
patterns of `editharm.plan.Paths`, never rebuilt from the config. A file not given is not
read, whatever lies next to it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from editharm.io import read_json, read_jsonl
from editharm.plan import Paths

COLUMNS = ["model", "dataset", "method", "regulariser", "seed", "edits", "task", "metric", "value"]
TABLES = ["downstream", "editing", "weight_stats", "edit_log", "timings"]
# The aggregate rule's named input lists, each read as one kind of artifact.
INPUTS = ["editing", "scores", "weights", "logs", "base"]


class ChainKey(NamedTuple):
    """One editing chain, as its artifacts' paths name it (ordered as editharm.plan sorts chains)."""

    model: str
    dataset: str
    method: str
    regulariser: str
    seed: int


class _Artifact(NamedTuple):
    chain: ChainKey
    edits: int
    task: str | None
    path: str


def all_tables(inputs: Mapping[str, Sequence[str]], paths: Paths, benchmark_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Every table from the aggregate rule's named input lists (see INPUTS) and the benchmark folder."""
    missing = [name for name in INPUTS if name not in inputs]
    if missing:
        raise KeyError(f"aggregate: no input list named {', '.join(missing)}; the aggregate rule (rules/tables.smk) "
                       f"must name its inputs {', '.join(INPUTS)}")
    return {
        "downstream": downstream_table(inputs["scores"], inputs["base"], paths),
        "editing": editing_table(inputs["editing"], paths),
        "weight_stats": weight_stats_table(inputs["weights"], paths),
        "edit_log": edit_log_table(inputs["logs"], paths),
        "timings": timings_table(benchmark_dir),
    }


def _row(chain: ChainKey, edits, task, metric, value):
    return {"model": chain.model, "dataset": chain.dataset, "method": chain.method, "regulariser": chain.regulariser,
            "seed": chain.seed, "edits": edits, "task": task, "metric": metric, "value": value}


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values(COLUMNS[:-1], kind="stable").reset_index(drop=True)


def downstream_table(scores: Iterable[str], base: Iterable[str], paths: Paths) -> pd.DataFrame:
    """Task scores per checkpoint, and each chain's unedited-model score (from `base`) at edits = 0."""
    base_by = {}
    for path in base:
        m = _match(path, paths.base_score(), "unedited-model score")
        base_by[(m["model"], m["task"])] = path
    rows, started = [], set()
    for art in _artifacts(scores, paths.score(), "task score"):
        if (art.chain, art.task) not in started:
            started.add((art.chain, art.task))
            base_path = base_by.get((art.chain.model, art.task))
            if base_path is None:
                raise ValueError(f"aggregate: {art.path} has no unedited-model score among the inputs; expected "
                                 f"{paths.base_score(art.chain.model, art.task)} in the rule's `base` list")
            rows += _score_rows(art.chain, 0, art.task, _read(base_path, read_json, "unedited-model score"))
        rows += _score_rows(art.chain, art.edits, art.task, _read(art.path, read_json, "task score"))
    return _frame(rows)


def _score_rows(chain, edits, task, result) -> list[dict]:
    if result.get("status") != "ok":
        # A collapsed model is a result too: one "failed" row, the reason is kept in the score JSON.
        return [_row(chain, edits, task, "failed", 1.0)]
    return [_row(chain, edits, task, metric, value) for metric, value in sorted(result["metrics"].items())]


def editing_table(files: Iterable[str], paths: Paths) -> pd.DataFrame:
    rows = []
    for art in _artifacts(files, paths.edit_metrics(), "editing metrics"):
        summary = _read(art.path, read_json, "editing metrics")["summary"]
        rows += [_row(art.chain, art.edits, "editing", metric, value) for metric, value in sorted(summary.items())
                 if isinstance(value, (int, float)) and not (metric == "n" or metric.startswith("n_"))]
    return _frame(rows)


def weight_stats_table(files: Iterable[str], paths: Paths) -> pd.DataFrame:
    """Weight-change statistics of the checkpoints given (the rule lists those of weight-editing methods only)."""
    rows = []
    for art in _artifacts(files, paths.weight_stats(), "weight statistics"):
        stats = _read(art.path, read_json, "weight statistics")["tensors"]
        for tensor, values in sorted(stats.items()):
            rows += [_row(art.chain, art.edits, tensor, metric, value) for metric, value in sorted(values.items())]
    return _frame(rows)


def edit_log_table(files: Iterable[str], paths: Paths) -> pd.DataFrame:
    """Per edit: seconds, optimisation steps, immediate success (from every segment's log),
    in chain order, then checkpoint, then the log's own order."""
    rows = []
    for art in _artifacts(files, paths.edit_log(), "edit log"):
        c = art.chain
        for entry in _read(art.path, read_jsonl, "edit log"):
            rows.append({"model": c.model, "dataset": c.dataset, "method": c.method,
                         "regulariser": c.regulariser, "seed": c.seed, "checkpoint": art.edits,
                         "edit_index": entry["edit_index"], "case_id": entry["case_id"], "seconds": entry["seconds"],
                         "steps": entry.get("steps"), "immediate_success": entry.get("immediate_success")})
    return pd.DataFrame(rows)


def timings_table(benchmark_dir: str | Path) -> pd.DataFrame:
    """Wall time of every job, from Snakemake's benchmark files: results/benchmarks/<rule>/<job>.tsv."""
    rows = []
    for tsv in sorted(Path(benchmark_dir).glob("*/*.tsv")):
        frame = pd.read_csv(tsv, sep="\t")
        rows.append({"rule": tsv.parent.name, "job": tsv.stem, "seconds": float(frame["s"].iloc[-1]),
                     "max_rss_mb": float(frame["max_rss"].iloc[-1]) if "max_rss" in frame else None})
    return pd.DataFrame(rows, columns=["rule", "job", "seconds", "max_rss_mb"])


# ---------------------------------------------------------------- reading the given files


def _artifacts(files: Iterable[str], template: str, what: str) -> list[_Artifact]:
    """The files with their chain, checkpoint and task read off the path, sorted by chain, then
    checkpoint, then task (the order the rows had when the tables walked the config's chains)."""
    found = []
    for path in files:
        m = _match(path, template, what)
        chain = ChainKey(m["model"], m["dataset"], m["method"], m["reg"], int(m["seed"]))
        found.append(_Artifact(chain, int(m["n"]), m.get("task"), str(path)))
    return sorted(found, key=lambda a: (a.chain, a.edits, a.task or ""))


def _match(path: str, template: str, what: str) -> dict[str, str]:
    m = _pattern(template).fullmatch(str(path))
    if m is None:
        raise ValueError(f"aggregate: input {path} is not a {what} file: its path does not match {template} "
                         "(editharm.plan.Paths); list only such files in the rule's input")
    return m.groupdict()


_NUMERIC = {"seed", "n"}  # placeholders whose values are integers (seed<S>, n<N>)


def _pattern(template: str) -> re.Pattern:
    """A Paths pattern such as '<results>/metrics/{model}/.../n{n}/editing.json' as a regex, one
    group per placeholder; a placeholder's value is one path component (digits for seed and n)."""
    parts = re.split(r"\{(\w+)\}", template)
    return re.compile("".join((f"(?P<{part}>[0-9]+)" if part in _NUMERIC else f"(?P<{part}>[^/]+)") if i % 2
                              else re.escape(part) for i, part in enumerate(parts)))


def _read(path: str, reader: Callable[[str], Any], what: str) -> Any:
    try:
        return reader(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"aggregate: input {path} ({what}) does not exist; the tables read exactly the files "
                                "the aggregate rule lists: make it with the workflow (snakemake), or leave it out "
                                "of the list") from None
