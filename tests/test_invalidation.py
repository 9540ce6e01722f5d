"""Exact invalidation and resuming after a crash, under Snakemake, on the tiny CI model.

A completed run is simulated cheaply and honestly for planning purposes: every output the
DAG plans is created empty, then `snakemake --touch` marks them made in DAG order (mtimes,
recorded params and input checksums, as a real run leaves them). Against that state
`snakemake -n` shows what a change reruns:
  - the same config with its keys in another order, in another file: nothing;
  - a real value change (a task's sample size): that task's scores and what follows;
  - a change to methods/values.py (in a copy of the checkout): the segments of ROME, MEMIT,
    PMET and AlphaEdit and what depends on them, not KN's or GRACE's; undoing it: nothing;
  - a change to the SST-2 prompt (tasks/sst2.py): the SST-2 scores, tables, figures only.
The config extends configs/ci.yaml to six methods (test_methods_dag.py's helper).
Unit tests cover the static code analysis (editharm/codehash.py), the canonical params
(editharm/ruleparams.py) and the stale-lock check (editharm/locks.py); one test kills a
real run with SIGKILL and shows the next run needs no manual step.
"""

import ast
import copy
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from editharm import codehash, locks
from editharm.ruleparams import Canonical, Untracked, canonical_json
from test_methods_dag import _config, _write
from test_workflow import ROOT, SNAKEMAKE, _planned_jobs, _snakemake, _write_config

METHODS = ["rome", "memit", "pmet", "alphaedit", "kn", "grace"]
VALUE_METHODS = {"rome", "memit", "pmet", "alphaedit"}  # the methods that call values.optimize_values
CHECKPOINTS = [1, 3]
# What follows any change to a score, a metric or a weight statistic: the tables, the
# overview notebook, the twelve paper-figure notebooks, the index page, the default target.
DOWNSTREAM = {"aggregate": 1, "edit_harm": 1, "figure": 12, "figures": 1, "all": 1}
CHECKOUT = ["Snakefile", "config.yaml", "rules", "workflow_scripts", "src", "notebooks", "configs", "schemas",
            "tests/fixtures"]


# ---------------------------------------------------------------- helpers


def _plan(workdir: Path, config: Path, root: Path = ROOT) -> tuple[dict[str, int], list[tuple[str, dict]]]:
    """A dry run's job counts per rule and its jobs as (rule, wildcards)."""
    result = _snakemake(workdir, config, "-n", root=root)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    text = result.stdout + result.stderr
    jobs, rule = [], None
    for line in text.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = m.group(1)
            jobs.append((rule, {}))
        elif rule and (m := re.match(r"^\s+wildcards: (.*)$", line)):
            jobs[-1] = (rule, dict(kv.split("=", 1) for kv in m.group(1).split(", ")))
    return _planned_jobs(text), jobs


