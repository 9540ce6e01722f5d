"""MEND on tiny random models: the edit is a sum of per-token outer products, training makes
edits work, and nothing in the model changes."""

from __future__ import annotations

import json

import pytest
import torch

from editharm.methods import load_method
from editharm.methods import mend
from editharm.methods.base import EditContext, WeightUpdate
from editharm.models import random_model
from editharm.requests import EditRequest, ProbePrompt

LLAMA_PARAMS = ["model.layers.{}.mlp.up_proj.weight", "model.layers.{}.mlp.down_proj.weight"]
GPT2_PARAMS = ["transformer.h.{}.mlp.c_fc.weight", "transformer.h.{}.mlp.c_proj.weight"]

FACTS = [("Ann Lee", "Rome"), ("Bob Marsh", "Oslo"), ("Cid Moreno", "Lima"), ("Dee Park", "Kyiv")]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def requests() -> list[EditRequest]:
    return [
        EditRequest(case_id=str(i), subject=s, prompt="{} lives in", target_new=t, target_true="Paris",
                    paraphrases=(f"The home of {s} is",), locality=(ProbePrompt("The sky is", "blue"),))
        for i, (s, t) in enumerate(FACTS)
    ]


def hparams(params, **kw) -> mend.Hparams:
    base = dict(inner_params=params, layers=[-1], rank=16, lr=1e-3, lr_lr=1e-3, edit_lr=1e-3, cedit=1.0, cloc=1.0,
                max_iters=40, batch_size=2, accumulate_bs=1)
    base.update(kw)
    return mend.Hparams(**base)


def context(trained_dir) -> EditContext:
    return EditContext(layout=None, covariance=lambda layer: None, artifacts={"trained_dir": str(trained_dir)})


def target_nll(model, tokenizer, request: EditRequest, deltas=None) -> float:
    batch = mend.encode(tokenizer, [request.filled_prompt], [request.target_new], 64, "cpu")
    with torch.no_grad():
        if deltas is None:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        else:
            logits = mend.edited_forward(model, list(deltas), deltas, batch)
    return mend.target_nll(logits, batch["labels"]).item()


@pytest.fixture(scope="module", params=["llama", "gemma3"])  # gemma3 has Llama's MLP parameter names
def trained(tmp_path_factory, request):
    torch.set_num_threads(1)
    model, tok = random_model(request.param, seed=0, hidden=32, layers=2, heads=2)
    out = tmp_path_factory.mktemp(f"mend_{request.param}")
    summary = mend.train(model, tok, requests(), hparams(LLAMA_PARAMS), out, seed=0)
    return model, tok, out, summary


def test_interface_is_registered():
    mod = load_method("mend")
    assert mod.SUPPORTS_BATCH and mod.EDITS_WEIGHTS and mod.TRAINED


def test_pseudo_gradient_is_a_sum_of_outer_products():
    g = torch.Generator().manual_seed(0)
    u, d = torch.randn(5, 7, generator=g), torch.randn(5, 3, generator=g)
    expected = sum(torch.outer(d[t], u[t]) for t in range(5))
    assert torch.allclose(mend.pseudo_gradient(u, d), expected, atol=1e-6)
    assert torch.linalg.matrix_rank(mend.pseudo_gradient(u[:1], d[:1])).item() == 1


