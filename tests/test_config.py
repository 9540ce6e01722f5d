"""A config that breaks the schema or names unknown things fails before any compute,
naming the key, the bad value and what is allowed."""

import copy
from pathlib import Path

import pytest
import yaml

from editharm.config import ConfigError, validate_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ci_config(monkeypatch):
    monkeypatch.chdir(ROOT)
    return yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())


def test_shipped_configs_are_valid(monkeypatch):
    monkeypatch.chdir(ROOT)
    for name in ("config.yaml", "configs/ci.yaml"):
        validate_config(yaml.safe_load((ROOT / name).read_text()), name)


def test_full_overlay_merged_on_the_default_is_valid_and_extends_it(monkeypatch):
    """configs/full.yaml is read after config.yaml (`--configfile config.yaml configs/full.yaml`), merged
    as snakemake merges config files: its experiments replace the default's, the others stay."""
    from snakemake.utils import update_config

    from editharm.plan import chains

    monkeypatch.chdir(ROOT)
    default = yaml.safe_load((ROOT / "config.yaml").read_text())
    merged = yaml.safe_load((ROOT / "config.yaml").read_text())
    update_config(merged, yaml.safe_load((ROOT / "configs" / "full.yaml").read_text()))
    validate_config(merged, "config.yaml + configs/full.yaml")
    assert merged["results_dir"] != default["results_dir"]
    longest = {(c.model, c.method): c.max_edits for c in chains(merged) if c.regulariser == "none"}
    assert longest[("smollm2-135m", "rome")] == 1000 and longest[("smollm2-135m", "memit")] == 1000
    assert {m for (model, m), n in longest.items() if model == "gemma3-270m" and n >= 100} >= {
        "rome", "memit", "kn", "mend", "pmet", "alphaedit", "ft", "serac", "grace"}
    assert set(merged["experiments"]) >= set(default["experiments"])


def test_bad_regulariser_value_names_key_and_allowed_forms(ci_config):
    ci_config["experiments"]["regularisers"]["regularisers"] = ["none", "rect40"]
    with pytest.raises(ConfigError) as err:
        validate_config(ci_config, "ci.yaml")
    msg = str(err.value)
    assert "ci.yaml" in msg and "experiments.regularisers.regularisers" in msg and "'rect40'" in msg


def test_unknown_key_lists_allowed_keys(ci_config):
    ci_config["checkpionts"] = [1, 3]
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'checkpionts'.*allowed keys: .*checkpoints"):
        validate_config(ci_config, "ci.yaml")


def test_wrong_enum_value_lists_allowed_values(ci_config):
    ci_config["models"]["tiny-llama"]["family"] = "bert"
    with pytest.raises(ConfigError, match=r"models.tiny-llama.family: value 'bert' is not allowed; allowed: 'llama', 'gpt2', 'gpt_neox'"):
        validate_config(ci_config, "ci.yaml")


def test_unknown_method_lists_known_methods(ci_config):
    ci_config["methods"]["romee"] = {"hparams_dir": "configs/methods/rome"}
    with pytest.raises(ConfigError, match=r"unknown editing method 'romee'. Known methods: .*rome"):
        validate_config(ci_config, "ci.yaml")


def test_experiment_must_reference_defined_names(ci_config):
    ci_config["experiments"]["regularisers"]["datasets"] = ["counterfact"]
    with pytest.raises(ConfigError, match=r"experiments.regularisers.datasets: 'counterfact' is not defined under `datasets`"):
        validate_config(ci_config, "ci.yaml")


def test_checkpoints_must_increase_and_max_edits_be_one(ci_config):
    bad = copy.deepcopy(ci_config)
    bad["checkpoints"] = [3, 1]
    with pytest.raises(ConfigError, match="must be increasing"):
        validate_config(bad, "ci.yaml")
    bad = copy.deepcopy(ci_config)
    bad["experiments"]["regularisers"]["max_edits"] = 2
    with pytest.raises(ConfigError, match="must be one of checkpoints"):
        validate_config(bad, "ci.yaml")


def test_bad_sha256_is_rejected_by_the_schema(ci_config):
    ci_config["datasets"]["sst2"]["files"]["dev.tsv"]["sha256"] = "abc"
    with pytest.raises(ConfigError, match=r"datasets.sst2.files.dev.tsv.sha256: value 'abc' does not match"):
        validate_config(ci_config, "ci.yaml")


def test_final_tasks_that_no_experiment_scores_are_an_error(ci_config):
    ci_config["tasks"]["sst2"]["at"] = "final"
    for exp in ci_config["experiments"].values():
        exp["final_tasks"] = False
    with pytest.raises(ConfigError, match=r"tasks: sst2 is scheduled `at: final`.*final_tasks: true"):
        validate_config(ci_config, "ci.yaml")
    next(iter(ci_config["experiments"].values()))["final_tasks"] = True
    validate_config(ci_config, "ci.yaml")
