"""The prompts of the locate-then-edit methods: subject positions, target ids, context templates, padding."""

from __future__ import annotations

import pytest
import torch

from editharm.methods.base import EditContext
from editharm.methods.prompts import (
    context_templates,
    fill,
    generate_context_templates,
    length_buckets,
    pad_rows,
    right_pad,
    target_ids,
    tokenize_at_subject,
)
from editharm.models import layout_for, random_model


@pytest.fixture(scope="module", params=["llama", "gpt2", "gpt_neox", "gemma3"])
def tiny(request):
    model, tok = random_model(request.param, seed=0, hidden=32, layers=3, heads=4)
    return model, tok, layout_for(model)


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


def test_context_templates_are_seeded_and_kept_in_state(tiny):
    model, tok, layout = tiny
    a = generate_context_templates(model, tok, [[4, 5]], seed=3)
    b = generate_context_templates(model, tok, [[4, 5]], seed=3)
    assert a == b
    assert a[0] == ["{}"] and len(a[1]) == 5
    assert all(t.count("{}") == 1 and t.endswith(". {}") for t in a[1])
    ctx = EditContext(layout=layout, covariance=lambda layer: None, seed=3)
    first = context_templates(model, tok, ctx, [[4, 5]])
    assert ctx.state["context_templates"] == first == a
    ctx.state["context_templates"] = [["{}"], ["kept. {}"]]
    assert context_templates(model, tok, ctx, [[4, 5]]) == [["{}"], ["kept. {}"]]


def test_rows_are_padded_on_the_right_with_a_mask_of_real_tokens():
    rows = [[5, 6, 7], [8], [9, 10]]
    ids, real = right_pad(rows, pad=0)
    assert torch.equal(ids, torch.tensor([[5, 6, 7], [8, 0, 0], [9, 10, 0]]))
    assert torch.equal(ids, pad_rows(rows, 0))
    assert real.tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    assert torch.equal(pad_rows([[1], [2, 3]], -1), torch.tensor([[1, -1], [2, 3]]))


def test_length_buckets_cover_every_row_once_and_bound_the_padding():
    lengths = [3, 40, 41, 5, 39, 4, 100, 3]
    buckets = length_buckets(lengths)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    for b in buckets:
        # A bucket runs at its longest row's length: at most 15% more tokens than its rows hold.
        assert len(b) * max(lengths[i] for i in b) <= 1.15 * sum(lengths[i] for i in b)
    assert {6} in [set(b) for b in buckets]  # the long row does not pad the short ones
    assert all(len(b) <= 2 for b in length_buckets([7] * 5, max_rows=2))
