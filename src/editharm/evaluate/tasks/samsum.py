"""SAMSum: summarise a chat dialogue, scored by the mean of ROUGE-1, ROUGE-2 and ROUGE-L F1.

Data (format `samsum`), rows {id, dialogue, summary}:
- canonical test.json of the SAMSum corpus (and the hub's samsum parquet): a list of
  {id, dialogue, summary}, dialogue lines separated by CRLF;
- InstructDS's conversion (the mirror's copy): a list of {instruction, dialogue,
  summary}, ids dropped, CRLF turned into LF.  Ids become "samsum-<position>".
Line ends are normalised to LF for both, so both give the same prompts.

Prompt, from JasonForJoy/Model-Editing-Hurt test-summarization.py: "{dialogue}\nTL;DR:",
25 new tokens, no stop sequence (as Gu et al. generated).  Score per item: the mean of
ROUGE-1/2/L F1 against the reference; an output of at most one character scores 0 (as
in their script); the task score is the mean over items.  Gu et al. used the `rouge`
package (case-sensitive, unique n-grams, summary-level LCS over '.'-split sentences);
here ROUGE is the standard definition of Google's rouge-score (see metrics_extra), so
absolute values differ somewhat from theirs while comparisons between checkpoints hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

from editharm.datasets import register_format
from editharm.evaluate.metrics_extra import rouge_scores
from editharm.evaluate.tasks._readers import files_under, get, read_records
from editharm.evaluate.tasks.base import GenerationItem, Task


@register_format("samsum")
def samsum_rows(raw_dir: Path, spec: dict) -> Iterator[dict]:
    for path in files_under(raw_dir, spec, (".json", ".jsonl", ".parquet")):
        for n, (where, record) in enumerate(read_records(path)):
            dialogue = get(record, "dialogue", where, str).replace("\r\n", "\n")
            summary = get(record, "summary", where, str).replace("\r\n", "\n")
            sample_id = str(record["id"]) if "id" in record else f"samsum-{n}"
            yield {"id": sample_id, "dialogue": dialogue, "summary": summary}


def prompt(row: dict) -> str:
    return f"{row['dialogue']}\nTL;DR:"


def summary_score(prediction: str, reference: str) -> dict[str, float]:
    prediction = prediction.strip()
    if len(prediction) <= 1:
        return {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    return rouge_scores(prediction, reference)


class SAMSum(Task):
    NAME = "samsum"
    SUITES = ("gu2024",)
    DATASET = "samsum"
    KIND = "generation"
    METRICS = ("rouge_mean", "rouge1", "rouge2", "rougeL")

    def items(self, rows: Sequence[dict], shots: Sequence[dict] | None = None) -> list[GenerationItem]:
        return [GenerationItem(id=r["id"], prompt=prompt(r), references=r["summary"], stop=(), max_new_tokens=25) for r in rows]

    def score(self, items: Sequence[GenerationItem], outputs: Sequence[str]) -> dict[str, float]:
        scores = [summary_score(o, i.references) for i, o in zip(items, outputs, strict=True)]
        n = len(scores) or 1
        means = {k: sum(s[k] for s in scores) / n for k in ("rouge1", "rouge2", "rougeL")}
        return {"rouge_mean": (means["rouge1"] + means["rouge2"] + means["rougeL"]) / 3, **means}
