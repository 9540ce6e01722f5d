"""MEMIT and PMET on tiny random models: each layer's update solves its normal equations."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from editharm.methods import load_hparams, load_method
from editharm.methods import memit, pmet
from editharm.methods.base import EditContext, WeightUpdate
from editharm.methods.covariance import collect_second_moments, solve_second_moment
from editharm.models import layout_for, random_model
from editharm.requests import EditRequest

ROOT = Path(__file__).resolve().parents[1] / "configs" / "methods"
REQUESTS = [
    EditRequest("1", "Danielle Darrieux", "The mother tongue of {} is", "English", "French"),
    EditRequest("2", "Toko Yasuda", "{} plays the instrument", "piano", "guitar"),
    EditRequest("3", "Autonomous University of Madrid", "{}, which is located in", "Sweden", "Spain"),
]
CORPUS = [
    "The history of the region is long and its people speak many languages.",
    "Rivers, mountains and cities shape the economy of every country in the area.",
    "Scientists measured the temperature of the lake every morning for a year.",
] * 8


@pytest.fixture(scope="module", params=["llama", "gpt2", "gpt_neox", "gemma3"])
def tiny(request):
    model, tok = random_model(request.param, seed=0, hidden=32, layers=3, heads=4)
    layout = layout_for(model)
    cov = collect_second_moments(model, tok, layout, [0, 1], CORPUS, n_tokens=1500, seq_len=64, progress=False)
    return model, tok, layout, cov


def _memit_hp(**kw):
    base = dict(layers=[0, 1], v_num_grad_steps=3, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=4.0,
                kl_factor=0.0625, mom2_adjustment=True, mom2_update_weight=100.0, context_template_length_params=[[4, 5]])
    return memit.Hparams(**(base | kw))


def _pmet_hp(**kw):
    base = dict(layers=[0, 1], v_num_grad_steps=3, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=4.0,
                kl_factor=0.0625, mom2_adjustment=True, mom2_update_weight=100.0, nll_loss_factor=1.0,
                context_template_length_params=[[4, 5]])
    return pmet.Hparams(**(base | kw))


def _check_normal_equations(edit, cov, weight):
    for layer, s in edit.layers.items():
        k, r, d = s.keys.double(), s.residuals.double(), s.delta.double()
        a = weight * cov[layer].double() + k.T @ k
        # Backward error: small relative to the sizes involved, whatever a's conditioning.
        err = (d @ a - r.T @ k).norm() / (d.norm() * a.norm() + (r.T @ k).norm())
        assert err < 1e-6
        # One rank per edited fact at most (float32 rounding aside).
        sv = torch.linalg.svdvals(d)
        assert sv[k.shape[0]] < 1e-5 * sv[0]


def test_memit_update_solves_normal_equations(tiny):
    model, tok, layout, cov = tiny
    ctx = EditContext(layout=layout, covariance=lambda layer: cov[layer], seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    edit = memit.compute_memit(model, tok, REQUESTS, _memit_hp(), ctx)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert sorted(edit.deltas) == sorted(layout.down_weight_name(l) for l in (0, 1))
    _check_normal_equations(edit, cov, 100.0)
    # The residual is spread over the layers left: at the first layer it is (z - h^L) / 2 on the unedited model.
    h = memit.plain_outputs(model, tok, layout, REQUESTS, layout.layer.format(1))
    want = (edit.targets - h) / 2
    if layout.post_mlp_norm:
        # Gemma: the residual-stream change is solved for as the down_proj output change the norm turns into it.
        want = memit.mlp_output_residuals(model, tok, layout, REQUESTS, 0, want)
    assert torch.allclose(edit.layers[0].residuals, want, atol=1e-6)


def test_memit_update_moves_the_last_layer_toward_its_targets(tiny):
    model, tok, layout, cov = tiny
    ctx = EditContext(layout=layout, covariance=lambda layer: cov[layer], seed=0)
    edit = memit.compute_memit(model, tok, REQUESTS, _memit_hp(mom2_update_weight=1e-3), ctx)
    z_module = layout.layer.format(1)
    before = (edit.targets - memit.plain_outputs(model, tok, layout, REQUESTS, z_module)).norm()
    with memit.temporary_updates(model, layout) as add:
        for name, d in edit.deltas.items():
            add(name, d)
        after = (edit.targets - memit.plain_outputs(model, tok, layout, REQUESTS, z_module)).norm()
    assert after < 0.5 * before


def test_memit_apply_interface(tiny):
    model, tok, layout, cov = tiny
    ctx = EditContext(layout=layout, covariance=lambda layer: cov[layer], seed=0)
    upd = memit.apply(model, tok, REQUESTS, _memit_hp(), ctx)
    assert isinstance(upd, WeightUpdate)
    for name, d in upd.deltas.items():
        assert d.shape == model.get_parameter(name).shape and torch.isfinite(d).all()
    assert {"steps", "loss", "per_request_steps"} <= set(upd.info)
    assert len(ctx.state["context_templates"]) == 2  # "{}" and one generated group, kept for later edits


def test_pmet_optimises_attention_and_mlp_and_updates_mlp_only(tiny):
    model, tok, layout, cov = tiny
    ctx = EditContext(layout=layout, covariance=lambda layer: cov[layer], seed=0)
    edit = pmet.compute_pmet(model, tok, REQUESTS, _pmet_hp(), ctx)
    assert sorted(edit.deltas) == sorted(layout.down_weight_name(l) for l in (0, 1))
    assert edit.info["delta_norm_attn"] > 0 and edit.info["delta_norm_mlp"] > 0
    _check_normal_equations(edit, cov, 100.0)
    # PMET's target is the MLP output at the last layer, spread with a square root.
    m = memit.plain_outputs(model, tok, layout, REQUESTS, layout.mlp_down.format(1))
    assert torch.allclose(edit.layers[0].residuals, (edit.targets - m) / math.sqrt(2), atol=1e-6)


def test_memit_update_by_hand():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    res = torch.tensor([[2.0], [4.0]])
    c = torch.diag(torch.tensor([2.0, 1.0]))
    d = memit.memit_update(keys, res, lambda rhs: solve_second_moment(c, rhs), 1.0)
    # dW (C + K K^T) = R^T K with C + K K^T = diag(3, 2): dW = [2/3, 4/2]
    assert torch.allclose(d, torch.tensor([[2.0 / 3.0, 2.0]]))
    # Without the statistic (mom2_adjustment off) C is the identity: dW = R^T K / 2.
    assert torch.allclose(memit.memit_update(keys, res, None, 1.0), torch.tensor([[1.0, 2.0]]))


def test_interfaces():
    for name, batch in (("memit", True), ("pmet", True)):
        mod = load_method(name)
        assert mod.NAME == name and mod.SUPPORTS_BATCH is batch and mod.EDITS_WEIGHTS is True
    assert memit.stats_layers(_memit_hp(layers=[2, 3, 4]), None) == [2, 3, 4]
    assert pmet.stats_layers(_pmet_hp(layers=[2, 3]), None) == [2, 3]


@pytest.mark.parametrize("method", ["memit", "pmet"])
def test_hparams_files_load(method):
    mod = load_method(method)
    files = sorted((ROOT / method).glob("*.yaml"))
    assert {f.stem for f in files} >= {"llama", "gpt2", "gpt_neox", "gemma3"}
    for f in files:
        hp = load_hparams(f, mod.Hparams)
        assert hp.layers == sorted(hp.layers)


def test_closest_normed_output_is_the_least_squares_point_of_the_norms_outputs():
    gen = torch.Generator().manual_seed(0)
    d = 16
    gain = torch.rand(d, generator=gen) * 3 + 0.5
    gain[3] = 0.0            # a channel the norm never writes (Gemma-3-270M has such gains)
    gain[7] = 1e-4
    # A target that is itself a normed output comes back unchanged.
    v0 = torch.randn(2, d, generator=gen)
    v0[:, 3] = 0.0
    v0 = v0 / v0.pow(2).mean(-1, keepdim=True).sqrt()
    back = memit.closest_normed_output(gain, gain * v0)
    assert torch.allclose(gain * back, gain * v0, atol=1e-5)   # a 1e-4 gain leaves its channel barely determined
    assert torch.allclose(back[:, gain > 0.1], v0[:, gain > 0.1], atol=1e-5)
    # Any other target: rms(v) = 1 and g * v is at least as close as any other unit-rms candidate.
    t = torch.randn(3, d, generator=gen) * 4
    v = memit.closest_normed_output(gain, t)
    assert torch.allclose(v.pow(2).mean(-1), torch.ones(3), atol=1e-5)
    best = (gain * v - t).norm(dim=-1)
    cands = torch.randn(20000, d, generator=gen)
    cands = cands / cands.pow(2).mean(-1, keepdim=True).sqrt()
    for r in range(3):
        assert best[r] <= (gain * cands - t[r]).norm(dim=-1).min() + 1e-5
        # Dividing by the gain (exact only for feasible targets) lands far from the target here.
        naive = t[r] / gain.clamp_min(1e-12)
        naive = naive / naive.pow(2).mean().sqrt()
        assert best[r] < (gain * naive - t[r]).norm()
