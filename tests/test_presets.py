"""The paper-scale presets (configs/gu2024.yaml, configs/li2024.yaml) plan the DAG they describe.

Each preset is dry-run under Snakemake (no model, no data, no network: `-n` only builds the
DAG), and the planned job counts are compared with what the preset asks for, computed from
the preset itself with editharm.plan: one edit_segment per (chain, checkpoint), one
score_task per segment and task, one score_base per model and task, one train_method per
(model, trained method, training data) with batch-size aliases sharing one. Also here: the
per-experiment checkpoints the batch-editing experiments rely on, and the Wikipedia parquet
corpus format the presets' covariance statistics read.
"""

import copy
import json

import pytest
import yaml

from editharm.config import ConfigError, hparams_path, validate_config
from editharm.evaluate.tasks import suite
from editharm.methods import load_method
from editharm.plan import Chain, chain_checkpoints, chains, edit_set_size, models_in_use, previous_checkpoint
from test_workflow import ROOT, _planned_jobs, _snakemake

PRESETS = ["gu2024", "li2024"]


def _load(preset: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / f"{preset}.yaml").read_text())


@pytest.fixture
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # hyperparameter paths in the presets are relative to the repository


def _expected(config: dict) -> dict[str, int]:
    """Job counts the preset asks for, from the plan (independent of the rules' code)."""
    found = chains(config)
    segments = {c: chain_checkpoints(config, c) for c in found}
    n_segments = sum(len(cps) for cps in segments.values())
    weight_segments = sum(len(cps) for c, cps in segments.items()
                          if load_method(c.method, config["methods"][c.method].get("module")).EDITS_WEIGHTS)
    trained = set()
    for c in found:
        spec = config["methods"][c.method]
        module = load_method(c.method, spec.get("module"))
        if getattr(module, "TRAINED", False):
            # aliases (same module, hparams file and training data) share one trained artifact
            trained.add((c.model, module.__name__, hparams_path(config, c.model, c.method), spec["training_dataset"]))
    n_tasks = len(config["tasks"])
    return {
        "edit_segment": n_segments,
        "edit_metrics": n_segments,
        "weight_stats": weight_segments,
        "score_task": n_segments * n_tasks,
        "score_base": len(models_in_use(config)) * n_tasks,
        "train_method": len(trained),
        "fetch_model": len(models_in_use(config)),
    }


# ------------------------------------------------------------------ the presets are valid


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_validates(preset, in_root):
    validate_config(_load(preset), f"configs/{preset}.yaml")


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_its_suite_at_full_size(preset):
    config = _load(preset)
    tasks = config["tasks"]
    assert all(spec.get("n", "missing") is None for spec in tasks.values()), "every task at full size (n: null)"
    assert set(tasks) == set(suite(preset))


def test_gu2024_batch_editing_is_one_operation_of_b_requests(in_root):
    config = validate_config(_load("gu2024"), "gu2024")
    by_key = {(c.model, c.method, c.regulariser): c for c in chains(config)}
    for b in (10, 30, 50, 70):
        for method in (f"memit_b{b}", f"mend_b{b}"):
            assert config["methods"][method]["batch_size"] == b
            cps = chain_checkpoints(config, by_key[("gpt2-xl", method, "none")])
            assert cps[0] == b and previous_checkpoint(cps, b) == 0  # segment 0 -> b: one operation of b requests
    # batch size 10 also runs sequentially: operations of 10 until 1,000 edits
    assert chain_checkpoints(config, by_key[("gpt2-xl", "memit_b10", "none")]) == [10, 100, 1000]
    assert chain_checkpoints(config, by_key[("gpt2-xl", "rome", "none")]) == [1, 10, 100, 1000]
    assert chain_checkpoints(config, by_key[("gpt2-xl", "rome", "rect-40")]) == [1, 10, 100]
    assert {c.regulariser for c in chains(config)} == {"none", "rect-20", "rect-40", "rect-60", "rect-80", "random-40", "pca-40"}


def test_li2024_memory_methods_are_not_regularised_and_trained_on_their_dataset():
    config = _load("li2024")
    for c in chains(config):
        if c.method.startswith(("serac", "grace")):
            assert c.regulariser == "none"
        spec = config["methods"][c.method]
        if "training_dataset" in spec:
            assert spec["training_dataset"] == {"zsre": "zsre_train", "counterfact": "counterfact_train"}[c.dataset]


