"""The scoring engine: batched scoring equals one-sequence-at-a-time scoring, whatever the padding."""

from __future__ import annotations

import math

import pytest
import torch

from editharm.evaluate import engine
from editharm.evaluate.engine import (NonFiniteLogitsError, encode_choices, first_stop, forward_throughput, generate,
                                      run_task, score_choices)
from editharm.evaluate.tasks.base import ChoiceItem, GenerationItem, Task
from editharm.models import random_model
from successor_model import successor_model

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHOICE_ITEMS = [
    ChoiceItem("capital", "The capital of France is", (" Paris", " London town", " a"), 0),
    ChoiceItem("sum", "Q: what is 2+2? A:", (" 4", " four, obviously", " 5"), 0),
    ChoiceItem("single", "x", (" y z w q",), 0),
    ChoiceItem("space", "The answer is ", ("yes", "no"), 0),  # trailing space moves into the choices
    ChoiceItem("empty", "", ("hello", " world"), 1),
    ChoiceItem("long", "A much longer context that makes this row the longest one in the batch by far, " * 2,
               (" end", " the end of it"), 0),
]


@pytest.fixture(scope="module", params=["llama", "gpt2", "gpt_neox"])
def tiny(request):
    return random_model(request.param, seed=1)


def naive_logprobs(model, tokenizer, item: ChoiceItem) -> list[float]:
    """One forward pass per choice over context + choice, no padding, no sharing."""
    ctx, conts = encode_choices(tokenizer, item.context, item.choices)
    scores = []
    for cont in conts:
        with torch.no_grad():
            logp = model(torch.tensor([ctx + cont])).logits[0].log_softmax(-1)
        scores.append(sum(logp[len(ctx) - 1 + j, tok].item() for j, tok in enumerate(cont)))
    return scores


@pytest.mark.parametrize("pad_side", ["left", "right"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_batched_shared_context_equals_naive_per_choice(tiny, pad_side, batch_size):
    model, tokenizer = tiny
    expected = [naive_logprobs(model, tokenizer, item) for item in CHOICE_ITEMS]
    outputs = score_choices(model, tokenizer, CHOICE_ITEMS, batch_size=batch_size, pad_side=pad_side, progress=False)
    for item, out, exp in zip(CHOICE_ITEMS, outputs, expected):
        assert len(out.logprobs) == len(item.choices)
        for got, want in zip(out.logprobs, exp):
            assert got == pytest.approx(want, abs=TOL), (item.id, pad_side)
        assert out.char_counts == [len(c) for c in item.choices]


ONE_SEGMENT_ITEMS = [
    # one token each under the tests' byte-level tokenizer, as " A" is under SmolLM2's
    ChoiceItem("letters", "Question: pick one. Choices: A B C D. Answer:", ("A", "B", "C", "D"), 0),
    ChoiceItem("letters_long", "A longer question with more words before it asks to pick. Answer:", ("A", "B"), 1),
    ChoiceItem("one_choice", "the cat sat on the", (" mat and slept",), 0),
]


def _masks_seen(model, monkeypatch) -> list:
    seen = []
    forward = type(model).forward

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("attention_mask"))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", spy)
    return seen


@pytest.mark.parametrize("pad_side", ["left", "right"])
def test_one_segment_rows_run_without_a_mask(tiny, pad_side, monkeypatch):
    """One choice, or one-token choices: the row's mask is the causal one, so none is built (fused causal attention).

    The rows differ in length, so they are padded: right padding is what makes dropping the
    mask exact, whatever pad side is asked for; the scores still equal one pass per choice.
    """
    model, tokenizer = tiny
    assert all(engine._Unit(0, *encode_choices(tokenizer, it.context, it.choices)).causal for it in ONE_SEGMENT_ITEMS)
    expected = [naive_logprobs(model, tokenizer, item) for item in ONE_SEGMENT_ITEMS]
    seen = _masks_seen(model, monkeypatch)
    outputs = score_choices(model, tokenizer, ONE_SEGMENT_ITEMS, batch_size=4, pad_side=pad_side, progress=False)
    assert seen and all(mask is None for mask in seen)
    for item, out, exp in zip(ONE_SEGMENT_ITEMS, outputs, expected):
        assert out.logprobs == pytest.approx(exp, abs=TOL), item.id


def test_several_token_choices_keep_the_segment_mask(tiny, monkeypatch):
    model, tokenizer = tiny
    seen = _masks_seen(model, monkeypatch)
    score_choices(model, tokenizer, [CHOICE_ITEMS[0]], progress=False)
    assert len(seen) == 1 and seen[0] is not None and seen[0].dim() == 4


def test_no_mask_needs_right_padding():
    unit = engine._Unit(0, [1, 2, 3], [[4]])
    with pytest.raises(ValueError, match="right padding"):
        engine.pack_units([unit], 0, "left", torch.float32, "cpu", mask="none")
    assert engine.pack_units([unit], 0, "right", torch.float32, "cpu", mask="none").attention_mask is None


def test_no_mask_rows_do_not_look_packed_to_transformers():
    """A position that does not follow the previous one reads as a new packed sequence (transformers then builds a
    block mask and attention loses its fused causal kernel), so the pads after a short row continue its positions."""
    from transformers.masking_utils import find_packed_sequence_indices

    units = [engine._Unit(0, [1, 2, 3, 4, 5], [[6]]), engine._Unit(1, [1, 2], [[6], [7]])]
    packed = engine.pack_units(units, 0, "right", torch.float32, "cpu", mask="none")
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]
    assert find_packed_sequence_indices(packed.position_ids) is None


