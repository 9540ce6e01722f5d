"""The scoring engine on a sliding-window model (Gemma 3): scores equal plain forward passes beyond the window.

The tiny gemma3 model has an 8-token window on its local layers (models.random_model), and the
byte-level tokenizer makes one token per character, so most items here are longer than the window.
"""

from __future__ import annotations

import pytest
import torch

from editharm.evaluate import engine
from editharm.evaluate.engine import encode_choices, generate, score_choices, score_rolling, sliding_window
from editharm.evaluate.tasks.base import ChoiceItem, GenerationItem, RollingItem
from editharm.models import random_model
from test_tasks_harm import _direct_logprob

TOL = 1e-4
WINDOW = 8

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ITEMS = [
    ChoiceItem("long", "The capital of France is", (" Paris", " London town", " a"), 0),
    ChoiceItem("short", "ab", (" c", " de"), 0),                      # fits the window: stays packed
    ChoiceItem("edge", "abcdef", (" gh", " g"), 0),                    # span exactly 8: stays packed
    ChoiceItem("one", "Q: what is 2+2? A:", (" 4",), 0),
    ChoiceItem("long choice", "x", (" a choice longer than the window", " y"), 0),
]


@pytest.fixture(scope="module")
def gemma():
    model, tok = random_model("gemma3", seed=3, hidden=32, layers=4, heads=4)
    assert model.config.sliding_window == WINDOW
    return model, tok


def naive(model, tokenizer, item: ChoiceItem) -> tuple[list[float], list[list[int]]]:
    """Per choice: a plain forward of context + choice (the model builds its own masks), log-prob and argmaxes."""
    ctx, conts = encode_choices(tokenizer, item.context, item.choices)
    scores, argmax = [], []
    for cont in conts:
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([ctx + cont])).logits[0].log_softmax(-1)
        rows = logp[len(ctx) - 1:len(ctx) - 1 + len(cont)]
        scores.append(sum(rows[j, t].item() for j, t in enumerate(cont)))
        argmax.append(rows.argmax(-1).tolist())
    return scores, argmax


def test_sliding_window_is_read_from_the_layer_types(gemma):
    model, _ = gemma
    assert sliding_window(model) == WINDOW
    llama, _ = random_model("llama", seed=0, hidden=16, layers=1, heads=2)
    assert sliding_window(llama) is None
    full, _ = random_model("gemma3", seed=0, hidden=16, layers=2, heads=2)
    full.config.layer_types = ["full_attention", "full_attention"]   # a window no layer uses
    assert sliding_window(full) is None


def test_the_window_changes_scores_here(gemma):
    """The items reach past the window: one packed row with the segment mask alone is not the plain forward."""
    model, tok = gemma
    ctx, conts = encode_choices(tok, ITEMS[0].context, ITEMS[0].choices)
    unit = engine._Unit(0, ctx, conts)
    assert unit.span > WINDOW
    packed = engine.pack_units([unit], 0, "right", torch.float32, "cpu")
    lp, _ = engine._score_batch(model, packed)
    want, _ = naive(model, tok, ITEMS[0])
    assert max(abs(sum(got) - w) for got, w in zip(lp[0], want)) > 1e-3


@pytest.mark.parametrize("pad_side", ["left", "right"])
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_scores_equal_plain_forward_beyond_the_window(gemma, pad_side, batch_size):
    model, tok = gemma
    outputs = score_choices(model, tok, ITEMS, batch_size=batch_size, pad_side=pad_side, progress=False,
                            token_details=True)
    for item, out in zip(ITEMS, outputs):
        want, argmax = naive(model, tok, item)
        assert out.logprobs == pytest.approx(want, abs=TOL), (item.id, pad_side, batch_size)
        assert out.argmax_ids == argmax, item.id
        _, conts = encode_choices(tok, item.context, item.choices)
        assert out.token_ids == conts and out.token_counts == [len(c) for c in conts]
        assert out.is_greedy == [a == c for a, c in zip(argmax, conts)]


def test_items_within_the_window_stay_packed(gemma):
    """Only items reaching past the window lose the shared context: the others' tokens are counted once."""
    model, tok = gemma
    short = [ITEMS[1], ITEMS[2]]
    stats: dict = {}
    score_choices(model, tok, short, progress=False, stats=stats)
    units = [engine._Unit(i, *encode_choices(tok, it.context, it.choices)) for i, it in enumerate(short)]
    assert max(u.span for u in units) == WINDOW                   # "edge": its last query sees position 0
    assert stats["tokens"] == sum(u.length for u in units) < stats["tokens_unshared"]
    stats = {}
    score_choices(model, tok, ITEMS[:1], progress=False, stats=stats)
    ctx, conts = encode_choices(tok, ITEMS[0].context, ITEMS[0].choices)
    assert stats["tokens"] == sum(len(ctx) + len(c) - 1 for c in conts)


@pytest.mark.parametrize("mask", ["padding", "none"])
def test_masks_without_segments_refuse_several_choices_in_a_row(mask):
    unit = engine._Unit(0, [1, 2], [[3, 4], [5]])
    with pytest.raises(ValueError, match="one choice per unit"):
        engine.pack_units([unit], 0, "right", torch.float32, "cpu", mask=mask)


def test_rolling_windows_of_different_lengths_equal_plain_forward(gemma):
    """Windows of unequal length share a batch (padded): still the plain forward of each window."""
    model, tok = gemma
    texts = ["a text long enough for two windows of twenty-four bytes", "short one, 16 b"]
    items = [RollingItem(id=str(i), text=t, max_window=24) for i, t in enumerate(texts)]
    outs = score_rolling(model, tok, items, batch_size=4, progress=False)
    for item, out in zip(items, outs):
        assert out.logprob == pytest.approx(_direct_logprob(model, tok, item.text, 24), abs=TOL), item.id
    assert outs[0].windows == 3


def test_batched_generation_beyond_the_window_equals_unbatched(gemma):
    model, tok = gemma
    items = [GenerationItem("a", "A prompt longer than the window", None, (), 6),
             GenerationItem("b", "short", None, (), 6)]
    batched = generate(model, tok, items, batch_size=2, progress=False)
    assert batched == [generate(model, tok, [it], batch_size=1, progress=False)[0] for it in items]
