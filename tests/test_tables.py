"""The tidy tables (editharm.tables, rule aggregate) read exactly the files the rule lists.

A small results tree is written here (two ROME chains, none and rect-40, and a GRACE chain;
checkpoints 1 and 3; two tasks; one collapsed score) and the tables are built from lists of
its files, as the aggregate rule passes them. Checked: the CSVs are byte-identical to the ones
the earlier implementation (which walked the config's chains instead) wrote from this tree,
kept in tests/fixtures/tables/; a file on disk that is not listed is not read; a listed file
that is missing, a path that is no artifact of its kind and a score without its unedited
score are refused with the file named.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from editharm import jobs, tables
from editharm.plan import Paths, chain_checkpoints, chains

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tables"
TASKS = ["sst2", "piqa"]  # not sorted: the config's order is not the tables' order
WEIGHT_EDITING = {"rome"}


def _config(root: Path) -> dict:
    common = {"models": ["tiny"], "datasets": ["zsre"], "max_edits": 3}
    return {
        "results_dir": str(root / "results"),
        "cache_dir": str(root / "cache"),
        "seeds": [0],
        "checkpoints": [1, 3],
        "tasks": {task: {} for task in TASKS},
        "experiments": {
            "rome": {**common, "methods": ["rome"], "regularisers": ["none", "rect-40"]},
            "grace": {**common, "methods": ["grace"], "regularisers": ["none"]},
        },
    }


def _write(path: str, value) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(value))


def _write_tree(root: Path) -> dict:
    """Every artifact of the config in _config, with values that differ per file; returns the config."""
    config = _config(root)
    paths = Paths(config)
    rng = random.Random(0)
    for model in ("tiny",):
        for task in TASKS:
            _write(paths.base_score(model, task), {"status": "ok", "metrics": {"acc": rng.random(), "acc_norm": 1}})
    for c in chains(config):
        for n in chain_checkpoints(config, c):
            args = (c.model, c.dataset, c.method, c.regulariser, c.seed, n)
            _write(paths.edit_metrics(*args), {"summary": {"reliability": rng.random(), "locality": 1, "n": n,
                                                           "n_cases": n, "note": "text is left out"}})
            for task in TASKS:
                collapsed = (c.regulariser, n, task) == ("rect-40", 3, "piqa")
                _write(paths.score(*args, task), {"status": "failed", "reason": "non-finite logits"} if collapsed
                       else {"status": "ok", "metrics": {"acc": rng.random(), "acc_norm": rng.random()}})
            if c.method in WEIGHT_EDITING:
                _write(paths.weight_stats(*args), {"tensors": {
                    f"layers.{layer}.mlp.down_proj.weight": {"manhattan": rng.random(), "relative_frobenius": rng.random()}
                    for layer in (1, 0)}})
            log = Path(paths.edit_log(*args))
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("".join(json.dumps({"edit_index": i, "case_id": 100 + i, "seconds": rng.random(),
                                               **({"steps": 7, "immediate_success": True} if c.method == "rome" else {})})
                                   + "\n" for i in range(n)))
    bench = Path(config["results_dir"]) / "benchmarks" / "edit_segment" / "tiny_zsre_rome_none_seed0_n1.tsv"
    bench.parent.mkdir(parents=True, exist_ok=True)
    bench.write_text("s\th:m:s\tmax_rss\n12.5\t0:00:12\t812.25\n")
    return config


def _inputs(config: dict) -> dict[str, list[str]]:
    """The aggregate rule's input lists for this config (as rules/common.smk builds them)."""
    paths = Paths(config)
    inputs = {"editing": [], "scores": [], "weights": [], "logs": []}
    for c in chains(config):
        for n in chain_checkpoints(config, c):
            args = (c.model, c.dataset, c.method, c.regulariser, c.seed, n)
            inputs["editing"].append(paths.edit_metrics(*args))
            inputs["scores"] += [paths.score(*args, task) for task in config["tasks"]]
            if c.method in WEIGHT_EDITING:
                inputs["weights"].append(paths.weight_stats(*args))
            inputs["logs"].append(paths.edit_log(*args))
    inputs["base"] = sorted({paths.base_score(c.model, t) for c in chains(config) for t in config["tasks"]})
    return inputs


def _aggregate(root: Path, config: dict, inputs: dict[str, list[str]]) -> dict[str, Path]:
    outputs = {name: root / "tables" / f"{name}.csv" for name in tables.TABLES}
    dirs = {key: config[key] for key in ("results_dir", "cache_dir")}
    jobs.aggregate(dirs, inputs, {name: str(p) for name, p in outputs.items()})
    return outputs


