"""MuTual: choose the right next turn of a dialogue among four, scored as R4@1.

Data (format `mutual`): the dev folder of Nealcly/MuTual (the mirror's copy is that
folder), one JSON object per file dev_<n>.txt: {answers: "A".."D", options[4], article,
id}.  Rows {id, article, options, answer (0-3)}, in the order of n.

Prompt, from JasonForJoy/Model-Editing-Hurt test-dialogue.py (its typo "Chioces"
included, since the model sees it): "Q: {article} Which choice is correct? Answer
Chioces: (A){o1}(B){o2}(C){o3}(D){o4} A: Among A through D, the answer is".  Gu et al.
generated one token and looked for the letter; here the four letters are ranked by
log-likelihood after that prompt, the "best of four candidates" reading of R4@1 that
never leaves an item unanswered and equals greedy decoding whenever the model's next
token is one of the letters.  R4@2 and MRR, MuTual's other two metrics, come from the
same ranking.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Sequence

from editharm.datasets import register_format
from editharm.evaluate.metrics_extra import rank_of
from editharm.evaluate.tasks._readers import Where, files_under, get, load_json
from editharm.evaluate.tasks.base import ChoiceItem, ChoiceOutput, Task

LETTERS = ("A", "B", "C", "D")
_FILE_NUMBER = re.compile(r"(\d+)\.txt$")


def _file_order(path: Path) -> tuple[int, str]:
    match = _FILE_NUMBER.search(path.name)
    return (int(match.group(1)) if match else -1, path.name)


@register_format("mutual")
def mutual_rows(raw_dir: Path, spec: dict) -> Iterator[dict]:
    for path in sorted(files_under(raw_dir, spec, (".txt",)), key=_file_order):
        where = Where(path)
        record = load_json(path)
        options = get(record, "options", where, list)
        if len(options) != 4 or not all(isinstance(o, str) for o in options):
            raise where.fail(f"expected 4 option strings, got {options!r:.120}")
        answer = get(record, "answers", where, str)
        if answer not in LETTERS:
            raise where.fail(f"answers should be one of A-D, got {answer!r}")
        yield {"id": str(record.get("id", path.stem)), "article": get(record, "article", where, str),
               "options": options, "answer": LETTERS.index(answer)}


def prompt(row: dict) -> str:
    choices = "".join(f"({letter}){option}" for letter, option in zip(LETTERS, row["options"]))
    return f"Q: {row['article']} Which choice is correct? Answer Chioces: {choices} A: Among A through D, the answer is"


class MuTual(Task):
    NAME = "mutual"
    SUITES = ("gu2024",)
    DATASET = "mutual"
    KIND = "choice"
    METRICS = ("r4_at_1", "r4_at_2", "mrr")

    def items(self, rows: Sequence[dict], shots: Sequence[dict] | None = None) -> list[ChoiceItem]:
        return [ChoiceItem(id=r["id"], context=prompt(r), choices=tuple(f" {x}" for x in LETTERS), gold=r["answer"]) for r in rows]

    def score(self, items: Sequence[ChoiceItem], outputs: Sequence[ChoiceOutput]) -> dict[str, float]:
        ranks = [rank_of(out.logprobs, item.gold) for item, out in zip(items, outputs, strict=True)]
        n = len(ranks) or 1
        return {"r4_at_1": sum(r == 1 for r in ranks) / n,
                "r4_at_2": sum(r <= 2 for r in ranks) / n,
                "mrr": sum(1 / r for r in ranks) / n}