def test_tokenizer_padding_side_does_not_change_scores():
    model, tokenizer = random_model("llama", seed=2)
    tokenizer.padding_side = "left"
    left = score_choices(model, tokenizer, CHOICE_ITEMS, batch_size=3, progress=False)
    tokenizer.padding_side = "right"
    right = score_choices(model, tokenizer, CHOICE_ITEMS, batch_size=3, progress=False)
    for a, b in zip(left, right):
        assert a.logprobs == pytest.approx(b.logprobs, abs=TOL)


def test_encode_choices_follows_lm_eval_boundary_convention():
    _, tokenizer = random_model("gpt2")
    ctx, conts = encode_choices(tokenizer, "answer: ", ["yes", "no"])
    assert ctx == tokenizer("answer:")["input_ids"]
    assert conts[0] == tokenizer(" yes", add_special_tokens=False)["input_ids"]
    ctx, conts = encode_choices(tokenizer, "", ["hi"])
    assert ctx == [tokenizer.bos_token_id]
    assert conts == [tokenizer("hi", add_special_tokens=False)["input_ids"]]


def test_token_details_report_argmax_and_greedy():
    model, tokenizer = successor_model({"a": " ", " ": "b", "b": "c", "c": "d"})
    item = ChoiceItem("x", "qa", (" bcd", " bxd"), 0)
    (out,) = score_choices(model, tokenizer, [item], token_details=True, progress=False)
    space, b, c, d = (tokenizer(ch, add_special_tokens=False)["input_ids"][0] for ch in " bcd")
    assert out.token_ids[0] == [space, b, c, d]
    assert out.argmax_ids[0] == [space, b, c, d]
    assert out.is_greedy == [True, False]
    assert out.logprobs[0] == pytest.approx(0.0, abs=1e-3)
    assert out.logprobs[1] < -10


def test_context_is_left_truncated_to_the_model_length():
    model, tokenizer = random_model("llama", seed=0, max_positions=32)
    item = ChoiceItem("long", "z" * 100, (" yes", " no"), 0)
    (out,) = score_choices(model, tokenizer, [item], progress=False)
    ctx, conts = encode_choices(tokenizer, item.context, item.choices)
    truncated = ChoiceItem("cut", tokenizer.decode(ctx[-(32 - 3):]), item.choices, 0)
    assert all(math.isfinite(x) for x in out.logprobs)
    assert out.logprobs == pytest.approx(naive_logprobs(model, tokenizer, truncated), rel=1e-5, abs=TOL)


# ---------------------------------------------------------------- generation

def naive_generate(model, tokenizer, item: GenerationItem) -> str:
    ids, new = tokenizer(item.prompt)["input_ids"], []
    for _ in range(item.max_new_tokens):
        with torch.no_grad():
            token = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
        if token == tokenizer.eos_token_id:
            break
        new.append(token)
        text = tokenizer.decode(new)
        cut = first_stop(text, item.stop)
        if cut is not None:
            return text[:cut]
    return tokenizer.decode(new)


def test_batched_generation_equals_unbatched(tiny):
    model, tokenizer = tiny
    items = [GenerationItem("a", "Hello there", None, stop=("\n",), max_new_tokens=6),
             GenerationItem("b", "A somewhat longer prompt than the others", None, stop=("e", "f"), max_new_tokens=12),
             GenerationItem("c", "Z", None, stop=(), max_new_tokens=9),
             GenerationItem("d", "The quick brown fox", None, stop=("q",), max_new_tokens=3)]
    expected = [naive_generate(model, tokenizer, it) for it in items]
    assert generate(model, tokenizer, items, batch_size=4, progress=False) == expected
    assert generate(model, tokenizer, items, batch_size=1, progress=False) == expected


