"""A figure's result and how it is published.

A figure function returns a `FigureResult`: the matplotlib figure, the numbers it shows (a
tidy frame, saved as CSV next to the PNG), and, when the dimension it needs is absent from
the tables, a `missing` statement saying what is missing and which config keys produce it.
`publish` then draws a placeholder with that statement, so every rule output exists and no
notebook fails for lack of data.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from editharm.io import atomic_path, write_text

from .data import regulariser_key
from .draw import placeholder_figure
from .style import _in_notebook, _pyplot


@dataclass
class FigureResult:
    """One figure: what it is, the matplotlib figure, its numbers, and what is missing (if anything)."""

    name: str
    title: str
    paper: str
    figure: Any = None
    data: pd.DataFrame = field(default_factory=pd.DataFrame)
    missing: str | None = None
    notes: list[str] = field(default_factory=list)
    table: pd.DataFrame | None = None   # a paper table: saved as the CSV (with its index) instead of `data`
    shown: pd.DataFrame | None = None   # the table as displayed (formatted cells)
    # What this run's numbers show (a measured sentence stating its criterion), and whether that agrees
    # with what the paper found (PAPER_FINDINGS); None when it cannot be judged (no data, descriptive).
    finding: str | None = None
    agrees: bool | None = None

    @property
    def status(self) -> str:
        return "missing" if self.missing else "ok"


def publish(result: FigureResult, out_dir: str | Path, dpi: int = 150, show: bool = True) -> Path:
    """Write <name>.png, <name>.csv (the numbers shown) and <name>.json (for the index); show them inline."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if result.missing:
        print(f"{result.title}: {result.missing}")
    for note in result.notes:
        print(f"Note: {note}")
    if result.finding:
        print(f"Finding: {result.finding}")
    if result.figure is None:
        if not result.missing:
            result.missing = ("no data left to draw after selecting this figure's rows"
                              + (f" ({' '.join(result.notes)})" if result.notes else "") + ".")
            print(f"{result.title}: {result.missing}")
        result.figure = placeholder_figure(result.title, result.missing)
    # Each file appears whole or not at all: an interrupted job leaves no truncated output behind.
    png = out / f"{result.name}.png"
    with atomic_path(png) as tmp:
        result.figure.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    data = result.table if result.table is not None else result.data
    with atomic_path(out / f"{result.name}.csv") as tmp:
        data.to_csv(tmp, index=result.table is not None)
    meta = {"name": result.name, "title": result.title, "paper": result.paper, "status": result.status,
            "missing": result.missing, "notes": result.notes, "png": png.name,
            "paper_finding": paper_finding(result.name), "finding": result.finding,
            "agrees": None if result.missing else result.agrees,
            "created_unix": time.time(), "versions": figure_versions()}
    for col in ("model", "dataset", "method", "regulariser", "seed", "edits", "task", "tensor"):
        if col in result.data:
            meta[col + "s" if not col.endswith("s") else col] = sorted(
                {v.item() if hasattr(v, "item") else v for v in result.data[col].dropna().unique()},
                key=lambda v: (str(type(v)), v))
    write_text(out / f"{result.name}.json", json.dumps(meta, indent=1, default=str))
    if show and _in_notebook():
        from IPython.display import Markdown, display

        if result.missing:
            display(Markdown(f"**Missing:** {result.missing}"))
        if result.finding:
            verdict = {True: "agrees", False: "does not agree", None: "cannot be judged"}[result.agrees]
            display(Markdown(f"*Paper:* {paper_finding(result.name) or '?'}\n\n*This run ({verdict}):* "
                             f"{result.finding}"))
        for note in result.notes:
            display(Markdown(f"*Note:* {note}"))
        _pyplot().show()
        if result.shown is not None or result.table is not None:
            display(result.shown if result.shown is not None else result.table)
        elif len(result.data):
            display(result.data.head(20))
    else:
        _pyplot().close(result.figure)
    return png


# figure name -> what its paper found; each paper module registers its PAPER_FINDINGS when imported
# (importing the package imports them all), so that publishing one figure does not reach into the
# other paper's module.
_PAPER_FINDINGS: dict[str, str] = {}


def register_paper_findings(findings: dict[str, str]) -> None:
    for name, text in findings.items():
        if _PAPER_FINDINGS.get(name, text) != text:
            raise ValueError(f"two paper findings for figure {name!r}: {_PAPER_FINDINGS[name]!r} and {text!r}; "
                             "each figure's finding belongs in its paper module's PAPER_FINDINGS only.")
        _PAPER_FINDINGS[name] = text


def paper_finding(name: str) -> str | None:
    """What the paper found for figure `name` (the PAPER_FINDINGS of gu2024 and li2024), or None."""
    return _PAPER_FINDINGS.get(name)


def figure_versions() -> dict[str, str]:
    from importlib import metadata

    from editharm.io import package_versions

    versions = package_versions()
    for name in ("matplotlib", "seaborn", "papermill", "nbconvert", "safetensors"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _no_downstream(name, title, paper):
    return FigureResult(name, title, paper, missing=(
        "no downstream scores in results/tables/downstream.csv. Set `tasks:` (e.g. the gu2024 tasks gsm8k, rte, "
        "nq_open, boolq, mutual, samsum, conll03, sst2) and at least one entry under `experiments:`."))


def _need_none(name, title, paper, data):
    regs = ", ".join(sorted(set(data.regulariser), key=regulariser_key)) or "none run"
    return FigureResult(name, title, paper, missing=(
        f"this figure shows unregularised editing, but no chain has regulariser `none` (found: {regs}). "
        "Add `none` to `experiments.<name>.regularisers`."))
