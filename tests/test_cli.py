"""The `editharm` command: bad arguments get the config validation's messages; edit -> export ->
score on the tiny model gives the same scores whether the edit is scored as a checkpoint or
as the exported Hugging Face folder."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from editharm.cli import main
from editharm.config import ConfigError, validate_config
from editharm.io import write_jsonl
from editharm.models import fetch_model
from editharm.requests import EditRequest

ROOT = Path(__file__).resolve().parents[1]
ROME = {"layer": 1, "v_num_grad_steps": 4, "v_lr": 0.5, "v_weight_decay": 0.5, "clamp_norm_factor": 4.0,
        "kl_factor": 0.0625, "mom2_adjustment": False, "context_template_length_params": [[4, 3]]}
SST2 = "sentence\tlabel\n" + "".join(f"review {i} was {'good' if i % 2 else 'bad'} . \t{i % 2}\n" for i in range(12))


def _config_message(mutate) -> str:
    """The message validate_config gives for the repository config changed by `mutate`."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    mutate(config)
    with pytest.raises(ConfigError) as caught:
        validate_config(config)
    return str(caught.value)


def _cli_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("bad", ["rect", "rect-140", "gauss-10"])
def test_bad_regulariser_gets_the_config_message(capsys, bad):
    def mutate(config):
        config["experiments"]["regularisers"]["regularisers"] = [bad]

    err = _cli_error(capsys, ["edit", "--model", "m", "--method", "rome", "--requests", "r", "--out", "o",
                              "--regulariser", bad])
    reason = err.split("argument --regulariser: ", 1)[1].strip()
    assert reason and reason in _config_message(mutate)


def test_bad_method_and_task_get_the_config_message(capsys):
    err = _cli_error(capsys, ["edit", "--model", "m", "--method", "romee", "--requests", "r", "--out", "o"])
    reason = err.split("argument --method: ", 1)[1].strip()
    assert "unknown editing method 'romee'" in reason

    def mutate(config):
        config["methods"]["romee"] = {"hparams_dir": "configs/methods/rome"}

    assert reason in _config_message(mutate)
    err = _cli_error(capsys, ["score", "--model", "m", "--task", "sst3"])
    reason = err.split("argument --task: ", 1)[1].strip()

    def mutate_task(config):
        config["tasks"]["sst3"] = {"n": 1}

    assert "sst3" in reason and reason in _config_message(mutate_task)
    assert "less than the minimum of 1" in _cli_error(capsys, ["score", "--model", "m", "--task", "sst2", "--n", "0"])


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("cli")
    fetch_model({"kind": "random", "family": "llama", "seed": 0, "dims": {"hidden": 32, "layers": 3, "heads": 4}},
                root / "model")
    (root / "mirror" / "sst2").mkdir(parents=True)
    (root / "mirror" / "sst2" / "dev.tsv").write_text(SST2)
    config = {"mirror_dir": "mirror", "task_seed": 7, "tasks": {"sst2": {"n": 8}},
              "datasets": {"sst2": {"format": "sst2_glue_tsv", "files": {"dev.tsv": {
                  "mirror": "sst2/dev.tsv", "sha256": hashlib.sha256(SST2.encode()).hexdigest()}}}}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    (root / "rome.yaml").write_text(yaml.safe_dump(ROME))
    requests = [EditRequest("0", "Danielle Darrieux", "The mother tongue of {} is", "English", "French",
                            paraphrases=("Danielle Darrieux speaks",)),
                EditRequest("1", "Paris", "{} is the capital of", "Italy", "France")]
    write_jsonl(root / "requests.jsonl", [r.to_json() for r in requests])
    return root


def _run(capsys, argv) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_edit_export_score_round_trip(capsys, tiny_setup):
    root = tiny_setup
    common = ["--config", str(root / "config.yaml"), "--cache-dir", str(root / "cache")]
    report = _run(capsys, ["edit", "--model", str(root / "model"), "--method", "rome", "--hparams", str(root / "rome.yaml"),
                           "--requests", str(root / "requests.jsonl"), "--regulariser", "rect-50", "--out",
                           str(root / "edit"), "--export", str(root / "hf"), *common])
    assert report["edits"] == 2 and report["editing"]["n"] == 2 and report["editing"]["n_counterfact"] == 2
    assert set(report["relative_frobenius"]) == {"model.layers.1.mlp.down_proj.weight"}
    assert all((root / "edit" / f).exists() for f in ("checkpoint.safetensors", "checkpoint.json", "edit_log.jsonl",
                                                      "editing.json", "weights.json"))

    _run(capsys, ["export", "--checkpoint", str(root / "edit"), "--out", str(root / "hf2")])
    a = AutoModelForCausalLM.from_pretrained(root / "hf").state_dict()
    b = AutoModelForCausalLM.from_pretrained(root / "hf2").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    as_export = _run(capsys, ["score", "--model", str(root / "hf"), "--task", "sst2", *common])
    as_checkpoint = _run(capsys, ["score", "--model", str(root / "model"), "--checkpoint", str(root / "edit"),
                                  "--task", "sst2", "--out", str(root / "score.json"), *common])
    base = _run(capsys, ["score", "--model", str(root / "model"), "--task", "sst2", *common])
    assert as_export["status"] == "ok" and as_export["n"] == 8            # n from the config's tasks.sst2.n
    assert as_export["metrics"] == as_checkpoint["metrics"]
    assert json.loads((root / "score.json").read_text())["task_seed"] == 7

    err_code = main(["export", "--checkpoint", str(root / "edit"), "--out", str(root / "hf")])
    assert err_code == 2 and "exists" in capsys.readouterr().err
    assert base["n"] == 8


def test_console_script_is_declared_and_runs():
    scripts = (ROOT / "pyproject.toml").read_text().split("[project.scripts]", 1)[1]
    assert 'editharm = "editharm.cli:main"' in scripts.split("[", 1)[0]
    done = subprocess.run([sys.executable, "-m", "editharm.cli", "export", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--checkpoint" in done.stdout


def test_export_by_chain_values_reads_the_workflow_layout(capsys, tiny_setup, tmp_path):
    import shutil

    root = tiny_setup
    work = tmp_path / "work"
    shutil.copytree(root / "model", work / "cache" / "models" / "tiny")
    (work / "config.yaml").write_text(yaml.safe_dump({"results_dir": "results", "cache_dir": "cache"}))
    chain = work / "results" / "edits" / "tiny" / "toy" / "rome" / "none" / "seed0" / "n2"
    _run(capsys, ["edit", "--model", str(work / "cache" / "models" / "tiny"), "--method", "rome",
                  "--hparams", str(root / "rome.yaml"), "--requests", str(root / "requests.jsonl"), "--out", str(chain),
                  "--export", str(tmp_path / "direct"), "--no-metrics", "--config", str(root / "config.yaml"),
                  "--cache-dir", str(root / "cache")])
    _run(capsys, ["export", "--chain", "tiny", "toy", "rome", "none", "0", "2", "--config", str(work / "config.yaml"),
                  "--out", str(tmp_path / "by_chain")])
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "direct").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "by_chain").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SystemExit, match="argument --chain: .*regulariser 'rect'"):
        main(["export", "--chain", "tiny", "toy", "rome", "rect", "0", "2", "--config", str(work / "config.yaml"),
              "--out", str(tmp_path / "x")])
    assert main(["export", "--chain", "tiny", "toy", "rome", "none", "0", "3", "--config", str(work / "config.yaml"),
                 "--out", str(tmp_path / "y")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
