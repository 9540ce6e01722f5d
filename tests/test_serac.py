"""SERAC on a tiny random model: the scope classifier routes, out-of-scope inputs are the
base model's bit for bit, and in-scope inputs are the base model reading the edit first."""

from __future__ import annotations

import json

import pytest
import torch

from editharm.evaluate.engine import generate, score_choices
from editharm.evaluate.tasks.base import ChoiceItem, GenerationItem
from editharm.methods import load_method
from editharm.methods import serac
from editharm.methods.base import EditContext, StateUpdate
from editharm.models import random_model
from editharm.requests import EditRequest, ProbePrompt

PEOPLE = ["Anna Karenina", "Boris Godunov", "Carl Sagan", "Dora Maar", "Emil Zatopek", "Frida Kahlo",
          "Gustav Klimt", "Hedy Lamarr"]
CITIES = ["Rome", "Oslo", "Lima", "Kyiv", "Pune", "Baku", "Riga", "Doha"]
UNRELATED = "Completely unrelated words about cooking pasta"
HP = serac.Hparams(cls_depth=1.0, cls_dim=16, lr=1e-2, max_iters=200, batch_size=4, log_interval=10)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def requests() -> list[EditRequest]:
    return [
        EditRequest(case_id=str(i), subject=s, prompt="{} lives in the city of", target_new=c, target_true="Paris",
                    paraphrases=(f"The home town of {s} is",),
                    locality=(ProbePrompt(f"Question {i}: what colour is the sky? It is", "blue"),))
        for i, (s, c) in enumerate(zip(PEOPLE, CITIES))
    ]


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def edited(tmp_path_factory, request):
    """A tiny model, SERAC trained on the requests, and a memory holding the first two edits."""
    torch.set_num_threads(1)
    model, tok = random_model(request.param, seed=0, hidden=32, layers=2, heads=2)
    out = tmp_path_factory.mktemp("serac")
    summary = serac.train(model, tok, requests(), HP, out, seed=0)
    ctx = EditContext(layout=None, covariance=lambda layer: None, artifacts={"trained_dir": str(out)})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    update = serac.apply(model, tok, requests()[:1], HP, ctx)
    ctx.state = update.state
    update = serac.apply(model, tok, requests()[1:2], HP, ctx)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "apply modified the model"
    wrapped = serac.attach(model, tok, update.state, HP, ctx)
    return model, tok, wrapped, update, out, summary


def left_padded(tok, texts):
    rows = [tok(t)["input_ids"] for t in texts]
    L = max(map(len, rows))
    ids = torch.full((len(rows), L), tok.pad_token_id)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, L - len(r):] = torch.tensor(r)
        mask[i, L - len(r):] = 1
    return rows, ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def edit_prefix(tok, request: EditRequest) -> list[int]:
    text = HP.template.format(prompt=request.filled_prompt, target=request.target_new)
    return tok(text, add_special_tokens=False)["input_ids"]


def test_interface_is_registered():
    mod = load_method("serac")
    assert mod.SUPPORTS_BATCH and not mod.EDITS_WEIGHTS and mod.TRAINED


def test_scope_loss_is_binary_cross_entropy():
    log_s = torch.log(torch.tensor([[0.9, 0.2], [0.3, 0.6]]))
    positive = torch.tensor([[True, False], [False, True]])
    expected = (-(torch.log(torch.tensor(0.9)) + torch.log(torch.tensor(0.6))) / 2
                - (torch.log(torch.tensor(0.8)) + torch.log(torch.tensor(0.7))) / 2) / 2
    assert torch.allclose(serac.scope_loss(log_s, positive), expected, atol=1e-6)


def test_training_writes_classifier_and_loss_curve(edited):
    *_, out, summary = edited
    rows = [json.loads(line) for line in (out / serac.LOG_FILE).read_text().splitlines()]
    assert rows and {"loss", "pos_recall", "neg_false_positive"} <= set(rows[0])
    assert summary["loss_last"] < summary["loss_first"]


def test_memory_holds_the_edits(edited):
    _, _, _, update, _, _ = edited
    assert isinstance(update, StateUpdate)
    assert update.state["case_ids"] == ["0", "1"]
    assert update.state["targets"] == ["Rome", "Oslo"]
    assert update.state["keys"].shape == (2, 32)


