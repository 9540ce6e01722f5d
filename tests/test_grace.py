"""GRACE: inputs outside every deferral radius are untouched bit for bit; edited prompts yield the new target."""

import json

import pytest
import torch

from editharm.methods import grace
from editharm.methods.base import EditContext
from editharm.methods.ft import encode_prompt_target
from editharm.models import layout_for, random_model
from editharm.requests import EditRequest

EDIT = EditRequest(case_id="0", subject="Paris", prompt="{} is the capital of", target_new="Z", target_true="F")
OTHER = EditRequest(case_id="1", subject="Rome", prompt="{} is the capital of", target_new="Q", target_true="I")


WORDS = "<pad> Paris Rome is the capital of Hello world how are you Bonjour Z Q F I".split()


def _word_tokenizer():
    """Whole words as tokens, so a target is one token and "argmax = target" is a real test."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<pad>")


def _tiny(family):
    model, _ = random_model(family, seed=0, hidden=32, layers=2, heads=2)  # 257 ids; the words use the first few
    return model, _word_tokenizer(), EditContext(layout=layout_for(model), covariance=lambda layer: None)


# The tiny random models' down-projection inputs have norms near 0.1 (SmolLM2's: 10-30),
# and different prompts' keys lie 0.02 or more apart, so the radius is scaled down to match.
def _edit(family, requests, **hp):
    model, tok, ctx = _tiny(family)
    hparams = grace.Hparams(layer=1, **{"eps": 1e-3, "n_iter": 40, "edit_lr": 1.0, **hp})
    actions = []
    for request in requests:
        update = grace.apply(model, tok, [request], hparams, ctx)
        ctx.state = update.state
        actions.append(update.info["action"])
    return model, tok, ctx, hparams, actions


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_outside_every_radius_is_bit_identical_and_edit_yields_target(family):
    model, tok, ctx, hp, actions = _edit(family, [EDIT])
    assert actions == ["add"]
    state = ctx.state
    assert set(state) == {"keys", "values", "radii", "labels", "case_ids", "module"}
    json.dumps({k: v for k, v in state.items() if not isinstance(v, torch.Tensor)})  # the rest is JSON

    unrelated = tok(["Hello world how are you", "Bonjour"], return_tensors="pt", padding=True)
    edited = encode_prompt_target(tok, [EDIT.filled_prompt], [EDIT.target_new], "cpu")
    with torch.no_grad():
        base_unrelated = model(**unrelated).logits
        base_edit = model(input_ids=edited.input_ids).logits
        grace.attach(model, tok, state, hp, ctx)
        grace.attach(model, tok, state, hp, ctx)  # re-attaching replaces, never stacks
        assert len(model.get_submodule(state["module"])._forward_hooks) == 1
        out_unrelated = model(**unrelated).logits
        out_edit = model(input_ids=edited.input_ids).logits
        assert grace.detach(model) and not grace.detach(model)
        out_detached = model(input_ids=edited.input_ids).logits

    assert torch.equal(out_unrelated, base_unrelated)
    assert torch.equal(out_detached, base_edit)
    predicted = out_edit[0, edited.pred_pos[0]].argmax(-1)
    assert predicted.tolist() == edited.target_ids[0].tolist()
    assert base_edit[0, edited.pred_pos[0]].argmax(-1).tolist() != edited.target_ids[0].tolist()


def test_split_on_conflicting_label_keeps_both_edits():
    # a radius wider than any distance: the second edit lands inside the first key's reach and splits it
    model, tok, ctx, hp, actions = _edit("llama", [EDIT, OTHER], eps=100.0)
    assert actions == ["add", "split"]
    state = ctx.state
    assert state["labels"] == ["Z", "Q"]
    d = float((state["keys"][0] - state["keys"][1]).norm())
    assert state["radii"].tolist() == pytest.approx([d / 2 - grace.SPLIT_MARGIN, d / 2])
    grace.attach(model, tok, state, hp, ctx)
    try:
        for request in (EDIT, OTHER):
            batch = encode_prompt_target(tok, [request.filled_prompt], [request.target_new], "cpu")
            with torch.no_grad():
                logits = model(input_ids=batch.input_ids).logits
            assert logits[0, batch.pred_pos[0]].argmax(-1).tolist() == batch.target_ids[0].tolist()
    finally:
        grace.detach(model)


def test_codebook_rules():
    book = grace.Codebook.empty(2, 1)
    v = torch.zeros(1)
    book, slot, action = grace.update_codebook(book, torch.tensor([0.0, 0.0]), "a", "0", v, eps=1.0, expand="coverage")
    assert (slot, action, book.radii.tolist()) == (0, "add", [1.0])
    # same label, outside the radius but within eps + radius: expand to cover the new query
    book, slot, action = grace.update_codebook(book, torch.tensor([1.5, 0.0]), "a", "1", v, eps=1.0, expand="coverage")
    assert (slot, action, len(book), book.radii.tolist()) == (0, "expand", 1, [1.5])
    # same label inside the radius: nothing changes, the existing value is trained further
    book, slot, action = grace.update_codebook(book, torch.tensor([0.5, 0.0]), "a", "2", v, eps=1.0, expand="coverage")
    assert (slot, action, book.radii.tolist()) == (0, "within", [1.5])
    # a different label nearby: split both radii at half the distance
    book, slot, action = grace.update_codebook(book, torch.tensor([0.0, 2.0]), "b", "3", v, eps=1.0, expand="coverage")
    assert (slot, action) == (1, "split")
    assert book.radii.tolist() == pytest.approx([1.0 - grace.SPLIT_MARGIN, 1.0])
    # far from everything: a new key with the initial radius
    book, slot, action = grace.update_codebook(book, torch.tensor([10.0, 10.0]), "b", "4", v, eps=1.0, expand="coverage")
    assert (slot, action, book.radii.tolist()[-1], book.case_ids) == (2, "add", 1.0, ["0", "3", "4"])
    # moving average moves the key halfway to the query
    book2, _, _ = grace.update_codebook(grace.Codebook.empty(2, 1), torch.zeros(2), "a", "0", v, 1.0, "moving_average")
    book2, _, action = grace.update_codebook(book2, torch.tensor([1.5, 0.0]), "a", "1", v, 1.0, "moving_average")
    assert action == "expand" and book2.keys[0].tolist() == [0.75, 0.0]


def test_state_module_must_match_hparams():
    model, tok, ctx, hp, _ = _edit("gpt2", [EDIT], n_iter=1)
    with pytest.raises(ValueError, match="wraps"):
        grace.apply(model, tok, [OTHER], grace.Hparams(layer=0, n_iter=1), ctx)
