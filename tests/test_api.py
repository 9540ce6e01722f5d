"""The Python API: requests get the right metric style, and an Editor's edits, metrics and
statistics equal the workflow's own (jobs.layer_stats + jobs.edit_segment) bit for bit."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from editharm import api, jobs
from editharm.checkpoint import base_tensors, load_edited_model
from editharm.evaluate.editing import edit_metrics, locality_reference
from editharm.io import DataError, write_jsonl
from editharm.models import load_model

ROME = {"layer": 1, "v_num_grad_steps": 4, "v_lr": 0.5, "v_weight_decay": 0.5, "clamp_norm_factor": 4.0,
        "kl_factor": 0.0625, "mom2_adjustment": True, "context_template_length_params": [[4, 3]]}
CORPUS = " = Rivers = \n" + "\n".join(
    f" The river number {i} flows through the valley and the town of Example {i} , where people fish . "
    for i in range(40)) + "\n = Lakes = \n" + "\n".join(
    f" Lake {i} is deep and cold in winter ; its water is clear . " for i in range(40)) + "\n"
ZSRE_ROWS = [
    {"case_id": "a", "subject": "Danielle Darrieux", "prompt": "The mother tongue of Danielle Darrieux is",
     "target_new": "English", "target_true": "French", "paraphrases": ["Danielle Darrieux speaks"],
     "locality": [["nq question: who wrote hamlet", "Shakespeare"]]},
    {"case_id": "b", "subject": "Paris", "prompt": "{} is the capital of", "target_new": "Italy",
     "target_true": "France", "locality": [{"prompt": "nq question: the sky is", "target": "blue"}]},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("api")
    mirror = root / "mirror"
    (mirror / "corpus").mkdir(parents=True)
    (mirror / "corpus" / "valid.txt").write_text(CORPUS)
    sha = hashlib.sha256(CORPUS.encode()).hexdigest()
    config = {
        "mirror_dir": str(mirror),
        "models": {"tiny": {"family": "llama", "source": {"kind": "random", "family": "llama", "seed": 0,
                                                          "dims": {"hidden": 32, "layers": 3, "heads": 4}}}},
        "datasets": {"tinytext": {"format": "wikitext_tokens",
                                  "files": {"valid.txt": {"mirror": "corpus/valid.txt", "sha256": sha}}}},
        "covariance": {"corpus": "tinytext", "tokens": 1500, "seq_len": 64},
    }
    return config, root / "cache"


def _workflow_edit(tmp_path, model_dir, requests, method, hparams, regulariser, seed, batch_size, stats_paths):
    """The workflow's edit_segment job over all `requests` (one segment from the base model), reloaded."""
    hp = tmp_path / f"{method}.yaml"
    hp.write_text(json.dumps(hparams))
    editset = tmp_path / "editset.jsonl"
    write_jsonl(editset, [r.to_json() for r in requests])
    out = tmp_path / f"n{len(requests)}"
    jobs.edit_segment(model_dir=model_dir, editset=str(editset), n_prev=0, n=len(requests), method_name=method,
                      module=None, hparams_path=str(hp), regulariser=regulariser, seed=seed, batch_size=batch_size,
                      stats_paths=stats_paths, prev_tensors=None, prev_meta=None, trained_dir=None,
                      out_tensors=str(out / "checkpoint.safetensors"), out_meta=str(out / "checkpoint.json"),
                      out_log=str(out / "edit_log.jsonl"))
    return load_edited_model(model_dir, str(out / "checkpoint.safetensors"), str(out / "checkpoint.json"))[0]


def test_dicts_get_the_style_of_their_kind_and_a_template():
    requests = api.load_requests(ZSRE_ROWS, kind="zsre")
    assert [r.style for r in requests] == ["zsre", "zsre"]
    assert requests[0].prompt == "The mother tongue of {} is"          # filled prompt -> template
    assert requests[0].locality[0].target == "Shakespeare"
    assert api.load_requests(ZSRE_ROWS, kind="counterfact")[1].style == "counterfact"
    with pytest.raises(ValueError, match="kind='counterfact' or kind='zsre'"):
        api.load_requests(ZSRE_ROWS)
    with pytest.raises(DataError, match="request 0 .*style 'zsre' differs from kind='counterfact'"):
        api.load_requests([{**ZSRE_ROWS[0], "style": "zsre"}], kind="counterfact")
    with pytest.raises(DataError, match="request 0 .*'prompt'.*does not occur"):
        api.load_requests([{**ZSRE_ROWS[0], "subject": "Nobody"}], kind="zsre")


