"""RTE (recognising textual entailment), two-way, Gu et al.'s zero-shot prompt.

Data (format `rte`), rows {id, premise, hypothesis, label: "entailment" | "not_entailment"}:
- SuperGLUE form (the mirror's val.jsonl): {premise, hypothesis, label (string), idx};
- GLUE form: the HF parquet export {sentence1, sentence2, label 0/1, idx}, 0 = entailment,
  or GLUE's dev.tsv (index, sentence1, sentence2, label as a string).
Both hold the same 277 dev pairs.

Prompt, from JasonForJoy/Model-Editing-Hurt test-NLI.py: "{premise} entails the
{hypothesis}. True or False? answer:".  The model generates; "true" means entailment,
"false" not entailment (their scoring: TP + FN counted as correct).  Gu et al. generated
one token with GPT-2; three are generated here so that tokenizers which emit a bare
space first still reach the word.  `accuracy` counts an answer that is neither true nor
false as wrong; `answered_accuracy` is over answered items only (Gu et al. logged both).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Sequence

from editharm.datasets import register_format
from editharm.evaluate.tasks._readers import files_under, get, read_records
from editharm.evaluate.tasks.base import GenerationItem, Task

LABELS = ("entailment", "not_entailment")  # GLUE's integer labels index this


def _label(value: object, where) -> str:
    if isinstance(value, bool):
        raise where.fail(f"label {value!r} is neither an RTE label string nor 0/1")
    if isinstance(value, int) and value in (0, 1):
        return LABELS[value]
    if isinstance(value, str) and value.strip() in LABELS:
        return value.strip()
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return LABELS[int(value)]
    raise where.fail(f"label {value!r} is neither 'entailment'/'not_entailment' nor 0/1")


@register_format("rte")
def rte_rows(raw_dir: Path, spec: dict) -> Iterator[dict]:
    for path in files_under(raw_dir, spec, (".jsonl", ".parquet", ".tsv")):
        for n, (where, record) in enumerate(read_records(path)):
            if "premise" in record:  # SuperGLUE
                premise, hypothesis = get(record, "premise", where, str), get(record, "hypothesis", where, str)
            else:  # GLUE
                premise, hypothesis = get(record, "sentence1", where, str), get(record, "sentence2", where, str)
            idx = record.get("idx", record.get("index", n))
            yield {"id": f"rte-{idx}", "premise": premise, "hypothesis": hypothesis,
                   "label": _label(get(record, "label", where), where)}


def prompt(row: dict) -> str:
    return f"{row['premise']} entails the {row['hypothesis']}. True or False? answer:"


_WORD = re.compile(r"[a-z]+")


def parse_answer(text: str) -> str | None:
    """The first word of the generation, if it is true or false (as a label), else None."""
    match = _WORD.search(text.lower())
    if match is None:
        return None
    return {"true": "entailment", "false": "not_entailment"}.get(match.group())


class RTE(Task):
    NAME = "rte"
    SUITES = ("gu2024",)
    DATASET = "rte"
    KIND = "generation"
    METRICS = ("accuracy", "answered_accuracy")

    def items(self, rows: Sequence[dict], shots: Sequence[dict] | None = None) -> list[GenerationItem]:
        return [GenerationItem(id=r["id"], prompt=prompt(r), references=r["label"], stop=("\n",), max_new_tokens=3) for r in rows]

    def score(self, items: Sequence[GenerationItem], outputs: Sequence[str]) -> dict[str, float]:
        predicted = [parse_answer(o) for o in outputs]
        correct = sum(p == i.references for p, i in zip(predicted, items, strict=True))
        answered = sum(p is not None for p in predicted)
        return {"accuracy": correct / len(items) if items else 0.0,
                "answered_accuracy": correct / answered if answered else 0.0}
