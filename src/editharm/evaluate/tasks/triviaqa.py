"""TriviaQA, zero-shot closed-book question answering, exact match against any alias.

Data, two formats, rows {id, question, answers}:
- `triviaqa_llmfoundry` (the mirror's copy): LLM Foundry's triviaqa_sm_sub.jsonl, a
  3,000-QUESTION SUBSET (the canonical rc.nocontext validation split lm-eval scores has
  17,944), records {context "Question: {question}\\nAnswer:", answer, aliases}. Which
  split it was drawn from and how is not documented, and its answers were clipped to
  at most 10 tokens upstream (some aliases are visibly cut). Scores on it are not
  scores on TriviaQA's validation set: say "3,000-question subset" wherever they appear.
- `triviaqa`: the hub's mandarjoshi/trivia_qa rc.nocontext validation split (parquet or
  JSONL, {question, question_id, answer: {value, aliases, normalized_aliases, ...}}).
  No mirror copy; tested on a fixture in this schema only.
The answers are the aliases (lm-eval's target is answer.aliases; the copy's `answer` is
always among them).

Definition: lm-eval's triviaqa. Prompt "Question: {question}?\\nAnswer:" (the template
appends "?" whether or not the question already ends with one, and so does this task),
greedy generation stopped at a newline, "." or ","; the output is stripped (lm-eval's
remove_whitespace filter) and compared with each alias ignoring case and punctuation
(lm-eval's exact_match with ignore_case and ignore_punctuation; no article removal).
Generation stops after 32 new tokens (lm-eval: 256); an answer that has not met a stop
sequence by then is wrong under either limit unless an alias is that long.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

from editharm.datasets import register_format
from editharm.evaluate.metrics_lm_eval import exact_match_any
from editharm.evaluate.tasks._readers import files_under, get, read_records
from editharm.evaluate.tasks.base import GenerationItem, Task

QUESTION_PREFIX, ANSWER_SUFFIX = "Question: ", "\nAnswer:"


@register_format("triviaqa")
def triviaqa_rows(raw_dir: Path, spec: dict) -> Iterator[dict]:
    for path in files_under(raw_dir, spec, (".parquet", ".jsonl")):
        for n, (where, record) in enumerate(read_records(path)):
            answer = get(record, "answer", where, dict)
            aliases = [str(a) for a in get(answer, "aliases", where, list)]
            if not aliases:
                raise where.fail("answer.aliases is empty: nothing to match the answer against")
            yield {"id": str(record.get("question_id", f"triviaqa-{n}")), "question": get(record, "question", where, str),
                   "answers": list(dict.fromkeys(aliases))}


@register_format("triviaqa_llmfoundry")
def triviaqa_llmfoundry_rows(raw_dir: Path, spec: dict) -> Iterator[dict]:
    for path in files_under(raw_dir, spec, (".jsonl",)):
        for n, (where, record) in enumerate(read_records(path)):
            context = get(record, "context", where, str)
            if not (context.startswith(QUESTION_PREFIX) and context.endswith(ANSWER_SUFFIX)):
                raise where.fail(f"field 'context' should read 'Question: ...\\nAnswer:', got {context!r:.60}")
            aliases = [str(a) for a in get(record, "aliases", where, list)]
            if not aliases:
                raise where.fail("field 'aliases' is empty: nothing to match the answer against")
            yield {"id": f"triviaqa-sub-{n}", "question": context[len(QUESTION_PREFIX):-len(ANSWER_SUFFIX)],
                   "answers": list(dict.fromkeys(aliases))}


def prompt(question: str) -> str:
    return f"{QUESTION_PREFIX}{question}?{ANSWER_SUFFIX}"


class TriviaQA(Task):
    NAME = "triviaqa"
    SUITES = ("li2024", "harm")
    DATASET = "triviaqa"
    KIND = "generation"
    METRICS = ("exact_match",)

    def items(self, rows: Sequence[dict], shots: Sequence[dict] | None = None) -> list[GenerationItem]:
        return [GenerationItem(id=r["id"], prompt=prompt(r["question"]), references=tuple(r["answers"]),
                               stop=("\n", ".", ","), max_new_tokens=32) for r in rows]

    def score(self, items: Sequence[GenerationItem], outputs: Sequence[str]) -> dict[str, float]:
        hits = [exact_match_any(o, i.references) for i, o in zip(items, outputs, strict=True)]
        return {"exact_match": sum(hits) / len(hits) if hits else 0.0}
