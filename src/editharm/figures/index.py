"""results/figures/index.html: one page linking every figure with its status, the config and versions."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from editharm.io import write_text

from .data import TABLES
from .result import figure_versions, paper_finding

# The overview notebook (notebooks/edit_harm.ipynb) and the figures it writes.
OVERVIEW = {"name": "edit_harm", "title": "Overview: downstream, editing and weight change vs edits, per regulariser",
            "pngs": ["downstream.png", "editing.png", "weight_stats.png"]}


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _verdict(agrees: Any) -> str:
    return {True: "yes", False: "no"}.get(agrees, "—")


def _findings_table(figures_dir: Path, names: Sequence[str]) -> list[str]:
    """Findings: per figure, what the paper found, what this run's numbers show, and whether they agree
    (each figure's criterion is part of its finding); read from <name>.json."""
    rows = []
    for n in names:
        meta_path = figures_dir / f"{n}.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        # A missing figure's statement is long; its first sentence says what is missing, the figure's
        # section below says how to produce it.
        missing = (meta.get("missing") or "").split(". ")[0].rstrip(".")
        shown = meta.get("finding") or (f"missing: {missing} (see below)." if missing else "not rendered")
        verdict = _verdict(meta.get("agrees"))
        cls = {"yes": "yes", "no": "no"}.get(verdict, "")
        rows.append(f"<tr><td><a href='#{_esc(n)}'>{_esc(n)}</a></td>"
                    f"<td>{_esc(meta.get('paper_finding') or paper_finding(n) or '')}</td><td>{_esc(shown)}</td>"
                    f"<td class='{cls}'><b>{verdict}</b></td></tr>")
    return ["<h2 id='findings'>Findings</h2>",
            "<p>Agrees: yes/no by the criterion stated in each finding; — where it cannot be judged (data missing, "
            "a descriptive figure, or no harm to compare).</p>",
            "<table class='findings'><tr><th>figure</th><th>paper found</th><th>this run shows</th>"
            "<th>agrees</th></tr>" + "".join(rows) + "</table>"]


def write_index(out_path: str | Path, figures_dir: str | Path, names: Sequence[str], config: dict,
                config_source: str = "", tables_dir: str | Path | None = None) -> None:
    """results/figures/index.html: every figure (PNG, executed notebook as HTML and ipynb, its numbers as CSV),
    its status and the seeds, models and methods it shows, with the config and package versions."""
    import yaml

    figures_dir = Path(figures_dir)
    versions = figure_versions()
    seeds = sorted(set(config.get("seeds", [])) | {s for e in (config.get("experiments") or {}).values()
                                                    for s in e.get("seeds", [])})
    tables_seeds: set = set()
    if tables_dir is not None:
        for t in TABLES:
            p = Path(tables_dir) / f"{t}.csv"
            if p.exists() and p.stat().st_size:
                try:
                    tables_seeds |= set(pd.read_csv(p, usecols=["seed"]).seed.astype(int))
                except (ValueError, KeyError):
                    pass
    css = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
           ".fig{border-top:1px solid #ccc;padding:1em 0}.fig img{max-width:100%;border:1px solid #eee}"
           ".ok{color:#0072B2}.missing{color:#D55E00}table{border-collapse:collapse;font-size:90%}"
           "td,th{border:1px solid #ddd;padding:2px 6px}pre{background:#f6f6f6;padding:1em;overflow:auto}"
           "code{background:#f2f2f2}.findings td{vertical-align:top}.yes{color:#009E73}.no{color:#D55E00}")
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>editharm figures</title>"
           f"<style>{css}</style></head><body>",
           "<h1>editharm: figures</h1>",
           f"<p>Made {time.strftime('%Y-%m-%d %H:%M:%S %Z')} from config <code>{_esc(config_source or '?')}</code>. "
           f"Seeds in the config: {_esc(seeds)}; in the tables: {_esc(sorted(tables_seeds))}.</p>",
           "<p>Package versions: " + ", ".join(f"{_esc(k)} {_esc(v)}" for k, v in versions.items()) + "</p>",
           *_findings_table(figures_dir, names),
           "<ul>" + "".join(f"<li><a href='#{_esc(n)}'>{_esc(n)}</a></li>" for n in [OVERVIEW["name"], *names])
           + "</ul>"]
    # The overview notebook (edit_harm.ipynb).
    out.append(f"<div class='fig' id='{OVERVIEW['name']}'><h2>{_esc(OVERVIEW['title'])}</h2>"
               f"<p><a href='edit_harm.html'>notebook (HTML)</a> · <a href='edit_harm.ipynb'>notebook (ipynb)</a></p>")
    for png in OVERVIEW["pngs"]:
        if (figures_dir / png).exists():
            out.append(f"<p><a href='{png}'><img src='{png}' alt='{png}' loading='lazy'></a></p>")
    out.append("</div>")
    for n in names:
        meta_path = figures_dir / f"{n}.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"title": n, "status": "not rendered"}
        status = meta.get("status", "?")
        out.append(f"<div class='fig' id='{_esc(n)}'><h2>{_esc(meta.get('title', n))}</h2>")
        out.append(f"<p>{_esc(meta.get('paper', ''))} · status: <b class='{_esc(status)}'>{_esc(status)}</b> · "
                   f"<a href='{n}.png'>PNG</a> · <a href='{n}.html'>notebook (HTML)</a> · "
                   f"<a href='{n}.ipynb'>notebook (ipynb)</a> · <a href='{n}.csv'>data (CSV)</a></p>")
        if meta.get("missing"):
            out.append(f"<p class='missing'><b>Missing:</b> {_esc(meta['missing'])}</p>")
        if meta.get("finding"):
            out.append(f"<p><b>This run ({_esc(_verdict(meta.get('agrees')))}):</b> {_esc(meta['finding'])}</p>")
        for note in meta.get("notes", []):
            out.append(f"<p><i>Note:</i> {_esc(note)}</p>")
        facts = [f"{k}: {_esc(', '.join(map(str, meta[k])))}" for k in
                 ("models", "datasets", "methods", "regularisers", "tasks", "tensors", "seeds", "edits")
                 if meta.get(k)]
        if facts:
            out.append("<p>" + "; ".join(facts) + "</p>")
        out.append(f"<p><a href='{n}.png'><img src='{n}.png' alt='{_esc(n)}' loading='lazy'></a></p>")
        if n == "gu_table1" and status == "ok" and (figures_dir / f"{n}.csv").exists():
            table = pd.read_csv(figures_dir / f"{n}.csv")
            out.append("<details open><summary>Table 1 as numbers (shares as fractions)</summary>"
                       + table.to_html(index=False, float_format=lambda v: f"{v:.4g}") + "</details>")
        out.append("</div>")
    out.append("<h2>Config</h2><pre>" + _esc(yaml.safe_dump(config, sort_keys=False)) + "</pre></body></html>")
    write_text(out_path, "\n".join(out))
