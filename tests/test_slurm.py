"""The SLURM profile against a real SLURM: a single-node cluster started by scripts/slurm_local.sh.

One run of the CI config through `--profile profiles/slurm --profile profiles/slurm/small-no-gpu`,
for a subset of its targets (one editing chain up to 3 edits: 9 jobs, the whole CI config is 43
and takes several times as long): every job goes through sbatch, and `sacct` shows each with the
CPUs, memory and time limit Snakemake gave it; the first editing job is cancelled with
`scancel` while it runs, and the profile's `retries` reruns it; the checkpoints are the bytes a
local run writes.

Skips, with the reason, where the cluster cannot run (not root, no SLURM and no apt-get to
install it: the script's exit status 3), or with EDITHARM_SLURM_TEST=0. A cluster that is
already up is used and left up; one this module started is stopped at the end.
"""

import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from test_workflow import ROOT, _snakemake, _write_config

SCRIPT = ROOT / "scripts" / "slurm_local.sh"
PROFILES = ["--profile", str(ROOT / "profiles" / "slurm"), "--profile", str(ROOT / "profiles" / "slurm" / "small-no-gpu")]
CHAIN = "results-ci/edits/tiny-llama/zsre/rome/none/seed0"
TARGETS = [f"{CHAIN}/n3/checkpoint.safetensors"]
START_LIMIT_S = 600  # apt-get install of SLURM, munge and MariaDB took 34 s here; starting, 11 s


def _script(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), command], capture_output=True, text=True, timeout=START_LIMIT_S)


@pytest.fixture(scope="module")
def cluster():
    if os.environ.get("EDITHARM_SLURM_TEST") == "0":
        pytest.skip("EDITHARM_SLURM_TEST=0")
    if not sys.platform.startswith("linux"):
        pytest.skip(f"scripts/slurm_local.sh runs on Linux only, not {sys.platform}")
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        pytest.skip("the SLURM executor plugin is not installed: pip install -c constraints.txt -e '.[slurm]'")
    if _script("status").returncode == 0:
        yield "already running"
        return
    began = time.monotonic()
    started = _script("start")
    if started.returncode == 3:
        pytest.skip(f"no SLURM cluster here: {started.stderr.strip()}")
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    print(f"single-node SLURM started in {time.monotonic() - began:.0f} s:\n{started.stdout}")
    yield "started"
    stopped = _script("stop")
    assert stopped.returncode == 0, stopped.stderr


def _running_jobs(workdir: Path) -> list[tuple[str, str]]:
    """(SLURM job id, comment) of this run's running jobs; the comment names rule and wildcards."""
    out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k|%Z"], capture_output=True, text=True,
                         check=True).stdout
    rows = [line.split("|") for line in out.splitlines() if line]
    return [(job, comment) for job, comment, cwd in rows if Path(cwd) == workdir]


def _cancel_first_running(workdir: Path, rule: str, run: concurrent.futures.Future) -> tuple[str, str] | None:
    """scancel the first job of `rule` seen running; None if the run ends first."""
    while not run.done():
        for job, comment in _running_jobs(workdir):
            if comment.startswith(f"rule_{rule}_"):
                subprocess.run(["scancel", job], check=True)
                return job, comment
        time.sleep(0.5)
    return None


def _sacct(workdir: Path, since: datetime) -> dict[str, dict[str, str]]:
    fields = ["JobIDRaw", "Comment", "State", "AllocCPUS", "ReqMem", "Timelimit", "WorkDir"]
    out = subprocess.run(["sacct", "-X", "-P", "-n", "-S", since.strftime("%Y-%m-%dT%H:%M:%S"), "-o", ",".join(fields)],
                         capture_output=True, text=True, check=True).stdout
    rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]
    return {row["JobIDRaw"]: row for row in rows if Path(row["WorkDir"]) == workdir}


