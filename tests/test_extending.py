"""A new method is one module, one hyperparameter file and its name in config: the DAG
schedules its edits, scores and statistics with no change to rules or scripts."""

import json
import os
import subprocess
import sys
import textwrap

import yaml

from test_workflow import ROOT, _planned_jobs

TOY_METHOD = '''
"""A toy editor: adds scale * e_0 e_0^T to one MLP down projection."""
from dataclasses import dataclass

import torch

from editharm.methods.base import WeightUpdate

NAME = "toy"
SUPPORTS_BATCH = False
EDITS_WEIGHTS = True


@dataclass
class Hparams:
    layer: int
    scale: float


def apply(model, tokenizer, requests, hparams, context):
    name = context.layout.down_weight_name(hparams.layer)
    delta = torch.zeros_like(model.get_parameter(name))
    delta[0, 0] = hparams.scale
    return WeightUpdate({name: delta})
'''


def test_a_toy_method_in_its_own_module_is_scheduled(tmp_path):
    (tmp_path / "toy_method.py").write_text(textwrap.dedent(TOY_METHOD))
    (tmp_path / "hparams").mkdir()
    (tmp_path / "hparams" / "llama.yaml").write_text("layer: 1\nscale: 0.5\n")
    config = yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())
    config["mirror_dir"] = str(ROOT / "tests" / "fixtures" / "mirror")
    config["models"]["tiny-llama"].pop("hparams")
    config["methods"] = {"toy": {"hparams_dir": str(tmp_path / "hparams"), "module": "toy_method"}}
    config["experiments"]["regularisers"]["methods"] = ["toy"]
    config["tasks"] = {"sst2": {"n": 5}}  # one task, so each checkpoint has one score job
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src")])}
    result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
                             str(tmp_path), "--configfile", str(tmp_path / "config.yaml"), "--cores", "1", "-n"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = _planned_jobs(result.stdout + result.stderr)
    # 2 regularisers x 2 checkpoints; the toy method needs no covariance statistics
    for rule in ("edit_segment", "edit_metrics", "weight_stats", "score_task"):
        assert jobs.get(rule) == 4, (rule, jobs)
    assert "layer_stats" not in jobs
    # The method's code (its module and the editharm code it imports) is an input of its edit
    # jobs, as a code fingerprint (editharm/codehash.py).
    code = "cache-ci/code/edit_segment/method=toy.json"
    assert code in result.stdout, "the method's code is an input of its edit jobs"
    files = json.loads((tmp_path / code).read_text())["files"]
    assert {"toy_method", "editharm.methods.base"} <= set(files), files
