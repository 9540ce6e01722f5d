"""Export: a workflow checkpoint becomes a Hugging Face folder that plain transformers loads
with the logits of the pipeline's edited model; state-based methods are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from editharm import api, jobs
from editharm.checkpoint import load_edited_model
from editharm.export import NotExportableError, export_checkpoint, export_run
from editharm.io import write_jsonl
from editharm.models import fetch_model
from editharm.requests import EditRequest

ROME = {"layer": 1, "v_num_grad_steps": 4, "v_lr": 0.5, "v_weight_decay": 0.5, "clamp_norm_factor": 4.0,
        "kl_factor": 0.0625, "mom2_adjustment": False, "context_template_length_params": [[4, 3]]}
REQUESTS = [EditRequest("0", "Danielle Darrieux", "The mother tongue of {} is", "English", "French"),
            EditRequest("1", "Paris", "{} is the capital of", "Italy", "France")]
TEXT = ["The mother tongue of Danielle Darrieux is", "Paris is the capital of"]


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory, one_torch_thread):
    """A workflow-shaped run folder: cache/models/tiny and results/edits/tiny/toy/rome/none/seed0/n2,
    made by the edit_segment job with the relative paths snakemake gives it."""
    root = tmp_path_factory.mktemp("workflow")
    fetch_model({"kind": "random", "family": "llama", "seed": 0, "dims": {"hidden": 32, "layers": 3, "heads": 4}},
                root / "cache" / "models" / "tiny")
    (root / "rome.yaml").write_text(json.dumps(ROME))
    write_jsonl(root / "editset.jsonl", [r.to_json() for r in REQUESTS])
    config = {"results_dir": str(root / "results"), "cache_dir": str(root / "cache"), "methods": {"rome": {}}}
    out = Path("results/edits/tiny/toy/rome/none/seed0/n2")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        jobs.edit_segment(model_dir="cache/models/tiny", editset="editset.jsonl", n_prev=0, n=2, method_name="rome",
                          module=None, hparams_path="rome.yaml", regulariser="none", seed=0, batch_size=1, stats_paths={},
                          prev_tensors=None, prev_meta=None, trained_dir=None,
                          out_tensors=str(out / "checkpoint.safetensors"), out_meta=str(out / "checkpoint.json"),
                          out_log=str(out / "edit_log.jsonl"))
    return root, config, root / out


def _logits(model, tokenizer):
    batch = tokenizer(TEXT, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def test_exported_folder_loads_with_transformers_and_gives_the_pipeline_logits(workflow_run, tmp_path):
    root, _, checkpoint = workflow_run
    folder = export_checkpoint(checkpoint, tmp_path / "hf")   # base model found from the results layout
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    edited, tok = load_edited_model(str(root / "cache/models/tiny"), str(checkpoint / "checkpoint.safetensors"),
                                         str(checkpoint / "checkpoint.json"))
    base, _ = load_edited_model(str(root / "cache/models/tiny"), None, None)
    assert torch.equal(_logits(loaded, tokenizer), _logits(edited, tok))
    assert not torch.equal(_logits(base, tok), _logits(edited, tok))   # the export holds the edit, not the base
    manifest = json.loads((folder / "editharm_export.json").read_text())
    assert manifest["method"] == "rome" and manifest["edits_total"] == 2
    with pytest.raises(FileExistsError, match="exists"):
        export_checkpoint(checkpoint, folder)


def test_export_by_chain_values_equals_export_by_path(workflow_run, tmp_path):
    root, config, checkpoint = workflow_run
    by_chain = export_run(config, "tiny", "toy", "rome", "none", 0, 2, tmp_path / "a")
    by_path = export_checkpoint(checkpoint, tmp_path / "b")
    a = AutoModelForCausalLM.from_pretrained(by_chain).state_dict()
    b = AutoModelForCausalLM.from_pretrained(by_path).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(FileNotFoundError, match="no checkpoint .*n3"):
        export_run(config, "tiny", "toy", "rome", "none", 0, 3, tmp_path / "c")


def test_state_based_methods_are_refused_with_the_reason(workflow_run, tmp_path):
    root, config, _ = workflow_run
    model, tok = api.load_model(root / "cache/models/tiny", cache_dir=root / "cache")
    editor = api.Editor(model, tok, "grace", {"layer": 1, "n_iter": 3}, config=config, cache_dir=root / "cache")
    editor.edit(REQUESTS[:1], immediate_success=False)
    saved = editor.save(tmp_path / "grace")
    with pytest.raises(NotExportableError, match="'grace' keeps its edits as method state"):
        export_checkpoint(saved, tmp_path / "out")
    with pytest.raises(NotExportableError, match="codebook"):
        editor.export(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_editor_export_equals_checkpoint_export(workflow_run, tmp_path):
    root, config, _ = workflow_run
    model, tok = api.load_model(root / "cache/models/tiny", cache_dir=root / "cache")
    editor = api.Editor(model, tok, "rome", ROME, config=config, cache_dir=root / "cache")
    editor.edit(REQUESTS, immediate_success=False)
    direct = editor.export(tmp_path / "direct")
    via_checkpoint = export_checkpoint(editor.save(tmp_path / "ckpt"), tmp_path / "via")
    a = AutoModelForCausalLM.from_pretrained(direct).state_dict()
    b = AutoModelForCausalLM.from_pretrained(via_checkpoint).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lm_eval_hf_backend_reads_the_export(workflow_run, tmp_path):
    """lm-evaluation-harness's `hf` model (not a dependency of editharm: runs where it is installed)
    scores the exported folder with the edited model's log-likelihoods."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    root, _, checkpoint = workflow_run
    folder = export_checkpoint(checkpoint, tmp_path / "hf")
    lm = HFLM(pretrained=str(folder), device="cpu", batch_size=1, dtype="float32")
    context, continuation = "The mother tongue of Danielle Darrieux is", " English"
    (logprob, _), = lm.loglikelihood([Instance("loglikelihood", {}, (context, continuation), 0)], disable_tqdm=True)
    edited, tok = load_edited_model(str(root / "cache/models/tiny"), str(checkpoint / "checkpoint.safetensors"),
                                         str(checkpoint / "checkpoint.json"))
    ids = tok(context + continuation, return_tensors="pt").input_ids
    n_context = len(tok(context).input_ids)
    with torch.no_grad():
        logits = edited(ids).logits.log_softmax(-1)[0]
    want = sum(float(logits[i - 1, ids[0, i]]) for i in range(n_context, ids.shape[1]))
    assert logprob == pytest.approx(want, abs=1e-4)
