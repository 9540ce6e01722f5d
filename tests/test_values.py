"""The shared value optimisation: the cached fast path computes exactly the naive loss; the shared hyperparameters."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from editharm.methods import alphaedit, memit, pmet, rome
from editharm.methods.prompts import subject_keys
from editharm.methods.values import ValueHparams, ValueProblem, ValueSettings, optimize_values
from editharm.models import layout_for, random_model
from editharm.requests import EditRequest

TEMPLATES = ["{}", "A note. {}", "Some longer text comes first here. {}"]
REQUESTS = [
    EditRequest("1", "Danielle Darrieux", "The mother tongue of {} is", "English", "French"),
    EditRequest("2", "Paris", "{} is the capital of", "Italy", "France"),
]


@pytest.fixture(scope="module", params=["llama", "gpt2", "gpt_neox", "gemma3"])
def tiny(request):
    model, tok = random_model(request.param, seed=0, hidden=32, layers=3, heads=4)
    return model, tok, layout_for(model)


@pytest.mark.parametrize("sites", [("mlp",), ("residual",), ("attn", "mlp")])
@pytest.mark.parametrize("layer", [0, 2])
def test_fast_path_equals_naive_path(tiny, sites, layer):
    model, tok, layout = tiny
    problem = ValueProblem(model, tok, layout, REQUESTS, layer, TEMPLATES, sites=sites)
    assert problem.fast
    gen = torch.Generator().manual_seed(1)
    deltas = {s: (3 * torch.randn(len(REQUESTS), layout.hidden_size, generator=gen)).requires_grad_(True) for s in sites}
    fast = problem.losses(deltas)
    naive = problem.losses(deltas, naive=True)
    assert torch.allclose(fast.nll, naive.nll, atol=1e-5, rtol=0)
    assert torch.allclose(fast.kl, naive.kl, atol=1e-5, rtol=0)
    assert torch.equal(fast.argmax_hit, naive.argmax_hit)
    g_fast = torch.autograd.grad((fast.nll + fast.kl).sum(), list(deltas.values()))
    g_naive = torch.autograd.grad((naive.nll + naive.kl).sum(), list(deltas.values()))
    for a, b in zip(g_fast, g_naive):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_zero_delta_has_zero_kl(tiny):
    model, tok, layout = tiny
    problem = ValueProblem(model, tok, layout, REQUESTS, 1, TEMPLATES)
    terms = problem.losses({"mlp": torch.zeros(2, layout.hidden_size)})
    assert torch.allclose(terms.kl, torch.zeros(2), atol=1e-6)


def test_subset_of_requests_matches_full_batch(tiny):
    model, tok, layout = tiny
    problem = ValueProblem(model, tok, layout, REQUESTS, 1, TEMPLATES)
    d = torch.randn(2, layout.hidden_size)
    full = problem.losses({"mlp": d})
    second = problem.losses({"mlp": d[1:]}, [1])
    assert torch.allclose(second.nll, full.nll[1:], atol=1e-6)


def test_keys_are_template_means_of_mlp_inputs(tiny):
    model, tok, layout = tiny
    problem = ValueProblem(model, tok, layout, REQUESTS, 1, TEMPLATES)
    direct = subject_keys(model, tok, layout, REQUESTS, [1], [TEMPLATES])[1]
    assert torch.allclose(problem.keys, direct, atol=1e-5)


def test_batched_losses_and_gradients_equal_one_request_at_a_time(tiny):
    model, tok, layout = tiny
    gen = torch.Generator().manual_seed(2)
    d = 2 * torch.randn(len(REQUESTS), layout.hidden_size, generator=gen)
    batch_d = d.clone().requires_grad_(True)
    batch = ValueProblem(model, tok, layout, REQUESTS, 1, TEMPLATES, sites=("residual",)).losses({"residual": batch_d})
    g_batch, = torch.autograd.grad((batch.nll + batch.kl).sum(), [batch_d])
    for r, req in enumerate(REQUESTS):
        alone_d = d[r:r + 1].clone().requires_grad_(True)
        alone = ValueProblem(model, tok, layout, [req], 1, TEMPLATES, sites=("residual",)).losses({"residual": alone_d})
        g_alone, = torch.autograd.grad((alone.nll + alone.kl).sum(), [alone_d])
        assert torch.allclose(batch.nll[r], alone.nll[0], atol=1e-5) and torch.allclose(batch.kl[r], alone.kl[0], atol=1e-6)
        assert torch.allclose(g_batch[r], g_alone[0], atol=1e-7, rtol=1e-4)


def test_batched_optimisation_equals_one_request_at_a_time(tiny):
    model, tok, layout = tiny
    if layout.family == "gemma3":
        # The tiny random Gemma's loss is flat at this layer (it stays at ln(vocab) +- 0.01: the post-norms
        # bound what a residual delta changes), so Adam's per-coordinate normalised steps blow float32
        # rounding differences between batch shapes up into different vectors within a few steps. Its
        # batch independence is checked at the loss and gradient instead (the test above).
        pytest.skip("flat loss surface of the tiny random gemma3: see the loss/gradient batch test")
    settings = ValueSettings(num_steps=6, lr=0.5, weight_decay=0.5, clamp_norm_factor=4.0, kl_factor=0.0625)
    batch = optimize_values(ValueProblem(model, tok, layout, REQUESTS, 1, TEMPLATES, sites=("residual",)), settings)
    for r, req in enumerate(REQUESTS):
        alone = optimize_values(ValueProblem(model, tok, layout, [req], 1, TEMPLATES, sites=("residual",)), settings)
        assert batch.steps[r] == alone.steps[0]
        assert torch.allclose(batch.values["residual"][r], alone.values["residual"][0], atol=1e-4, rtol=1e-4)


def test_optimisation_lowers_the_loss(tiny):
    model, tok, layout = tiny
    # Layer 0, so later layers carry delta to the answer.
    settings = ValueSettings(num_steps=8, lr=0.5, weight_decay=0.0, clamp_norm_factor=4.0, kl_factor=0.0625)
    problem = ValueProblem(model, tok, layout, REQUESTS[:1], 0, TEMPLATES)
    res = optimize_values(problem, settings)
    # Random models barely respond to one vector at one position, but the loss must still go down.
    assert res.history[0][-1] < res.history[0][0]
    assert res.steps[0] == len(res.history[0]) - 1
    assert torch.allclose(res.values["mlp"], res.references["mlp"] + res.deltas["mlp"])


def test_delta_norm_is_clamped(tiny):
    model, tok, layout = tiny
    settings = ValueSettings(num_steps=4, lr=0.5, weight_decay=0.0, clamp_norm_factor=0.5, kl_factor=0.0625)
    res = optimize_values(ValueProblem(model, tok, layout, REQUESTS[:1], 2, TEMPLATES), settings)
    assert float(res.deltas["mlp"][0].norm()) <= 0.5 * float(res.references["mlp"][0].norm()) * (1 + 1e-5)
    assert float(res.deltas["mlp"][0].norm()) > 0


# ------------------------------------------------------------------ the shared hyperparameters

_VALUE_KEYS = {"v_num_grad_steps", "v_lr", "v_weight_decay", "clamp_norm_factor", "kl_factor"}
# Each method's YAML keys: (required, {optional: default}), as they were before ValueHparams
# was factored out; a config that loaded then must load now with the same values.
_KEYS = {
    rome: ({"layer", "mom2_adjustment"} | _VALUE_KEYS,
           {"context_template_length_params": [[5, 10], [10, 10]], "fact_token": "subject_last"}),
    memit: ({"layers", "mom2_adjustment", "mom2_update_weight"} | _VALUE_KEYS,
            {"context_template_length_params": [[10, 5]], "fact_token": "subject_last"}),
    pmet: ({"layers", "mom2_adjustment", "mom2_update_weight"} | _VALUE_KEYS,
           {"nll_loss_factor": 1.0, "context_template_length_params": [[10, 5]], "fact_token": "subject_last"}),
    alphaedit: ({"layers", "nullspace_threshold", "L2"} | _VALUE_KEYS,
                {"context_template_length_params": [[10, 5]], "fact_token": "subject_last"}),
}
_OWN = {rome: {"layer": 3, "mom2_adjustment": True}, memit: {"layers": [1, 2], "mom2_adjustment": True, "mom2_update_weight": 9.0},
        pmet: {"layers": [1, 2], "mom2_adjustment": True, "mom2_update_weight": 9.0},
        alphaedit: {"layers": [1, 2], "nullspace_threshold": 0.02, "L2": 10.0}}
_VALUES = {"v_num_grad_steps": 7, "v_lr": 0.25, "v_weight_decay": 0.125, "clamp_norm_factor": 3.0, "kl_factor": 0.5}


@pytest.mark.parametrize("method", list(_KEYS), ids=lambda m: m.NAME)
def test_value_methods_keep_their_yaml_keys_and_defaults(method):
    required, optional = _KEYS[method]
    fields = {f.name: f for f in dataclasses.fields(method.Hparams)}
    assert issubclass(method.Hparams, ValueHparams)
    assert set(fields) == required | set(optional)
    assert {n for n, f in fields.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING} == required
    hp = method.Hparams(**_OWN[method], **_VALUES)
    assert {n: getattr(hp, n) for n in optional} == optional
    assert method.Hparams(**_OWN[method], **_VALUES).context_template_length_params is not hp.context_template_length_params


@pytest.mark.parametrize("method", list(_KEYS), ids=lambda m: m.NAME)
def test_value_settings_come_from_the_hparams(method):
    hp = method.Hparams(**_OWN[method], **_VALUES, **({"nll_loss_factor": 0.75} if method is pmet else {}))
    plain = ValueSettings(num_steps=7, lr=0.25, weight_decay=0.125, clamp_norm_factor=3.0, kl_factor=0.5)
    if method is pmet:
        # PMET's released code: its own NLL weight, relaxed once every target token is the argmax.
        assert hp.value_settings() == ValueSettings(num_steps=7, lr=0.25, weight_decay=0.125, clamp_norm_factor=3.0,
                                                    kl_factor=0.5, nll_factor=0.75, relax_when_argmax=True)
    else:
        assert hp.value_settings() == plain


# ------------------------------------------------------------------ an independent reference of the loss

def _reference_loss(model, tok, layout, request, templates, layer, delta, v_norm, kl_factor, weight_decay):
    """ROME's eq. 4 written out plainly (kmeng01/rome compute_v), one full forward pass per prompt and
    a hook of its own: NLL of the target tokens summed per prompt and divided by their count, then
    averaged over the context templates; kl_factor * KL(edited || unedited) of the next-token
    distribution at the subject's last token of "{subject} is a" (torch's kl_div(init, edited,
    log_target=True), as the reference calls it); weight_decay * |delta| / |v|^2."""
    name = layout.mlp_down.format(layer)

    def run(ids, pos, add):
        def hook(module, args, output):
            if not add:
                return output
            out = output.clone()
            out[0, pos] = out[0, pos] + delta
            return out
        handle = model.get_submodule(name).register_forward_hook(hook)
        try:
            return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
        finally:
            handle.remove()

    answer = tok(" " + request.target_new, add_special_tokens=False)["input_ids"]
    nlls = []
    for template in templates:
        text = template.replace("{}", request.prompt.replace("{}", request.subject))
        end = template.index("{}") + request.prompt.index("{}") + len(request.subject)
        pos = len(tok(text[:end])["input_ids"]) - 1
        prompt_ids = tok(text)["input_ids"]
        logp = run(prompt_ids + answer[:-1], pos, True)
        n = len(prompt_ids)
        nlls.append(-sum(logp[n - 1 + j, t] for j, t in enumerate(answer)) / len(answer))
    nll = torch.stack(nlls).mean()
    kl_text = f"{request.subject} is a"
    kl_pos = len(tok(request.subject)["input_ids"]) - 1
    kl_ids = tok(kl_text)["input_ids"]
    with torch.no_grad():
        init = run(kl_ids, kl_pos, False)[kl_pos]
    edited = run(kl_ids, kl_pos, True)[kl_pos]
    kl = torch.nn.functional.kl_div(init[None], edited[None], log_target=True, reduction="batchmean")
    return nll + kl_factor * kl + weight_decay * delta.norm() / v_norm ** 2, nll, kl


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_optimiser_loss_and_gradient_equal_a_plain_reference(family):
    model, tok = random_model(family, seed=1, hidden=32, layers=3, heads=4)
    layout = layout_for(model)
    request, layer = REQUESTS[0], 1
    kl_factor, weight_decay = 2.0, 0.5
    problem = ValueProblem(model, tok, layout, [request], layer, TEMPLATES, sites=("mlp",))
    # A large first step (the random model's outputs are small, so a loose clamp), so that KL(edited ||
    # unedited) and its reverse differ well beyond tolerance.
    settings = ValueSettings(num_steps=2, lr=0.5, weight_decay=weight_decay, clamp_norm_factor=30.0,
                             kl_factor=kl_factor, stop_loss=-1.0)
    # Two steps: the loss at delta = 0, one Adam step, the loss at delta_1 != 0 (where KL and decay are on).
    result = optimize_values(problem, settings)
    delta1 = result.deltas["mlp"][0].detach()
    assert delta1.norm() > 0
    v_norm = problem.references["mlp"][0].norm()
    zero = torch.zeros_like(delta1)
    loss0, nll0, _ = _reference_loss(model, tok, layout, request, TEMPLATES, layer, zero, v_norm, kl_factor, weight_decay)
    assert result.history[0][0] == pytest.approx(float(loss0), rel=1e-4)
    d = delta1.clone().requires_grad_(True)
    loss1, nll1, kl1 = _reference_loss(model, tok, layout, request, TEMPLATES, layer, d, v_norm, kl_factor, weight_decay)
    assert float(kl1.detach()) > 1e-6 and float(weight_decay * d.detach().norm() / v_norm ** 2) > 1e-6  # every term is live
    assert result.history[0][1] == pytest.approx(float(loss1), rel=1e-4)
    assert result.nll_history[0][1] == pytest.approx(float(nll1), rel=1e-4)
    assert result.kl_history[0][1] == pytest.approx(float(kl1), rel=1e-3, abs=1e-7)
    # The optimiser's gradient at delta_1, term by term (a small term's error must not hide behind the
    # NLL's): its loss as optimize_values builds it, from problem.losses.
    leaf = delta1.clone()[None].requires_grad_(True)
    terms = problem.losses({"mlp": leaf}, [0])
    decay = weight_decay * leaf.norm(dim=-1) / v_norm ** 2
    for got, want in ((terms.nll, nll1), (terms.kl, kl1), (terms.nll + kl_factor * terms.kl + decay, loss1)):
        (got_grad,) = torch.autograd.grad(got.sum(), [leaf], retain_graph=True)
        (want_grad,) = torch.autograd.grad(want, [d], retain_graph=True)
        torch.testing.assert_close(got_grad[0], want_grad, rtol=1e-3, atol=1e-5 * float(want_grad.abs().max()))
