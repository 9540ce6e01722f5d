"""The one edit-request type that every dataset is normalised into and every method reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from editharm.io import DataError


@dataclass(frozen=True)
class ProbePrompt:
    """A prompt and the answer expected after it (locality / neighbourhood probes)."""

    prompt: str
    target: str


@dataclass(frozen=True)
class EditRequest:
    """One fact to write into the model.

    `prompt` is a template with exactly one "{}" where the subject goes (ROME's
    convention), so methods can find the subject's last token.  `paraphrases` are
    complete prompts (subject filled in) that should also yield `target_new`.
    `locality` prompts should keep their `target` (CounterFact: the neighbour's
    true object; zsRE: the answer of an unrelated NQ question).
    `style` tells the editing metrics which paper's definitions apply:
    "counterfact" (probability comparison, Meng et al.) or "zsre" (token accuracy).
    """

    case_id: str
    subject: str
    prompt: str
    target_new: str
    target_true: str | None
    paraphrases: tuple[str, ...] = ()
    locality: tuple[ProbePrompt, ...] = ()
    style: str = "counterfact"
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.prompt.count("{}") != 1:
            raise ValueError(f"edit {self.case_id}: prompt must contain exactly one '{{}}' for the subject, got {self.prompt!r}")
        if self.style not in ("counterfact", "zsre"):
            raise ValueError(f"edit {self.case_id}: style must be 'counterfact' or 'zsre', got {self.style!r}")

    @property
    def filled_prompt(self) -> str:
        return self.prompt.format(self.subject)

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        row["paraphrases"] = list(self.paraphrases)
        row["locality"] = [asdict(p) for p in self.locality]
        return row

    @classmethod
    def from_json(cls, row: dict[str, Any], where: str = "record") -> "EditRequest":
        try:
            return cls(
                case_id=str(row["case_id"]),
                subject=row["subject"],
                prompt=row["prompt"],
                target_new=row["target_new"],
                target_true=row.get("target_true"),
                paraphrases=tuple(row.get("paraphrases", ())),
                locality=tuple(ProbePrompt(**p) for p in row.get("locality", ())),
                style=row.get("style", "counterfact"),
                extra=row.get("extra", {}),
            )
        except KeyError as e:
            raise DataError(f"{where}: missing field {e.args[0]!r} of an edit request") from e
        except (TypeError, ValueError) as e:
            raise DataError(f"{where}: {e}") from e
