"""ROME on tiny random models: the edited layer maps the plain prompt's key k0 to v*, the update is rank one
with row space C^-1 k* (k* the template-averaged key), and equals kmeng01/rome's formula."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from editharm.methods import load_hparams, load_method
from editharm.methods import rome
from editharm.methods.base import EditContext, WeightUpdate
from editharm.methods.covariance import collect_second_moments
from editharm.methods.prompts import fill, tokenize_at_subject
from editharm.nethook import capture
from editharm.models import layout_for, random_model
from editharm.requests import EditRequest

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "methods" / "rome"
REQUEST = EditRequest("7", "Danielle Darrieux", "The mother tongue of {} is", "English", "French")
CORPUS = [
    "The history of the region is long and its people speak many languages.",
    "Rivers, mountains and cities shape the economy of every country in the area.",
    "Scientists measured the temperature of the lake every morning for a year.",
] * 8


def _hparams(layer: int, mom2: bool) -> rome.Hparams:
    # The default context templates ([[5, 10], [10, 10]]: 21 with the plain prompt), as users run
    # ROME: with templates switched off k* = k0 and a wrong choice of key would go unnoticed.
    return rome.Hparams(layer=layer, v_num_grad_steps=5, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=4.0,
                        kl_factor=0.0625, mom2_adjustment=mom2)


@pytest.fixture(scope="module", params=["llama", "gpt2", "gpt_neox", "gemma3"])
def tiny(request):
    model, tok = random_model(request.param, seed=0, hidden=32, layers=3, heads=4)
    layout = layout_for(model)
    cov = collect_second_moments(model, tok, layout, [1], CORPUS, n_tokens=1500, seq_len=64, progress=False)
    return model, tok, layout, cov


def _layer_output(model, layout, layer, key, delta=None):
    """What the mlp_down projection outputs for `key`, optionally with `delta` ([out, in]) added."""
    module = model.get_submodule(layout.mlp_down.format(layer))
    weight = layout.linear_weight(module.weight.detach()).double()
    if delta is not None:
        weight = weight + delta.double()
    out = weight @ key.double()
    if getattr(module, "bias", None) is not None:
        out = out + module.bias.detach().double()
    return out


def _mlp_at_subject(model, tok, layout, layer, template, request):
    """(input, output) of mlp_down at the subject's last token of `template` filled with the request, by a full pass."""
    text, a, b = fill(template, request.prompt, request.subject)
    ids, pos = tokenize_at_subject(tok, text, a, b)
    name = layout.mlp_down.format(layer)
    with capture(model, [name], inputs=True, outputs=True) as rec, torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    return rec[name].input[0, pos].double(), rec[name].output[0, pos].double()


