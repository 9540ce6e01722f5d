"""SST-2 sentiment (Gu et al. 2024's "sentiment analysis" task): accuracy on the GLUE dev set.

Prompt: Gu et al.'s zero-shot instruction and input, verbatim (their missing spaces
after "text," and "negative." included, since the model saw exactly that). They let the
model generate one token and matched "positive"/"negative"; here the two label words
are scored as choices by log-likelihood, so every example gets an answer and the
metric is plain accuracy (Gu et al. counted unparsable outputs as wrong; a choice
cannot be unparsable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from editharm.datasets import register_format
from editharm.evaluate.metrics import accuracy, best_choice
from editharm.evaluate.tasks._files import raw_file
from editharm.evaluate.tasks.base import ChoiceItem, ChoiceOutput, Task
from editharm.io import DataError

INSTRUCTION = ("For each snippet of text,label the sentiment of the text as positive or negative."
               "The answer should be exact 'positive' or 'negative'.")
LABELS = (" negative", " positive")  # GLUE: 0 negative, 1 positive


def prompt(sentence: str) -> str:
    # GLUE sentences end with a stray space; dropped so "answer:" follows one space.
    return f"{INSTRUCTION} text: {sentence.strip()} answer:"


@register_format("sst2_glue_tsv")
def read_glue_tsv(raw_dir: Path, spec: dict) -> Iterable[dict]:
    """GLUE SST-2 dev.tsv (header `sentence<TAB>label`) -> {"id", "sentence", "label"}."""
    path = raw_file(raw_dir, spec, "dev.tsv")
    # No csv module: GLUE's sentences contain unbalanced quotes, and the file has no quoting.
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        if header != ["sentence", "label"]:
            raise DataError(f"{path}, line 1: expected the header 'sentence<TAB>label', got {header!r}")
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != 2 or fields[1] not in ("0", "1") or not fields[0].strip():
                raise DataError(f"{path}, line {lineno}: expected 'sentence<TAB>0|1', got {line!r}")
            yield {"id": f"sst2-{lineno - 1}", "sentence": fields[0], "label": int(fields[1])}


class SST2(Task):
    NAME = "sst2"
    SUITES = ("gu2024",)
    DATASET = "sst2"
    KIND = "choice"
    METRICS = ("accuracy",)

    def items(self, rows: Sequence[dict], shots: Sequence[dict] | None = None) -> list[ChoiceItem]:
        return [ChoiceItem(str(r["id"]), prompt(r["sentence"]), LABELS, int(r["label"])) for r in rows]

    def score(self, items: Sequence[ChoiceItem], outputs: Sequence[ChoiceOutput]) -> dict[str, float]:
        return {"accuracy": accuracy([best_choice(o) for o in outputs], [it.gold for it in items])}