def test_classifier_routes_paraphrase_to_memory_and_unrelated_prompt_away(edited):
    _, tok, wrapped, _, _, _ = edited
    paraphrase = requests()[0].paraphrases[0]
    _, ids, mask, pos = left_padded(tok, [paraphrase, UNRELATED])
    with torch.no_grad():
        out = wrapped(input_ids=ids, attention_mask=mask, position_ids=pos)
    assert out.serac_routed == [0]
    assert out.serac_scores[0] > HP.threshold > out.serac_scores[1]


def test_out_of_scope_rows_are_bit_identical_and_in_scope_rows_read_the_edit(edited):
    model, tok, wrapped, _, _, _ = edited
    request = requests()[0]
    texts = [f"{request.paraphrases[0]} {request.target_new}", UNRELATED, requests()[5].filled_prompt]
    rows, ids, mask, pos = left_padded(tok, texts)
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        out = wrapped(input_ids=ids, attention_mask=mask, position_ids=pos)
        prefix = edit_prefix(tok, request)
        manual = model(input_ids=torch.tensor([prefix + rows[0]])).logits[0, len(prefix):]
    assert out.serac_routed == [0]
    assert torch.equal(out.logits[1], base[1]) and torch.equal(out.logits[2], base[2])
    assert torch.allclose(out.logits[0, -len(rows[0]):], manual, atol=1e-5)


@pytest.mark.parametrize("pad_side", ["left", "right"])
def test_scoring_engine_with_shared_context_masks(edited, pad_side):
    # score_choices packs choices after one context with a 4D mask and reads selected positions.
    model, tok, wrapped, _, _, _ = edited
    request = requests()[1]
    items = [ChoiceItem("in", request.paraphrases[0], (" Oslo", " Paris"), 0),
             ChoiceItem("out", UNRELATED, (" yes", " no"), 0)]
    got = score_choices(wrapped, tok, items, progress=False, pad_side=pad_side)
    base = score_choices(model, tok, items, progress=False, pad_side=pad_side)
    assert got[1].logprobs == base[1].logprobs
    prefix = edit_prefix(tok, request)
    ctx = tok(items[0].context)["input_ids"]
    for choice, logprob in zip(items[0].choices, got[0].logprobs):
        cont = tok(items[0].context + choice)["input_ids"][len(ctx):]
        with torch.no_grad():
            lp = model(input_ids=torch.tensor([prefix + ctx + cont])).logits[0].log_softmax(-1)
        n = len(prefix) + len(ctx)
        plain = sum(lp[n - 1 + k, t].item() for k, t in enumerate(cont))
        # On gemma3 the prefixed row is longer than the tiny model's 8-token window: the engine scores it
        # one choice per row with a padding mask, and the base model applies its window itself.
        assert logprob == pytest.approx(plain, abs=1e-4)


def test_generation_with_cache_follows_the_route(edited):
    model, tok, wrapped, _, _, _ = edited
    request = requests()[0]
    items = [GenerationItem("in", request.paraphrases[0], None, ("\n",), 5),
             GenerationItem("out", UNRELATED, None, ("\n",), 3)]
    got = generate(wrapped, tok, items, progress=False)
    assert got[1] == generate(model, tok, items[1:], progress=False)[0]
    seq = edit_prefix(tok, request) + tok(items[0].prompt)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(5):
            new.append(int(model(input_ids=torch.tensor([seq + new])).logits[0, -1].argmax()))
    assert got[0] == tok.decode(new, skip_special_tokens=True).split("\n")[0]


def test_empty_memory_is_the_base_model(edited):
    model, tok, _, _, out, _ = edited
    ctx = EditContext(layout=None, covariance=lambda layer: None, artifacts={"trained_dir": str(out)})
    bare = serac.attach(model, tok, {}, HP, ctx)
    _, ids, mask, pos = left_padded(tok, [requests()[0].paraphrases[0]])
    with torch.no_grad():
        assert torch.equal(bare(input_ids=ids, attention_mask=mask, position_ids=pos).logits,
                           model(input_ids=ids, attention_mask=mask, position_ids=pos).logits)