def test_dataset_files_give_edit_requests_with_the_format_style(tmp_path):
    raw = [{"subject": "Paris", "src": "Paris is the capital of?", "answers": ["France"], "alt": " Italy",
            "rephrase": "What country has Paris as capital?", "loc": "nq question: who wrote hamlet",
            "loc_ans": "Shakespeare"}]
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps(raw))
    (request,) = api.load_requests(path, format="zsre_mend")
    assert (request.style, request.prompt, request.target_new, request.target_true) == (
        "zsre", "{} is the capital of?", "Italy", "France")
    with pytest.raises(ValueError, match="needs format=, one of .*zsre_mend"):
        api.load_requests(path)
    prepared = tmp_path / "set.jsonl"
    write_jsonl(prepared, [request.to_json()])
    assert api.load_requests(prepared) == [request]


def test_configured_model_is_fetched_once_into_the_cache(setup):
    config, cache = setup
    folder = api.model_folder("tiny", config=config, cache_dir=cache)
    assert folder == cache / "models" / "tiny" and (folder / "config.json").exists()
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert api.model_folder("tiny", config=config, cache_dir=cache) == folder
    assert (folder / "config.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="configured: tiny"):
        api.model_folder("nonesuch", config=config, cache_dir=cache)


def test_editor_equals_the_workflow_bit_for_bit(setup, tmp_path):
    config, cache = setup
    model, tok = api.load_model("tiny", config=config, cache_dir=cache)
    requests = api.load_requests(ZSRE_ROWS, kind="zsre")
    editor = api.Editor(model, tok, "rome", ROME, regulariser="random-40", seed=3, config=config, cache_dir=cache)
    timings = editor.prepare()
    stats_file = cache / "stats" / "tiny" / "tinytext-1500" / "layer1.safetensors"
    assert stats_file.exists() and "context_templates_seconds" in timings
    templates = editor.context.state["context_templates"]
    log = editor.edit(requests[:1]) + editor.edit(requests[1:])       # sequential, in two calls
    assert editor.context.state["context_templates"] is templates    # prepare()'s templates were reused
    assert [row["edit_index"] for row in log] == [0, 1]
    assert all(row["immediate_success"] is not None for row in log)

    # The workflow on the same inputs: its layer_stats rule, then one edit_segment of both requests.
    model_dir = str(cache / "models" / "tiny")
    own_stats = tmp_path / "layer1.safetensors"
    jobs.layer_stats(model_dir, str(cache / "data" / "prepared" / "tinytext.jsonl"), 1, 1500, 64, str(own_stats))
    pipeline = _workflow_edit(tmp_path, model_dir, requests, "rome", ROME, "random-40", 3, 1, {1: str(own_stats)})
    changed = 0
    for name, param in pipeline.named_parameters():
        assert torch.equal(param, editor.model.get_parameter(name)), name
        changed += not torch.equal(param, load_model(model_dir)[0].get_parameter(name)) if "down_proj" in name else 0
    assert changed == 1

    # Metrics: the workflow's, with zsRE locality against the unedited model.
    base, _ = load_model(model_dir)
    reference = locality_reference(base, tok, requests, progress=False)
    rows, summary = editor.evaluate()
    want_rows, want = edit_metrics(pipeline, tok, requests, reference=reference, progress=False)
    assert summary == want and rows == want_rows and summary["locality"] is not None

    # Update statistics: random-40 keeps exactly 40% of the elements of each update; two updates touch at most 80%.
    (name, stats), = editor.weight_stats().items()
    assert name == "model.layers.1.mlp.down_proj.weight"
    numel = model.get_parameter(name).numel()
    assert 0 < stats["changed_elements"] <= round(0.4 * numel) * 2
    assert stats["frobenius"] == pytest.approx(float((pipeline.get_parameter(name) - base.get_parameter(name)).norm()), rel=1e-5)

    # A second Editor reuses the cached statistics instead of recomputing them.
    stamp = stats_file.stat().st_mtime_ns
    api.Editor(*api.load_model("tiny", config=config, cache_dir=cache), "rome", ROME, config=config,
               cache_dir=cache).prepare()
    assert stats_file.stat().st_mtime_ns == stamp


def test_editor_refuses_what_the_config_refuses(setup):
    config, cache = setup
    model, tok = api.load_model("tiny", config=config, cache_dir=cache)
    with pytest.raises(ValueError, match="regulariser 'rect'"):
        api.Editor(model, tok, "rome", ROME, regulariser="rect", config=config, cache_dir=cache)
    with pytest.raises(ValueError, match="cannot apply to method 'grace'"):
        api.Editor(model, tok, "grace", {"layer": 1}, regulariser="rect-40", config=config, cache_dir=cache)
    with pytest.raises(ValueError, match="unknown editing method 'romee'"):
        api.Editor(model, tok, "romee", config=config, cache_dir=cache)
    with pytest.raises(ValueError, match="unknown rome hyperparameter.*layers"):
        api.Editor(model, tok, "rome", {**ROME, "layers": [1]}, config=config, cache_dir=cache)
    with pytest.raises(ValueError, match="trained_dir="):
        api.Editor(model, tok, "mend", config=config, cache_dir=cache)


def test_batch_editing_with_statistics_of_several_layers_equals_the_workflow(setup, tmp_path):
    """MEMIT, two requests in one operation: prepare() computes both layers' statistics in one
    corpus pass, and they equal the workflow's one-layer-per-job statistics exactly."""
    from editharm.methods.covariance import load_second_moment

    config, cache = setup
    memit = {"layers": [0, 1], "v_num_grad_steps": 3, "v_lr": 0.5, "v_weight_decay": 0.5, "clamp_norm_factor": 4.0,
             "kl_factor": 0.0625, "mom2_adjustment": True, "mom2_update_weight": 100.0,
             "context_template_length_params": [[4, 2]]}
    model, tok = api.load_model("tiny", config=config, cache_dir=cache)
    requests = api.load_requests(ZSRE_ROWS, kind="counterfact")
    editor = api.Editor(model, tok, "memit", memit, regulariser="rect-50", batch_size=2, config=config, cache_dir=cache)
    log = editor.edit(requests)
    assert [row["operation_seconds"] for row in log][0] == log[1]["operation_seconds"]   # one operation

    model_dir = str(cache / "models" / "tiny")
    corpus = str(cache / "data" / "prepared" / "tinytext.jsonl")
    stats = {}
    for layer in (0, 1):
        stats[layer] = str(tmp_path / f"layer{layer}.safetensors")
        jobs.layer_stats(model_dir, corpus, layer, 1500, 64, stats[layer])
        cached = cache / "stats" / "tiny" / "tinytext-1500" / f"layer{layer}.safetensors"
        assert torch.equal(load_second_moment(cached)[0], load_second_moment(stats[layer])[0])
    pipeline = _workflow_edit(tmp_path, model_dir, requests, "memit", memit, "rect-50", 0, 2, stats)
    for name, param in pipeline.named_parameters():
        assert torch.equal(param, editor.model.get_parameter(name)), name
    assert sorted(editor.weight_stats()) == ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    with pytest.raises(ValueError, match="case_id values must be distinct"):
        editor.edit(requests[:1])


def test_hub_ids_are_fetched_by_the_workflow_fetcher_pinned_to_their_revision(monkeypatch, tmp_path):
    calls = []

    def fake_fetch(spec, manifest):
        calls.append(spec)
        Path(manifest).parent.mkdir(parents=True)
        Path(manifest).write_text("{}")

    monkeypatch.setattr(jobs, "fetch_model", fake_fetch)
    folder = api.model_folder("HuggingFaceTB/SmolLM2-135M@12fd25f", config={}, cache_dir=tmp_path)
    assert folder == tmp_path / "models" / "hub--HuggingFaceTB--SmolLM2-135M--12fd25f"
    assert calls == [{"kind": "hub", "hub_id": "HuggingFaceTB/SmolLM2-135M", "revision": "12fd25f"}]
    api.model_folder("HuggingFaceTB/SmolLM2-135M@12fd25f", config={}, cache_dir=tmp_path)
    assert len(calls) == 1                                         # fetched once
    api.model_folder("HuggingFaceTB/SmolLM2-135M", config={}, cache_dir=tmp_path)
    assert calls[-1] == {"kind": "hub", "hub_id": "HuggingFaceTB/SmolLM2-135M"}


def test_state_based_edits_are_scored_through_attach_and_zsre_locality_uses_the_unedited_model(setup):
    """GRACE changes no weight: evaluate() scores the model with its codebook attached, and the
    zsRE locality reference (recorded while the codebook is detached) equals the base model's."""
    from editharm.methods import grace

    config, cache = setup
    model, tok = api.load_model("tiny", config=config, cache_dir=cache)
    requests = api.load_requests(ZSRE_ROWS, kind="zsre")
    base, _ = load_model(cache / "models" / "tiny")
    editor = api.Editor(model, tok, "grace", {"layer": 1, "n_iter": 20, "edit_lr": 1.0}, config=config, cache_dir=cache)
    editor.edit(requests[:1], immediate_success=False)
    editor.edit(requests[1:], immediate_success=False)        # b's reference is taken now, a's codebook detached
    assert editor._reference == locality_reference(base, tok, requests, progress=False)
    rows, summary = editor.evaluate()
    # The same scores from a separate copy of the base model with the final codebook attached:
    # the reference passes left the Editor's model with its codebook in place.
    fresh, _ = load_model(cache / "models" / "tiny")
    fresh = grace.attach(fresh, tok, editor.context.state, editor.hparams, editor.context)
    assert edit_metrics(fresh, tok, requests, reference=editor._reference, progress=False) == (rows, summary)
    assert editor.evaluate() == (rows, summary)
    plain = edit_metrics(base, tok, requests, reference=editor._reference, progress=False)[1]
    assert summary != plain                                      # the codebook changes the answers
    assert all(torch.equal(p, base.get_parameter(n)) for n, p in model.named_parameters())   # no weight changed


def test_base_tensors_are_read_from_the_model_folder_without_building_a_model(setup):
    config, cache = setup
    folder = api.model_folder("tiny", config=config, cache_dir=cache)
    name = "model.layers.1.mlp.down_proj.weight"
    got = base_tensors(folder, [name])
    assert list(got) == [name] and got[name].dtype == torch.float32
    assert torch.equal(got[name], load_model(folder)[0].get_parameter(name).float())
    with pytest.raises(KeyError, match=r"lacks tensors \['model.layers.9.mlp.down_proj.weight'\]"):
        base_tensors(folder, [name, "model.layers.9.mlp.down_proj.weight"])


def test_mirror_is_the_configs_mirror_dir_relative_to_the_config_file(tmp_path):
    config = tmp_path / "conf" / "config.yaml"
    config.parent.mkdir()
    config.write_text("mirror_dir: ../data\n")
    assert api.mirror_dir(config=config).resolve() == (tmp_path / "data").resolve()
    assert api.mirror_file("zsre/x.json", config=config).resolve() == (tmp_path / "data" / "zsre" / "x.json").resolve()
    # An explicit mirror wins over the config's, and no mirror at all is a clear error, not ../shared.
    assert api.mirror_file("zsre/x.json", tmp_path / "other", config=config) == tmp_path / "other" / "zsre" / "x.json"
    assert api.mirror_dir(config={}) is None
    with pytest.raises(ValueError, match="sets no mirror_dir; pass the mirror folder"):
        api.mirror_file("zsre/x.json", config={})
