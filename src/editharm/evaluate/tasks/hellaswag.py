"""HellaSwag: pick the most plausible ending of a scene, zero-shot (validation, 10,042 items).

Data (format `hellaswag_llamacpp`): the text form llama.cpp's --hellaswag mode reads
(klosax/hellaswag_text_data hellaswag_val_full.txt, bzip2-compressed or plain), six
lines per item: "{activity_label}: {ctx}", the gold ending (0-3), the four endings. It
was made from rowanz's hellaswag_val.jsonl and has already had the WikiHow markers
("[header]", "[step]", ...) removed and " [title]" turned into ". ". Rows {id, query,
endings[4], label}. The original JSONL ({activity_label, ctx_a, ctx_b, endings,
label}) is read by the same format, so its items follow lm-eval exactly.

Definition: lm-eval's hellaswag: query = preprocess(activity_label + ": " + ctx_a + " " +
ctx_b.capitalize()), choices " " + preprocess(ending), acc and acc_norm, where preprocess
strips, turns " [title]" into ". ", deletes "[...]" and replaces double spaces.

What the text form changes, and what is done about it: ctx_a and ctx_b are joined in the
file, so lm-eval's capitalisation of ctx_b cannot be applied exactly. ctx_b is the
unfinished sentence that the endings complete (empty for most WikiHow items); here the
fragment after the last sentence end (". ", "! ", "? ") of a context that does not itself
end a sentence is taken as ctx_b and capitalised as lm-eval does (first letter upper,
the rest lower). This recovers lm-eval's query when ctx_b is that fragment; it differs
when a ctx_b holds a sentence end itself, or when ctx_a does not end with one.
preprocess is applied to the file's text as lm-eval applies it to the original.
"""

from __future__ import annotations

import bz2
import re
from pathlib import Path
from typing import Iterator, Sequence

from editharm.datasets import register_format
from editharm.evaluate.metrics_lm_eval import choice_accuracy
from editharm.evaluate.tasks._readers import Where, files_under, get, read_records
from editharm.evaluate.tasks.base import ChoiceItem, ChoiceOutput, Task

_BRACKETS = re.compile(r"\[.*?\]")
_SENTENCE_END = re.compile(r"[.!?] ")
LINES_PER_ITEM = 6


def preprocess(text: str) -> str:
    """lm-eval's hellaswag text clean-up (WikiHow markers, double spaces)."""
    text = text.strip().replace(" [title]", ". ")
    text = _BRACKETS.sub("", text)
    return text.replace("  ", " ")


def capitalise_fragment(ctx: str) -> str:
    """Capitalise ctx's trailing unfinished sentence, as lm-eval capitalises ctx_b (see module doc)."""
    if not ctx or ctx.rstrip()[-1:] in (".", "!", "?", '"'):
        return ctx
    ends = list(_SENTENCE_END.finditer(ctx))
    if not ends:
        return ctx  # no earlier sentence: the whole ctx may be ctx_a; leave it
    cut = ends[-1].end()
    return ctx[:cut] + ctx[cut:].capitalize()


def _text_rows(path: Path) -> Iterator[dict]:
    opener = bz2.open if path.name.endswith(".bz2") else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % LINES_PER_ITEM:
        raise Where(path).fail(f"{len(lines)} lines is not a multiple of {LINES_PER_ITEM} (context, label, four endings per item)")
    for n in range(len(lines) // LINES_PER_ITEM):
        block = lines[n * LINES_PER_ITEM:(n + 1) * LINES_PER_ITEM]
        where = Where(path, line=n * LINES_PER_ITEM + 2)
        if block[1].strip() not in ("0", "1", "2", "3"):
            raise where.fail(f"expected the gold ending 0-3, got {block[1]!r:.40}")
        label_sep = block[0].find(": ")
        if label_sep < 0:
            raise Where(path, line=n * LINES_PER_ITEM + 1).fail("expected '{activity_label}: {context}'")
        label, ctx = block[0][:label_sep], block[0][label_sep + 2:]
        yield {"id": f"hellaswag-{n}", "query": preprocess(f"{label}: {capitalise_fragment(ctx)}"),
               "endings": [preprocess(e) for e in block[2:]], "label": int(block[1])}


def _jsonl_rows(path: Path) -> Iterator[dict]:
    for n, (where, record) in enumerate(read_records(path)):
        ctx = get(record, "ctx_a", where, str) + " " + get(record, "ctx_b", where, str).capitalize()
        endings = get(record, "endings", where, list)
        yield {"id": str(record.get("ind", f"hellaswag-{n}")),
               "query": preprocess(get(record, "activity_label", where, str) + ": " + ctx),
               "endings": [preprocess(str(e)) for e in endings], "label": int(get(record, "label", where, (int, str)))}


@register_format("hellaswag_llamacpp")
def hellaswag_rows(raw_dir: Path, spec: dict) -> Iterator[dict]:
    for path in files_under(raw_dir, spec, (".txt", ".txt.bz2", ".jsonl")):
        yield from _jsonl_rows(path) if path.name.endswith(".jsonl") else _text_rows(path)


class HellaSwag(Task):
    NAME = "hellaswag"
    SUITES = ("harm",)
    DATASET = "hellaswag"
    KIND = "choice"
    METRICS = ("accuracy", "accuracy_norm")

    def items(self, rows: Sequence[dict], shots: Sequence[dict] | None = None) -> list[ChoiceItem]:
        return [ChoiceItem(id=r["id"], context=r["query"], choices=tuple(f" {e}" for e in r["endings"]), gold=r["label"])
                for r in rows]

    def score(self, items: Sequence[ChoiceItem], outputs: Sequence[ChoiceOutput]) -> dict[str, float]:
        return choice_accuracy([o.logprobs for o in outputs], [i.choices for i in items], [i.gold for i in items])
