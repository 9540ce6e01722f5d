"""AlphaEdit: updates leave preserved keys' outputs unchanged and keep earlier edits in place."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from editharm.methods import alphaedit, load_hparams, load_method
from editharm.methods.base import EditContext
from editharm.methods.prompts import subject_keys
from editharm.models import layout_for, random_model
from editharm.nethook import capture
from editharm.regularize import parse_regulariser
from editharm.requests import EditRequest
from editharm.updates import write_update

ROOT = Path(__file__).resolve().parents[1] / "configs" / "methods" / "alphaedit"
FIRST = [EditRequest("1", "Danielle Darrieux", "The mother tongue of {} is", "English", "French")]
SECOND = [EditRequest("2", "Toko Yasuda", "{} plays the instrument", "piano", "guitar")]
TEXT = "Rivers and mountains shape the economy of the region."


@pytest.fixture(scope="module", params=["llama", "gpt2", "gemma3"])
def tiny(request):
    model, tok = random_model(request.param, seed=0, hidden=32, layers=3, heads=4)
    layout = layout_for(model)
    # Preserved keys K0: fewer tokens than the key dimension (128), so C = K0^T K0 / n has a
    # null space and the projection is exact.
    k0 = {}
    names = {l: layout.mlp_down.format(l) for l in (0, 1)}
    with capture(model, list(names.values()), inputs=True, outputs=False) as rec, torch.no_grad():
        model(input_ids=torch.tensor([tok(TEXT)["input_ids"]]))
    for l, n in names.items():
        k0[l] = rec[n].input[0].double()
    # float64, so that the null space is exact (its eigenvalues ~1e-18, the others > 1e-11).
    cov = {l: k.T @ k / k.shape[0] for l, k in k0.items()}
    return model, tok, layout, k0, cov


def _hp(layers, l2=10.0):
    return alphaedit.Hparams(layers=layers, v_num_grad_steps=3, v_lr=0.5, v_weight_decay=0.5, clamp_norm_factor=4.0,
                             kl_factor=0.0625, nullspace_threshold=1e-14, L2=l2, context_template_length_params=[[4, 5]])


def test_update_leaves_preserved_keys_unchanged(tiny):
    model, tok, layout, k0, cov = tiny
    ctx = EditContext(layout=layout, covariance=lambda layer: cov[layer], seed=0)
    edit = alphaedit.compute_alphaedit(model, tok, FIRST + SECOND, _hp([0, 1]), ctx)
    for layer, s in edit.layers.items():
        d = s.delta.double()
        assert d.norm() > 0
        # Zero up to float32 rounding of P and dW (an unprojected update gives ~1e-1 here).
        assert (d @ k0[layer].double().T).norm() / (d.norm() * k0[layer].double().norm()) < 1e-4
        # n random keys span n dimensions; the rest of the key space is the null space.
        assert edit.info["null_space_dims"][str(layer)] == layout.intermediate_size - k0[layer].shape[0]
    assert {"projection.0", "projection.1", "edited_keys_moment.0", "edited_keys_moment.1"} <= set(ctx.state)
    # Nothing is recorded until the pipeline has written the update (after_update).
    assert all(ctx.state[f"edited_keys_moment.{l}"].abs().max() == 0 for l in (0, 1))


def _written(model, layout):
    """Parameters as they are now, to restore after a test that writes edits like the pipeline."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _restore(model, saved):
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(saved[n])


