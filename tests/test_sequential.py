"""Sequential segments: checkpoints reproduce the edited model bit for bit, NaN stops the run,
an interrupted segment resumes from its partial save."""

import types
from dataclasses import dataclass

import pytest
import torch

from editharm.checkpoint import NonFiniteWeightsError, load_checkpoint, write_tensors
from editharm.methods.base import EditContext, WeightUpdate
from editharm.models import layout_for, random_model
from editharm.requests import EditRequest
from editharm.sequential import SegmentSpec, run_segment


@dataclass
class _Hparams:
    scale: float = 0.01


def _fake_method(calls, fail_at=None, value=None):
    def apply(model, tokenizer, requests, hparams, context):
        calls.append(requests[0].case_id)
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt("simulated interruption")
        layout = context.layout
        name = layout.down_weight_name(1)
        shape = model.get_parameter(name).shape
        gen = torch.Generator().manual_seed(len(calls))
        delta = torch.randn(shape, generator=gen) * hparams.scale if value is None else torch.full(shape, value)
        return WeightUpdate({name: delta}, info={"steps": 1})

    return types.SimpleNamespace(NAME="fake", Hparams=_Hparams, SUPPORTS_BATCH=False, EDITS_WEIGHTS=True, apply=apply)


def _requests(k):
    return [EditRequest(case_id=str(i), subject=f"S{i}", prompt="{} is in", target_new="Paris", target_true="Rome")
            for i in range(k)]


def _run(tmp_path, method, k=4, resume_every=25, reg="none"):
    model, tok = random_model("llama", seed=0, hidden=32, layers=2, heads=2)
    ctx = EditContext(layout=layout_for(model), covariance=lambda layer: None)
    spec = SegmentSpec(requests=_requests(k), first_index=0, regulariser=reg, seed=0, resume_every=resume_every)
    out = tmp_path / "n4"
    run_segment(model, tok, method, _Hparams(), ctx, spec, {}, out / "checkpoint.safetensors", out / "checkpoint.json",
                out / "edit_log.jsonl")
    return model, out


def test_checkpoint_reloads_bit_exact(tmp_path):
    edited, out = _run(tmp_path, _fake_method([]))
    tensors, _, meta = load_checkpoint(out / "checkpoint.safetensors", out / "checkpoint.json")
    fresh, _ = random_model("llama", seed=0, hidden=32, layers=2, heads=2)
    write_tensors(fresh, tensors)
    for name, param in edited.named_parameters():
        assert torch.equal(param, fresh.get_parameter(name)), name
    assert meta["edits_total"] == 4 and meta["touched_tensors"] == ["model.layers.1.mlp.down_proj.weight"]
    assert "torch" in meta["versions"]


def test_nan_update_stops_loudly_and_saves_nothing(tmp_path):
    with pytest.raises(NonFiniteWeightsError, match="model.layers.1.mlp.down_proj.weight"):
        _run(tmp_path, _fake_method([], value=float("nan")))
    assert not (tmp_path / "n4" / "checkpoint.safetensors").exists()


def test_interrupted_segment_resumes_where_it_stopped(tmp_path):
    calls = []
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, _fake_method(calls, fail_at=4), resume_every=1)
    assert calls == ["0", "1", "2", "3"]
    resumed_calls = []
    # A fresh method whose n-th call reproduces the same delta as the n-th call of an uninterrupted run.
    method = _fake_method(resumed_calls)
    resumed_calls.extend(["0", "1", "2"])  # generator seeds continue from the call count
    resumed, out = _run(tmp_path, method, resume_every=1)
    assert resumed_calls == ["0", "1", "2", "3"], "only the unfinished operation runs again"
    straight, _ = _run(tmp_path / "straight", _fake_method([]))
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(resumed.get_parameter(name), straight.get_parameter(name))
    assert not (tmp_path / "n4.partial.safetensors").exists(), "the partial save goes once the checkpoint exists"
