"""The figure rules in the DAG (dry run, no job executed): one `figure` job per paper notebook with
the inputs it needs, the overview notebook, and the index page that depends on all of them."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from editharm.figures import FIGURES

ROOT = Path(__file__).resolve().parents[1]


def _config(workdir: Path) -> Path:
    """The CI config with a chat model next to the base model and MEMIT as instance and batch-of-2 methods."""
    config = yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())
    config["mirror_dir"] = str(ROOT / "tests" / "fixtures" / "mirror")
    hparams = {}
    for method in ("rome", "memit"):
        dst = workdir / f"{method}_tiny.yaml"
        shutil.copy(ROOT / "tests" / "fixtures" / "hparams" / f"{method}_tiny.yaml", dst)
        hparams[method] = str(dst)
    hparams["memit_b2"] = hparams["memit"]
    config["models"]["tiny-llama"]["hparams"] = hparams
    config["models"]["tiny-llama-chat"] = {**config["models"]["tiny-llama"], "hparams": dict(hparams)}
    config["methods"] = {
        "rome": {"hparams_dir": str(ROOT / "configs" / "methods" / "rome")},
        "memit": {"hparams_dir": str(ROOT / "configs" / "methods" / "memit")},
        "memit_b2": {"hparams_dir": str(ROOT / "configs" / "methods" / "memit"), "module": "editharm.methods.memit",
                     "batch_size": 2},
    }
    config["checkpoints"] = [1, 2, 4]
    config["experiments"] = {
        "regularisers": {"models": ["tiny-llama"], "datasets": ["zsre"], "methods": ["rome"],
                         "regularisers": ["none", "rect-40"], "max_edits": 4},
        "methods": {"models": ["tiny-llama", "tiny-llama-chat"], "datasets": ["zsre"],
                    "methods": ["rome", "memit", "memit_b2"], "regularisers": ["none"], "max_edits": 4},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _jobs(output: str) -> list[dict]:
    """The jobs of a dry run: rule, wildcards and input files."""
    jobs, job = [], None
    for line in output.splitlines():
        head = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if head:
            job = {"rule": head.group(1), "input": [], "wildcards": ""}
            jobs.append(job)
        elif job is not None and line.strip().startswith("input:"):
            job["input"] = [s.strip() for s in line.split("input:", 1)[1].split(",")]
        elif job is not None and line.strip().startswith("wildcards:"):
            job["wildcards"] = line.split("wildcards:", 1)[1].strip()
    return jobs


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> list[dict]:
    workdir = tmp_path_factory.mktemp("figdag")
    config = _config(workdir)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--cores", "2", "-n"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 0, result.stderr[-4000:]
    return _jobs(result.stdout + result.stderr)


def test_one_figure_job_per_notebook(planned):
    figures = {j["wildcards"].removeprefix("fig="): j for j in planned if j["rule"] == "figure"}
    assert set(figures) == set(FIGURES)
    for name, job in figures.items():
        assert str(ROOT / "notebooks" / f"{name}.ipynb") in job["input"], name
        # The code it runs (notebook cells, workflow script, editharm.figures and what they import),
        # as a fingerprint file: editharm/codehash.py.
        assert f"cache-ci/code/figures/notebook={name}.json" in job["input"], name
        assert "results-ci/tables/downstream.csv" in job["input"], name
    heatmaps = [f for f in figures["gu_fig5"]["input"] if f.endswith("heatmaps.safetensors")]
    # 7 chains (tiny-llama: rome none and rect-40, memit, memit_b2; tiny-llama-chat: rome, memit, memit_b2)
    # x checkpoints 1, 2, 4.
    assert len(heatmaps) == 7 * 3, heatmaps
    assert "results-ci/weightstats/tiny-llama/zsre/memit_b2/none/seed0/n2/heatmaps.safetensors" in heatmaps
    for name in ("li_fig3", "li_fig4"):
        manifests = sorted(f for f in figures[name]["input"] if f.endswith("editharm_model.json"))
        assert manifests == ["cache-ci/models/tiny-llama-chat/editharm_model.json",
                             "cache-ci/models/tiny-llama/editharm_model.json"], manifests


def test_index_depends_on_every_figure(planned):
    (index,) = [j for j in planned if j["rule"] == "figures"]
    for name in FIGURES:
        for ext in ("png", "csv", "json", "ipynb", "html"):
            assert f"results-ci/figures/{name}.{ext}" in index["input"], (name, ext)
    for name in ("downstream.png", "editing.png", "weight_stats.png", "edit_harm.html"):
        assert f"results-ci/figures/{name}" in index["input"]
    (target,) = [j for j in planned if j["rule"] == "all"]
    assert target["input"] == ["results-ci/figures/index.html"]
