"""The task interface: every downstream benchmark is a Task that turns prepared rows into
items for the scoring engine and the engine's outputs into metrics.

Three kinds of item, matching the engine's scoring modes (evaluate/engine.py):
  ChoiceItem      log-likelihood of each choice after a shared context (the context is
                  encoded once for all choices). Tokenisation follows lm-evaluation-
                  harness: write choices with their leading space (" positive") and end
                  the context without one; a trailing space of the context is moved into
                  the choices anyway.
  GenerationItem  greedy generation until a stop sequence, EOS or max_new_tokens; the
                  engine returns the text before the first stop sequence.
  RollingItem     the log-likelihood of a whole text (perplexity), in rolling windows.

A task module defines one Task subclass (found by NAME) and registers the formats of
its data with @editharm.datasets.register_format. `engine.run_task` calls `items`,
scores them by KIND, then calls `score` with outputs aligned with the items:
ChoiceOutput for "choice" tasks, str for "generation" tasks, RollingOutput for "rolling" tasks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence


@dataclass(frozen=True)
class ChoiceItem:
    id: str
    context: str
    choices: tuple[str, ...]
    gold: Any  # index of the right choice, or task-specific (e.g. MC2: set of true indices)


@dataclass(frozen=True)
class GenerationItem:
    id: str
    prompt: str
    references: Any  # gold answer(s) in whatever form the task's metric reads
    stop: tuple[str, ...] = ("\n",)
    max_new_tokens: int = 32


@dataclass(frozen=True)
class RollingItem:
    """A text whose whole log-likelihood is scored (perplexity tasks), in lm-eval's rolling windows.

    The text is encoded without special tokens and cut into disjoint windows of at most
    min(max_window, the model's positions) tokens; the first window is predicted from
    the BOS (else EOS) token, each later one from the tokens before it (one token, or
    as many as fill the window for the last one), as lm-eval's loglikelihood_rolling.
    """

    id: str
    text: str
    max_window: int | None = None
    units: Any = None  # task-specific counts its metric divides by (e.g. words and bytes of the source text)


@dataclass
class RollingOutput:
    """The engine's result for one RollingItem."""

    logprob: float        # summed log-probability of every token of the text
    token_count: int      # tokens of the text
    windows: int          # windows it was scored in

    @property
    def logprobs(self) -> list[float]:  # the uniform view run_task's return_outputs uses
        return [self.logprob]


@dataclass
class ChoiceOutput:
    """The engine's result for one ChoiceItem; every list is aligned with `item.choices`.

    `token_ids` and `argmax_ids` are filled only when the engine is asked for token
    details (editing metrics need them: token accuracy under teacher forcing, and
    agreement with the unedited model's argmax); tasks normally ignore them.
    """

    logprobs: list[float]          # summed log-probability of each choice's tokens
    token_counts: list[int]        # number of tokens of each choice
    char_counts: list[int] = field(default_factory=list)
    is_greedy: list[bool] = field(default_factory=list)  # choice is the argmax continuation
    token_ids: list[list[int]] = field(default_factory=list)   # each choice's continuation tokens
    argmax_ids: list[list[int]] = field(default_factory=list)  # model's argmax at each of those positions


class Task(ABC):
    """A downstream benchmark. Subclasses set the class attributes and implement two methods."""

    NAME: ClassVar[str]
    SUITES: ClassVar[tuple[str, ...]]       # e.g. ("gu2024",), ("li2024",), ("offline",)
    DATASET: ClassVar[str]                  # dataset name in config `datasets` holding the items
    SHOTS_DATASET: ClassVar[str | None] = None  # dataset holding few-shot examples, if any
    KIND: ClassVar[str]                     # "choice", "generation" or "rolling"
    METRICS: ClassVar[tuple[str, ...]]

    @abstractmethod
    def items(self, rows: Sequence[dict], shots: Sequence[dict] | None = None) -> list[ChoiceItem | GenerationItem]:
        """Build the scored items from prepared rows (already sampled to the configured size)."""

    @abstractmethod
    def score(self, items: Sequence[ChoiceItem | GenerationItem], outputs: Sequence[ChoiceOutput | str]) -> dict[str, float]:
        """Metric name -> value over all items (outputs are aligned with items)."""
