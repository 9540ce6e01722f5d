"""Editing datasets (CounterFact, zsRE) -> EditRequest rows; loading and sampling edit sets.

Formats registered here (spec `format:` in config):

- `counterfact_rome`: ROME's counterfact.json (also ROME's 1,400-case filtered subset).
  paraphrase_prompts -> paraphrases; neighborhood_prompts -> locality probes whose
  expected answer is target_true (Meng et al.: a neighbour shares the true object).
  attribute/generation prompts, relation_id and pararel_idx are kept in `extra`.
- `counterfact_easyedit`: the EasyEdit/MEND/SERAC split files (counterfact-edit/train/
  val.json): one rephrase and one locality prompt per case.  The template is rebuilt
  by replacing the subject in the filled prompt with "{}".
- `zsre_mend`: zsRE as MEND/EasyEdit distribute it (zsre_mend_eval*.json, and the
  train split, same schema).  Template = `src` with the subject replaced by "{}", as
  ROME's MENDQADataset does.  target_new = `alt`, target_true = `answers[0]`, as in
  EasyEdit (which Gu et al. 2024 used).  Note that ROME's own MENDQADataset instead
  edits towards answers[0]; we follow the papers we reproduce.  `loc` ("nq question:
  ...") with `loc_ans` is the locality probe, kept verbatim; style "zsre".

The training splits (counterfact-train.json, zsre_mend_train*.json) have the same
schemas, so MEND/SERAC training data uses these same formats.

Target whitespace convention: targets (target_new, target_true, locality answers) are
stored WITHOUT surrounding whitespace (15 zsRE `alt` values carry a stray leading
space upstream; it is stripped).  Whoever tokenises prompt + target adds the single
separating space (" " + target), as ROME does when it scores or optimises a target.

Records a ROME-style method cannot edit are skipped, not fatal: the subject must
occur in the prompt (the edit position is the subject's last token).  Each format logs
how many it skipped and why (logger "editharm.editsets"); `convert_file` returns them.
A record with a missing field or a field of the wrong type is a DataError naming the
file, the record index and the field: that is a broken file, not an uneditable fact.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from editharm.datasets import register_format
from editharm.io import DataError, iter_jsonl, read_json
from editharm.requests import EditRequest, ProbePrompt

log = logging.getLogger("editharm.editsets")


@dataclass(frozen=True)
class Skipped:
    """A record left out of the edit set, and why."""

    file: str
    index: int
    case_id: str
    reason: str


@dataclass
class Conversion:
    """The rows a raw file produced and the records it skipped."""

    rows: list[dict] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


class _Record:
    """Typed access to one raw record; a bad field raises DataError naming file, index and field."""

    def __init__(self, path: Path, index: int, raw: Any) -> None:
        self.path, self.index, self.raw = path, index, raw
        if not isinstance(raw, dict):
            self.fail("", f"expected a JSON object, got {type(raw).__name__}")

    def fail(self, name: str, problem: str) -> None:
        where = f"field {name!r}: " if name else ""
        raise DataError(
            f"{self.path}, record {self.index} (0-based): {where}{problem}. "
            "The file is not in the format config names: fix the record, or check `format` and the file's sha256."
        )

    def get(self, name: str, kind: type | tuple[type, ...], parent: dict | None = None, label: str | None = None) -> Any:
        obj = self.raw if parent is None else parent
        label = label or name
        if name not in obj:
            self.fail(label, "missing")
        value = obj[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            self.fail(label, f"expected {' or '.join(k.__name__ for k in kinds)}, got {type(value).__name__} {value!r:.80}")
        return value

    def text(self, name: str, parent: dict | None = None, label: str | None = None) -> str:
        return self.get(name, str, parent, label)

    def texts(self, name: str) -> list[str]:
        values = self.get(name, list)
        for i, v in enumerate(values):
            if not isinstance(v, str):
                self.fail(f"{name}[{i}]", f"expected str, got {type(v).__name__}")
        return values


# --------------------------------------------------------------------------- formats


def _counterfact_rome(rec: _Record) -> EditRequest:
    rw = rec.get("requested_rewrite", dict)
    prompt = rec.text("prompt", rw, "requested_rewrite.prompt")
    subject = rec.text("subject", rw, "requested_rewrite.subject")
    target_new = rec.text("str", rec.get("target_new", dict, rw, "requested_rewrite.target_new"), "requested_rewrite.target_new.str")
    target_true = rec.text("str", rec.get("target_true", dict, rw, "requested_rewrite.target_true"), "requested_rewrite.target_true.str")
    if prompt.count("{}") != 1:
        raise UnusableRecord(f"prompt {prompt!r} does not have exactly one '{{}}' for the subject")
    case_id = rec.get("case_id", (int, str))
    target_true = target_true.strip()
    return EditRequest(
        case_id=str(case_id),
        subject=subject,
        prompt=prompt,
        target_new=target_new.strip(),
        target_true=target_true,
        paraphrases=tuple(rec.texts("paraphrase_prompts")),
        locality=tuple(ProbePrompt(p, target_true) for p in rec.texts("neighborhood_prompts")),
        style="counterfact",
        extra={
            "relation_id": rw.get("relation_id"),
            "pararel_idx": rec.raw.get("pararel_idx"),
            "attribute_prompts": rec.raw.get("attribute_prompts", []),
            "generation_prompts": rec.raw.get("generation_prompts", []),
        },
    )


def _counterfact_easyedit(rec: _Record) -> EditRequest:
    subject = rec.text("subject")
    filled = rec.text("prompt")
    return EditRequest(
        case_id=str(rec.get("case_id", (int, str))),
        subject=subject,
        prompt=subject_template(filled, subject),
        target_new=rec.text("target_new").strip(),
        target_true=rec.text("ground_truth").strip(),
        paraphrases=(rec.text("rephrase_prompt"),),
        locality=(ProbePrompt(rec.text("locality_prompt"), rec.text("locality_ground_truth").strip()),),
        style="counterfact",
    )


def _zsre_mend(rec: _Record) -> EditRequest:
    subject = rec.text("subject")
    src = rec.text("src")
    answers = rec.texts("answers")
    if not answers:
        rec.fail("answers", "empty list; the true answer is answers[0]")
    extra = {k: rec.raw[k] for k in ("pred", "cond", "portability") if k in rec.raw}
    return EditRequest(
        # zsRE records carry no id; the position in the file is the stable id (ROME does the same).
        case_id=str(rec.index),
        subject=subject,
        prompt=subject_template(src, subject),
        target_new=rec.text("alt").strip(),
        target_true=answers[0].strip(),
        paraphrases=(rec.text("rephrase"),),
        locality=(ProbePrompt(rec.text("loc"), rec.text("loc_ans").strip()),),
        style="zsre",
        extra=extra,
    )


class UnusableRecord(Exception):
    """A well-formed record that ROME-style methods cannot edit (skipped and counted)."""


def subject_template(filled: str, subject: str) -> str:
    """The prompt with the subject's first occurrence replaced by "{}" (ROME: prompt.replace(subject, "{}"))."""
    if not subject.strip():
        raise UnusableRecord("subject is empty")
    if subject not in filled:
        raise UnusableRecord(f"subject {subject!r} does not occur in prompt {filled!r}")
    if "{" in filled or "}" in filled:
        # str.format would misread literal braces when methods fill the template.
        raise UnusableRecord(f"prompt {filled!r} contains literal braces")
    # Only the first occurrence: EditRequest needs exactly one "{}", and ROME locates
    # the subject at the first "{}" anyway.
    return filled.replace(subject, "{}", 1)


