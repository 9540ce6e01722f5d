"""Natural Questions, open-domain (Gu et al. 2024's "open-domain QA"): exact match on NQ-open dev.

Gu et al. prompted "Refer to the passage below and answer the following question.
Passage: {passage} Question: {question}" with a passage generated for each question;
those passages are not part of NQ-open, so this task is closed-book and uses the
standard closed-book zero-shot prompt of lm-evaluation-harness's nq_open,
"Q: {question}?\nA:" (with Gu et al.'s instruction and no passage, SmolLM2 mostly
answered with an empty line). Greedy, at most 20 new tokens (Gu et al.'s limit),
stopped at the end of the line. lm-eval also stops at "." and ","; that would cut
answers such as "Tulsa, Oklahoma" or "September 14, 2008", and the normalisation
drops a final full stop anyway.

Metrics: exact_match (the usual one: normalised prediction equals a normalised answer)
and contains_answer (Gu et al.'s lenient rule: a normalised answer appears as a run of
words in the normalised prediction).
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean
from typing import Iterable, Sequence

from editharm.datasets import register_format
from editharm.evaluate.metrics import contains_answer, exact_match
from editharm.evaluate.tasks._files import raw_file
from editharm.evaluate.tasks.base import GenerationItem, Task
from editharm.io import DataError, read_jsonl

MAX_NEW_TOKENS = 20
STOP = ("\n",)


def prompt(question: str) -> str:
    # NQ-open questions carry no question mark; lm-eval (and Gu et al.'s copy) add one.
    question = question.strip()
    if not question.endswith("?"):
        question += "?"
    return f"Q: {question}\nA:"


@register_format("nq_open_jsonl")
def read_nq_open(raw_dir: Path, spec: dict) -> Iterable[dict]:
    """NQ-open JSONL ({"question", "answer": [...]}) -> {"id", "question", "answer"}."""
    path = raw_file(raw_dir, spec, "NQ-open.dev.jsonl")
    for lineno, row in enumerate(read_jsonl(path), start=1):
        question, answers = row.get("question"), row.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{path}, record {lineno}: 'question' must be a non-empty string")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise DataError(f"{path}, record {lineno}: 'answer' must be a non-empty list of strings")
        yield {"id": f"nq-{lineno}", "question": question, "answer": answers}


class NQOpen(Task):
    NAME = "nq_open"
    SUITES = ("gu2024",)
    DATASET = "nq_open"
    KIND = "generation"
    METRICS = ("exact_match", "contains_answer")

    def items(self, rows: Sequence[dict], shots: Sequence[dict] | None = None) -> list[GenerationItem]:
        return [GenerationItem(str(r["id"]), prompt(r["question"]), tuple(r["answer"]), STOP, MAX_NEW_TOKENS)
                for r in rows]

    def score(self, items: Sequence[GenerationItem], outputs: Sequence[str]) -> dict[str, float]:
        if not items:
            raise ValueError("nq_open: no items to score")
        return {
            "exact_match": fmean([exact_match(o, it.references) for it, o in zip(items, outputs)]),
            "contains_answer": fmean([contains_answer(o, it.references) for it, o in zip(items, outputs)]),
        }
