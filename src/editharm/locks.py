"""After a crash: unlock the working directory when no snakemake process works in it.

Snakemake locks the outputs it is making (.snakemake/locks/) and refuses to start while a
lock exists. A run killed with SIGKILL, an out-of-memory kill or a power cut never removes
its locks, so every later run stopped with "Directory cannot be locked" until someone ran
`snakemake --unlock`. `make run` calls this module first: locks with no snakemake process
(nor one of its job scripts) running in the directory are stale and are removed with
`snakemake --unlock`; a live process keeps its locks, and the message names it.

    python -m editharm.locks SNAKEMAKE_COMMAND...   # e.g. .venv/bin/snakemake --profile profiles/local
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil


class LiveRunError(RuntimeError):
    """A snakemake process still works in the directory: its locks are not stale."""


def lock_files(workdir: str | os.PathLike) -> list[Path]:
    locks = Path(workdir) / ".snakemake" / "locks"
    return sorted(locks.iterdir()) if locks.is_dir() else []


def _is_snakemake(cmdline: list[str]) -> bool:
    """snakemake itself (`snakemake ...`, `python .../bin/snakemake ...`, `python -m snakemake ...`)
    or a job script it started (its copy lives in .snakemake/scripts/)."""
    head = [os.path.basename(a) for a in cmdline[:2]]
    if "snakemake" in head:
        return True
    if any(a == "-m" and b == "snakemake" for a, b in zip(cmdline, cmdline[1:])):
        return True
    return any(f"{os.sep}.snakemake{os.sep}scripts{os.sep}" in a for a in cmdline)


def live_snakemake(workdir: str | os.PathLike) -> list[int]:
    """Ids of snakemake processes (and their job scripts) whose working directory is `workdir`;
    this process and its ancestors (make, the shell) do not count."""
    here = os.path.realpath(workdir)
    me = psutil.Process()
    exclude = {me.pid, *(p.pid for p in me.parents())}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid in exclude or not proc.info["cmdline"] or not _is_snakemake(proc.info["cmdline"]):
            continue
        try:
            cwd = proc.cwd()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue  # another user's process, or one that just ended: not working here
        if os.path.realpath(cwd) == here:
            found.append(proc.pid)
    return sorted(found)


def unlock_if_stale(workdir: str | os.PathLike, snakemake_cmd: list[str]) -> bool:
    """Run `snakemake_cmd --unlock` in `workdir` when it holds locks and no snakemake works there.

    Returns whether it unlocked; raises LiveRunError when a live process holds the directory.
    """
    if not lock_files(workdir):
        return False
    live = live_snakemake(workdir)
    if live:
        raise LiveRunError(
            f"{workdir} is locked and snakemake is still running there (process {', '.join(map(str, live))}); "
            "wait for it to finish, or stop it (kill PID), then start the run again")
    subprocess.run([*snakemake_cmd, "--unlock"], cwd=workdir, check=True, stdout=subprocess.DEVNULL)
    return True


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        if unlock_if_stale(os.getcwd(), argv):
            print("Removed the locks of an interrupted run (no snakemake process was running here); "
                  "the run resumes.", file=sys.stderr)
    except LiveRunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
