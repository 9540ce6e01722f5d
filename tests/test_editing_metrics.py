"""Editing metrics on cases whose answers are known: hand-made numbers and a model with a fixed successor table."""

from __future__ import annotations

import json
import math

import pytest

from editharm.evaluate import editing
from editharm.evaluate.editing import (agreement, counterfact_metrics, edit_metrics, locality_reference, summarize,
                                       token_accuracy, zsre_metrics)
from editharm.evaluate.tasks.base import ChoiceOutput
from editharm.requests import EditRequest, ProbePrompt
from successor_model import successor_model

# After "a" the model is certain of " bcd" (a -> space -> b -> c -> d); every other token
# ("q", "x", "z", ...) is unknown to it and gives a uniform next-token distribution.
CHAIN = {"a": " ", " ": "b", "b": "c", "c": "d"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def chain_model():
    return successor_model(CHAIN)


def cf(case_id, new, true, paraphrases=(), neighbours=()):
    return EditRequest(case_id=case_id, subject="S", prompt="{} a", target_new=new, target_true=true,
                       paraphrases=tuple(paraphrases), locality=tuple(ProbePrompt(p, t) for p, t in neighbours))


# ---------------------------------------------------------------- pure functions

def test_counterfact_metrics_by_hand():
    # (new, true) mean token log-probs
    m = counterfact_metrics(rewrite=[(-1.0, -2.0)], paraphrase=[(-1.0, -2.0), (-3.0, -1.0)],
                            neighborhood=[(-1.0, -2.0), (-2.0, -1.0), (-1.5, -1.5)])
    assert m["reliability"] == 1.0
    assert m["generalization"] == 0.5
    assert m["locality"] == pytest.approx(1 / 3)  # only the middle neighbour keeps P(true) > P(new); a tie fails
    assert m["reliability_magnitude"] == pytest.approx(math.exp(-1) - math.exp(-2))
    assert m["generalization_magnitude"] == pytest.approx(((math.exp(-1) - math.exp(-2)) + (math.exp(-3) - math.exp(-1))) / 2)
    assert m["locality_magnitude"] == pytest.approx(((math.exp(-2) - math.exp(-1)) + (math.exp(-1) - math.exp(-2)) + 0) / 3)
    assert counterfact_metrics([(-1.0, -2.0)], [], [])["generalization"] is None


def test_zsre_pieces_by_hand():
    assert token_accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert agreement([5, 6], [5, 7]) == 0.5
    with pytest.raises(ValueError):
        token_accuracy([1], [1, 2])
    m = zsre_metrics([1.0], [0.5, 0.0], [])
    assert m == {"reliability": 1.0, "generalization": 0.25, "locality": None}


def test_summary_means_over_requests():
    rows = [{"style": "zsre", "reliability": 1.0, "generalization": 0.5, "locality": None},
            {"style": "zsre", "reliability": 0.0, "generalization": 0.5, "locality": 1.0}]
    s = summarize(rows)
    assert s["n"] == 2 and s["reliability"] == 0.5 and s["generalization"] == 0.5
    assert s["locality"] == 1.0 and s["n_locality"] == 1 and s["n_zsre"] == 2


def test_counterfact_rows_from_monkeypatched_scores(monkeypatch):
    """The plumbing from engine outputs to rows: per-token means, new first, neighbours' own target."""
    seen = []

    def fake_scores(model, tokenizer, items, **kwargs):
        seen.extend(items)
        # new scores -1 per token over 2 tokens, true -3 per token over 3 tokens
        return [ChoiceOutput(logprobs=[-2.0, -9.0], token_counts=[2, 3]) for _ in items]

    monkeypatch.setattr(editing, "score_choices", fake_scores)
    request = cf("7", "Rome", "Paris", paraphrases=["S is in a"], neighbours=[("T is in a", "Paris")])
    rows, summary = edit_metrics(None, None, [request])
    assert [it.choices for it in seen] == [(" Rome", " Paris")] * 3
    assert [it.context for it in seen] == ["S a", "S is in a", "T is in a"]
    row = rows[0]
    assert row["reliability"] == 1.0 and row["generalization"] == 1.0 and row["locality"] == 0.0
    assert row["mean_logprobs"]["rewrite"] == [[-1.0, -3.0]]
    assert summary["locality_magnitude"] == pytest.approx(math.exp(-3) - math.exp(-1))


# ---------------------------------------------------------------- through the engine, known model

def test_counterfact_on_a_model_that_knows_the_answer(chain_model):
    model, tokenizer = chain_model
    good = cf("good", "bcd", "zz", paraphrases=["S is a", "q"],
              neighbours=[("N a", "zz"), ("N q", "zz")])
    bad = cf("bad", "zz", "bcd", paraphrases=["S is a"], neighbours=[("N a", "bcd")])
    rows, summary = edit_metrics(model, tokenizer, [good, bad], batch_size=3, progress=False)
    g, b = rows
    # " bcd" after "a" is certain, " zz" is not; after "q" neither first token is predicted,
    # but " bcd"'s later tokens are, so it still wins.
    assert (g["reliability"], g["generalization"], g["locality"]) == (1.0, 1.0, 0.0)
    assert (b["reliability"], b["generalization"], b["locality"]) == (0.0, 0.0, 1.0)
    assert g["reliability_magnitude"] == pytest.approx(1.0, abs=1e-3)
    assert (summary["n"], summary["reliability"], summary["generalization"], summary["locality"]) == (2, 0.5, 0.5, 0.5)


def zs(case_id, new, prompt="{} a", rephrase="q", loc=("L a", "bcd")):
    return EditRequest(case_id=case_id, subject="S", prompt=prompt, target_new=new, target_true="x",
                       paraphrases=(rephrase,), locality=(ProbePrompt(*loc),), style="zsre")


def test_zsre_token_accuracy_and_locality(chain_model):
    model, tokenizer = chain_model
    requests = [zs("1", "bcd"), zs("2", "bzd")]
    reference = json.loads(json.dumps(locality_reference(model, tokenizer, requests, progress=False)))
    rows, summary = edit_metrics(model, tokenizer, requests, reference=reference, progress=False)
    # " bcd" after "a": all four tokens are the argmax.  After "q" the space is not.
    assert rows[0]["reliability"] == 1.0 and rows[0]["generalization"] == 0.75
    # " bzd": space and b right, z wrong, d wrong (after z the model is uniform)
    assert rows[1]["reliability"] == 0.5
    assert rows[0]["locality"] == 1.0 and rows[1]["locality"] == 1.0
    assert summary["reliability"] == 0.75

    # An "edited" model that continues b -> e instead of b -> c: the locality answer
    # " bcd" now disagrees with the base model's argmax at the c position only.
    edited, _ = successor_model({**CHAIN, "b": "e"})
    rows, _ = edit_metrics(edited, tokenizer, requests, reference=reference, progress=False)
    assert rows[0]["locality"] == 0.75


def test_zsre_without_reference_leaves_locality_unmeasured(chain_model):
    model, tokenizer = chain_model
    rows, summary = edit_metrics(model, tokenizer, [zs("1", "bcd")], progress=False)
    assert rows[0]["locality"] is None and summary["locality"] is None
    assert rows[0]["reliability"] == 1.0


def test_reference_from_another_tokenisation_is_refused(chain_model):
    model, tokenizer = chain_model
    request = zs("1", "bcd")
    reference = locality_reference(model, tokenizer, [request], progress=False)
    reference["1"]["token_ids"][0] = [0]
    with pytest.raises(ValueError, match="tokenised differently"):
        edit_metrics(model, tokenizer, [request], reference=reference, progress=False)
    with pytest.raises(ValueError, match="no entry for edit 1"):
        edit_metrics(model, tokenizer, [request], reference={}, progress=False)


def test_kinds_limit_the_prompts_scored(chain_model):
    model, tokenizer = chain_model
    request = cf("good", "bcd", "zz", paraphrases=["S is a"], neighbours=[("N a", "zz")])
    rows, summary = edit_metrics(model, tokenizer, [request], kinds=("rewrite",), progress=False)
    assert rows[0]["reliability"] == 1.0
    assert rows[0]["generalization"] is None and rows[0]["locality"] is None
    assert summary["n_generalization"] == 0
    with pytest.raises(ValueError, match="unknown prompt kinds"):
        edit_metrics(model, tokenizer, [request], kinds=("rephrase",), progress=False)
