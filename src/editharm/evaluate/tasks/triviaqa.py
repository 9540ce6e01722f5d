"""TriviaQA, zero-shot closed-book question answering, exact match against any alias.

Data (format `triviaqa`): the rc.nocontext validation split of the hub's
mandarjoshi/trivia_qa (lm-eval's triviaqa split; Li et al. list 17,900 test
questions), records {question,
question_id, question_source, entity_pages, search_results, answer: {aliases,
normalized_aliases, matched_wiki_entity_name, normalized_matched_wiki_entity_name,
normalized_value, type, value}}, as parquet or JSONL.  There is no mirror copy here: the
loader was tested on a fixture in this schema only.  Rows {id, question, answers}, the
answers being the value and every alias (normalised or not), duplicates removed.

Prompt: lm-eval's triviaqa layout, "Question: {question}\nAnswer:" (its template adds a
"?" that the questions already end with; it is not doubled here), greedy, stopping at
a newline, full stop or comma as lm-eval does.  Exact match after the usual
normalisation (lower case, no punctuation or articles, single spaces) against any answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

from editharm.datasets import register_format
from editharm.evaluate.metrics import exact_match
from editharm.evaluate.tasks._readers import files_under, get, read_records
from editharm.evaluate.tasks.base import GenerationItem, Task


@register_format("triviaqa")
def triviaqa_rows(raw_dir: Path, spec: dict) -> Iterator[dict]:
    for path in files_under(raw_dir, spec, (".parquet", ".jsonl")):
        for n, (where, record) in enumerate(read_records(path)):
            answer = get(record, "answer", where, dict)
            answers = [get(answer, "value", where, str)]
            answers += [str(a) for a in answer.get("aliases") or []]
            answers += [str(a) for a in answer.get("normalized_aliases") or []]
            yield {"id": str(record.get("question_id", f"triviaqa-{n}")), "question": get(record, "question", where, str),
                   "answers": list(dict.fromkeys(a for a in answers if a.strip()))}


def prompt(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"


class TriviaQA(Task):
    NAME = "triviaqa"
    SUITES = ("li2024",)
    DATASET = "triviaqa"
    KIND = "generation"
    METRICS = ("exact_match",)

    def items(self, rows: Sequence[dict], shots: Sequence[dict] | None = None) -> list[GenerationItem]:
        return [GenerationItem(id=r["id"], prompt=prompt(r["question"]), references=tuple(r["answers"]),
                               stop=("\n", ".", ","), max_new_tokens=32) for r in rows]

    def score(self, items: Sequence[GenerationItem], outputs: Sequence[str]) -> dict[str, float]:
        hits = [exact_match(o, i.references) for i, o in zip(items, outputs, strict=True)]
        return {"exact_match": sum(hits) / len(hits) if hits else 0.0}