def _outputs(workdir: Path, config: Path, root: Path) -> list[Path]:
    result = _snakemake(workdir, config, "-n", root=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return [workdir / p for line in result.stdout.splitlines() if line.startswith("    output: ")
            for p in line.removeprefix("    output: ").split(", ")]


def _mark_complete(workdir: Path, config: Path, root: Path) -> None:
    """Every planned output exists and is recorded as made by this code and config."""
    for path in _outputs(workdir, config, root):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    # --forceall: every job is "run" by touching, in DAG order, so each records its metadata
    # (params, input checksums) as a real run would; without it, jobs whose outputs happen to
    # be newer than their inputs record nothing and param changes could not be detected.
    result = _snakemake(workdir, config, "--touch", "--forceall", root=root)
    assert result.returncode == 0, result.stderr[-3000:]


def _add_statement(path: Path, function: str) -> str:
    """Append a statement to the body of top-level `function` (or `Class.method`) in `path`;
    returns the original text."""
    original = path.read_text()
    tree = ast.parse(original)
    node = tree
    for name in function.split("."):
        node = next(n for n in node.body if getattr(n, "name", None) == name)
    lines = original.splitlines(keepends=True)
    indent = " " * node.body[0].col_offset
    lines.insert(node.end_lineno, f"{indent}_changed = True  # a change to the code\n")
    path.write_text("".join(lines))
    return original


def _reordered(value):
    """The same value with every mapping's keys in reverse order (what a YAML re-dump may do)."""
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


# ---------------------------------------------------------------- the DAG


@pytest.fixture(scope="module")
def completed(tmp_path_factory):
    """A copy of the checkout (its code is changed by the tests) and a completed run of six methods."""
    t0 = time.time()
    root = tmp_path_factory.mktemp("checkout")
    for item in CHECKOUT:
        src, dst = ROOT / item, root / item
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    workdir = tmp_path_factory.mktemp("run")
    experiments = {
        "weights": {"models": ["tiny-llama"], "datasets": ["zsre"], "methods": sorted(set(METHODS) - {"grace"}),
                    "regularisers": ["none"], "max_edits": max(CHECKPOINTS)},
        "states": {"models": ["tiny-llama"], "datasets": ["zsre"], "methods": ["grace"], "regularisers": ["none"],
                   "max_edits": max(CHECKPOINTS)},
    }
    config = _write(workdir, _config(workdir, methods=METHODS, experiments=experiments))
    _mark_complete(workdir, config, root)
    counts, _ = _plan(workdir, config, root)
    assert counts == {}, counts
    print(f"completed state: {time.time() - t0:.0f} s")
    return root, workdir, config


def test_reordered_config_in_another_file_plans_nothing(completed):
    root, workdir, config = completed
    elsewhere = workdir / "elsewhere" / "same-config.yaml"
    elsewhere.parent.mkdir()
    data = yaml.safe_load(config.read_text())
    elsewhere.write_text(yaml.safe_dump(_reordered(data), sort_keys=False))
    assert elsewhere.read_text() != config.read_text()
    counts, _ = _plan(workdir, elsewhere, root)
    assert counts == {}, counts


def test_a_real_value_change_in_a_reordered_config_reruns_what_uses_it(completed):
    root, workdir, config = completed
    data = _reordered(yaml.safe_load(config.read_text()))
    data["tasks"]["sst2"]["n"] = 4
    changed = workdir / "elsewhere-n4.yaml"
    changed.write_text(yaml.safe_dump(data, sort_keys=False))
    counts, _ = _plan(workdir, changed, root)
    assert counts == {"score_base": 1, "score_task": len(METHODS) * len(CHECKPOINTS), **DOWNSTREAM}, counts


def test_values_change_reruns_the_methods_that_optimise_values_only(completed):
    root, workdir, config = completed
    values = root / "src" / "editharm" / "methods" / "values.py"
    original = _add_statement(values, "optimize_values")
    try:
        counts, jobs = _plan(workdir, config, root)
    finally:
        values.write_text(original)
    per_chain = {"edit_segment", "edit_metrics", "weight_stats", "score_task"}
    n = len(VALUE_METHODS) * len(CHECKPOINTS)
    assert counts == {**{r: n for r in per_chain}, **DOWNSTREAM}, counts
    assert {w["method"] for r, w in jobs if r in per_chain} == VALUE_METHODS
    # Undone, the code is the one the outputs were made with: nothing to do, although the
    # fingerprint file was rewritten twice (Snakemake compares its recorded checksum).
    counts, _ = _plan(workdir, config, root)
    assert counts == {}, counts


def test_task_prompt_change_reruns_that_tasks_scores_only(completed, monkeypatch):
    root, workdir, config = completed
    sst2 = root / "src" / "editharm" / "evaluate" / "tasks" / "sst2.py"
    monkeypatch.setattr(codehash, "_SRC", root / "src")
    other_tasks = {t: codehash.fingerprint([codehash.module_entry(f"editharm.evaluate.tasks.{t}")])[0]
                   for t in ("rte", "nq_open", "mmlu")}
    original = _add_statement(sst2, "prompt")
    try:
        counts, jobs = _plan(workdir, config, root)
        # The DAG has one task; the other tasks' code, as their score jobs hash it, is unchanged.
        assert {t: codehash.fingerprint([codehash.module_entry(f"editharm.evaluate.tasks.{t}")])[0]
                for t in other_tasks} == other_tasks
    finally:
        sst2.write_text(original)
    assert counts == {"score_base": 1, "score_task": len(METHODS) * len(CHECKPOINTS), **DOWNSTREAM}, counts
    assert {w["task"] for r, w in jobs if r.startswith("score_")} == {"sst2"}


# ---------------------------------------------------------------- codehash


def _scripts(tmp_path: Path, script: str, helper: str) -> Path:
    (tmp_path / "_helper.py").write_text(helper)
    job = tmp_path / "job.py"
    job.write_text(script)
    return job


HELPER = """\
import json
from editharm.io import sha256_file

LIMIT = 3


def used():
    return _inner() + LIMIT


def _inner():
    return 1


def unused():
    from editharm.methods import values
    return 2
"""


def test_fingerprint_follows_the_definitions_a_script_reaches(tmp_path):
    job = _scripts(tmp_path, "from _helper import used\nused()\n", HELPER)
    entry = codehash.file_entry(job)
    found = codehash.closure([entry])
    assert found[f"{tmp_path.name}/_helper.py"][1] == {"used"}
    assert "editharm.io" in found and "editharm.methods.values" not in found  # `unused` is not reached
    before = codehash.fingerprint([entry])[0]
    helper = tmp_path / "_helper.py"
    helper.write_text(HELPER.replace("return 2", "return 20"))  # unreached definition
    assert codehash.fingerprint([entry])[0] == before
    helper.write_text(HELPER.replace("return 1", "return 10"))  # reached through used()
    assert codehash.fingerprint([entry])[0] != before
    helper.write_text(HELPER.replace("LIMIT = 3", "LIMIT = 4"))  # module-level code always runs
    assert codehash.fingerprint([entry])[0] != before


def test_importing_a_whole_module_reaches_all_of_it(tmp_path):
    job = _scripts(tmp_path, "import _helper\n_helper.used()\n", HELPER)
    found = codehash.closure([codehash.file_entry(job)])
    assert "editharm.methods.values" in found
    before = codehash.fingerprint([codehash.file_entry(job)])[0]
    (tmp_path / "_helper.py").write_text(HELPER.replace("return 2", "return 20"))
    assert codehash.fingerprint([codehash.file_entry(job)])[0] != before


BASE_HELPER = """\
class Base:
    LIMIT = 3


class Sub(Base):
    pass


class Unrelated:
    WIDTH = 1
"""


def test_a_class_reaches_its_base_class(tmp_path):
    job = _scripts(tmp_path, "from _helper import Sub\nSub()\n", BASE_HELPER)
    entry = codehash.file_entry(job)
    assert codehash.closure([entry])[f"{tmp_path.name}/_helper.py"][1] == {"Sub"}
    before = codehash.fingerprint([entry])[0]
    helper = tmp_path / "_helper.py"
    helper.write_text(BASE_HELPER.replace("WIDTH = 1", "WIDTH = 10"))  # unreached
    assert codehash.fingerprint([entry])[0] == before
    helper.write_text(BASE_HELPER.replace("LIMIT = 3", "LIMIT = 30"))  # the base class of a reached class
    assert codehash.fingerprint([entry])[0] != before
    # So each value-optimising method's code covers the Hparams base it inherits (ValueHparams in
    # methods/values.py) and what that uses; KN, which optimises no values, reaches none of values.py.
    rome = codehash.closure([codehash.module_entry("editharm.methods.rome")])
    assert "ValueHparams" in rome["editharm.methods.values"][1]
    assert "editharm.methods.values" not in codehash.closure([codehash.module_entry("editharm.methods.kn")])


def test_each_jobs_function_reaches_only_its_own_imports():
    segment = codehash.closure([codehash.module_entry("editharm.jobs", ["edit_segment"])])
    stats = codehash.closure([codehash.module_entry("editharm.jobs", ["weight_stats"])])
    assert "editharm.sequential" in segment and "editharm.sequential" not in stats
    assert "editharm.weightstats" in stats and "editharm.weightstats" not in segment
    # Importing a submodule runs its packages' __init__ first.
    assert {"editharm", "editharm.methods"} <= set(segment)


def test_module_closure_and_code_fingerprint():
    rome = codehash.module_closure("editharm.methods.rome")
    assert {"editharm.methods.rome", "editharm.methods.values", "editharm.methods.base"} <= set(rome)
    assert all(m.startswith("editharm") for m in rome) and rome == sorted(rome)
    assert codehash.code_fingerprint(rome) == codehash.code_fingerprint(list(reversed(rome)))
    assert codehash.code_fingerprint(rome) != codehash.code_fingerprint(codehash.module_closure("editharm.methods.kn"))
    with pytest.raises(ValueError, match="not a module of editharm"):
        codehash.code_fingerprint(["torch.nn"])


def test_fingerprint_file_is_rewritten_only_when_the_code_changes(tmp_path):
    job = _scripts(tmp_path, "from _helper import used\n", HELPER)
    out = tmp_path / "code" / "job.json"
    codehash.write_fingerprint(out, [codehash.file_entry(job)])
    os.utime(out, ns=(1, 1))
    codehash.write_fingerprint(out, [codehash.file_entry(job)])
    assert out.stat().st_mtime_ns == 1, "same code: the file keeps its mtime (no rerun)"
    (tmp_path / "_helper.py").write_text(HELPER.replace("return 1", "return 10"))
    codehash.write_fingerprint(out, [codehash.file_entry(job)])
    assert out.stat().st_mtime_ns > 1


def test_notebook_code_cells_are_followed(tmp_path):
    nb = ROOT / "notebooks" / "gu_fig3.ipynb"
    found = codehash.closure([codehash.file_entry(nb)])
    assert "editharm.figures" in found


# ---------------------------------------------------------------- canonical params


def test_canonical_params_compare_by_content():
    from snakemake.persistence import PersistenceBase

    serialize = PersistenceBase._serialize_param_builtin  # what Snakemake compares between runs
    a = Canonical({"b": {"y": 1, "x": [1, 2]}, "a": 1, 8: "layer"})
    b = Canonical({8: "layer", "a": 1, "b": {"x": [1, 2], "y": 1}})
    assert serialize(None, a) == serialize(None, b)
    assert serialize(None, dict(a)) != serialize(None, dict(b)), "plain dicts would rerun on a re-dump"
    assert serialize(None, Canonical({**b, "a": 2})) != serialize(None, a)
    assert serialize(None, Canonical({"b": {"x": [2, 1], "y": 1}})) != serialize(None, Canonical({"b": {"x": [1, 2], "y": 1}}))
    assert canonical_json({"s": {3, 1}, "t": (1, 2)}) == '{"s":[1,3],"t":[1,2]}'
    untracked = Untracked("configs/ci.yaml")
    assert not isinstance(serialize(None, untracked), str), "Snakemake leaves it out of the comparison"
    assert serialize(None, copy.deepcopy(a)) == serialize(None, b), "copies stay canonical"
    # What a workflow script gets (Snakemake pickles its params): the plain values, which
    # yaml.safe_dump (figures' index page) accepts.
    back = pickle.loads(pickle.dumps(a))
    assert type(back) is dict and back == {"b": {"y": 1, "x": [1, 2]}, "a": 1, 8: "layer"}
    assert yaml.safe_load(yaml.safe_dump(back)) == back
    assert pickle.loads(pickle.dumps(untracked)) == "configs/ci.yaml"


# ---------------------------------------------------------------- after a crash


def test_a_live_snakemake_keeps_its_locks(tmp_path):
    (tmp_path / ".snakemake" / "locks").mkdir(parents=True)
    (tmp_path / ".snakemake" / "locks" / "0.input.lock").write_text("x\n")
    fake = tmp_path / "bin" / "snakemake"  # a process that looks like snakemake, working in tmp_path
    fake.parent.mkdir()
    fake.symlink_to(shutil.which("sleep"))
    proc = subprocess.Popen([str(fake), "60"], cwd=tmp_path)
    unlock = [sys.executable, "-c", "import shutil; shutil.rmtree('.snakemake/locks')"]
    try:
        assert locks.live_snakemake(tmp_path) == [proc.pid]
        with pytest.raises(locks.LiveRunError, match=str(proc.pid)):
            locks.unlock_if_stale(tmp_path, unlock)
        assert locks.lock_files(tmp_path)
    finally:
        proc.kill()
        proc.wait()
    assert locks.live_snakemake(tmp_path) == []
    assert locks.unlock_if_stale(tmp_path, unlock) is True
    assert not locks.lock_files(tmp_path)
    assert locks.unlock_if_stale(tmp_path, unlock) is False  # nothing to do


def test_after_kill_9_the_next_run_resumes_without_a_manual_step(tmp_path):
    config = _write_config(tmp_path)
    target = "results-ci/editsets/zsre/seed0.jsonl"  # download, prepare, sample: a few short jobs
    cmd = [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--configfile", str(config), "--cores", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with open(tmp_path / "killed.log", "w") as log:
        run = subprocess.Popen([*cmd, target], cwd=tmp_path, env=env, start_new_session=True, stdout=log, stderr=log)
    deadline = time.time() + 300
    while not locks.lock_files(tmp_path) and run.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert locks.lock_files(tmp_path), (tmp_path / "killed.log").read_text()[-3000:]
    os.killpg(run.pid, signal.SIGKILL)  # the run and its jobs, as a crash or an OOM kill would
    run.wait()
    assert locks.lock_files(tmp_path) and locks.live_snakemake(tmp_path) == []
    blocked = _snakemake(tmp_path, config, target)
    assert blocked.returncode != 0 and "cannot be locked" in blocked.stderr + blocked.stdout
    # What `make run` does first:
    done = subprocess.run([sys.executable, "-m", "editharm.locks", *cmd], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0 and "interrupted run" in done.stderr, done.stderr
    resumed = _snakemake(tmp_path, config, target)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (tmp_path / target).stat().st_size > 0