# ------------------------------------------------------------------ dry runs


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_dry_run_plans_the_preset(preset, tmp_path, in_root):
    result = _snakemake(tmp_path, ROOT / "configs" / f"{preset}.yaml", "-n", "--quiet", "rules")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    planned = _planned_jobs(result.stdout + result.stderr)
    expected = _expected(validate_config(_load(preset), preset))
    for rule, count in expected.items():
        assert planned.get(rule) == count, f"{rule}: planned {planned.get(rule)}, the preset asks for {count}"
    assert planned.get("layer_stats", 0) > 0 and planned.get("aggregate") == 1
    if preset == "gu2024":
        # MEND is trained once per model and shared by its batch-size aliases
        assert planned["train_method"] == 3


# ------------------------------------------------------------------ per-experiment checkpoints


def _config(**experiments):
    return {"checkpoints": [1, 10, 100], "seeds": [0], "experiments": experiments}


def test_experiment_checkpoints_replace_the_global_ones_for_its_chains():
    exp = dict(models=["m"], datasets=["d"], regularisers=["none"])
    config = _config(seq=dict(exp, methods=["rome"], max_edits=100),
                     batch=dict(exp, methods=["memit_b30"], checkpoints=[30], max_edits=30))
    found = {c.method: c for c in chains(config)}
    assert chain_checkpoints(config, found["rome"]) == [1, 10, 100]
    assert chain_checkpoints(config, found["memit_b30"]) == [30]
    assert edit_set_size(config) == 100
    config["experiments"]["batch"]["checkpoints"] = [30, 300]
    config["experiments"]["batch"]["max_edits"] = 300
    assert edit_set_size(config) == 300


def test_a_chain_in_two_experiments_saves_at_the_checkpoints_of_both():
    exp = dict(models=["m"], datasets=["d"], methods=["memit_b10"], regularisers=["none"])
    config = _config(single=dict(exp, checkpoints=[10], max_edits=10),
                     sequential=dict(exp, checkpoints=[10, 50], max_edits=50))
    assert chains(config) == [Chain("m", "d", "memit_b10", "none", 0, 50)]
    assert chain_checkpoints(config, chains(config)[0]) == [10, 50]


def test_max_edits_must_be_one_of_the_experiments_own_checkpoints(in_root):
    config = yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())
    config["experiments"]["regularisers"]["checkpoints"] = [2]
    with pytest.raises(ConfigError, match=r"max_edits: 3 exceeds the largest checkpoint 2"):
        validate_config(copy.deepcopy(config), "ci.yaml")
    config["experiments"]["regularisers"]["checkpoints"] = [2, 4]
    with pytest.raises(ConfigError, match=r"max_edits: 3 must be one of checkpoints \[2, 4\]"):
        validate_config(copy.deepcopy(config), "ci.yaml")
    config["experiments"]["regularisers"]["checkpoints"] = [3, 2]
    with pytest.raises(ConfigError, match="must be increasing"):
        validate_config(copy.deepcopy(config), "ci.yaml")
    config["experiments"]["regularisers"]["checkpoints"] = [3]
    validate_config(copy.deepcopy(config), "ci.yaml")


# ------------------------------------------------------------------ Wikipedia parquet corpus


def test_wikipedia_parquet_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from editharm.corpus import iter_texts
    from editharm.datasets import prepare

    table = pa.table({"id": ["12", "25", "39"], "url": ["u1", "u2", "u3"], "title": ["Anarchism", "Autism", "Empty"],
                      "text": ["Anarchism is a political philosophy.\n\nHistory", "Autism is a condition.", "  "]})
    pq.write_table(table, tmp_path / "train-00000-of-00041.parquet", row_group_size=2)
    spec = {"format": "wikipedia_parquet", "files": {"train-00000-of-00041.parquet": {"sha256": "0" * 64, "url": "x"}}}
    n = prepare(tmp_path, spec, tmp_path / "wiki.jsonl")
    assert n == 2  # the empty article is dropped
    assert list(iter_texts(tmp_path / "wiki.jsonl")) == ["Anarchism is a political philosophy.\n\nHistory", "Autism is a condition."]
    rows = [json.loads(line) for line in (tmp_path / "wiki.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["train-00000-of-00041.parquet#12", "train-00000-of-00041.parquet#25"]
    assert [r["title"] for r in rows] == ["Anarchism", "Autism"]
