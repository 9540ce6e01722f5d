"""LAMBADA (OpenAI's version): predict the last word of a passage, zero-shot.

Data (format `lambada_openai`): OpenAI's lambada_test.jsonl (5,153 passages; the
mirror's copy is byte-identical: its sha256 is the one lm-eval and GPT-Neo pin), one
{"text"} per line. The hub's EleutherAI/lambada_openai (parquet or JSONL, same field)
is read by the same format. Rows {id, text}.

Definition: lm-eval's lambada_openai. The context is the text up to its last space
(split on " " only, as lm-eval's template does, so a newline inside the last "word"
stays in the target), the target " " + the last space-separated word, scored by
log-likelihood. `accuracy`: the target is the model's greedy continuation, every token
of it the argmax. `perplexity`: exp(-mean over passages of the target's summed
log-likelihood) - lm-eval's per-item perplexity, not a per-token one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

from editharm.datasets import register_format
from editharm.evaluate.metrics_lm_eval import perplexity
from editharm.evaluate.tasks._readers import files_under, get, read_records
from editharm.evaluate.tasks.base import ChoiceItem, ChoiceOutput, Task


@register_format("lambada_openai")
def lambada_rows(raw_dir: Path, spec: dict) -> Iterator[dict]:
    for path in files_under(raw_dir, spec, (".jsonl", ".parquet")):
        for n, (where, record) in enumerate(read_records(path)):
            text = get(record, "text", where, str)
            if " " not in text.strip():
                raise where.fail("field 'text' should be a passage of several words (its last word is the target)")
            yield {"id": f"lambada-{n}", "text": text}


def split_last_word(text: str) -> tuple[str, str]:
    """(context, target): everything before the last " ", and " " + the last word."""
    context, _, last = text.rpartition(" ")
    return context, " " + last


class LambadaOpenAI(Task):
    NAME = "lambada_openai"
    SUITES = ("harm",)
    DATASET = "lambada_openai"
    KIND = "choice"
    METRICS = ("accuracy", "perplexity")

    def items(self, rows: Sequence[dict], shots: Sequence[dict] | None = None) -> list[ChoiceItem]:
        items = []
        for r in rows:
            context, target = split_last_word(r["text"])
            items.append(ChoiceItem(id=r["id"], context=context, choices=(target,), gold=0))
        return items

    def score(self, items: Sequence[ChoiceItem], outputs: Sequence[ChoiceOutput]) -> dict[str, float]:
        if len(items) != len(outputs):
            raise ValueError(f"{len(outputs)} outputs for {len(items)} items")
        greedy = [bool(o.is_greedy[0]) for o in outputs]
        return {"accuracy": sum(greedy) / len(greedy) if greedy else 0.0,
                "perplexity": perplexity([o.logprobs[0] for o in outputs]) if outputs else float("nan")}
