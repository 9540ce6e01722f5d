"""Every editing method other than ROME through the whole DAG, under Snakemake, on the tiny CI model.

One run (module fixture) of the CI config extended to MEMIT, PMET, AlphaEdit, KN, FT, MEND,
SERAC and GRACE, with checkpoints 1 and 3: the weight-editing methods with regulariser
none (rect-40 is test_workflow.py's), GRACE and SERAC (state changes, nothing to regularise) with none only in
an experiment of their own. MEND and SERAC are trained first (rule train_method) on the
fixture zsRE file. The run stops at the tables (rule aggregate): the figure notebook is
test_workflow.py's concern. Each method's hyperparameters are a tiny file in
tests/fixtures/hparams/. Says nothing about editing quality.
"""

import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from test_workflow import ROOT, _snakemake


WEIGHT_METHODS = ["memit", "pmet", "alphaedit", "kn", "ft", "mend"]
STATE_METHODS = ["grace", "serac"]
METHODS = WEIGHT_METHODS + STATE_METHODS
TRAINED = {"mend", "serac"}
CHECKPOINTS = [1, 3]
# rect-40 through the DAG is covered by test_workflow.py (ROME); here every job is a process
# start (~3.5 CPU-s of imports), so one regulariser keeps this file at ~70 jobs.
WEIGHT_REGULARISERS = ["none"]


def _regularisers(method: str) -> list[str]:
    return WEIGHT_REGULARISERS if method in WEIGHT_METHODS else ["none"]


def _config(workdir: Path, methods: list[str] = METHODS, experiments: dict | None = None) -> dict:
    config = yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())
    config["mirror_dir"] = str(ROOT / "tests" / "fixtures" / "mirror")
    config["checkpoints"] = CHECKPOINTS
    config["covariance"]["tokens"] = 1000  # the schema's minimum: statistics of two 256-wide layers
    config["tasks"] = {"sst2": {"n": 5}}
    hparams = config["models"]["tiny-llama"]["hparams"] = {}
    config["methods"] = {}
    for method in methods:
        src = ROOT / "tests" / "fixtures" / "hparams" / f"{method}_tiny.yaml"
        dst = workdir / src.name
        if not dst.exists():
            shutil.copy(src, dst)
        hparams[method] = str(dst)
        config["methods"][method] = {"hparams_dir": str(ROOT / "configs" / "methods" / method)}
        if method in TRAINED:
            config["methods"][method]["training_dataset"] = "zsre"
    common = {"models": ["tiny-llama"], "datasets": ["zsre"], "max_edits": max(CHECKPOINTS)}
    config["experiments"] = experiments or {
        "weights": {**common, "methods": [m for m in methods if m in WEIGHT_METHODS], "regularisers": WEIGHT_REGULARISERS},
        "states": {**common, "methods": [m for m in methods if m in STATE_METHODS], "regularisers": ["none"]},
    }
    return config


def _write(workdir: Path, config: dict) -> Path:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _failed_logs(workdir: Path) -> str:
    """The tails of the job logs that mention an error (for the assertion message)."""
    logs = sorted((workdir / "results-ci" / "logs").rglob("*.log"))
    bad = [p for p in logs if "Error" in p.read_text(errors="replace")]
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in bad[:3])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("methods_dag")
    config = _write(workdir, _config(workdir))
    t0 = time.time()
    result = _snakemake(workdir, config, "aggregate", timeout=1800)
    assert result.returncode == 0, result.stderr[-6000:] + _failed_logs(workdir)
    print(f"methods DAG: {time.time() - t0:.0f} s")
    tables = workdir / "results-ci" / "tables"
    frames = {name: pd.read_csv(tables / f"{name}.csv") for name in ("editing", "downstream", "weight_stats", "edit_log")}
    return workdir, frames


@pytest.mark.parametrize("method", METHODS)
def test_method_runs_through_the_dag(finished_run, method):
    workdir, frames = finished_run
    regs = _regularisers(method)

    editing = frames["editing"][frames["editing"]["method"] == method]
    for reg in regs:
        for n in CHECKPOINTS:
            rows = editing[(editing["regulariser"] == reg) & (editing["edits"] == n)]
            assert {"reliability", "generalization", "locality"} <= set(rows["metric"]), (reg, n, rows)
            assert rows["value"].notna().all(), rows
    assert set(editing["regulariser"]) == set(regs)

    downstream = frames["downstream"][frames["downstream"]["method"] == method]
    for reg in regs:
        rows = downstream[downstream["regulariser"] == reg]
        assert set(rows["edits"]) == {0, *CHECKPOINTS}, rows
        assert set(rows["task"]) == {"sst2"} and "failed" not in set(rows["metric"]), rows

    weights = frames["weight_stats"][frames["weight_stats"]["method"] == method]
    if method in WEIGHT_METHODS:
        for reg in regs:
            rows = weights[weights["regulariser"] == reg]
            assert set(rows["edits"]) == set(CHECKPOINTS), rows
            assert rows["value"].notna().all() and "manhattan" in " ".join(rows["metric"])
    else:
        assert weights.empty, "a state-changing method has no weight statistics"

    log = frames["edit_log"][frames["edit_log"]["method"] == method]
    for reg in regs:
        chain = log[log["regulariser"] == reg]
        assert len(chain) == max(CHECKPOINTS), "one log line per edit per chain"
        assert sorted(chain["edit_index"]) == list(range(max(CHECKPOINTS)))

    results = workdir / "results-ci" / "edits" / "tiny-llama" / "zsre" / method
    for reg in regs:
        for n in CHECKPOINTS:
            folder = results / reg / "seed0" / f"n{n}"
            for name in ("checkpoint.safetensors", "checkpoint.json", "edit_log.jsonl"):
                assert (folder / name).is_file(), folder / name
    if method in TRAINED:
        assert (workdir / "cache-ci" / "trained" / "tiny-llama" / method / "zsre" / "summary.json").is_file()


def test_regulariser_for_a_state_method_is_rejected(tmp_path):
    """rect-40 asked for GRACE fails validation, before any job, naming GRACE."""
    config = _config(tmp_path, methods=["grace"], experiments={
        "bad": {"models": ["tiny-llama"], "datasets": ["zsre"], "methods": ["grace"], "regularisers": ["none", "rect-40"],
                "max_edits": 3}})
    result = _snakemake(tmp_path, _write(tmp_path, config), "-n")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "'rect-40' cannot apply to method 'grace'" in output, output[-3000:]
    assert not (tmp_path / "cache-ci").exists()