def test_later_edit_keeps_earlier_edit(tiny):
    model, tok, layout, k0, cov = tiny
    # A small L2 so that the record of the first edit's key, not the regulariser, decides.
    hp = _hp([1], l2=1e-8)
    ctx = EditContext(layout=layout, covariance=lambda layer: cov[layer], seed=0)
    saved = _written(model, layout)
    try:
        update = alphaedit.apply(model, tok, FIRST, hp, ctx)
        write_update(alphaedit, model, tok, FIRST, hp, ctx, update, parse_regulariser("none"), 0, 0)
        moment = ctx.state["edited_keys_moment.1"].clone()
        assert moment.trace() > 0
        k1 = subject_keys(model, tok, layout, FIRST, [1], ctx.state["context_templates"], group_mean=True)[1]
        second = alphaedit.compute_alphaedit(model, tok, SECOND, hp, ctx)
        # Without the record of earlier keys the same edit would move the first fact's output.
        fresh = EditContext(layout=layout, covariance=lambda layer: cov[layer], seed=0,
                            state={"context_templates": ctx.state["context_templates"],
                                   "context_template_params": ctx.state["context_template_params"]})
        unprotected = alphaedit.compute_alphaedit(model, tok, SECOND, hp, fresh)
        write_update(alphaedit, model, tok, SECOND, hp, ctx,
                     alphaedit.WeightUpdate({n: layout.to_storage(d) for n, d in second.deltas.items()}),
                     parse_regulariser("none"), 0, 1)
    finally:
        _restore(model, saved)
    d2 = second.layers[1].delta.double()
    k2 = second.layers[1].keys.double()
    moved = (d2 @ k1.double().T).norm()
    assert moved < 1e-2 * (d2 @ k2.T).norm()
    assert moved < 1e-2 * (unprotected.layers[1].delta.double() @ k1.double().T).norm()
    assert ctx.state["edited_keys_moment.1"].trace() > moment.trace()


def test_recorded_keys_are_those_of_the_regularised_weights(tiny):
    """Under rect-40 the weights written differ from the proposed update; K_p must hold the keys the
    edited model computes with the written weights (AlphaEdit recomputes them on the edited model)."""
    model, tok, layout, k0, cov = tiny
    hp = _hp([0, 1])
    saved = _written(model, layout)
    moments = {}
    try:
        for reg in ("rect-40", "none"):
            _restore(model, saved)
            ctx = EditContext(layout=layout, covariance=lambda layer: cov[layer], seed=0)
            update = alphaedit.apply(model, tok, FIRST, hp, ctx)
            write_update(alphaedit, model, tok, FIRST, hp, ctx, update, parse_regulariser(reg), 0, 0)
            keys = subject_keys(model, tok, layout, FIRST, [0, 1], ctx.state["context_templates"], group_mean=True)
            for layer in (0, 1):
                want = (keys[layer].double().T @ keys[layer].double()).float()
                torch.testing.assert_close(ctx.state[f"edited_keys_moment.{layer}"], want, rtol=1e-5, atol=1e-7)
            moments[reg] = ctx.state["edited_keys_moment.1"].clone()
    finally:
        _restore(model, saved)
    # Layer 1's keys depend on layer 0's written update, so the two regularisers record different keys.
    gap = (moments["rect-40"] - moments["none"]).double().norm() / moments["none"].double().norm()
    if layout.post_mlp_norm:
        # Tiny random Gemma: the norm after down_proj rescales layer 0's write to unit RMS, so the full and the
        # rect-40 update move layer 1's keys alike (relative gap ~4e-6, float32 noise level); the recorded
        # keys are still checked exactly above, but the two regularisers cannot be told apart here.
        return
    assert gap > 1e-4


def test_projection_by_hand():
    c = torch.diag(torch.tensor([2.0, 1e-6, 3.0]))
    p = alphaedit.null_space_projection(c, 1e-3)
    assert torch.allclose(p, torch.diag(torch.tensor([0.0, 1.0, 0.0])), atol=1e-6)


def test_interface():
    mod = load_method("alphaedit")
    assert mod.NAME == "alphaedit" and mod.SUPPORTS_BATCH is True and mod.EDITS_WEIGHTS is True
    assert mod.stats_layers(_hp([3, 4, 5]), None) == [3, 4, 5]


def test_hparams_files_load():
    files = sorted(ROOT.glob("*.yaml"))
    assert {f.stem for f in files} >= {"llama", "gpt2", "gpt_neox", "gemma3"}
    for f in files:
        hp = load_hparams(f, alphaedit.Hparams)
        assert hp.nullspace_threshold > 0 and hp.L2 >= 0
