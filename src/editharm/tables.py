"""Tidy tables from the per-checkpoint JSON artifacts: one row per observation.

Columns of every table: model, dataset, method, regulariser, seed, edits, task, metric, value.
`task` is the downstream task, "editing" for editing metrics, or the tensor name for
weight statistics. The unedited model's scores appear at edits = 0 in every chain so a
line per regulariser starts from the same point.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from editharm.io import read_json, read_jsonl
from editharm.plan import Paths, chain_checkpoints, chains

COLUMNS = ["model", "dataset", "method", "regulariser", "seed", "edits", "task", "metric", "value"]


def _row(chain, edits, task, metric, value):
    return {"model": chain.model, "dataset": chain.dataset, "method": chain.method, "regulariser": chain.regulariser,
            "seed": chain.seed, "edits": edits, "task": task, "metric": metric, "value": value}


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values(COLUMNS[:-1], kind="stable").reset_index(drop=True)


def downstream_table(config: dict, paths: Paths) -> pd.DataFrame:
    rows = []
    for chain in chains(config):
        for task in config["tasks"]:
            base = read_json(paths.base_score(chain.model, task))
            rows += _score_rows(chain, 0, task, base)
            for n in chain_checkpoints(config, chain):
                rows += _score_rows(chain, n, task, read_json(paths.score(*_parts(chain), n, task)))
    return _frame(rows)


def _score_rows(chain, edits, task, result) -> list[dict]:
    if result.get("status") != "ok":
        # A collapsed model is a result too: one "failed" row, the reason is kept in the score JSON.
        return [_row(chain, edits, task, "failed", 1.0)]
    return [_row(chain, edits, task, metric, value) for metric, value in sorted(result["metrics"].items())]


def editing_table(config: dict, paths: Paths) -> pd.DataFrame:
    rows = []
    for chain in chains(config):
        for n in chain_checkpoints(config, chain):
            summary = read_json(paths.edit_metrics(*_parts(chain), n))["summary"]
            rows += [_row(chain, n, "editing", metric, value) for metric, value in sorted(summary.items())
                     if isinstance(value, (int, float)) and not (metric == "n" or metric.startswith("n_"))]
    return _frame(rows)


def weight_stats_table(config: dict, paths: Paths, weight_editing: set[str]) -> pd.DataFrame:
    rows = []
    for chain in chains(config):
        if chain.method not in weight_editing:
            continue
        for n in chain_checkpoints(config, chain):
            stats = read_json(paths.weight_stats(*_parts(chain), n))["tensors"]
            for tensor, values in sorted(stats.items()):
                rows += [_row(chain, n, tensor, metric, value) for metric, value in sorted(values.items())]
    return _frame(rows)


def edit_log_table(config: dict, paths: Paths) -> pd.DataFrame:
    """Per edit: seconds, optimisation steps, immediate success (from every segment's log)."""
    rows = []
    for chain in chains(config):
        for n in chain_checkpoints(config, chain):
            for entry in read_jsonl(paths.edit_log(*_parts(chain), n)):
                rows.append({"model": chain.model, "dataset": chain.dataset, "method": chain.method,
                             "regulariser": chain.regulariser, "seed": chain.seed, "checkpoint": n,
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


def _parts(chain):
    return chain.model, chain.dataset, chain.method, chain.regulariser, chain.seed
