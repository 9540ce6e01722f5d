"""FT-L: the L-infinity bound on the update holds exactly, and the new target becomes likelier."""

import pytest
import torch

from editharm.methods import ft
from editharm.methods.base import EditContext
from editharm.models import layout_for, random_model
from editharm.requests import EditRequest

REQUESTS = [
    EditRequest(case_id="0", subject="Paris", prompt="{} is the capital of", target_new="Rome", target_true="France"),
    EditRequest(case_id="1", subject="Danielle", prompt="The mother tongue of {} is", target_new="Dutch", target_true="French"),
]


def _tiny(family):
    model, tok = random_model(family, seed=0, hidden=32, layers=2, heads=2)
    return model, tok, EditContext(layout=layout_for(model), covariance=lambda layer: None)


@torch.no_grad()
def _target_logprob(model, tok, request, objective="target_new"):
    batch = ft.encode_prompt_target(tok, [request.filled_prompt], [request.target_new], "cpu")
    loss = ft.target_nll if objective == "target_new" else ft.prompt_last_nll
    return -float(loss(model(input_ids=batch.input_ids).logits, batch)[0])


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_ft_update_respects_linf_bound_and_leaves_model_unchanged(family):
    model, tok, ctx = _tiny(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eps = 1e-3
    hp = ft.Hparams(layers=[1], num_steps=5, lr=0.1, norm_constraint=eps, early_stop_loss=0.0)
    update = ft.apply(model, tok, REQUESTS, hp, ctx)

    name = ctx.layout.down_weight_name(1)
    assert set(update.deltas) == {name}
    delta = update.deltas[name]
    assert delta.shape == model.get_parameter(name).shape
    bound = torch.tensor(eps, dtype=torch.float32)                 # eps as the weights store it
    assert delta.abs().max() <= bound                              # the bound, exactly
    assert int((delta.abs() == bound).sum()) > 0                   # and it was active (lr >> eps)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
@pytest.mark.parametrize("objective", ["target_new", "prompt_last"])
def test_ft_raises_target_probability(family, objective):
    model, tok, ctx = _tiny(family)
    hp = ft.Hparams(layers=[1], num_steps=10, lr=1e-2, norm_constraint=5e-2, objective=objective, early_stop_loss=0.0)
    before = [_target_logprob(model, tok, r, objective) for r in REQUESTS]
    update = ft.apply(model, tok, REQUESTS, hp, ctx)
    with torch.no_grad():
        for name, delta in update.deltas.items():
            model.get_parameter(name).add_(delta)
    after = [_target_logprob(model, tok, r, objective) for r in REQUESTS]
    assert all(a > b + 0.05 for a, b in zip(after, before)), (before, after)


def test_unconstrained_ft_and_bad_layer():
    model, tok, ctx = _tiny("llama")
    update = ft.apply(model, tok, REQUESTS[:1], ft.Hparams(layers=[0], num_steps=2, lr=0.1, norm_constraint=None), ctx)
    assert float(next(iter(update.deltas.values())).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="layer 5 does not exist"):
        ft.apply(model, tok, REQUESTS[:1], ft.Hparams(layers=[5]), ctx)
    with pytest.raises(ValueError, match="objective"):
        ft.Hparams(layers=[0], objective="nope")


def test_encode_prompt_target_positions():
    _, tok, _ = _tiny("gpt2")
    batch = ft.encode_prompt_target(tok, ["ab", "abcd"], ["x", "yz"], "cpu")
    # byte-level: " x" is 2 tokens; prompt "ab" is 2 tokens, so " x" is predicted from positions 1 and 2
    assert batch.prompt_last.tolist() == [1, 3]
    assert batch.pred_pos[0, :2].tolist() == [1, 2] and batch.target_mask[0].tolist() == [True, True, False]
    assert batch.pred_pos[1].tolist() == [3, 4, 5]
    assert batch.attention_mask.sum(1).tolist() == [4, 7]