_CONVERTERS: dict[str, Callable[[_Record], EditRequest]] = {
    "counterfact_rome": _counterfact_rome,
    "counterfact_easyedit": _counterfact_easyedit,
    "zsre_mend": _zsre_mend,
}


def edit_set_formats() -> list[str]:
    """The raw-file formats `convert_file` reads, sorted."""
    return sorted(_CONVERTERS)


def convert_file(format_name: str, path: str | Path) -> Conversion:
    """Convert one raw file of an editing dataset; returns its EditRequest rows and skipped records."""
    try:
        convert = _CONVERTERS[format_name]
    except KeyError:
        raise ValueError(f"unknown edit-set format {format_name!r}; known: {', '.join(edit_set_formats())}") from None
    path = Path(path)
    records = read_json(path)
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(records).__name__}; is this file in {format_name} format?")
    result = Conversion()
    for index, raw in enumerate(records):
        rec = _Record(path, index, raw)
        try:
            request = convert(rec)
        except UnusableRecord as e:
            case_id = raw.get("case_id", index)
            result.skipped.append(Skipped(str(path), index, str(case_id), str(e)))
            continue
        except ValueError as e:  # EditRequest's own checks
            if isinstance(e, DataError):
                raise
            rec.fail("", str(e))
        result.rows.append(request.to_json())
    return result


def log_skipped(path: Path, conversion: Conversion) -> None:
    if not conversion.skipped:
        return
    examples = "; ".join(f"record {s.index}: {s.reason}" for s in conversion.skipped[:3])
    log.warning(
        "%s: skipped %d of %d records that ROME-style methods cannot edit (e.g. %s)",
        path, len(conversion.skipped), len(conversion.skipped) + len(conversion.rows), examples,
    )


def _format(format_name: str) -> Callable[[Path, dict], Iterator[dict]]:
    def normalise(raw_dir: Path, spec: dict) -> Iterator[dict]:
        # Files in the order config lists them (e.g. edit, then val), records in file order.
        for raw_name in spec["files"]:
            path = Path(raw_dir) / raw_name
            conversion = convert_file(format_name, path)
            log_skipped(path, conversion)
            yield from conversion.rows

    normalise.__name__ = format_name
    normalise.__doc__ = f"Dataset format {format_name!r}: raw files -> EditRequest rows (see editharm.editsets)."
    return normalise


for _name in _CONVERTERS:
    register_format(_name)(_format(_name))


# --------------------------------------------------------------------------- prepared edit sets


def load_requests(path: str | Path) -> list[EditRequest]:
    """Read prepared EditRequest rows (JSONL); a bad line is a DataError naming file and line."""
    return [EditRequest.from_json(row, where=where) for where, row in iter_jsonl(path)]


def sample_edit_set(rows: list[dict], n: int, seed: int) -> list[dict]:
    """`n` rows drawn without replacement by `seed`, in sample order.

    A seeded shuffle of all indices, then its first n: the sample for a smaller n is a
    prefix of the sample for a larger one, so raising max_edits keeps the first edits.
    """
    if n < 1:
        raise ValueError(f"cannot sample {n} edits; the number of edits must be at least 1.")
    if n > len(rows):
        raise ValueError(
            f"the edit set needs {n} requests but the dataset has only {len(rows)}; lower the largest "
            f"`checkpoints` / `max_edits` in config to at most {len(rows)}, or use a larger dataset."
        )
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in order[:n]]
