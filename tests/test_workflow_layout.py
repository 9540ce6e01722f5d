"""The workflow's glue, without running Snakemake: the config lookups and their defaults
(editharm.config), the {reg} wildcard pattern against the regulariser grammar, and the
README's rule -> file table against the rule files."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from editharm import config as cfg
from editharm.regularize import NAME_PATTERN, parse_regulariser

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- config lookups


@pytest.fixture
def ci_config(monkeypatch):
    monkeypatch.chdir(ROOT)  # hyperparameter folders in configs/ci.yaml are relative to the checkout
    return yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())


def test_scoring_batch_size_is_the_tasks_then_the_models_then_the_default(ci_config):
    config = cfg.validate_config(ci_config, "ci.yaml")
    model, task = next(iter(config["models"])), "sst2"
    config["models"][model].pop("batch_size", None)
    config["tasks"][task].pop("batch_size", None)
    assert cfg.scoring_batch_size(config, model, task) == cfg.ENTRY_DEFAULTS["models"]["batch_size"] == 16
    config["models"][model]["batch_size"] = 3
    assert cfg.scoring_batch_size(config, model, task) == 3
    config["tasks"][task]["batch_size"] = 5
    assert cfg.scoring_batch_size(config, model, task) == 5


def test_entry_defaults_apply_without_being_written_into_the_config(ci_config):
    raw = copy.deepcopy(ci_config)
    raw["covariance"].pop("seq_len", None)
    for spec in raw["methods"].values():
        spec.pop("batch_size", None)
        spec.pop("module", None)
    config = cfg.validate_config(raw, "ci.yaml")
    # Jobs record the config as a param: a default filled in here would change that record.
    assert "seq_len" not in config["covariance"]
    assert all("batch_size" not in spec for spec in config["methods"].values())
    assert cfg.covariance_seq_len(config) == 256
    method = next(iter(config["methods"]))
    assert cfg.edit_batch_size(config, method) == 1
    assert cfg.method_module_path(config, method) is None
    assert cfg.method_module(config, method).__name__ == f"editharm.methods.{method}"
    config["covariance"]["seq_len"] = 64
    config["methods"][method]["batch_size"] = 4
    assert (cfg.covariance_seq_len(config), cfg.edit_batch_size(config, method)) == (64, 4)


def test_a_method_under_another_name_loads_its_configured_module(ci_config):
    config = cfg.validate_config(ci_config, "ci.yaml")
    config["methods"]["rome_b1"] = {**config["methods"]["rome"], "module": "editharm.methods.rome"}
    assert cfg.method_module_path(config, "rome_b1") == "editharm.methods.rome"
    assert cfg.method_module(config, "rome_b1") is cfg.method_module(config, "rome")


# ---------------------------------------------------------------- regulariser names


@pytest.mark.parametrize("name", ["none", "rect-40", "rect-100", "random-12.5", "pca-0.5", "svd-40", "rect-0.25"])
def test_every_regulariser_name_the_grammar_accepts_matches_the_wildcard(name):
    parse_regulariser(name)
    assert re.fullmatch(NAME_PATTERN, name)


@pytest.mark.parametrize("name", ["rect-40.0", "rect-040", "rect--40", "rect-4e1", "RECT-40", "rect-40/x", "rect-",
                                  "-40", "rect-+40", "rect-40.", "rect 40"])
def test_a_malformed_regulariser_name_matches_neither_the_wildcard_nor_the_grammar(name):
    assert not re.fullmatch(NAME_PATTERN, name)
    with pytest.raises(ValueError):
        parse_regulariser(name)


def test_the_snakefile_takes_the_reg_wildcard_from_the_grammar():
    text = (ROOT / "Snakefile").read_text()
    constraint = re.search(r"^\s+reg=(.+),$", text, re.M)
    assert constraint and constraint.group(1).strip() == "REGULARISER_NAME", "no second grammar for {reg}"
    assert "from editharm.regularize import NAME_PATTERN as REGULARISER_NAME" in (ROOT / "rules" / "common.smk").read_text()


# ---------------------------------------------------------------- the rule files


def _rules_by_file() -> dict[str, str]:
    found = {}
    for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        for rule in re.findall(r"^rule (\w+):", path.read_text(), re.M):
            assert rule not in found, f"rule {rule} defined twice"
            found[rule] = str(path.relative_to(ROOT))
    return found


def _readme_table() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Rules and their files", 1)[1].split("\n### ", 1)[0]
    table = {}
    for rules, file in re.findall(r"^\| (`.+`) \| `([^`]+)` \|$", section, re.M):
        for rule in re.findall(r"`(\w+)`", rules):
            table[rule] = file
    return table


def test_the_readme_names_the_file_of_every_rule():
    assert _readme_table() == _rules_by_file()


def test_every_rule_file_is_included_and_described():
    snakefile = (ROOT / "Snakefile").read_text()
    readme = (ROOT / "README.md").read_text().split("### Rules and their files", 1)[1].split("\n### ", 1)[0]
    for path in sorted((ROOT / "rules").glob("*.smk")):
        name = f"rules/{path.name}"
        assert f'include: "{name}"' in snakefile, name
        assert f"- `{name}`" in readme, name
