"""editharm.figures as a package: its public names, and each figure job's code fingerprint.

A figure job runs workflow_scripts/figures.py and one notebook that does
`from editharm import figures as F` and calls `F.<figure>` (rules/figures.smk's
code_input("figures", notebook=...)). Its fingerprint must cover that figure's function and
the helpers it uses, and not the other figures: editing li_fig6 reruns li_fig6's notebook
only, editing a drawing helper both use reruns both. The fingerprints are taken of a copy of
the checkout whose code the tests change.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import pytest

from editharm import codehash
from editharm import figures as F

ROOT = Path(__file__).resolve().parents[1]


def _notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_every_name_the_notebooks_scripts_and_tests_use_is_exported():
    used = set()
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        used |= set(re.findall(r"\bF\.(\w+)", _notebook_code(nb)))
    for test in (ROOT / "tests").glob("test_*.py"):
        if "from editharm import figures as F" in test.read_text():
            used |= set(re.findall(r"\bF\.(\w+)", test.read_text()))
    used |= {"write_index", "model_info", "FIGURES"}  # workflow_scripts/figures.py, rules/figures.smk
    assert {"setup_style", "load_tables", "publish", "li_fig5", "gu_fig5"} <= used
    assert [n for n in sorted(used) if not hasattr(F, n)] == []
    assert [n for n in F.__all__ if not hasattr(F, n)] == []
    for name, (fn, paper, _) in F.FIGURES.items():
        assert fn.__name__ == name and paper in (F.GU, F.LI)
        assert fn.__module__ == f"editharm.figures.{'gu2024' if paper == F.GU else 'li2024'}", name


def test_regulariser_order_follows_the_config_grammar():
    names = ["svd-12.5", "rect-100", "pca-40", "none", "random-40", "rect-5", "rect-20", "rect-12.5"]
    assert sorted(names, key=F.regulariser_key) == [
        "none", "rect-5", "rect-12.5", "rect-20", "rect-100", "random-40", "pca-40", "svd-12.5"]
    # A kind registered in another process (regularize.register_regulariser) is unknown here: it sorts
    # after the known kinds, by its text, and does not stop the figure.
    assert sorted(["unregistered-5", "svd-40", "unregistered-40", "none"], key=F.regulariser_key) == [
        "none", "svd-40", "unregistered-40", "unregistered-5"]


# ---------------------------------------------------------------- code fingerprints


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of the code a figure job runs: the package, the workflow scripts, the notebooks."""
    root = tmp_path_factory.mktemp("checkout")
    for item in ("src/editharm", "workflow_scripts", "notebooks"):
        shutil.copytree(ROOT / item, root / item, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.fixture
def fingerprint(checkout: Path, monkeypatch):
    monkeypatch.setattr(codehash, "_SRC", checkout / "src")

    def of(fig: str) -> str:
        # What the Snakefile's code_input("figures", notebook=fig) hashes.
        entries = [codehash.file_entry(checkout / "workflow_scripts" / "figures.py"),
                   codehash.file_entry(checkout / "notebooks" / f"{fig}.ipynb")]
        return codehash.fingerprint(entries)[0]

    return of


def _changed(path: Path, function: str) -> str:
    """Append a statement to the body of top-level `function` in `path`; returns the original text."""
    original = path.read_text()
    node = next(n for n in ast.parse(original).body if getattr(n, "name", None) == function)
    lines = original.splitlines(keepends=True)
    lines.insert(node.end_lineno, f"{' ' * node.body[0].col_offset}_changed = True  # a change to the code\n")
    path.write_text("".join(lines))
    return original


FIGS = ["li_fig5", "li_fig6", "gu_fig3", "gu_fig4", "gu_fig7"]


@pytest.mark.parametrize("module, function, changes", [
    ("li2024", "li_fig6", {"li_fig6"}),                   # one figure: its own notebook only
    ("gu2024", "gu_fig3", {"gu_fig3"}),                   # a figure of the other paper
    ("li2024", "relative_to_unedited", {"li_fig5"}),      # a helper of one figure, in its paper's module
    ("gu2024", "_batch_missing", {"gu_fig4"}),            # (and of gu_batch_sequential, not compared here)
    # Helpers the figure modules import at module level: importing the package runs those imports,
    # so they count for every figure, whether or not it calls them.
    ("draw", "facet_lines", set(FIGS)),
    ("draw", "facet_bars", set(FIGS)),
    ("result", "publish", set(FIGS)),
])
def test_a_figure_job_fingerprints_only_the_code_its_figure_uses(checkout, fingerprint, module, function, changes):
    before = {fig: fingerprint(fig) for fig in FIGS}
    path = checkout / "src" / "editharm" / "figures" / f"{module}.py"
    original = _changed(path, function)
    try:
        after = {fig: fingerprint(fig) for fig in FIGS}
    finally:
        path.write_text(original)
    assert {fig for fig in FIGS if after[fig] != before[fig]} == changes
    assert {fig: fingerprint(fig) for fig in FIGS} == before  # undone: the same code again


def test_module_level_code_of_every_figure_module_runs_for_each_figure(checkout, fingerprint):
    # Importing the package imports gu2024 too: its module-level code (constants) is part of li_fig5's
    # code, its functions are not.
    found = codehash.closure([codehash.file_entry(checkout / "notebooks" / "li_fig5.ipynb")])
    assert found["editharm.figures.gu2024"][1] == frozenset()
    assert "li_fig5" in found["editharm.figures.li2024"][1] and "li_fig6" not in found["editharm.figures.li2024"][1]
    path = checkout / "src" / "editharm" / "figures" / "gu2024.py"
    before = fingerprint("li_fig5")
    original = path.read_text()
    path.write_text(original.replace('GU = "Gu et al. 2024 (EMNLP)"', 'GU = "Gu et al., EMNLP 2024"'))
    try:
        assert fingerprint("li_fig5") != before
    finally:
        path.write_text(original)


def test_getattr_or_the_registry_reaches_every_figure(checkout, monkeypatch):
    # getattr(F, name) may reach any figure, so the package is taken whole; F.FIGURES names every figure.
    monkeypatch.setattr(codehash, "_SRC", checkout / "src")
    script = checkout / "workflow_scripts" / "any_figure.py"
    script.write_text("from editharm import figures as F\n\nfn = getattr(F, 'li_fig5')\n")
    registry = checkout / "workflow_scripts" / "registry.py"
    registry.write_text("from editharm import figures as F\n\nfn = F.FIGURES['li_fig5'][0]\n")
    try:
        for job in (script, registry):
            found = codehash.closure([codehash.file_entry(job)])
            assert {"li_fig5", "li_fig6"} <= found["editharm.figures.li2024"][1], job.name
            before = codehash.fingerprint([codehash.file_entry(job)])[0]
            path = checkout / "src" / "editharm" / "figures" / "li2024.py"
            original = _changed(path, "li_fig6")
            try:
                assert codehash.fingerprint([codehash.file_entry(job)])[0] != before, job.name
            finally:
                path.write_text(original)
    finally:
        script.unlink()
        registry.unlink()


# ---------------------------------------------------------------- publishing


def test_an_interrupted_publish_leaves_no_partial_file(tmp_path: Path):
    class Failing:
        def savefig(self, path, **kwargs):
            Path(path).write_bytes(b"\x89PNG half a figure")
            raise OSError("disk full")

    result = F.FigureResult("li_fig6", "title", F.LI, figure=Failing())
    with pytest.raises(OSError, match="disk full"):
        F.publish(result, tmp_path, show=False)
    assert list(tmp_path.iterdir()) == []  # no li_fig6.png, and no temporary file either
    result = F.FigureResult("li_fig6", "title", F.LI, missing="the safety benchmarks were not run")
    F.publish(result, tmp_path, show=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["li_fig6.csv", "li_fig6.json", "li_fig6.png"]
    assert json.loads((tmp_path / "li_fig6.json").read_text())["status"] == "missing"