def test_welford_merge_matches_full_statistics():
    rows = torch.randn(40, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    count, mean, m2 = torch.zeros((), dtype=torch.float64), torch.zeros(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    for chunk in rows.split(7):
        count, mean, m2 = mend.welford_merge(count, mean, m2, chunk)
    assert count.item() == 40
    assert torch.allclose(mean, rows.mean(0))
    assert torch.allclose(m2 / (count - 1), rows.var(0))


def test_untrained_network_is_the_identity():
    # U = 0 at initialisation: g passes the normalised factors through unchanged.
    net = mend.ResidualMLP(dim=12, rank=4, n_hidden=1, n_modes=2)
    h = torch.randn(3, 12)
    assert torch.equal(net(h, mode=1), h)


def test_training_writes_artifacts_and_loss_curve(trained):
    _, _, out, summary = trained
    assert (out / mend.WEIGHTS_FILE).exists() and (out / mend.META_FILE).exists()
    rows = [json.loads(line) for line in (out / mend.LOG_FILE).read_text().splitlines()]
    assert len(rows) == 40 and {"loss", "edit_nll", "loc_kl", "iter"} <= set(rows[0])
    assert summary["edit_nll_last"] < summary["edit_nll_first"]


def test_edit_raises_target_probability_of_a_training_request(trained):
    model, tok, out, _ = trained
    request = requests()[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    update = mend.apply(model, tok, [request], hparams(LLAMA_PARAMS), context(out))
    assert isinstance(update, WeightUpdate)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "apply modified the model"
    assert target_nll(model, tok, request, update.deltas) < target_nll(model, tok, request) - 0.1


def test_update_is_one_outer_product_per_token(trained):
    model, tok, out, _ = trained
    request = requests()[1]
    hp = hparams(LLAMA_PARAMS)
    update = mend.apply(model, tok, [request], hp, context(out))
    net = mend.load_network(out, "cpu")
    batch = mend.encode(tok, [request.filled_prompt], [request.target_new], 64, "cpu")
    factors, _, _ = mend.gradient_factors(model, net.param_names, batch)
    n_targets = int((batch["labels"] != -100).sum())
    for i, name in enumerate(net.param_names):
        u, d = factors[name]
        # In the last layer an MLP output reaches only its own position's logits, so the
        # gradient has one row per target token; each row is one rank-one term.
        assert u.shape[0] == n_targets
        transform = net.transforms[mend.shape_key(*net.shapes[name])]
        with torch.no_grad():
            u_t, d_t = transform(u, d, net.modes[name])
            expected = -net.edit_lrs[i] * sum(torch.outer(d_t[t], u_t[t]) for t in range(u.shape[0]))
        assert torch.allclose(update.deltas[name], expected, atol=1e-6, rtol=1e-4)
        assert torch.linalg.matrix_rank(update.deltas[name]).item() <= u.shape[0]
        # one token row alone gives a rank-one update
        with torch.no_grad():
            single = mend.pseudo_gradient(*transform(u[:1], d[:1], net.modes[name]))
        assert torch.linalg.matrix_rank(single).item() == 1


def test_gpt2_update_is_in_conv1d_layout(tmp_path):
    # GPT-2 stores [in, out]; the update added to the weight must equal the hooked edit.
    model, tok = random_model("gpt2", seed=1, hidden=32, layers=2, heads=2)
    hp = hparams(GPT2_PARAMS, max_iters=3)
    mend.train(model, tok, requests(), hp, tmp_path, seed=0)
    request = requests()[2]
    update = mend.apply(model, tok, [request], hp, context(tmp_path))
    name = "transformer.h.1.mlp.c_fc.weight"
    assert update.deltas[name].shape == model.get_parameter(name).shape == (32, 128)
    batch = mend.encode(tok, [request.filled_prompt], [request.target_new], 64, "cpu")
    out_in = {n: d.T for n, d in update.deltas.items()}  # Conv1D storage [in, out] -> [out, in]
    with torch.no_grad():
        hooked = mend.edited_forward(model, list(out_in), out_in, batch)
        originals = {n: model.get_parameter(n).detach().clone() for n in update.deltas}
        for n, d in update.deltas.items():
            model.get_parameter(n).add_(d)
        direct = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for n, w in originals.items():
            model.get_parameter(n).copy_(w)
    assert torch.allclose(hooked, direct, atol=1e-5)


def test_layers_out_of_range_are_rejected():
    model, _ = random_model("llama", seed=0, hidden=32, layers=2, heads=2)
    with pytest.raises(ValueError, match="out of range"):
        mend.resolve_param_names(model, hparams(LLAMA_PARAMS, layers=[5]))


def test_missing_trained_dir_is_a_clear_error():
    model, tok = random_model("llama", seed=0, hidden=32, layers=2, heads=2)
    ctx = EditContext(layout=None, covariance=lambda layer: None)
    with pytest.raises(ValueError, match="trained_dir"):
        mend.apply(model, tok, requests()[:1], hparams(LLAMA_PARAMS), ctx)
