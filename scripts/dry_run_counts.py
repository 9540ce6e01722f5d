"""The jobs a config plans, from a Snakemake dry run: a per-rule count table, and optionally
every planned job (rule, outputs, inputs) to compare two versions of the workflow.

    python scripts/dry_run_counts.py configs/ci.yaml configs/gu2024.yaml
    python scripts/dry_run_counts.py --root /tmp/other-checkout --jobs-dir /tmp/jobs-before config.yaml

Each config is dry-run in a fresh temporary working directory (no results or cache: every job
is planned), with the config's relative paths resolved from the current directory, then from
the workflow folder, as for `snakemake --configfile ...` run from the repository. --root picks
the checkout whose Snakefile and src/ are planned, so the same script measures a refactoring
before (a worktree at the old commit) and after.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dry_run(config: Path, root: Path, workdir: Path) -> str:
    """The dry run's output (stdout and stderr); raises with its tail when Snakemake fails."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(root / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config.resolve()), "--cores", "1", "-n"]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    text = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"dry run of {config} on {root} failed (exit {result.returncode}):\n{text[-4000:]}")
    return text


def job_counts(text: str) -> dict[str, int]:
    """Rule -> planned jobs, from the 'Job stats' table of a dry run."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("Job stats"):
            counts = {}
            for row in lines[i + 3:]:
                m = re.match(r"^(\w+)\s+(\d+)$", row.strip())
                if not m:
                    break
                if m.group(1) != "total":
                    counts[m.group(1)] = int(m.group(2))
            return counts
    return {}


def jobs(text: str, root: Path, workdir: Path) -> list[str]:
    """One line per planned job: rule, sorted outputs, sorted inputs; sorted, so two runs compare
    with diff. The checkout and the working directory are written <root> and <workdir>, so two
    checkouts of the same workflow plan the same lines."""
    text = text.replace(str(root), "<root>").replace(str(workdir), "<workdir>")
    found, job = [], None
    for line in text.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line.strip()):
            job = {"rule": m.group(1), "output": "", "input": ""}
            found.append(job)
        elif job is not None and (m := re.match(r"^\s+(input|output): (.*)$", line)):
            job[m.group(1)] = ", ".join(sorted(m.group(2).split(", ")))
    return sorted(f"{j['rule']} | out: {j['output']} | in: {j['input']}" for j in found)


def table(counts: dict[str, int]) -> str:
    width = max([len("total"), *map(len, counts)])
    rows = [f"{rule:<{width}}  {n:>6}" for rule, n in sorted(counts.items())]
    return "\n".join([*rows, f"{'total':<{width}}  {sum(counts.values()):>6}"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", type=Path, help="config files (e.g. config.yaml configs/ci.yaml)")
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout to plan (default: this one)")
    parser.add_argument("--jobs-dir", type=Path, help="also write every planned job to <dir>/<config stem>.jobs")
    args = parser.parse_args(argv)
    for config in args.configs:
        if not config.is_file():
            parser.error(f"config {config} does not exist (relative to {Path.cwd()})")
        root = args.root.resolve()
        with tempfile.TemporaryDirectory(prefix="dry_run_counts-") as workdir:
            text = dry_run(config, root, Path(workdir))
        print(f"# {config} (workflow: {root})")
        print(table(job_counts(text)))
        print()
        if args.jobs_dir:
            args.jobs_dir.mkdir(parents=True, exist_ok=True)
            (args.jobs_dir / f"{config.stem}.jobs").write_text("\n".join(jobs(text, root, Path(workdir))) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
