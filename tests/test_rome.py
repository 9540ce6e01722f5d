"""ROME on tiny random models: the edited layer maps k* to v*, the update is rank one and C-optimal."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from editharm.methods import load_hparams, load_method
from editharm.methods import rome
from editharm.methods.base import EditContext, WeightUpdate
from editharm.methods.covariance import collect_second_moments
from editharm.methods.values import fill, tokenize_at_subject
from editharm.nethook import capture
from editharm.models import facts_for, random_model
from editharm.requests import EditRequest

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "methods" / "rome"
REQUEST = EditRequest("7", "Danielle Darrieux", "The mother tongue of {} is", "English", "French")
CORPUS = [
    "The history of the region is long and its people speak many languages.",
    "Rivers, mountains and cities shape the economy of every country in the area.",
    "Scientists measured the temperature of the lake every morning for a year.",
] * 8


def _hparams(layer: int, mom2: bool) -> rome.Hparams:
    return rome.Hparams(layer=layer, v_num_grad_steps=5, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=4.0,
                        kl_factor=0.0625, mom2_adjustment=mom2, context_template_length_params=[[4, 5]])


@pytest.fixture(scope="module", params=["llama", "gpt2", "gpt_neox"])
def tiny(request):
    model, tok = random_model(request.param, seed=0, hidden=32, layers=3, heads=4)
    facts = facts_for(model)
    cov = collect_second_moments(model, tok, facts, [1], CORPUS, n_tokens=1500, seq_len=64, progress=False)
    return model, tok, facts, cov


def _layer_output(model, facts, layer, key, delta=None):
    """What the mlp_down projection outputs for `key`, optionally with `delta` ([out, in]) added."""
    module = model.get_submodule(facts.mlp_down.format(layer))
    weight = facts.linear_weight(module.weight.detach()).double()
    if delta is not None:
        weight = weight + delta.double()
    out = weight @ key.double()
    if getattr(module, "bias", None) is not None:
        out = out + module.bias.detach().double()
    return out


@pytest.mark.parametrize("mom2", [False, True])
def test_edited_layer_maps_key_to_value_with_rank_one_update(tiny, mom2):
    model, tok, facts, cov = tiny
    ctx = EditContext(facts=facts, covariance=lambda layer: cov[layer], seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    edit = rome.compute_rome(model, tok, REQUEST, _hparams(1, mom2), ctx)
    # apply() must leave the model as it found it.
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    mapped = _layer_output(model, facts, 1, edit.key, edit.delta)
    rel = (mapped - edit.value.double()).norm() / edit.value.double().norm()
    assert rel < 1e-4
    s = torch.linalg.svdvals(edit.delta.double())
    assert s[1] / s[0] < 1e-6
    # Constrained least squares (eq. 2): min tr(dW C dW^T) s.t. (W + dW) k* = v* is solved by
    # dW = r u^T / (u^T k*) with u = C^-1 k*, so dW's row space is u (k* itself without C).
    key = edit.key.double()
    u = torch.linalg.solve(cov[1].double(), key) if mom2 else key
    residual = edit.value.double() - _layer_output(model, facts, 1, edit.key)
    direction = edit.delta.double().T @ residual
    cos = direction @ u / (direction.norm() * u.norm())
    assert cos > 1 - 1e-6


def test_apply_returns_update_in_storage_layout(tiny):
    model, tok, facts, cov = tiny
    ctx = EditContext(facts=facts, covariance=lambda layer: cov[layer], seed=0)
    upd = rome.apply(model, tok, [REQUEST], _hparams(1, True), ctx)
    assert isinstance(upd, WeightUpdate)
    name = facts.down_weight_name(1)
    assert list(upd.deltas) == [name]
    param = model.get_parameter(name)
    assert upd.deltas[name].shape == param.shape and upd.deltas[name].dtype == torch.float32
    assert torch.isfinite(upd.deltas[name]).all()
    assert {"steps", "loss"} <= set(upd.info)
    assert 0 <= upd.info["steps"] <= 5
    # Context templates are generated once and kept for later edits.
    templates = ctx.state["context_templates"]
    rome.apply(model, tok, [REQUEST], _hparams(1, True), ctx)
    assert ctx.state["context_templates"] is templates


def test_edited_model_outputs_the_value_at_the_subject(tiny):
    """With only the plain prompt as template k* is the prompt's own key: after the update is
    added to the parameter (in its storage layout), a full forward pass must produce v* as
    the MLP output at the subject's last token."""
    model, tok, facts, cov = tiny
    hp = rome.Hparams(layer=1, v_num_grad_steps=4, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=4.0,
                      kl_factor=0.0625, mom2_adjustment=True, context_template_length_params=[])
    ctx = EditContext(facts=facts, covariance=lambda layer: cov[layer], seed=0)
    edit = rome.compute_rome(model, tok, REQUEST, hp, ctx)
    upd = rome.apply(model, tok, [REQUEST], hp, ctx)
    text, a, b = fill("{}", REQUEST.prompt, REQUEST.subject)
    ids, pos = tokenize_at_subject(tok, text, a, b)
    name = facts.down_weight_name(1)
    param = model.get_parameter(name)
    original = param.detach().clone()
    with torch.no_grad():
        param += upd.deltas[name]
    try:
        with capture(model, [facts.mlp_down.format(1)]) as rec, torch.no_grad():
            model(input_ids=torch.tensor([ids]))
        out = rec[facts.mlp_down.format(1)].output[0, pos]
    finally:
        with torch.no_grad():
            param.copy_(original)
    assert (out - edit.value).norm() / edit.value.norm() < 1e-4


def test_rank_one_update_by_hand():
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    k = torch.tensor([1.0, 1.0])
    v = torch.tensor([3.0, 0.0])
    c = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    d = rome.rank_one_update(w, None, k, v, c)
    # u = C^-1 k = [0.5, 1]; u.k = 1.5; r = v - Wk = [2, -2]
    want = torch.outer(torch.tensor([2.0, -2.0]), torch.tensor([0.5, 1.0])) / 1.5
    assert torch.allclose(d, want)
    assert torch.allclose((w + d) @ k, v, atol=1e-6)


def test_interface_and_stats_layers():
    mod = load_method("rome")
    assert mod.NAME == "rome" and mod.SUPPORTS_BATCH is False and mod.EDITS_WEIGHTS is True
    assert mod.stats_layers(_hparams(4, True), None) == [4]
    assert mod.stats_layers(_hparams(4, False), None) == []
    with pytest.raises(ValueError, match="one request"):
        mod.apply(None, None, [REQUEST, REQUEST], _hparams(1, False), None)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_hparams_files_load(path):
    hp = load_hparams(path, rome.Hparams)
    assert hp.layer >= 0 and hp.v_num_grad_steps > 0
