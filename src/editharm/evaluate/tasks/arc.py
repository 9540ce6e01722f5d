"""ARC-Easy and ARC-Challenge (AI2 Reasoning Challenge), test sets, zero-shot.

Data (format `arc_llmfoundry`): LLM Foundry's copies of the test sets (arc_easy.jsonl
2,376 and arc_challenge.jsonl 1,172 rows, {query "Question: ...", choices[4], gold}),
paired line by line with AI2's official answer keys (aristo-leaderboard
question-answers.jsonl, {id, answerKey}; the key's letter A-E or digit 1-5 gives the
index). The two are the dataset's two `files`, the key file named *question-answers*.

The copy has label defects (../shared/data/SOURCES.md): every item was forced to four
choices (three-choice items padded with a duplicate, five-choice items truncated) and
numeric answer keys were mis-mapped. Only rows whose gold index equals the official
key's are kept: ARC-Easy keeps 2,297 and drops 79, ARC-Challenge keeps 1,149 and drops
23 (every padded row is among the dropped, as is the one five-choice item keyed E).
The count is printed when the dataset is prepared. What the filter cannot see: a
five-choice item whose answer is among the first four keeps only four choices.

Definition: lm-eval's arc_easy / arc_challenge. Context "Question: {question}\\nAnswer:",
choices " {text}"; `accuracy` and `accuracy_norm` as lm-eval's acc and acc_norm.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator, Sequence

from editharm.datasets import register_format
from editharm.evaluate.metrics_lm_eval import choice_accuracy
from editharm.evaluate.tasks._readers import Where, files_under, get, read_records
from editharm.evaluate.tasks.base import ChoiceItem, ChoiceOutput, Task

KEY_MARK = "question-answers"


def key_index(answer_key: str, where: Where) -> int:
    """Index of an official answer key: A-E -> 0-4, 1-5 -> 0-4."""
    key = answer_key.strip()
    if len(key) == 1 and "A" <= key <= "E":
        return ord(key) - ord("A")
    if len(key) == 1 and "1" <= key <= "5":
        return int(key) - 1
    raise where.fail(f"answerKey {answer_key!r} is neither A-E nor 1-5")


def filter_by_key(rows: Sequence[dict], keys: Sequence[tuple[str, int]]) -> tuple[list[dict], list[str]]:
    """Rows whose gold equals the official key's index (each row gets the key's id); the dropped ids."""
    if len(rows) != len(keys):
        raise ValueError(f"{len(rows)} ARC rows but {len(keys)} official answer keys: the files must be the same split, line for line")
    kept, dropped = [], []
    for row, (qid, index) in zip(rows, keys):
        if row["gold"] == index:
            kept.append({**row, "id": qid})
        else:
            dropped.append(qid)
    return kept, dropped


@register_format("arc_llmfoundry")
def arc_rows(raw_dir: Path, spec: dict) -> Iterator[dict]:
    paths = files_under(raw_dir, spec, (".jsonl",))
    key_paths = [p for p in paths if KEY_MARK in p.name]
    data_paths = [p for p in paths if KEY_MARK not in p.name]
    if len(key_paths) != 1 or len(data_paths) != 1:
        raise ValueError(f"arc_llmfoundry: expected one LLM Foundry .jsonl and one official key file named "
                         f"*{KEY_MARK}*.jsonl among `files`, got {[p.name for p in paths]}")
    keys = [(get(r, "id", w, str), key_index(get(r, "answerKey", w, str), w)) for w, r in read_records(key_paths[0])]
    rows = []
    for n, (where, record) in enumerate(read_records(data_paths[0])):
        query = get(record, "query", where, str)
        if not query.startswith("Question: "):
            raise where.fail(f"field 'query' should start with 'Question: ', got {query!r:.60}")
        choices = [str(c) for c in get(record, "choices", where, list)]
        gold = get(record, "gold", where, int)
        if not 0 <= gold < len(choices):
            raise where.fail(f"gold {gold} is not an index of its {len(choices)} choices")
        rows.append({"id": f"row-{n}", "question": query[len("Question: "):], "choices": choices, "gold": gold})
    kept, dropped = filter_by_key(rows, keys)
    print(f"{data_paths[0].name}: kept {len(kept)} of {len(rows)} rows whose gold agrees with AI2's answer key "
          f"({key_paths[0].name}); dropped {len(dropped)}", file=sys.stderr)
    yield from kept


def prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


class _ARC(Task):
    SUITES = ("harm",)
    KIND = "choice"
    METRICS = ("accuracy", "accuracy_norm")

    def items(self, rows: Sequence[dict], shots: Sequence[dict] | None = None) -> list[ChoiceItem]:
        return [ChoiceItem(id=r["id"], context=prompt(r["question"]), choices=tuple(f" {c}" for c in r["choices"]),
                           gold=r["gold"]) for r in rows]

    def score(self, items: Sequence[ChoiceItem], outputs: Sequence[ChoiceOutput]) -> dict[str, float]:
        return choice_accuracy([o.logprobs for o in outputs], [i.choices for i in items], [i.gold for i in items])


class ARCEasy(_ARC):
    NAME = "arc_easy"
    DATASET = "arc_easy"


class ARCChallenge(_ARC):
    NAME = "arc_challenge"
    DATASET = "arc_challenge"
