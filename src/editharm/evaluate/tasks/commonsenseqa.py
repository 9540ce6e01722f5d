"""CommonsenseQA, 7-shot: five answer choices, the letter with the highest log-likelihood.

Data (format `commonsenseqa`), rows {id, question, concept, labels[5], choices[5], answer (0-4)}:
- the original release (v1.11 *_rand_split.jsonl, the mirror's dev file):
  {answerKey, id, question: {question_concept, choices: [{label, text}], stem}};
- the hub's tau/commonsense_qa parquet: {id, question, question_concept,
  choices: {label: [...], text: [...]}, answerKey}.

Prompt: the layout of OpenCompass's commonsenseqa_gen config (Li et al. evaluated
with a harness; their table lists CSQA as 7-shot), "{question}\nA. ..\nB. ..\nC. ..\nD.
..\nE. ..\nAnswer: X" blocks separated by a blank line; the scored continuations are
" A" .. " E".  Shots: the first seven rows of the shots dataset.  OpenCompass takes
fixed training examples; the mirror holds only the dev split, so the default
config's `commonsenseqa_shots` dataset is the dev file, and `items` leaves out any
row that is a shot, which keeps the scored set free of its own examples (1,214 of the
1,221 questions remain).  Pointing `commonsenseqa_shots` at train_rand_split.jsonl
gives training exemplars and scores all 1,221.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

from editharm.datasets import register_format
from editharm.evaluate.metrics import best_choice
from editharm.evaluate.tasks._readers import files_under, get, read_records
from editharm.evaluate.tasks.base import ChoiceItem, ChoiceOutput, Task

N_SHOTS = 7


@register_format("commonsenseqa")
def commonsenseqa_rows(raw_dir: Path, spec: dict) -> Iterator[dict]:
    for path in files_under(raw_dir, spec, (".jsonl", ".parquet")):
        for where, record in read_records(path):
            question = get(record, "question", where, (dict, str))
            if isinstance(question, dict):  # original release
                stem = get(question, "stem", where, str)
                concept = question.get("question_concept", "")
                choice_list = get(question, "choices", where, list)
                labels = [get(c, "label", where, str) for c in choice_list]
                texts = [get(c, "text", where, str) for c in choice_list]
            else:  # hub
                stem = question
                concept = record.get("question_concept", "")
                choices = get(record, "choices", where, dict)
                labels, texts = list(get(choices, "label", where, list)), list(get(choices, "text", where, list))
            answer_key = get(record, "answerKey", where, str)
            if answer_key not in labels or len(labels) != len(texts):
                raise where.fail(f"answerKey {answer_key!r} is not among the choice labels {labels}")
            yield {"id": get(record, "id", where, str), "question": stem, "concept": concept,
                   "labels": labels, "choices": texts, "answer": labels.index(answer_key)}


def format_example(row: dict, with_answer: bool) -> str:
    lines = [row["question"]] + [f"{label}. {text}" for label, text in zip(row["labels"], row["choices"])]
    lines.append(f"Answer: {row['labels'][row['answer']]}" if with_answer else "Answer:")
    return "\n".join(lines)


def prompt(row: dict, shots: Sequence[dict]) -> str:
    return "\n\n".join([format_example(s, with_answer=True) for s in shots] + [format_example(row, with_answer=False)])


class CommonsenseQA(Task):
    NAME = "commonsenseqa"
    SUITES = ("li2024",)
    DATASET = "commonsenseqa"
    SHOTS_DATASET = "commonsenseqa_shots"
    KIND = "choice"
    METRICS = ("accuracy",)

    def items(self, rows: Sequence[dict], shots: Sequence[dict] | None = None) -> list[ChoiceItem]:
        if shots is None or len(shots) < N_SHOTS:
            raise ValueError(f"commonsenseqa is {N_SHOTS}-shot: pass at least {N_SHOTS} rows of {self.SHOTS_DATASET!r} as shots")
        exemplars = list(shots[:N_SHOTS])
        shot_ids = {s["id"] for s in exemplars}
        return [
            ChoiceItem(id=r["id"], context=prompt(r, exemplars), choices=tuple(f" {label}" for label in r["labels"]), gold=r["answer"])
            for r in rows
            if r["id"] not in shot_ids
        ]

    def score(self, items: Sequence[ChoiceItem], outputs: Sequence[ChoiceOutput]) -> dict[str, float]:
        correct = [best_choice(o) == i.gold for i, o in zip(items, outputs, strict=True)]
        return {"accuracy": sum(correct) / len(correct) if correct else 0.0}