@pytest.mark.parametrize("mom2", [False, True])
def test_edited_layer_maps_the_plain_key_to_value_with_rank_one_update(tiny, mom2):
    model, tok, layout, cov = tiny
    ctx = EditContext(layout=layout, covariance=lambda layer: cov[layer], seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    edit = rome.compute_rome(model, tok, REQUEST, _hparams(1, mom2), ctx)
    assert len(ctx.state["context_templates"][1]) > 0  # templates really in use
    # apply() must leave the model as it found it.
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    delta_v = (edit.value.double() - _layer_output(model, layout, 1, edit.plain_key)).norm()
    assert delta_v > 0
    # (W + dW) k0 + b = v* at the plain prompt's own key, to float tolerance of the optimised delta.
    mapped = _layer_output(model, layout, 1, edit.plain_key, edit.delta)
    assert (mapped - edit.value.double()).norm() / delta_v < 1e-4
    # The template-averaged key is a different vector, and it is not what gets v*.
    assert (edit.key - edit.plain_key).norm() > 1e-3 * edit.key.norm()
    s = torch.linalg.svdvals(edit.delta.double())
    assert s[1] / s[0] < 1e-6
    # dW's row space is u = C^-1 k* (k* itself without C): minimum change in the metric C.
    key = edit.key.double()
    u = torch.linalg.solve(cov[1].double(), key) if mom2 else key
    residual = edit.value.double() - _layer_output(model, layout, 1, edit.plain_key)
    direction = edit.delta.double().T @ residual
    cos = direction @ u / (direction.norm() * u.norm())
    assert cos > 1 - 1e-6


@pytest.mark.parametrize("mom2", [False, True])
def test_update_equals_the_reference_formula(tiny, mom2):
    """kmeng01/rome, written out with full forward passes: u = C^-1 k* / |C^-1 k*| with k* the mean key
    over the context templates (compute_u); right = (v* - cur_output) / (cur_input . u) at the plain
    prompt (the end of compute_v); dW = right u^T in [out, in]."""
    model, tok, layout, cov = tiny
    ctx = EditContext(layout=layout, covariance=lambda layer: cov[layer], seed=0)
    edit = rome.compute_rome(model, tok, REQUEST, _hparams(1, mom2), ctx)
    templates = [t for group in ctx.state["context_templates"] for t in group]
    k_star = torch.stack([_mlp_at_subject(model, tok, layout, 1, t, REQUEST)[0] for t in templates]).mean(0)
    u = torch.linalg.solve(cov[1].double(), k_star) if mom2 else k_star
    u = u / u.norm()
    cur_input, cur_output = _mlp_at_subject(model, tok, layout, 1, "{}", REQUEST)
    right = (edit.value.double() - cur_output) / (cur_input @ u)
    want = torch.outer(right, u)
    assert torch.allclose(edit.delta.double(), want, rtol=1e-4, atol=1e-6 * want.abs().max())


def test_apply_returns_update_in_storage_layout(tiny):
    model, tok, layout, cov = tiny
    ctx = EditContext(layout=layout, covariance=lambda layer: cov[layer], seed=0)
    upd = rome.apply(model, tok, [REQUEST], _hparams(1, True), ctx)
    assert isinstance(upd, WeightUpdate)
    name = layout.down_weight_name(1)
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
    """With the default context templates: once the update is added to the parameter (in its
    storage layout), a full forward pass of the plain prompt must produce v* as the MLP output
    at the subject's last token."""
    model, tok, layout, cov = tiny
    hp = _hparams(1, True)
    ctx = EditContext(layout=layout, covariance=lambda layer: cov[layer], seed=0)
    edit = rome.compute_rome(model, tok, REQUEST, hp, ctx)
    upd = rome.apply(model, tok, [REQUEST], hp, ctx)
    _, unedited = _mlp_at_subject(model, tok, layout, 1, "{}", REQUEST)
    name = layout.down_weight_name(1)
    param = model.get_parameter(name)
    original = param.detach().clone()
    with torch.no_grad():
        param += upd.deltas[name]
    try:
        _, out = _mlp_at_subject(model, tok, layout, 1, "{}", REQUEST)
    finally:
        with torch.no_grad():
            param.copy_(original)
    assert (out - edit.value.double()).norm() / (edit.value.double() - unedited).norm() < 1e-4


def test_one_factorisation_of_the_statistic_for_many_edits(tiny, monkeypatch):
    """The statistic comes back as a new tensor on every call, as `.to(device)` or `.to(dtype)` gives
    on a GPU; C must still be factored once for all edits at its layer."""
    model, tok, layout, cov = tiny
    calls = {"lu": 0, "load": 0}
    lu_factor_ex = torch.linalg.lu_factor_ex

    def counting(*args, **kwargs):
        calls["lu"] += 1
        return lu_factor_ex(*args, **kwargs)

    def load(layer):
        calls["load"] += 1
        return cov[layer].to(torch.float64 if calls["load"] % 2 else torch.float32).clone()

    monkeypatch.setattr(torch.linalg, "lu_factor_ex", counting)
    hp = rome.Hparams(layer=1, v_num_grad_steps=2, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=4.0,
                      kl_factor=0.0625, mom2_adjustment=True, context_template_length_params=[[4, 5]])
    ctx = EditContext(layout=layout, covariance=load, seed=0)
    for _ in range(3):
        rome.apply(model, tok, [REQUEST], hp, ctx)
    assert calls["lu"] == 1 and ctx.solver.factorisations == 1


def test_rank_one_update_by_hand():
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    k = torch.tensor([1.0, 1.0])
    v = torch.tensor([3.0, 0.0])
    c = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    k0 = torch.tensor([1.0, 0.0])
    u = rome.left_vector(k, lambda rhs: torch.linalg.solve(c.double(), rhs))
    d = rome.rank_one_update(w, None, u, k0, v)
    # u = C^-1 k* = [0.5, 1]; u.k0 = 0.5; r = v - W k0 = [2, 0]
    want = torch.outer(torch.tensor([2.0, 0.0]), torch.tensor([0.5, 1.0])) / 0.5
    assert torch.allclose(d, want)
    assert torch.allclose((w + d) @ k0, v, atol=1e-6)


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
