"""WinoGrande (1.1, dev/validation, 1,267 items): fill the blank with one of two names, zero-shot.

Data (format `winogrande`): the release's dev.jsonl {qID, sentence (with one "_"),
option1, option2, answer "1"/"2"}; a dev-labels.lst among the dataset's `files` must
agree with every `answer` (the two come together in the release). The hub's
allenai/winogrande (parquet) has the same fields. Rows {id, sentence, options[2], label}.

Definition: lm-eval's winogrande, "partial scoring" (Trinh & Le): the sentence is cut at
the blank; each option gives its own context, the text before the blank followed by the
option, and the same continuation, " " + the text after the blank (stripped), is scored
after each. `accuracy`: the option under which the continuation is more likely is the
answer (lm-eval's acc; no acc_norm, the continuation is the same for both).

Each row gives two engine items (one per option, one choice each, ids "{id}/1" and
"{id}/2"); `score` reads them in pairs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

from editharm.datasets import register_format
from editharm.evaluate.metrics_extra import argmax
from editharm.evaluate.tasks._readers import files_under, get, read_records
from editharm.evaluate.tasks.base import ChoiceItem, ChoiceOutput, Task


def _labels(raw_dir: Path, spec: dict) -> list[str] | None:
    if not any(str(name).endswith(".lst") for name in spec["files"]):
        return None
    (path,) = files_under(raw_dir, spec, (".lst",))
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@register_format("winogrande")
def winogrande_rows(raw_dir: Path, spec: dict) -> Iterator[dict]:
    labels = _labels(raw_dir, spec)
    rows = []
    for path in files_under(raw_dir, spec, (".jsonl", ".parquet")):
        for where, record in read_records(path):
            sentence = get(record, "sentence", where, str)
            if sentence.count("_") != 1:
                raise where.fail(f"field 'sentence' should hold exactly one '_' (the blank), got {sentence.count('_')}")
            answer = str(get(record, "answer", where, (str, int))).strip()
            if answer not in ("1", "2"):
                raise where.fail(f"field 'answer' should be '1' or '2', got {answer!r}")
            rows.append((where, {"id": str(record.get("qID", f"winogrande-{len(rows)}")), "sentence": sentence,
                                 "options": [get(record, "option1", where, str), get(record, "option2", where, str)],
                                 "label": int(answer) - 1}))
    if labels is not None:
        if len(labels) != len(rows):
            raise ValueError(f"winogrande: {len(labels)} labels in the .lst file for {len(rows)} records")
        for (where, row), label in zip(rows, labels):
            if label != str(row["label"] + 1):
                raise where.fail(f"answer {row['label'] + 1} disagrees with the labels file's {label!r}")
    for _, row in rows:
        yield row


def split_at_blank(sentence: str) -> tuple[str, str]:
    """(text before the blank, continuation " " + the text after it, stripped)."""
    blank = sentence.index("_")
    return sentence[:blank], " " + sentence[blank + 1:].strip()


class WinoGrande(Task):
    NAME = "winogrande"
    SUITES = ("harm",)
    DATASET = "winogrande"
    KIND = "choice"
    METRICS = ("accuracy",)

    def items(self, rows: Sequence[dict], shots: Sequence[dict] | None = None) -> list[ChoiceItem]:
        items = []
        for r in rows:
            before, continuation = split_at_blank(r["sentence"])
            for k, option in enumerate(r["options"]):
                items.append(ChoiceItem(id=f"{r['id']}/{k + 1}", context=before + option, choices=(continuation,),
                                        gold=r["label"]))
        return items

    def score(self, items: Sequence[ChoiceItem], outputs: Sequence[ChoiceOutput]) -> dict[str, float]:
        if len(items) != len(outputs) or len(items) % 2:
            raise ValueError(f"winogrande scores items in pairs (one per option): got {len(items)} items, {len(outputs)} outputs")
        correct = 0
        for k in range(0, len(items), 2):
            lls = [outputs[k].logprobs[0], outputs[k + 1].logprobs[0]]
            correct += argmax(lls) == items[k].gold
        return {"accuracy": correct / (len(items) // 2) if items else 0.0}
