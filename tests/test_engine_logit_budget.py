"""The scoring engine when one unit keeps more logits than its memory budget.

A rolling window of a large-vocabulary model (Gemma: 2,048 positions x 262,144 tokens) would
need gigabytes of float32 logits; the engine then makes the logits a slice at a time. Here the
budget is shrunk so that tiny models take those paths, and the scores must equal the ordinary
one-pass scores: for a transformers model (head on the hidden states, soft-capping included)
and for a wrapper that only returns logits (as SERAC's SeracModel).
"""

from __future__ import annotations

import pytest
import torch

from editharm.evaluate import engine
from editharm.evaluate.engine import score_choices, score_rolling
from editharm.evaluate.tasks.base import ChoiceItem, RollingItem
from editharm.models import head_logits as engine_head, random_model
from test_tasks_harm import _direct_logprob

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = ["a text long enough for several windows of twenty-four bytes each, and then some",
         "short one, 16 b"]
ITEMS = [ChoiceItem("a", "The capital of France is", (" Paris", " London town"), 0),
         ChoiceItem("b", "Q: 2+2? A:", (" 4", " five"), 1)]


class LogitsOnly(torch.nn.Module):
    """A causal LM wrapper with no base_model or head of its own: only forward(...).logits."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.calls = 0

    @property
    def config(self):
        return self.inner.config

    def forward(self, **kwargs):
        self.calls += 1
        return self.inner(**kwargs)


def _models():
    llama, tok = random_model("llama", seed=1, hidden=32, layers=2, heads=4)
    gemma, gtok = random_model("gemma3", seed=2, hidden=32, layers=2, heads=4)
    gemma.config.final_logit_softcapping = 3.0   # large random logits are squashed: the head path must do it too
    return [("llama", llama, tok), ("gemma3", gemma, gtok)]


@pytest.mark.parametrize("name,model,tok", _models(), ids=["llama", "gemma3"])
@pytest.mark.parametrize("wrap", [False, True], ids=["hidden-states", "logits-only-wrapper"])
def test_scores_within_and_over_the_budget_agree(name, model, tok, wrap, monkeypatch):
    rolling = [RollingItem(id=str(i), text=t, max_window=24) for i, t in enumerate(TEXTS)]
    scorer = LogitsOnly(model) if wrap else model
    full_roll = score_rolling(model, tok, rolling, batch_size=4, progress=False)
    full_choice = score_choices(model, tok, ITEMS, batch_size=4, progress=False)
    # The ordinary path is the plain forward pass.
    assert full_roll[0].logprob == pytest.approx(_direct_logprob(model, tok, TEXTS[0], 24), abs=1e-4)

    # Five positions' logits per slice: every unit is over the budget.
    monkeypatch.setattr(engine, "MAX_LOGIT_ELEMENTS", 5 * model.config.vocab_size)
    head_calls = []
    monkeypatch.setattr(engine, "head_logits", lambda m, h: head_calls.append(len(h)) or engine_head(m, h))
    sliced_roll = score_rolling(scorer, tok, rolling, batch_size=4, progress=False)
    sliced_choice = score_choices(scorer, tok, ITEMS, batch_size=4, progress=False)
    for a, b in zip(full_roll, sliced_roll):
        assert b.logprob == pytest.approx(a.logprob, abs=1e-4)
        assert (b.token_count, b.windows) == (a.token_count, a.windows)
    for a, b in zip(full_choice, sliced_choice):
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)
        assert b.is_greedy == a.is_greedy
    if wrap:
        assert scorer.calls > len(rolling) + len(ITEMS)   # one pass per slice of kept positions
        assert not head_calls
    else:
        assert head_calls and max(head_calls) <= 5         # the head ran on slices of target positions


def test_over_budget_logits_are_still_checked_for_nan(monkeypatch):
    model, tok = random_model("llama", seed=1, hidden=32, layers=2, heads=4)
    with torch.no_grad():
        model.get_output_embeddings().weight[3, 0] = float("nan")
    monkeypatch.setattr(engine, "MAX_LOGIT_ELEMENTS", 5 * model.config.vocab_size)
    with pytest.raises(engine.NonFiniteLogitsError):
        score_rolling(model, tok, [RollingItem(id="x", text=TEXTS[0], max_window=24)], progress=False)
