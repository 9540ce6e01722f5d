"""BoolQ: yes/no questions about a Wikipedia passage, Gu et al.'s zero-shot prompt.

Data (format `boolq`), rows {id, question, title, passage, answer: bool}:
- canonical BoolQ dev.jsonl (google-research-datasets/boolean-questions):
  {question, title, answer, passage};
- SuperGLUE form (the mirror's val.jsonl): {question, passage, label, idx}, where the
  passage is "<title> -- <text>".  The title is split off at the first " -- " so both
  forms give the same passage text, the one Gu et al.'s data file had.

Prompt, from JasonForJoy/Model-Editing-Hurt test-ClosedDomainQA.py: "Please answer the
given question based on the passage. The answer should be exact 'yes' or 'no'. passage:
{passage} question: {question}. answer:".  Exact match of the generated word with
yes/no (Gu et al. generated one GPT-2 token and compared it with " yes"/" no"; three
tokens are generated here, and the first word is compared, case-insensitively, so that
tokenizers which emit a bare space first are not penalised).  `answered_accuracy` is
over items whose answer was yes or no, as Gu et al. also logged.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Sequence

from editharm.datasets import register_format
from editharm.evaluate.tasks._readers import files_under, get, read_records
from editharm.evaluate.tasks.base import GenerationItem, Task

SUPERGLUE_TITLE_SEP = " -- "


@register_format("boolq")
def boolq_rows(raw_dir: Path, spec: dict) -> Iterator[dict]:
    for path in files_under(raw_dir, spec, (".jsonl", ".parquet")):
        for n, (where, record) in enumerate(read_records(path)):
            question = get(record, "question", where, str)
            passage = get(record, "passage", where, str)
            if "title" in record:  # canonical BoolQ
                title = get(record, "title", where, str)
                answer = get(record, "answer", where, bool)
            else:  # SuperGLUE: title folded into the passage
                title, sep, text = passage.partition(SUPERGLUE_TITLE_SEP)
                if not sep:
                    raise where.fail(f"SuperGLUE passage has no {SUPERGLUE_TITLE_SEP!r} after its title")
                passage = text
                answer = get(record, "label", where, bool)
            idx = record.get("idx", n)
            yield {"id": f"boolq-{idx}", "question": question, "title": title, "passage": passage, "answer": answer}


def prompt(row: dict) -> str:
    return (
        "Please answer the given question based on the passage. The answer should be exact 'yes' or 'no'. "
        f"passage: {row['passage']} question: {row['question']}. answer:"
    )


_WORD = re.compile(r"[a-z]+")


def parse_answer(text: str) -> bool | None:
    match = _WORD.search(text.lower())
    return {"yes": True, "no": False}.get(match.group()) if match else None


class BoolQ(Task):
    NAME = "boolq"
    SUITES = ("gu2024",)
    DATASET = "boolq"
    KIND = "generation"
    METRICS = ("exact_match", "answered_accuracy")

    def items(self, rows: Sequence[dict], shots: Sequence[dict] | None = None) -> list[GenerationItem]:
        return [GenerationItem(id=r["id"], prompt=prompt(r), references=r["answer"], stop=("\n",), max_new_tokens=3) for r in rows]

    def score(self, items: Sequence[GenerationItem], outputs: Sequence[str]) -> dict[str, float]:
        predicted = [parse_answer(o) for o in outputs]
        correct = sum(p is not None and p == i.references for p, i in zip(predicted, items, strict=True))
        answered = sum(p is not None for p in predicted)
        return {"exact_match": correct / len(items) if items else 0.0,
                "answered_accuracy": correct / answered if answered else 0.0}