def test_tables_are_byte_identical_to_the_config_walking_implementation(tmp_path):
    config = _write_tree(tmp_path)
    outputs = _aggregate(tmp_path, config, _inputs(config))
    for name, path in outputs.items():
        assert path.read_bytes() == (FIXTURES / f"{name}.csv").read_bytes(), name


def test_input_order_does_not_change_the_tables(tmp_path):
    config = _write_tree(tmp_path)
    shuffled = {name: random.Random(1).sample(files, len(files)) for name, files in _inputs(config).items()}
    outputs = _aggregate(tmp_path, config, shuffled)
    for name, path in outputs.items():
        assert path.read_bytes() == (FIXTURES / f"{name}.csv").read_bytes(), name


def test_a_file_that_is_not_listed_is_not_read(tmp_path):
    config = _write_tree(tmp_path)
    paths = Paths(config)
    inputs = _inputs(config)
    # On disk but not listed: checkpoint 3 of every chain, and a whole chain (seed 1) at checkpoint 1.
    for name in inputs:
        inputs[name] = [p for p in inputs[name] if "/n3/" not in p]
    _write(paths.edit_metrics("tiny", "zsre", "rome", "none", 1, 1), {"summary": {"reliability": 0.5}})
    frames = tables.all_tables(inputs, paths, tmp_path / "no-benchmarks")
    assert set(frames["editing"]["edits"]) == {1}
    assert set(frames["downstream"]["edits"]) == {0, 1}
    assert set(frames["weight_stats"]["edits"]) == {1}
    assert set(frames["edit_log"]["checkpoint"]) == {1}
    assert set(frames["editing"]["seed"]) == {0}
    assert frames["timings"].empty


def test_the_rows_come_from_the_listed_files(tmp_path):
    config = _write_tree(tmp_path)
    paths = Paths(config)
    frames = tables.all_tables(_inputs(config), paths, tmp_path / "no-benchmarks")
    down = frames["downstream"]
    chain = dict(model="tiny", dataset="zsre", method="rome", regulariser="rect-40", seed=0)
    rows = down[(down["method"] == "rome") & (down["regulariser"] == "rect-40")]
    # edits = 0 is the unedited model's score, the same in every chain
    base = json.loads(Path(paths.base_score("tiny", "sst2")).read_text())["metrics"]
    at0 = rows[(rows["edits"] == 0) & (rows["task"] == "sst2")].set_index("metric")["value"]
    assert at0.to_dict() == pytest.approx(base)
    score = json.loads(Path(paths.score(*chain.values(), 1, "sst2")).read_text())["metrics"]
    at1 = rows[(rows["edits"] == 1) & (rows["task"] == "sst2")].set_index("metric")["value"]
    assert at1.to_dict() == pytest.approx(score)
    failed = rows[(rows["edits"] == 3) & (rows["task"] == "piqa")]
    assert list(failed["metric"]) == ["failed"]
    editing = frames["editing"]
    assert set(editing["metric"]) == {"reliability", "locality"}  # counts and text left out
    assert set(frames["weight_stats"]["method"]) == {"rome"}
    log = frames["edit_log"]
    assert len(log) == 3 * (1 + 3)  # three chains, 1 + 3 edits each
    assert log[log["method"] == "grace"]["steps"].isna().all()


def test_a_listed_file_that_is_missing_is_named(tmp_path):
    config = _write_tree(tmp_path)
    inputs = _inputs(config)
    gone = inputs["editing"][2]
    Path(gone).unlink()
    with pytest.raises(FileNotFoundError) as err:
        tables.all_tables(inputs, Paths(config), tmp_path)
    assert gone in str(err.value) and "editing metrics" in str(err.value) and "aggregate" in str(err.value)


def test_a_file_that_is_no_artifact_of_its_kind_is_refused(tmp_path):
    config = _write_tree(tmp_path)
    paths = Paths(config)
    inputs = _inputs(config)
    inputs["weights"].append(inputs["editing"][0])  # an editing-metrics file in the weight-statistics list
    with pytest.raises(ValueError) as err:
        tables.all_tables(inputs, paths, tmp_path)
    assert inputs["editing"][0] in str(err.value) and paths.weight_stats() in str(err.value)


def test_a_score_without_its_unedited_score_is_refused(tmp_path):
    config = _write_tree(tmp_path)
    paths = Paths(config)
    inputs = _inputs(config)
    inputs["base"] = [p for p in inputs["base"] if not p.endswith("piqa.json")]
    with pytest.raises(ValueError) as err:
        tables.all_tables(inputs, paths, tmp_path)
    assert paths.base_score("tiny", "piqa") in str(err.value)


def test_an_input_list_the_rule_does_not_name_is_refused(tmp_path):
    config = _write_tree(tmp_path)
    inputs = _inputs(config)
    del inputs["logs"]
    with pytest.raises(KeyError, match="logs"):
        tables.all_tables(inputs, Paths(config), tmp_path)