def _submitted(log: str) -> dict[str, dict]:
    """SLURM job id -> rule and resources, from Snakemake's log of the run.

    A job's block ("rule edit_segment:" ... "resources: mem_mb=16000, ..., runtime=240") comes
    before its line "Job 7 has been submitted with SLURM jobid 19"; a retried job is submitted
    again under the same Snakemake job id.
    """
    jobs, submitted = {}, {}
    for block in re.split(r"\n(?=\[\w{3} \w{3} +\d+ [\d:]+ \d{4}\]\n)", log):
        rule = re.search(r"^(local)?rule (\w+):$", block, re.M)
        jobid = re.search(r"^\s+jobid: (\d+)$", block, re.M)
        if rule and jobid:
            resources = dict(re.findall(r"(\w+)=([^,\s]+)", re.search(r"^\s+resources: (.*)$", block, re.M).group(1)))
            threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
            jobs[jobid.group(1)] = {"rule": rule.group(2), "local": bool(rule.group(1)), "resources": resources,
                                    "threads": int(threads.group(1)) if threads else 1}
    for snakemake_job, slurm_job in re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log):
        submitted[slurm_job] = jobs[snakemake_job]
    return submitted


def _timelimit(minutes: int) -> str:
    """sacct's Timelimit for a --time in minutes: [D-]HH:MM:SS."""
    days, rest = divmod(minutes, 24 * 60)
    text = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{text}" if days else text


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm")
    config = _write_config(workdir)
    since = datetime.now() - timedelta(minutes=1)
    began = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        run = pool.submit(_snakemake, workdir, config, *PROFILES, *TARGETS, timeout=1800)
        cancelled = _cancel_first_running(workdir, "edit_segment", run)
        result = run.result()
    wall = time.monotonic() - began
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    print(f"SLURM run of {TARGETS}: {wall:.0f} s wall; cancelled: {cancelled}")
    return {"workdir": workdir, "config": config, "log": log, "cancelled": cancelled,
            "sacct": _sacct(workdir, since)}


def test_every_job_goes_through_sbatch_with_its_resources(slurm_run):
    log, sacct = slurm_run["log"], slurm_run["sacct"]
    submitted = _submitted(log)
    assert not re.search(r"^localrule ", log, re.M), "a job ran on the submitting machine"
    rules = {job["rule"] for job in submitted.values()}
    assert rules == {"download_dataset", "prepare_dataset", "sample_edits", "fetch_model", "layer_stats",
                     "edit_segment"}, rules
    assert set(sacct) == set(submitted), (sorted(sacct), sorted(submitted))
    for slurm_job, job in submitted.items():
        row, resources = sacct[slurm_job], job["resources"]
        assert row["Comment"].startswith(f"rule_{job['rule']}"), row
        assert row["ReqMem"] == f"{resources['mem_mb']}M", (row, resources)
        assert row["Timelimit"] == _timelimit(int(resources["runtime"])), (row, resources)
        assert int(row["AllocCPUS"]) == job["threads"], (row, job)
        assert "gpu" not in resources or resources["gpu"] == "0", resources


def test_cancelled_edit_segment_is_retried(slurm_run):
    assert slurm_run["cancelled"], "no edit_segment job was seen running, so none was cancelled"
    job, comment = slurm_run["cancelled"]
    sacct = slurm_run["sacct"]
    assert sacct[job]["State"].startswith("CANCELLED"), sacct[job]
    reruns = [row for other, row in sacct.items() if row["Comment"] == comment and int(other) > int(job)]
    assert [row["State"] for row in reruns] == ["COMPLETED"], (comment, sacct)
    assert "Trying to restart job" in slurm_run["log"], slurm_run["log"][-3000:]


def test_outputs_identical_to_local_run(slurm_run, tmp_path):
    local = _snakemake(tmp_path, _write_config(tmp_path), *TARGETS)
    assert local.returncode == 0, local.stderr[-6000:]
    workdir = slurm_run["workdir"]
    for checkpoint in ("n1", "n3"):
        ours = workdir / CHAIN / checkpoint
        theirs = tmp_path / CHAIN / checkpoint
        assert (ours / "checkpoint.safetensors").read_bytes() == (theirs / "checkpoint.safetensors").read_bytes()
        # The edit log's wall-clock timings (seconds, operation_seconds) differ from run to run;
        # everything else must not.
        lines = [[{k: v for k, v in json.loads(line).items() if not k.endswith("seconds")}
                  for line in (path / "edit_log.jsonl").read_text().splitlines()] for path in (ours, theirs)]
        assert lines[0] == lines[1] and len(lines[0]) == {"n1": 1, "n3": 2}[checkpoint], lines