def test_generation_stops_limits_and_eos():
    model, tokenizer = successor_model({"a": " ", " ": "b", "b": "c", "c": "d", "d": "\n", "\n": "e", "e": None})
    items = [GenerationItem("newline", "xa", None, stop=("\n",), max_new_tokens=30),
             GenerationItem("multi-char stop", "xa", None, stop=("cd",), max_new_tokens=30),
             GenerationItem("earliest of two", "xa", None, stop=("d", " b"), max_new_tokens=30),
             GenerationItem("limit", "xa", None, stop=("\n",), max_new_tokens=2),
             GenerationItem("eos", "xa", None, stop=(), max_new_tokens=30)]
    out = generate(model, tokenizer, items, batch_size=2, progress=False)
    assert out == [" bcd", " b", "", " b", " bcd\ne"]


def test_first_stop():
    assert first_stop("abc\ndef.", ("\n", ".")) == 3
    assert first_stop("abc", ("x",)) is None
    assert first_stop("abc", ("",)) is None


# ---------------------------------------------------------------- run_task and failures

class _ToyChoice(Task):
    NAME, SUITES, DATASET, KIND, METRICS = "toy_choice", ("offline",), "toy", "choice", ("accuracy",)

    def items(self, rows, shots=None):
        return [ChoiceItem(str(i), r["q"], (" yes", " no"), 0) for i, r in enumerate(rows)]

    def score(self, items, outputs):
        return {"accuracy": sum(o.logprobs[0] > o.logprobs[1] for o in outputs) / len(outputs)}


class _ToyGeneration(Task):
    NAME, SUITES, DATASET, KIND, METRICS = "toy_generation", ("offline",), "toy", "generation", ("nonempty",)

    def items(self, rows, shots=None):
        return [GenerationItem(str(i), r["q"], None, max_new_tokens=4) for i, r in enumerate(rows)]

    def score(self, items, outputs):
        return {"nonempty": sum(bool(o) for o in outputs) / len(outputs)}


ROWS = [{"q": "is it raining?"}, {"q": "is the sky green today, or is it not?"}, {"q": "ok?"}]


@pytest.mark.parametrize("task", [_ToyChoice(), _ToyGeneration()])
def test_run_task_reports_metrics_and_speed(task):
    model, tokenizer = random_model("llama", seed=0)
    result = run_task(model, tokenizer, task, ROWS, batch_size=2, progress=False)
    assert result["status"] == "ok"
    assert set(result["metrics"]) == set(task.METRICS)
    assert result["n"] == 3 and result["tokens"] > 0 and result["seconds"] > 0
    assert result["examples_per_s"] == pytest.approx(3 / result["seconds"])
    assert result["tokens_per_s"] == pytest.approx(result["tokens"] / result["seconds"])


@pytest.mark.parametrize("task", [_ToyChoice(), _ToyGeneration()])
def test_nan_model_is_a_recorded_failure(task):
    model, tokenizer = random_model("llama", seed=0)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    result = run_task(model, tokenizer, task, ROWS, progress=False)
    assert result["status"] == "failed"
    assert "non-finite" in result["reason"]
    with pytest.raises(NonFiniteLogitsError):
        score_choices(model, tokenizer, _ToyChoice().items(ROWS), progress=False)


def test_batches_respect_token_budget(monkeypatch):
    monkeypatch.setattr(engine, "MAX_BATCH_TOKENS", 10)
    units = [engine._Unit(i, [1] * n, [[2]]) for i, n in enumerate([6, 5, 4, 3, 2])]
    batches = list(engine._batches(units, batch_size=16, vocab=100))
    # [3, 4] would be 6 padded positions for 5 real tokens, over the 15% padding slack.
    assert [[u.index for u in b] for b in batches] == [[0], [1, 2], [3], [4]]
    assert all(len(b) * max(u.length for u in b) <= 10 for b in batches)


def test_batches_bound_padding():
    units = [engine._Unit(i, [1] * n, [[2]]) for i, n in enumerate([100, 98, 95, 60, 59, 58, 20])]
    batches = list(engine._batches(units, batch_size=16, vocab=100))
    # 400 padded for 353 real tokens fits the slack; a fifth row would make it 500 for 412.
    assert [[u.index for u in b] for b in batches] == [[0, 1, 2, 3], [4, 5], [6]]
    for b in batches:
        assert len(b) * max(u.length for u in b) <= engine.PADDING_SLACK * sum(u.length for u in b)


def test_forward_throughput_is_positive():
    model, tokenizer = random_model("gpt2", seed=0)
    assert forward_throughput(model, tokenizer, n_tokens=64, seq_len=16, batch_size=2) > 0
