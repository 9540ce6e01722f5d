"""benchmarks/bench_vs_lm_eval.py: the segment-mask variant of the mask-cost measurement is exact, and the
speed and agreement summaries aggregate the way its report says."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from editharm.evaluate.engine import encode_choices, score_choices
from editharm.evaluate.tasks.base import ChoiceItem
from editharm.models import random_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_vs_lm_eval as bench  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# one-token choices (the byte tokenizer: one character, one token) after contexts of different lengths,
# so that the batches hold padding
ITEMS = [ChoiceItem(f"q{k}", "Question " + "word " * (k + 3 * (k % 3)) + "\nAnswer:", ("A", "B", "C", "D"), k % 4)
         for k in range(7)]


@pytest.fixture(scope="module")
def tiny():
    return random_model("llama", seed=3)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_segment_mask_scoring_equals_the_engine(tiny, batch_size):
    """The 'before' variant of the mask-cost measurement gives the engine's numbers, so only the mask differs."""
    model, tokenizer = tiny
    assert all(len(c) == 1 for it in ITEMS for c in encode_choices(tokenizer, it.context, it.choices)[1])
    engine = score_choices(model, tokenizer, ITEMS, batch_size=batch_size, progress=False)
    masked = bench.score_with_segment_mask(model, tokenizer, ITEMS, batch_size)
    assert len(masked) == len(ITEMS)
    for out, mine in zip(engine, masked):
        assert mine == pytest.approx(out.logprobs, abs=1e-4)
    # the padded rows really differ in length, so a wrong pad handling would show
    assert len({len(encode_choices(tokenizer, it.context, it.choices)[0]) for it in ITEMS}) > 3


def test_speed_is_total_docs_over_total_seconds():
    rounds = [{"docs": 10, "wall_s": 1.0, "cpu_s": 2.0}, {"docs": 10, "wall_s": 4.0, "cpu_s": 3.0}]
    s = bench.speed(rounds)
    assert s["docs_per_s"] == pytest.approx(4.0)       # 20 docs / 5 s, not the mean of 10 and 2.5 docs/s
    assert s["docs_per_cpu_s"] == pytest.approx(4.0)   # 20 docs / 5 CPU s
    assert s["docs_per_s_rounds"] == pytest.approx([10.0, 2.5])
    assert s["docs_per_s_median"] == pytest.approx(6.25)


def test_agreement_summary_takes_the_worst_row():
    rows = [{"n": 5, "argmax_disagreements": 0, "max_abs_loglik_diff": 1e-5, "prompt_mismatches": 0, "ok": True},
            {"n": 5, "argmax_disagreements": 2, "max_abs_loglik_diff": 3e-4, "prompt_mismatches": 1, "ok": False,
             "greedy_disagreements": 1}]
    s = bench.summarize_agreement(rows)
    assert s == {"n": 5, "argmax_disagreements": 2, "greedy_disagreements": 1, "max_abs_loglik_diff": 3e-4,
                 "prompt_mismatches": 1, "ok": False}
    assert bench.summarize_agreement(rows[:1]) == {"n": 5, "argmax_disagreements": 0, "max_abs_loglik_diff": 1e-5,
                                                   "prompt_mismatches": 0, "ok": True}
