"""The whole DAG on the tiny CI config, under Snakemake, in a temporary directory.

Checks: every table and the figure are produced; a second run has nothing to do; changing
ROME's hyperparameter file schedules ROME's jobs and what depends on them, nothing else;
a dataset with a wrong checksum fails with a clear message before any editing.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _write_config(workdir: Path, **changes) -> Path:
    config = yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())
    config["mirror_dir"] = str(ROOT / "tests" / "fixtures" / "mirror")
    # SST-2 only: the harm suite's tasks go through the DAG in test_tasks_harm.py, for the unedited
    # model only (one job each instead of one per checkpoint, which would double this run's jobs)
    config["tasks"] = {"sst2": config["tasks"]["sst2"]}
    hparams = workdir / "rome_tiny.yaml"
    if not hparams.exists():
        shutil.copy(ROOT / "tests" / "fixtures" / "hparams" / "rome_tiny.yaml", hparams)
    config["models"]["tiny-llama"]["hparams"]["rome"] = str(hparams)
    config["methods"]["rome"]["hparams_dir"] = str(ROOT / "configs" / "methods" / "rome")
    for key, value in changes.items():
        config[key] = value
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _snakemake(workdir: Path, config: Path, *args: str, timeout: int = 1200, root: Path = ROOT) -> subprocess.CompletedProcess:
    """Snakemake on the workflow in `root` (a copy of the checkout, for tests that change its code)."""
    cmd = [*SNAKEMAKE, "--snakefile", str(root / "Snakefile"), "--directory", str(workdir), "--configfile", str(config),
           "--cores", "2", *args]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def _planned_jobs(output: str) -> dict[str, int]:
    """Rule -> job count from a dry run's 'Job stats' table."""
    jobs: dict[str, int] = {}
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("Job stats"):
            for row in lines[i + 3:]:
                match = re.match(r"^(\w+)\s+(\d+)$", row.strip())
                if not match:
                    break
                if match.group(1) != "total":
                    jobs[match.group(1)] = int(match.group(2))
            break
    return jobs


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dag")
    config = _write_config(workdir)
    result = _snakemake(workdir, config)
    assert result.returncode == 0, result.stderr[-6000:]
    return workdir, config


def test_dag_produces_every_table_and_the_figure(finished_run):
    workdir, _ = finished_run
    tables = workdir / "results-ci" / "tables"
    downstream = pd.read_csv(tables / "downstream.csv")
    editing = pd.read_csv(tables / "editing.csv")
    weights = pd.read_csv(tables / "weight_stats.csv")
    edit_log = pd.read_csv(tables / "edit_log.csv")
    assert set(downstream["edits"]) == {0, 1, 3}
    assert set(downstream["regulariser"]) == {"none", "rect-40"}
    assert set(editing["metric"]) >= {"reliability", "generalization", "locality"}
    assert set(editing["edits"]) == {1, 3}
    assert weights["value"].notna().all() and "manhattan" in " ".join(weights["metric"])
    assert len(edit_log) == 2 * 3, "one log line per edit per chain"
    figures = workdir / "results-ci" / "figures"
    for name in ("downstream.png", "editing.png", "edit_harm.ipynb", "edit_harm.html"):
        assert (figures / name).stat().st_size > 1000, name


def test_second_run_has_nothing_to_do(finished_run):
    workdir, config = finished_run
    result = _snakemake(workdir, config, "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _planned_jobs(result.stdout + result.stderr) == {}, result.stdout[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr


def test_changing_rome_hparams_reruns_rome_and_dependents_only(finished_run):
    workdir, config = finished_run
    hparams = workdir / "rome_tiny.yaml"
    original = hparams.read_text()
    try:
        hparams.write_text(original + "\n# a change that touches the file\n")
        result = _snakemake(workdir, config, "-n")
        assert result.returncode == 0, result.stderr[-3000:]
        jobs = _planned_jobs(result.stdout + result.stderr)
        # 2 chains x 2 checkpoints, each with its editing metrics, weight stats and one task score.
        # The figures: the overview notebook, one job per paper-figure notebook, the index page.
        assert jobs == {"edit_segment": 4, "edit_metrics": 4, "weight_stats": 4, "score_task": 4,
                        "aggregate": 1, "edit_harm": 1, "figure": 12, "figures": 1, "all": 1}, jobs
    finally:
        hparams.write_text(original)
        os.utime(hparams, (0, 0))  # back to older than every output


def test_wrong_checksum_fails_before_any_editing(tmp_path):
    config = yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())
    datasets = config["datasets"]
    datasets["zsre"]["files"]["zsre.json"]["sha256"] = "0" * 64
    path = _write_config(tmp_path, datasets=datasets)
    result = _snakemake(tmp_path, path)
    assert result.returncode != 0
    logs = "".join(p.read_text() for p in (tmp_path / "results-ci" / "logs").rglob("*.log"))
    assert "zsre_tiny.json" in logs and "0" * 64 in logs and "a45811124e043ce3" in logs, logs[-3000:]
    assert not list((tmp_path / "results-ci").glob("edits/**/checkpoint.safetensors"))


def test_malformed_config_fails_before_any_job(tmp_path):
    path = _write_config(tmp_path, checkpoints=[3, 1])
    result = _snakemake(tmp_path, path)
    assert result.returncode != 0
    assert "must be increasing" in result.stderr + result.stdout
    assert not (tmp_path / "cache-ci").exists()
