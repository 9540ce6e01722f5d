"""The harm suite (tasks a small model can fail), defined as lm-evaluation-harness 0.4.x does:
LAMBADA, PIQA, ARC-Easy/Challenge, HellaSwag, WinoGrande, WikiText, TriviaQA, ToxiGen.

Parsing is checked on real rows of each mirror file (tests/fixtures/mirror/harm, the
files configs/ci.yaml runs through the DAG), prompts against lm-eval's templates written
out by hand, metrics on hand-computed cases, and the rolling log-likelihood against a
plain forward pass of a tiny model.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from editharm.datasets import get_format
from editharm.evaluate import metrics_lm_eval as ml
from editharm.evaluate.engine import rolling_windows, run_task, score_rolling
from editharm.evaluate.tasks import get_task, suite
from editharm.evaluate.tasks.arc import filter_by_key
from editharm.evaluate.tasks.base import ChoiceOutput, RollingItem, RollingOutput
from editharm.evaluate.tasks.hellaswag import capitalise_fragment, preprocess
from editharm.evaluate.tasks.wikitext import detokenize, split_pages, word_count
from editharm.io import DataError
from editharm.models import random_model

FIX = Path(__file__).parent / "fixtures" / "mirror" / "harm"
HARM = ["arc_challenge", "arc_easy", "hellaswag", "lambada_openai", "piqa", "toxigen", "triviaqa", "wikitext", "winogrande"]


def rows(fmt: str, folder: str, *names: str) -> list[dict]:
    return list(get_format(fmt)(FIX / folder, {"format": fmt, "files": {n: {} for n in names}}))


def out(*logprobs: float, greedy: bool = False) -> ChoiceOutput:
    return ChoiceOutput(logprobs=list(logprobs), token_counts=[1] * len(logprobs), is_greedy=[greedy] * len(logprobs))


def test_harm_suite_lists_the_tasks_and_li2024_keeps_triviaqa_and_toxigen():
    assert suite("harm") == HARM
    assert {"triviaqa", "toxigen"} <= set(suite("li2024"))


# ------------------------------------------------------------------ metrics, hand-computed


def test_choice_accuracy_norm_counts_characters_without_the_delimiter():
    # item 1: summed -4 beats -6, but per character " bb" (2) -> -3 loses to " cccc" (4) -> -1.5
    # item 2: both agree on choice 0
    got = ml.choice_accuracy([[-4.0, -6.0], [-1.0, -2.0]], [(" bb", " cccc"), (" x", " y")], [1, 0])
    assert got == {"accuracy": 0.5, "accuracy_norm": 1.0}
    with pytest.raises(ValueError, match="empty choice"):
        ml.choice_accuracy([[-1.0, -1.0]], [(" a", " ")], [0])


def test_perplexity_aggregations():
    assert ml.perplexity([-1.0, -3.0]) == pytest.approx(math.exp(2.0))          # per item, not per token
    assert ml.weighted_perplexity([-2.0, -4.0], [3, 1]) == pytest.approx(math.exp(1.5))
    assert ml.bits_per_byte([-math.log(2) * 3], [6]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ml.weighted_perplexity([-1.0], [0])


def test_exact_match_ignores_case_punctuation_and_outer_space_only():
    assert ml.exact_match_any("  U.S.A!\t", ["usa"]) == 1.0
    assert ml.exact_match_any(" Red Planet", ["The Red Planet"]) == 0.0   # articles are not removed
    assert ml.exact_match_any("red  planet", ["Red Planet"]) == 0.0       # inner whitespace is not collapsed
    assert ml.exact_match_any("Mars", ["Venus", "mars."]) == 1.0


# ------------------------------------------------------------------ LAMBADA


def test_lambada_context_target_and_metrics():
    r = rows("lambada_openai", "lambada", "lambada_test.jsonl")
    assert len(r) == 3 and r[0]["text"].startswith("In my palm is a clear stone")
    task = get_task("lambada_openai")
    items = task.items(r)
    text = r[0]["text"]
    assert items[0].context + items[0].choices[0] == text
    assert items[0].choices[0] == " " + text.split(" ")[-1] and not items[0].context.endswith(" ")
    outs = [out(-2.0, greedy=True), out(-4.0), out(-6.0, greedy=True)]
    got = task.score(items, outs)
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert got["perplexity"] == pytest.approx(math.exp(4.0))


# ------------------------------------------------------------------ PIQA


def test_piqa_rows_labels_and_prompt():
    r = rows("piqa", "piqa", "valid.jsonl", "valid-labels.lst")
    assert [x["label"] for x in r] == [0, 1, 1]
    assert r[1]["goal"] == "dresser" and r[1]["solutions"] == ["replace drawer with bobby pin ", "finish, woodgrain with  bobby pin "]
    items = get_task("piqa").items(r)
    assert items[0].context == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert items[1].choices == (" replace drawer with bobby pin ", " finish, woodgrain with  bobby pin ")  # untrimmed, as lm-eval


def test_piqa_label_count_must_match(tmp_path):
    (tmp_path / "valid.jsonl").write_text((FIX / "piqa" / "valid.jsonl").read_text())
    (tmp_path / "valid-labels.lst").write_text("0\n1\n")
    with pytest.raises(ValueError, match="2 labels for 3 records"):
        list(get_format("piqa")(tmp_path, {"files": {"valid.jsonl": {}, "valid-labels.lst": {}}}))


# ------------------------------------------------------------------ ARC and its label filter


def test_arc_keeps_only_rows_whose_gold_matches_the_official_key(capsys):
    # fixture rows 0, 1, 14, 62, 93 of arc_easy.jsonl: 14 has a mis-mapped numeric key (gold 2, key "2" = index 1),
    # 93 is a three-choice item padded with a duplicate (and wrong); 62 has a numeric key mapped right
    r = rows("arc_llmfoundry", "arc", "arc_easy.jsonl", "arc_easy_question-answers.jsonl")
    assert [x["id"] for x in r] == ["Mercury_417466", "Mercury_7081673", "NYSEDREGENTS_2010_8_2"]
    assert "kept 3 of 5 rows" in capsys.readouterr().err
    assert all(len(set(x["choices"])) == len(x["choices"]) for x in r)
    items = get_task("arc_easy").items(r)
    assert items[0].context == "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:"
    assert items[0].choices[0] == " Sunlight is the source of energy for nearly all ecosystems."
    assert items[0].gold == 0


def test_arc_filter_by_key_unit():
    rows_ = [{"gold": 0}, {"gold": 2}, {"gold": 1}]
    kept, dropped = filter_by_key(rows_, [("a", 0), ("b", 1), ("c", 1)])
    assert [k["id"] for k in kept] == ["a", "c"] and dropped == ["b"]
    with pytest.raises(ValueError, match="line for line"):
        filter_by_key(rows_, [("a", 0)])


def test_arc_answer_key_outside_letters_and_digits_is_an_error(tmp_path):
    (tmp_path / "arc.jsonl").write_text((FIX / "arc" / "arc_challenge.jsonl").read_text())
    (tmp_path / "x_question-answers.jsonl").write_text('{"id": "a", "answerKey": "F"}\n' * 3)
    with pytest.raises(DataError, match="answerKey 'F'"):
        list(get_format("arc_llmfoundry")(tmp_path, {"files": {"arc.jsonl": {}, "x_question-answers.jsonl": {}}}))


def test_arc_challenge_drops_its_bad_row():
    r = rows("arc_llmfoundry", "arc", "arc_challenge.jsonl", "arc_challenge_question-answers.jsonl")
    assert len(r) == 2 and get_task("arc_challenge").DATASET == "arc_challenge"


# ------------------------------------------------------------------ HellaSwag


def test_hellaswag_text_form_and_lm_eval_preprocessing():
    r = rows("hellaswag_llamacpp", "hellaswag", "hellaswag_val_tiny.txt.bz2")
    assert len(r) == 3
    # ctx_b "he" capitalised as lm-eval's ctx_b.capitalize()
    assert r[0]["query"] == "Roof shingle removal: A man is sitting on a roof. He"
    assert r[0]["label"] == 3 and r[0]["endings"][3] == "starts pulling up roofing on a roof."
    items = get_task("hellaswag").items(r)
    assert items[0].choices[0] == " is using wrap to wrap a pair of skis."
    assert preprocess("Home: [header] How to x [title] Do y  now ") == "Home: How to x. Do y now"
    assert capitalise_fragment("A man waves. the Lady in RED") == "A man waves. The lady in red"
    assert capitalise_fragment("She smiles.") == "She smiles."
    assert capitalise_fragment("a fragment only") == "a fragment only"


def test_hellaswag_text_file_must_have_six_lines_per_item(tmp_path):
    (tmp_path / "h.txt").write_text("ctx: a\n1\ne1\ne2\n")
    with pytest.raises(DataError, match="multiple of 6"):
        list(get_format("hellaswag_llamacpp")(tmp_path, {"files": {"h.txt": {}}}))


# ------------------------------------------------------------------ WinoGrande


def test_winogrande_partial_scoring_items_and_pairs():
    r = rows("winogrande", "winogrande", "dev.jsonl", "dev-labels.lst")
    assert [x["label"] for x in r] == [1, 0, 1]
    task = get_task("winogrande")
    items = task.items(r)
    assert len(items) == 6
    assert items[0].context == "Sarah was a much better surgeon than Maria so Sarah"
    assert items[1].context == "Sarah was a much better surgeon than Maria so Maria"
    assert items[0].choices == items[1].choices == (" always got the easier cases.",)
    # pair 1: option 2 likelier (gold 1: right); pair 2: option 2 likelier (gold 0: wrong); pair 3: right
    outs = [out(-5.0), out(-3.0), out(-5.0), out(-3.0), out(-9.0), out(-1.0)]
    assert task.score(items, outs) == {"accuracy": pytest.approx(2 / 3)}


def test_winogrande_labels_file_must_agree(tmp_path):
    (tmp_path / "dev.jsonl").write_text((FIX / "winogrande" / "dev.jsonl").read_text())
    (tmp_path / "dev-labels.lst").write_text("2\n2\n2\n")
    with pytest.raises(DataError, match="disagrees"):
        list(get_format("winogrande")(tmp_path, {"files": {"dev.jsonl": {}, "dev-labels.lst": {}}}))


# ------------------------------------------------------------------ WikiText


def test_wikitext_pages_detokenizer_and_counts():
    r = rows("wikitext_pages", "wikitext", "test_tiny.txt")
    assert [x["page"].split("\n")[0] for x in r] == [" = Robert <unk> = ", " = Du Fu = "]
    assert "= = Career = =" in r[0]["page"]          # section headings stay in their article
    text = detokenize(r[0]["page"])
    assert "guest-starring" in text and "1,200" in text and "(written by Simon Stephens)" in text
    assert '"good"' in text and "film, television" in text and "== Career ==" in text
    assert word_count(" a b\n c ") == 5              # re.split on whitespace, empty ends counted (lm-eval)
    assert split_pages(" \n = A = \n x \n = = B = = \n y \n = C = \n z ") == [" = A = \n x \n = = B = = \n y ", " = C = \n z "]
    task = get_task("wikitext")
    items = task.items(r)
    assert items[0].units == {"words": word_count(r[0]["page"]), "bytes": len(r[0]["page"].encode())}
    outs = [RollingOutput(logprob=-10.0, token_count=5, windows=1), RollingOutput(logprob=-20.0, token_count=5, windows=1)]
    got = task.score(items, outs)
    words = sum(i.units["words"] for i in items)
    n_bytes = sum(i.units["bytes"] for i in items)
    assert got["word_perplexity"] == pytest.approx(math.exp(30 / words))
    assert got["bits_per_byte"] == pytest.approx(30 / n_bytes / math.log(2))
    assert got["token_perplexity"] == pytest.approx(math.exp(3.0))


def test_rolling_windows_are_lm_eval_disjoint_windows():
    tokens = list(range(10))
    assert rolling_windows(tokens, 99, 4) == [([99], [0, 1, 2, 3]), ([3], [4, 5, 6, 7]), ([5, 6, 7], [8, 9])]
    assert rolling_windows([7, 8], 99, 4) == [([99], [7, 8])]
    for ctx, pred in rolling_windows(list(range(23)), 99, 5):
        assert len(ctx) + len(pred) - 1 <= 5
    assert [t for _, p in rolling_windows(list(range(23)), 99, 5) for t in p] == list(range(23))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return random_model("llama", seed=0, hidden=32, layers=2, heads=2, max_positions=64)


def _direct_logprob(model, tokenizer, text: str, max_len: int) -> float:
    """Sum of log p(token) over the text, one plain forward per window (no packing, no masks)."""
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
    total = 0.0
    for ctx, pred in rolling_windows(tokens, tokenizer.bos_token_id, max_len):
        ids = torch.tensor([ctx + pred[:-1]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        start = len(ctx) - 1
        total += sum(logp[start + j, t].item() for j, t in enumerate(pred))
    return total


def test_score_rolling_equals_plain_forward_passes(tiny):
    model, tokenizer = tiny
    texts = ["short text", "a longer text that needs several windows of sixteen bytes each, and a last partial one"]
    items = [RollingItem(id=str(i), text=t, max_window=16) for i, t in enumerate(texts)]
    outs = score_rolling(model, tokenizer, items, batch_size=4, progress=False)
    for item, o in zip(items, outs):
        assert o.logprob == pytest.approx(_direct_logprob(model, tokenizer, item.text, 16), abs=1e-4)
        assert o.token_count == len(tokenizer(item.text, add_special_tokens=False)["input_ids"])
    assert outs[0].windows == 1 and outs[1].windows == math.ceil(outs[1].token_count / 16)
    # without max_window the model's 64 positions bound the windows
    whole = score_rolling(model, tokenizer, [RollingItem(id="w", text=texts[1])], progress=False)[0]
    assert whole.logprob == pytest.approx(_direct_logprob(model, tokenizer, texts[1], 64), abs=1e-4)


# ------------------------------------------------------------------ TriviaQA and ToxiGen (mirror copies)


def test_triviaqa_subset_rows_prompt_and_exact_match():
    r = rows("triviaqa_llmfoundry", "triviaqa", "triviaqa_sm_sub.jsonl")
    assert r[0]["question"] == "Brunswick, Lancastrian and Pearl Pickler are types of which vegetable?"
    assert "Onion" in r[0]["answers"] and len(r[0]["answers"]) == len(set(r[0]["answers"]))
    task = get_task("triviaqa")
    items = task.items(r)
    assert items[0].prompt == "Question: Brunswick, Lancastrian and Pearl Pickler are types of which vegetable??\nAnswer:"
    assert task.score(items, [" onion", " a dik-dik", ""]) == {"exact_match": pytest.approx(1 / 3)}


def test_toxigen_csv_label_rule(tmp_path):
    r = rows("toxigen", "toxigen", "annotated_test.csv")
    # toxicity_ai + toxicity_human of the four rows: 10, 5.33, 4, 2 -> hateful only above 5.5
    assert [x["label"] for x in r] == [1, 0, 0, 0]
    assert r[0]["toxicity_ai"] + r[0]["toxicity_human"] == pytest.approx(10.0)
    good = (FIX / "toxigen" / "annotated_test.csv").read_bytes()
    bad = good.replace(b",5,5,5,human,", b",5,five,5,human,", 1)  # row 1: intent, toxicity_ai, toxicity_human
    assert bad != good
    (tmp_path / "t.csv").write_bytes(bad)
    with pytest.raises(DataError, match="toxicity_ai"):
        list(get_format("toxigen")(tmp_path, {"files": {"t.csv": {}}}))


# ------------------------------------------------------------------ every task end to end on a tiny model


@pytest.fixture(scope="module")
def ci_sized():
    return random_model("llama", seed=0, hidden=32, layers=2, heads=2)  # 512 positions, as configs/ci.yaml's model


@pytest.mark.parametrize("name, fmt, folder, files", [
    ("lambada_openai", "lambada_openai", "lambada", ["lambada_test.jsonl"]),
    ("piqa", "piqa", "piqa", ["valid.jsonl", "valid-labels.lst"]),
    ("arc_easy", "arc_llmfoundry", "arc", ["arc_easy.jsonl", "arc_easy_question-answers.jsonl"]),
    ("hellaswag", "hellaswag_llamacpp", "hellaswag", ["hellaswag_val_tiny.txt.bz2"]),
    ("winogrande", "winogrande", "winogrande", ["dev.jsonl", "dev-labels.lst"]),
    ("wikitext", "wikitext_pages", "wikitext", ["test_tiny.txt"]),
    ("triviaqa", "triviaqa_llmfoundry", "triviaqa", ["triviaqa_sm_sub.jsonl"]),
    ("toxigen", "toxigen", "toxigen", ["annotated_test.csv"]),
])
def test_task_runs_through_the_engine(ci_sized, name, fmt, folder, files):
    model, tokenizer = ci_sized
    task = get_task(name)
    result = run_task(model, tokenizer, task, rows(fmt, folder, *files), progress=False)
    assert result["status"] == "ok" and set(result["metrics"]) == set(task.METRICS)
    assert all(math.isfinite(v) for v in result["metrics"].values())


# ------------------------------------------------------------------ through the DAG, on the CI config


def test_harm_tasks_score_the_unedited_model_through_the_dag(tmp_path):
    """download -> prepare -> score_base for every harm task of configs/ci.yaml (the tiny model, n 1-2).

    Only the unedited model's scores are asked for: per checkpoint the score rule is the same
    one (test_workflow.py runs it at every checkpoint for SST-2).
    """
    import json

    import yaml
    from test_workflow import ROOT, _snakemake, _write_config

    tasks = yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())["tasks"]
    assert set(HARM) <= set(tasks)
    config = _write_config(tmp_path, tasks=tasks)
    targets = [f"results-ci/scores/tiny-llama/base/{name}.json" for name in HARM]
    result = _snakemake(tmp_path, config, *targets)
    assert result.returncode == 0, result.stderr[-4000:]
    for name in HARM:
        score = json.loads((tmp_path / targets[HARM.index(name)]).read_text())
        assert score["status"] == "ok" and score["n"] >= 1, (name, score)
        assert set(score["metrics"]) == set(get_task(name).METRICS)
        assert score["n_requested"] == tasks[name]["n"]
