"""CoNLL-2003 English NER, Gu et al.'s zero-shot prompts, scored by entity-level F1.

Data (format `conll2003`), rows {id, tokens, tags, entities: [{type, start, end, text}]}:
- the original four-column text (eng.testb: "token POS chunk NER", blank line between
  sentences, -DOCSTART- lines between documents) with IOB1 tags (an entity starts at
  B-X, or at I-X after O or after another type) - IOB2 files (Gu et al.'s copy) decode
  with the same rule;
- the hub's conll2003 parquet/JSONL {id, tokens, ner_tags} with integer tags in the
  hub's order O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC, B-MISC, I-MISC.

Prompts, from JasonForJoy/Model-Editing-Hurt test-NER.py: one per sentence and entity
type, "Please identify {Person|Location|Organization|Miscellaneous} Entity from the
given text. Text: {sentence} Entity:", where the sentence is the tokens joined by
spaces with "," and "." attached to the previous token (their construction).

Scoring: the generation (up to the first newline) is read as a list of entities
separated by commas or semicolons; "none" and the like mean no entity.  A
predicted entity is correct when it equals a gold entity of that sentence and type
(case-insensitive, surrounding punctuation ignored; each gold entity matched once).
`f1`, `precision` and `recall` are micro-averaged over all (sentence, type) pairs.
Gu et al.'s script instead measured how many gold entities occur as substrings of the
generated text (a recall that ignores spurious entities), averaged over the four
types; that is `gu_containment`.  Gu et al. generated 10 tokens; 20 are generated here
so that a sentence with several entities can list them all.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Sequence

from editharm.datasets import register_format
from editharm.evaluate.metrics_extra import multiset_matches, precision_recall_f1
from editharm.evaluate.tasks._readers import Where, files_under, get, read_records
from editharm.evaluate.tasks.base import GenerationItem, Task

TYPES = {"PER": "Person", "LOC": "Location", "ORG": "Organization", "MISC": "Miscellaneous"}
HUB_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")


def decode_entities(tokens: Sequence[str], tags: Sequence[str]) -> list[dict]:
    """Entity spans from IOB1 or IOB2 tags."""
    entities: list[dict] = []
    current: dict | None = None
    for i, tag in enumerate(tags):
        prefix, _, etype = tag.partition("-")
        starts = prefix == "B" or (prefix == "I" and (current is None or current["type"] != etype))
        if current is not None and (tag == "O" or starts):
            entities.append(current)
            current = None
        if starts:
            current = {"type": etype, "start": i, "end": i + 1}
        elif prefix == "I" and current is not None:
            current["end"] = i + 1
    if current is not None:
        entities.append(current)
    for e in entities:
        e["text"] = " ".join(tokens[e["start"] : e["end"]])
    return entities


def _check_tags(tags: Sequence[str], where: Where) -> None:
    for tag in tags:
        if tag != "O" and (tag[:2] not in ("B-", "I-") or tag[2:] not in TYPES):
            raise where.fail(f"unknown NER tag {tag!r}; expected O or B-/I- with {', '.join(TYPES)}")


def _row(sentence_id: str, tokens: list[str], tags: list[str]) -> dict:
    return {"id": sentence_id, "tokens": tokens, "tags": tags, "entities": decode_entities(tokens, tags)}


def _read_conll_text(path: Path) -> Iterator[dict]:
    tokens: list[str] = []
    tags: list[str] = []
    start_line = 0
    count = 0

    def flush() -> Iterator[dict]:
        nonlocal tokens, tags, count
        if tokens:
            _check_tags(tags, Where(path, line=start_line))
            yield _row(f"conll03-{count}", tokens, tags)
            count += 1
        tokens, tags = [], []

    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                yield from flush()
                continue
            if parts[0] == "-DOCSTART-":
                yield from flush()
                continue
            if len(parts) != 4:
                raise Where(path, line=lineno).fail(f"expected 4 columns (token POS chunk NER), got {len(parts)}")
            if not tokens:
                start_line = lineno
            tokens.append(parts[0])
            tags.append(parts[3])
    yield from flush()


def _read_hub(path: Path) -> Iterator[dict]:
    for n, (where, record) in enumerate(read_records(path)):
        tokens = get(record, "tokens", where, list)
        tag_ids = get(record, "ner_tags", where, list)
        if len(tokens) != len(tag_ids) or not all(isinstance(t, int) and 0 <= t < len(HUB_TAGS) for t in tag_ids):
            raise where.fail(f"ner_tags should be {len(tokens)} integers in 0..{len(HUB_TAGS) - 1}")
        if tokens:  # the hub keeps -DOCSTART- rows as sentences; they are document markers
            if tokens == ["-DOCSTART-"]:
                continue
            yield _row(f"conll03-{record.get('id', n)}", [str(t) for t in tokens], [HUB_TAGS[t] for t in tag_ids])


@register_format("conll2003")
def conll2003_rows(raw_dir: Path, spec: dict) -> Iterator[dict]:
    for path in files_under(raw_dir, spec, (".parquet", ".jsonl", ".testb", ".testa", ".train", ".txt", ".conll")):
        yield from (_read_hub(path) if path.name.endswith((".parquet", ".jsonl")) else _read_conll_text(path))


# ------------------------------------------------------------------ prompts and scoring


def sentence_text(tokens: Sequence[str]) -> str:
    text = ""
    for token in tokens:
        text += token if token in (",", ".") else " " + token
    return text[1:] if text.startswith(" ") else text


def prompt(tokens: Sequence[str], etype: str) -> str:
    return f"Please identify {TYPES[etype]} Entity from the given text. Text: {sentence_text(tokens)} Entity:"


# Not " and ": it occurs inside names ("Bosnia and Herzegovina").
_SEPARATORS = re.compile(r"[,;|\t]")
_NO_ENTITY = {"", "none", "no", "n/a", "na", "nothing", "null"}
_TRIM = " \t\"'`.,;:()[]{}"


def normalise_entity(text: str) -> str:
    return " ".join(text.strip(_TRIM).split()).lower()


def parse_entities(generation: str) -> list[str]:
    """The entities a generation lists, normalised; the text after the first newline is ignored."""
    first_line = generation.split("\n", 1)[0]
    entities = [normalise_entity(part) for part in _SEPARATORS.split(first_line)]
    return [e for e in entities if e not in _NO_ENTITY]


class CoNLL03(Task):
    NAME = "conll03"
    SUITES = ("gu2024",)
    DATASET = "conll2003"
    KIND = "generation"
    METRICS = ("f1", "precision", "recall", "gu_containment")

    def items(self, rows: Sequence[dict], shots: Sequence[dict] | None = None) -> list[GenerationItem]:
        items = []
        for r in rows:
            for etype in TYPES:
                gold = tuple(e["text"] for e in r["entities"] if e["type"] == etype)
                items.append(GenerationItem(id=f"{r['id']}/{etype}", prompt=prompt(r["tokens"], etype),
                                            references=gold, stop=("\n",), max_new_tokens=20))
        return items

    def score(self, items: Sequence[GenerationItem], outputs: Sequence[str]) -> dict[str, float]:
        tp = n_pred = n_gold = 0
        contained = {t: 0 for t in TYPES}
        totals = {t: 0 for t in TYPES}
        for item, out in zip(items, outputs, strict=True):
            predicted = parse_entities(out)
            gold = [normalise_entity(g) for g in item.references]
            tp += multiset_matches(predicted, gold)
            n_pred += len(predicted)
            n_gold += len(gold)
            etype = item.id.rsplit("/", 1)[1]
            totals[etype] += len(item.references)
            contained[etype] += sum(g in out for g in item.references)
        per_type = [contained[t] / totals[t] for t in TYPES if totals[t]]
        result = precision_recall_f1(tp, n_pred, n_gold)
        result["gu_containment"] = sum(per_type) / len(per_type) if per_type else 0.0
        return result
