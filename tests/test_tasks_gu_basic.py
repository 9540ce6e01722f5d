"""SST-2 and NQ-open (the default pipeline's two tasks) and the shared metric helpers, on hand-made examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from editharm.datasets import get_format
from editharm.evaluate.metrics import accuracy, best_choice, contains_answer, exact_match, normalise_answer
from editharm.evaluate.tasks import get_task, suite
from editharm.evaluate.tasks.base import ChoiceItem, ChoiceOutput, GenerationItem
from editharm.io import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"


# ---------------------------------------------------------------- metric helpers

def test_normalise_answer():
    assert normalise_answer("  The  U.S.A.! ") == "usa"
    assert normalise_answer("An apple, a day") == "apple day"
    assert normalise_answer("Theatre") == "theatre"  # articles only as whole words


def test_exact_match_and_contains_answer():
    refs = ["December 1972", "14 December 1972 UTC"]
    assert exact_match(" december, 1972.", refs) == 1.0
    assert exact_match("in December 1972", refs) == 0.0
    assert contains_answer("It was in December 1972.", refs) == 1.0
    assert contains_answer("Decembers 1972", refs) == 0.0      # whole words only
    assert contains_answer("anything", ["the"]) == 0.0           # an answer that normalises to nothing
    assert exact_match("x", []) == 0.0


def test_accuracy_and_best_choice():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    with pytest.raises(ValueError):
        accuracy([1], [1, 0])
    out = ChoiceOutput(logprobs=[-4.0, -3.0, -3.0], token_counts=[1, 3, 1], char_counts=[2, 10, 5])
    assert best_choice(out) == 1                      # ties go to the first
    assert best_choice(out, "tokens") == 1            # -4, -1, -3
    assert best_choice(out, "chars") == 1             # -2, -0.3, -0.6


# ---------------------------------------------------------------- SST-2

def test_sst2_format_reads_glue_tsv():
    rows = list(get_format("sst2_glue_tsv")(FIXTURES / "sst2", {"files": {"dev.tsv": {}}}))
    assert [r["label"] for r in rows] == [1, 0, 1]
    assert rows[0]["sentence"] == "it 's a charming and often affecting journey . "
    assert rows[2]["sentence"] == 'the "quote is never closed '  # no csv quoting
    assert len({r["id"] for r in rows}) == 3


def test_sst2_format_names_the_bad_line():
    with pytest.raises(DataError, match=r"dev.tsv, line 3"):
        list(get_format("sst2_glue_tsv")(FIXTURES / "sst2_bad", {}))


def test_sst2_items_and_score():
    task = get_task("sst2")
    assert task.KIND == "choice" and "sst2" in suite("gu2024")
    items = task.items([{"id": "a", "sentence": "great fun . ", "label": 1},
                        {"id": "b", "sentence": "dull", "label": 0}])
    assert items[0].context == ("For each snippet of text,label the sentiment of the text as positive or negative."
                                "The answer should be exact 'positive' or 'negative'. text: great fun . answer:")
    assert items[0].choices == (" negative", " positive") and items[0].gold == 1
    outputs = [ChoiceOutput([-2.0, -1.0], [1, 1]), ChoiceOutput([-2.0, -1.0], [1, 1])]
    assert task.score(items, outputs) == {"accuracy": 0.5}


# ---------------------------------------------------------------- NQ-open

def test_nq_open_format_reads_jsonl():
    rows = list(get_format("nq_open_jsonl")(FIXTURES / "nq_open", {"files": {"NQ-open.dev.jsonl": {}}}))
    assert rows[0]["question"] == "when was the last time anyone was on the moon"
    assert rows[1]["answer"] == ["Bobby Scott", "Bob Russell"]


def test_nq_open_format_names_the_bad_record():
    with pytest.raises(DataError, match=r"NQ-open.dev.jsonl, record 2: 'answer'"):
        list(get_format("nq_open_jsonl")(FIXTURES / "nq_open_bad", {}))


def test_nq_open_items_and_score():
    task = get_task("nq_open")
    assert task.KIND == "generation" and "nq_open" in suite("gu2024")
    items = task.items([{"id": "1", "question": "who wrote hamlet", "answer": ["William Shakespeare", "Shakespeare"]},
                        {"id": "2", "question": "capital of france?", "answer": ["Paris"]}])
    assert items[0].prompt == "Q: who wrote hamlet?\nA:"
    assert items[1].prompt == "Q: capital of france?\nA:"
    assert isinstance(items[0], GenerationItem) and items[0].stop == ("\n",) and items[0].max_new_tokens == 20
    scores = task.score(items, [" Shakespeare.", " It is Paris"])
    assert scores == {"exact_match": 0.5, "contains_answer": 1.0}


def test_missing_raw_file_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the download step"):
        list(get_format("nq_open_jsonl")(tmp_path, {}))


def test_choice_item_type_is_used():
    assert isinstance(get_task("sst2").items([{"id": 1, "sentence": "x", "label": 0}])[0], ChoiceItem)
