"""PIQA: physical commonsense, choose the better of two solutions for a goal, zero-shot.

Data (format `piqa`): the authors' validation files (1,838 goals), valid.jsonl
{goal, sol1, sol2} with the gold solution per line in valid-labels.lst (0 = sol1,
1 = sol2), the two as the dataset's two `files`. A JSONL or parquet file whose records
carry their own `label` (the hub's copies) is read alone. Rows {id, goal, solutions
[2], label}.

Definition: lm-eval's piqa. Context "Question: {goal}\\nAnswer:", choices " {sol1}" and
" {sol2}" (the solutions as given, untrimmed); `accuracy` and `accuracy_norm` (per
character of the solution) as lm-eval's acc and acc_norm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

from editharm.datasets import register_format
from editharm.evaluate.metrics_lm_eval import choice_accuracy
from editharm.evaluate.tasks._readers import Where, files_under, get, read_records
from editharm.evaluate.tasks.base import ChoiceItem, ChoiceOutput, Task


def _labels(path: Path) -> list[int]:
    labels = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip() not in ("0", "1"):
            raise Where(path, line=lineno).fail(f"expected a label 0 or 1, got {line!r:.40}")
        labels.append(int(line))
    return labels


def _label(value: object, where: Where) -> int:
    if str(value).strip() not in ("0", "1"):
        raise where.fail(f"field 'label' should be 0 or 1, got {value!r}")
    return int(value)


@register_format("piqa")
def piqa_rows(raw_dir: Path, spec: dict) -> Iterator[dict]:
    records = files_under(raw_dir, spec, (".jsonl", ".parquet"))
    label_files = files_under(raw_dir, spec, (".lst",)) if any(str(n).endswith(".lst") for n in spec["files"]) else []
    if len(records) != 1 or len(label_files) > 1:
        raise ValueError(f"piqa: expected one .jsonl/.parquet file and at most one labels .lst file among `files`, "
                         f"got {[p.name for p in records + label_files]}")
    labels = _labels(label_files[0]) if label_files else None
    rows = list(read_records(records[0]))
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"{label_files[0]}: {len(labels)} labels for {len(rows)} records in {records[0]}; "
                         "the two files must be the same split, line for line")
    for n, (where, record) in enumerate(rows):
        label = labels[n] if labels is not None else _label(get(record, "label", where), where)
        yield {"id": f"piqa-{n}", "goal": get(record, "goal", where, str),
               "solutions": [get(record, "sol1", where, str), get(record, "sol2", where, str)], "label": label}


def prompt(goal: str) -> str:
    return f"Question: {goal}\nAnswer:"


class PIQA(Task):
    NAME = "piqa"
    SUITES = ("harm",)
    DATASET = "piqa"
    KIND = "choice"
    METRICS = ("accuracy", "accuracy_norm")

    def items(self, rows: Sequence[dict], shots: Sequence[dict] | None = None) -> list[ChoiceItem]:
        return [ChoiceItem(id=r["id"], context=prompt(r["goal"]), choices=tuple(f" {s}" for s in r["solutions"]),
                           gold=r["label"]) for r in rows]

    def score(self, items: Sequence[ChoiceItem], outputs: Sequence[ChoiceOutput]) -> dict[str, float]:
        return choice_accuracy([o.logprobs for o in outputs], [i.choices for i in items], [i.gold for i in items])
