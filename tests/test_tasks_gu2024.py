"""Gu et al. 2024 tasks: data formats (mirror and canonical schemas), prompts, metrics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from editharm.datasets import get_format
from editharm.evaluate import metrics_extra as mx
from editharm.evaluate.tasks import get_task, suite
from editharm.evaluate.tasks.base import ChoiceOutput
from editharm.io import DataError

FIX = Path(__file__).parent / "fixtures" / "tasks"


def rows(fmt: str, folder: str, *names: str, **options) -> list[dict]:
    spec = {"format": fmt, "files": {n: {} for n in names}}
    if options:
        spec["options"] = options
    return list(get_format(fmt)(FIX / folder, spec))


def choice_out(*logprobs: float) -> ChoiceOutput:
    return ChoiceOutput(logprobs=list(logprobs), token_counts=[1] * len(logprobs))


def test_suite_lists_gu2024_tasks():
    assert {"gsm8k", "rte", "boolq", "mutual", "samsum", "conll03"} <= set(suite("gu2024"))


# ------------------------------------------------------------------ metric helpers


def test_rouge_by_hand():
    # prediction "the cat sat", reference "the cat sat on the mat": unigram overlap 3 of 3 / 6
    assert mx.rouge_n("The cat sat", "the cat sat on the mat", 1) == pytest.approx(2 * 1 * 0.5 / 1.5)
    # bigrams: (the cat)(cat sat) both in the 5 reference bigrams -> P=1, R=2/5
    assert mx.rouge_n("The cat sat", "the cat sat on the mat", 2) == pytest.approx(2 * 1 * 0.4 / 1.4)
    # clipping: "the the the" vs "the cat": one "the" matches -> P=1/3, R=1/2
    assert mx.rouge_n("the the the", "the cat", 1) == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    # LCS of "a b c d" and "a c b d" is 3 (a c d or a b d)
    assert mx.lcs_length("a b c d".split(), "a c b d".split()) == 3
    assert mx.rouge_l("a b c d", "a c b d") == pytest.approx(0.75)
    # tokenisation ignores case and punctuation
    assert mx.rouge_scores("Hello, World!", "hello world") == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert mx.rouge_scores("", "hello") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_precision_recall_f1_and_ranks():
    assert mx.precision_recall_f1(2, 4, 2) == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3)}
    assert mx.precision_recall_f1(0, 0, 3) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert mx.multiset_matches(["a", "a", "b"], ["a", "c"]) == 1
    assert mx.rank_of([-1.0, -3.0, -0.5, -2.0], 0) == 2
    assert mx.rank_of([-1.0, -1.0, -1.0], 0) == 1 and mx.rank_of([-1.0, -1.0, -1.0], 2) == 3  # ties: earlier first
    assert mx.argmax([0.0, 2.0, 2.0]) == 1


# ------------------------------------------------------------------ GSM8K (Gu et al.)


def test_gsm8k_rows_and_gu_prompt():
    r = rows("gsm8k", "gsm8k", "test.jsonl")
    assert [x["answer"] for x in r] == ["12", "1,500"]
    assert r[0]["reasoning"] == "Each box has 4 pens.\nSo 3 * 4 = <<3*4=12>>12 pens.\n"
    item = get_task("gsm8k").items(r)[0]
    assert item.prompt == (
        "Q: Tom has 3 boxes with 4 pens each. How many pens does he have? A:Let's think step by step. "
        "Each box has 4 pens.\nSo 3 * 4 = <<3*4=12>>12 pens.\n Therefore, the answer (arabic numerals) is:"
    )
    assert item.stop == () and item.max_new_tokens == 10


def test_gsm8k_solve_rate_reads_the_first_number():
    task = get_task("gsm8k")
    items = task.items(rows("gsm8k", "gsm8k", "test.jsonl"))
    # "12." solved; "1500 apples" equals "1,500"
    assert task.score(items, [" 12.\nQ: next", " 1500 apples"]) == {"solve_rate": 1.0}
    # first number decides: "1" then "12" is wrong (Gu et al.'s substring test would accept it)
    assert task.score(items, [" 1 or 12", " none"]) == {"solve_rate": 0.0}


def test_gsm8k_format_rejects_answer_without_mark(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": "no final line"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 1.*####"):
        list(get_format("gsm8k")(tmp_path, {"files": {"bad.jsonl": {}}}))


# ------------------------------------------------------------------ RTE


def test_rte_superglue_glue_tsv_and_hf_schemas_agree():
    superglue = rows("rte", "rte", "val.jsonl")
    assert superglue == rows("rte", "rte", "dev.tsv") == rows("rte", "rte", "validation_hf.jsonl")
    assert [r["label"] for r in superglue] == ["entailment", "not_entailment"]


def test_rte_prompt_and_accuracy():
    task = get_task("rte")
    items = task.items(rows("rte", "rte", "val.jsonl"))
    assert items[0].prompt == "The cat sat on the mat in the kitchen. entails the A cat is in the kitchen.. True or False? answer:"
    assert task.score(items, [" True", " false"]) == {"accuracy": 1.0, "answered_accuracy": 1.0}
    # second unanswered: accuracy over all items counts it wrong
    assert task.score(items, [" True.", " maybe"]) == {"accuracy": 0.5, "answered_accuracy": 1.0}
    assert task.score(items, [" False", " True"])["accuracy"] == 0.0


# ------------------------------------------------------------------ BoolQ


def test_boolq_canonical_and_superglue_agree():
    canonical = rows("boolq", "boolq", "dev.jsonl")
    superglue = rows("boolq", "boolq", "val.jsonl")
    strip_id = lambda rs: [{k: v for k, v in r.items() if k != "id"} for r in rs]  # noqa: E731
    assert strip_id(canonical) == strip_id(superglue)
    # the title is split at the first " -- " only; the passage keeps its own dashes
    assert superglue[0]["title"] == "Sun"
    assert superglue[0]["passage"] == "The Sun is the star at the centre of the Solar System -- it is nearly a perfect sphere."


def test_boolq_prompt_and_exact_match():
    task = get_task("boolq")
    items = task.items(rows("boolq", "boolq", "dev.jsonl"))
    assert items[1].prompt == (
        "Please answer the given question based on the passage. The answer should be exact 'yes' or 'no'. "
        "passage: The tomato is the edible berry of the plant Solanum lycopersicum. question: is a tomato a vegetable. answer:"
    )
    assert task.score(items, [" yes", " No"]) == {"exact_match": 1.0, "answered_accuracy": 1.0}
    assert task.score(items, [" yesterday", " no"]) == {"exact_match": 0.5, "answered_accuracy": 1.0}


# ------------------------------------------------------------------ MuTual


def test_mutual_rows_in_file_number_order_and_prompt():
    r = rows("mutual", "mutual", "dev")
    assert [x["id"] for x in r] == ["dev_1", "dev_2", "dev_10"]
    assert [x["answer"] for x in r] == [1, 0, 3]
    item = get_task("mutual").items(r)[0]
    assert item.choices == (" A", " B", " C", " D")
    assert item.context == (
        "Q: f : hello , this is dialogue 1 . m : nice to meet you . Which choice is correct? Answer Chioces: "
        "(A)m : option a of dialogue 1 .(B)m : option b of dialogue 1 .(C)m : option c of dialogue 1 ."
        "(D)m : option d of dialogue 1 . A: Among A through D, the answer is"
    )


def test_mutual_r4_metrics():
    task = get_task("mutual")
    items = task.items(rows("mutual", "mutual", "dev"))  # gold: B, A, D
    outs = [choice_out(-2, -1, -3, -4), choice_out(-2, -1, -3, -4), choice_out(-1, -2, -3, -4)]
    # ranks: 1, 2, 4
    assert task.score(items, outs) == {"r4_at_1": pytest.approx(1 / 3), "r4_at_2": pytest.approx(2 / 3),
                                       "mrr": pytest.approx((1 + 1 / 2 + 1 / 4) / 3)}


# ------------------------------------------------------------------ SAMSum


def test_samsum_instructds_and_canonical_agree():
    derived = rows("samsum", "samsum", "instructds_test.json")
    canonical = rows("samsum", "samsum", "test.json")
    assert [r["id"] for r in derived] == ["samsum-0", "samsum-1"]
    assert [r["id"] for r in canonical] == ["13818513", "13728867"]
    assert [(r["dialogue"], r["summary"]) for r in derived] == [(r["dialogue"], r["summary"]) for r in canonical]
    assert "\r" not in canonical[0]["dialogue"]


def test_samsum_prompt_and_rouge_mean():
    task = get_task("samsum")
    items = task.items(rows("samsum", "samsum", "instructds_test.json"))
    assert items[0].prompt == "Amanda: I baked cookies. Do you want some?\nJerry: Sure!\nTL;DR:"
    assert items[0].max_new_tokens == 25 and items[0].stop == ()
    perfect = task.score(items, [items[0].references, items[1].references])
    assert perfect == {"rouge_mean": 1.0, "rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    # an output of one character scores 0 (Gu et al.); the other item is perfect -> means of 0.5
    half = task.score(items, [".", items[1].references])
    assert half == {"rouge_mean": 0.5, "rouge1": 0.5, "rouge2": 0.5, "rougeL": 0.5}


# ------------------------------------------------------------------ CoNLL-03


def test_conll_iob1_iob2_and_hub_agree():
    iob1 = rows("conll2003", "conll03", "eng.testb")
    iob2 = rows("conll2003", "conll03", "test-NER.txt")
    hub = rows("conll2003", "conll03", "test_hub.jsonl")
    spans = lambda rs: [[(e["type"], e["text"]) for e in r["entities"]] for r in rs]  # noqa: E731
    assert spans(iob1) == spans(iob2) == spans(hub) == [
        [("ORG", "EU"), ("MISC", "German")],
        # I-LOC Paris then B-LOC Berlin: two entities (IOB1's B- marks a boundary inside a run)
        [("PER", "Peter Blackburn"), ("PER", "Anna Smith"), ("LOC", "Bonn"), ("LOC", "Paris"), ("LOC", "Berlin")],
    ]


def test_conll_prompts_one_per_type():
    task = get_task("conll03")
    items = task.items(rows("conll2003", "conll03", "eng.testb"))
    assert len(items) == 8
    assert items[0].id.endswith("/PER") and items[0].references == ()
    assert items[0].prompt == "Please identify Person Entity from the given text. Text: EU rejects German call. Entity:"
    loc = next(i for i in items if i.id.endswith("/LOC") and i.references)
    assert loc.prompt == ("Please identify Location Entity from the given text. "
                          "Text: Peter Blackburn, Anna Smith and Bonn, Paris Berlin Entity:")
    assert loc.references == ("Bonn", "Paris", "Berlin")


def test_conll_entity_f1_by_hand():
    task = get_task("conll03")
    items = task.items(rows("conll2003", "conll03", "eng.testb"))
    by_id = {i.id.split("-", 1)[1]: i for i in items}
    outputs = {
        "0/PER": " None", "0/LOC": " none", "0/ORG": " EU", "0/MISC": " german, French",  # 2 right, 1 spurious
        "1/PER": " Peter Blackburn; Smith", "1/LOC": " Bonn, Paris, Berlin.\nmore", "1/ORG": "", "1/MISC": "",
    }
    result = task.score(list(by_id.values()), [outputs[k] for k in by_id])
    # gold 7 entities; predicted 8 (EU, german, French, Peter Blackburn, Smith, Bonn, Paris, Berlin); 6 right
    assert result["precision"] == pytest.approx(6 / 8)
    assert result["recall"] == pytest.approx(6 / 7)
    assert result["f1"] == pytest.approx(2 * (6 / 8) * (6 / 7) / (6 / 8 + 6 / 7))
    # containment per type: PER 1/2 ("Anna Smith" not contained), LOC 3/3, ORG 1/1, MISC 0/1 (case differs)
    assert result["gu_containment"] == pytest.approx((0.5 + 1 + 1 + 0) / 4)


def test_conll_rejects_unknown_tag(tmp_path):
    (tmp_path / "x.testb").write_text("EU NNP I-NP I-XYZ\n\n")
    with pytest.raises(DataError, match="I-XYZ"):
        list(get_format("conll2003")(tmp_path, {"files": {"x.testb": {}}}))


# ------------------------------------------------------------------ the real mirror, when present

MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not MIRROR.is_dir(), reason="no data mirror on this machine")
@pytest.mark.parametrize("fmt, path, expected", [
    ("gsm8k", "gsm8k/test.jsonl", 1319),
    ("rte", "rte/val.jsonl", 277),
    ("boolq", "boolq_superglue/val.jsonl", 3270),
    ("mutual", "mutual/dev", 886),
    ("samsum", "samsum_instructds/test.json", 819),
    ("conll2003", "conll2003/eng.testb", 3453),
])
def test_mirror_record_counts(fmt, path, expected):
    p = MIRROR / path
    got = list(get_format(fmt)(p.parent, {"files": {p.name: {}}}))
    assert len(got) == expected
    assert len({r["id"] for r in got}) == expected


def test_no_nan_from_empty_inputs():
    assert not math.isnan(get_task("samsum").score([], [])["rouge_mean"])
