"""The shared value optimisation: the cached fast path computes exactly the naive loss."""

from __future__ import annotations

import pytest
import torch

from editharm.methods.base import EditContext
from editharm.methods.values import (
    ValueProblem,
    ValueSettings,
    context_templates,
    fill,
    generate_context_templates,
    optimize_values,
    subject_keys,
    target_ids,
    tokenize_at_subject,
)
from editharm.models import facts_for, random_model
from editharm.requests import EditRequest

TEMPLATES = ["{}", "A note. {}", "Some longer text comes first here. {}"]
REQUESTS = [
    EditRequest("1", "Danielle Darrieux", "The mother tongue of {} is", "English", "French"),
    EditRequest("2", "Paris", "{} is the capital of", "Italy", "France"),
]


@pytest.fixture(scope="module", params=["llama", "gpt2", "gpt_neox"])
def tiny(request):
    model, tok = random_model(request.param, seed=0, hidden=32, layers=3, heads=4)
    return model, tok, facts_for(model)


def test_fill_marks_the_subject():
    text, a, b = fill("Ctx. {}", "The capital of {} is", "France")
    assert text == "Ctx. The capital of France is"
    assert text[a:b] == "France"


def test_subject_last_token_is_found(tiny):
    _, tok, _ = tiny
    text, a, b = fill("Hello. {}", "{} plays the", "Miles Davis")
    ids, pos = tokenize_at_subject(tok, text, a, b)
    # Byte-level tokenizer: one token per byte, so the last subject token is the last subject byte.
    assert pos == b - 1
    assert tok.decode(ids[: pos + 1]).endswith("Davis")


def test_target_ids_follow_the_prompt(tiny):
    _, tok, _ = tiny
    ids = target_ids(tok, "The capital of France is", "Paris")
    assert tok.decode(ids) == " Paris"


@pytest.mark.parametrize("sites", [("mlp",), ("residual",), ("attn", "mlp")])
@pytest.mark.parametrize("layer", [0, 2])
def test_fast_path_equals_naive_path(tiny, sites, layer):
    model, tok, facts = tiny
    problem = ValueProblem(model, tok, facts, REQUESTS, layer, TEMPLATES, sites=sites)
    assert problem.fast
    gen = torch.Generator().manual_seed(1)
    deltas = {s: (3 * torch.randn(len(REQUESTS), facts.hidden_size, generator=gen)).requires_grad_(True) for s in sites}
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
    model, tok, facts = tiny
    problem = ValueProblem(model, tok, facts, REQUESTS, 1, TEMPLATES)
    terms = problem.losses({"mlp": torch.zeros(2, facts.hidden_size)})
    assert torch.allclose(terms.kl, torch.zeros(2), atol=1e-6)


def test_subset_of_requests_matches_full_batch(tiny):
    model, tok, facts = tiny
    problem = ValueProblem(model, tok, facts, REQUESTS, 1, TEMPLATES)
    d = torch.randn(2, facts.hidden_size)
    full = problem.losses({"mlp": d})
    second = problem.losses({"mlp": d[1:]}, [1])
    assert torch.allclose(second.nll, full.nll[1:], atol=1e-6)


def test_keys_are_template_means_of_mlp_inputs(tiny):
    model, tok, facts = tiny
    problem = ValueProblem(model, tok, facts, REQUESTS, 1, TEMPLATES)
    direct = subject_keys(model, tok, facts, REQUESTS, [1], [TEMPLATES])[1]
    assert torch.allclose(problem.keys, direct, atol=1e-5)


def test_batched_optimisation_equals_one_request_at_a_time(tiny):
    model, tok, facts = tiny
    settings = ValueSettings(num_steps=6, lr=0.5, weight_decay=0.5, clamp_norm_factor=4.0, kl_factor=0.0625)
    batch = optimize_values(ValueProblem(model, tok, facts, REQUESTS, 1, TEMPLATES, sites=("residual",)), settings)
    for r, req in enumerate(REQUESTS):
        alone = optimize_values(ValueProblem(model, tok, facts, [req], 1, TEMPLATES, sites=("residual",)), settings)
        assert batch.steps[r] == alone.steps[0]
        assert torch.allclose(batch.values["residual"][r], alone.values["residual"][0], atol=1e-4, rtol=1e-4)


def test_optimisation_lowers_the_loss(tiny):
    model, tok, facts = tiny
    # Layer 0, so later layers carry delta to the answer.
    settings = ValueSettings(num_steps=8, lr=0.5, weight_decay=0.0, clamp_norm_factor=4.0, kl_factor=0.0625)
    problem = ValueProblem(model, tok, facts, REQUESTS[:1], 0, TEMPLATES)
    res = optimize_values(problem, settings)
    # Random models barely respond to one vector at one position, but the loss must still go down.
    assert res.history[0][-1] < res.history[0][0]
    assert res.steps[0] == len(res.history[0]) - 1
    assert torch.allclose(res.values["mlp"], res.references["mlp"] + res.deltas["mlp"])


def test_delta_norm_is_clamped(tiny):
    model, tok, facts = tiny
    settings = ValueSettings(num_steps=4, lr=0.5, weight_decay=0.0, clamp_norm_factor=0.5, kl_factor=0.0625)
    res = optimize_values(ValueProblem(model, tok, facts, REQUESTS[:1], 2, TEMPLATES), settings)
    assert float(res.deltas["mlp"][0].norm()) <= 0.5 * float(res.references["mlp"][0].norm()) * (1 + 1e-5)
    assert float(res.deltas["mlp"][0].norm()) > 0


def test_context_templates_are_seeded_and_kept_in_state(tiny):
    model, tok, facts = tiny
    a = generate_context_templates(model, tok, [[4, 5]], seed=3)
    b = generate_context_templates(model, tok, [[4, 5]], seed=3)
    assert a == b
    assert a[0] == ["{}"] and len(a[1]) == 5
    assert all(t.count("{}") == 1 and t.endswith(". {}") for t in a[1])
    ctx = EditContext(facts=facts, covariance=lambda layer: None, seed=3)
    first = context_templates(model, tok, ctx, [[4, 5]])
    assert ctx.state["context_templates"] == first == a
    ctx.state["context_templates"] = [["{}"], ["kept. {}"]]
    assert context_templates(model, tok, ctx, [[4, 5]]) == [["{}"], ["kept. {}"]]
