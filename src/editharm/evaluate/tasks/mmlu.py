"""MMLU, 5-shot: the dev examples of the same subject as shots, then the question; the
answer is the letter among A-D with the highest log-likelihood.

Data (format `mmlu`), rows {id, subject, split, question, choices[4], answer (0-3)}:
- canonical release (Hendrycks' data.tar, folders dev/ and test/): headerless CSV files
  <subject>_<split>.csv with columns question, four choices, answer letter A-D;
- the mirror's derived copy: the same files with a header row
  "question,choice0,choice1,choice2,choice3,answer" and answers as 0-3;
- the hub's cais/mmlu parquet {question, subject, choices, answer (0-3)}, split taken
  from the file name (dev-..., test-...).
`options: {split: test|dev}` in the dataset's config keeps one split (the folder holds
both); without it every file is read.

Prompt: the one of Hendrycks et al. as lm-eval's mmlu task writes it (Li et al. used a
harness), "The following are multiple choice questions (with answers) about
{subject}.\n\n" then per example "{question}\nA. ..\nB. ..\nC. ..\nD. ..\nAnswer: X" with
examples separated by a blank line; the scored continuations are " A" .. " D".
Accuracy is over all questions (micro average, like lm-eval's mmlu group).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Iterator, Sequence

from editharm.datasets import register_format
from editharm.evaluate.metrics import best_choice
from editharm.evaluate.tasks._readers import Where, files_under, get, read_records
from editharm.evaluate.tasks.base import ChoiceItem, ChoiceOutput, Task

LETTERS = ("A", "B", "C", "D")
MIRROR_HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
N_SHOTS = 5


def _answer_index(value: object, where: Where) -> int:
    text = str(value).strip()
    if text in LETTERS:
        return LETTERS.index(text)
    if text in ("0", "1", "2", "3"):
        return int(text)
    raise where.fail(f"answer {value!r} is neither A-D nor 0-3")


def _csv_rows(path: Path) -> Iterator[dict]:
    stem = path.name[: -len(".csv")]
    subject, _, split = stem.rpartition("_")
    if not subject or split not in ("dev", "test", "val"):
        raise Where(path).fail("MMLU file names are <subject>_<dev|val|test>.csv")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        n = 0
        for record in reader:
            where = Where(path, line=reader.line_num)
            if reader.line_num == 1 and record == MIRROR_HEADER:
                continue
            if len(record) != 6:
                raise where.fail(f"expected 6 columns (question, 4 choices, answer), got {len(record)}")
            yield {"id": f"{subject}/{split}-{n}", "subject": subject, "split": split, "question": record[0],
                   "choices": record[1:5], "answer": _answer_index(record[5], where)}
            n += 1


def _parquet_rows(path: Path) -> Iterator[dict]:
    split = path.name.split("-", 1)[0]
    counters: dict[str, int] = defaultdict(int)
    for where, record in read_records(path):
        subject = get(record, "subject", where, str)
        choices = get(record, "choices", where, list)
        if len(choices) != 4:
            raise where.fail(f"expected 4 choices, got {len(choices)}")
        n = counters[subject]
        counters[subject] += 1
        yield {"id": f"{subject}/{split}-{n}", "subject": subject, "split": split,
               "question": get(record, "question", where, str), "choices": [str(c) for c in choices],
               "answer": _answer_index(get(record, "answer", where), where)}


@register_format("mmlu")
def mmlu_rows(raw_dir: Path, spec: dict) -> Iterator[dict]:
    wanted = (spec.get("options") or {}).get("split")
    for path in files_under(raw_dir, spec, (".csv", ".parquet")):
        rows = _parquet_rows(path) if path.name.endswith(".parquet") else _csv_rows(path)
        for row in rows:
            if wanted is None or row["split"] == wanted:
                yield row


def format_subject(subject: str) -> str:
    return subject.replace("_", " ")


def format_example(row: dict, with_answer: bool) -> str:
    lines = [row["question"].strip()] + [f"{letter}. {choice}" for letter, choice in zip(LETTERS, row["choices"])]
    answer = f"Answer: {LETTERS[row['answer']]}" if with_answer else "Answer:"
    return "\n".join(lines + [answer])


def prompt(row: dict, shots: Sequence[dict]) -> str:
    header = f"The following are multiple choice questions (with answers) about {format_subject(row['subject'])}.\n\n"
    blocks = [format_example(s, with_answer=True) for s in shots] + [format_example(row, with_answer=False)]
    return header + "\n\n".join(blocks)


class MMLU(Task):
    NAME = "mmlu"
    SUITES = ("li2024",)
    DATASET = "mmlu"
    SHOTS_DATASET = "mmlu_dev"
    KIND = "choice"
    METRICS = ("accuracy",)

    def items(self, rows: Sequence[dict], shots: Sequence[dict] | None = None) -> list[ChoiceItem]:
        if shots is None:
            raise ValueError(f"mmlu is {N_SHOTS}-shot: pass the rows of dataset {self.SHOTS_DATASET!r} as shots")
        by_subject: dict[str, list[dict]] = defaultdict(list)
        for s in shots:
            by_subject[s["subject"]].append(s)
        items = []
        for r in rows:
            subject_shots = by_subject[r["subject"]][:N_SHOTS]
            if len(subject_shots) < N_SHOTS:
                raise ValueError(f"mmlu: {len(subject_shots)} dev examples for subject {r['subject']!r}, need {N_SHOTS}")
            choices = tuple(f" {x}" for x in LETTERS)
            items.append(ChoiceItem(id=r["id"], context=prompt(r, subject_shots), choices=choices, gold=r["answer"]))
        return items

    def score(self, items: Sequence[ChoiceItem], outputs: Sequence[ChoiceOutput]) -> dict[str, float]:
        correct = [best_choice(o) == i.gold for i, o in zip(items, outputs, strict=True)]
        return {"accuracy": sum(correct) / len(correct) if correct else 0.0}
