"""Metric helpers shared by the downstream tasks (pure functions on predictions and references)."""

from __future__ import annotations

import re
import string
from statistics import fmean
from typing import Any, Sequence

from editharm.evaluate.tasks.base import ChoiceOutput

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise_answer(text: str) -> str:
    """SQuAD/NQ normalisation: lower case, drop punctuation, drop articles, collapse whitespace.

    The order is the official one (punctuation before articles), which Gu et al.'s
    evaluation copies: "The U.S.A." -> "usa".
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference, else 0.0."""
    pred = normalise_answer(prediction)
    return float(any(pred == normalise_answer(ref) for ref in references))


def contains_answer(prediction: str, references: Sequence[str]) -> float:
    """1.0 if some normalised reference occurs as a run of whole words in the normalised prediction.

    The lenient match of Gu et al.'s NQ evaluation (it accepts any word span of the
    generated text that exactly matches an answer), written as the span test it means.
    An answer that normalises to nothing never matches.
    """
    words = normalise_answer(prediction).split()
    for ref in references:
        target = normalise_answer(ref).split()
        if target and any(words[i:i + len(target)] == target for i in range(len(words) - len(target) + 1)):
            return 1.0
    return 0.0


def accuracy(predictions: Sequence[Any], golds: Sequence[Any]) -> float:
    """Share of predictions equal to their gold label."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold labels")
    if not golds:
        raise ValueError("accuracy of no examples is undefined")
    return fmean([p == g for p, g in zip(predictions, golds)])


def best_choice(output: ChoiceOutput, normalise: str = "none") -> int:
    """Index of the most likely choice: by summed log-prob ("none"), per token ("tokens") or per character ("chars").

    "chars" is lm-evaluation-harness's acc_norm; ties go to the first choice, as argmax does.
    """
    if normalise == "none":
        scores = output.logprobs
    elif normalise == "tokens":
        scores = [lp / n for lp, n in zip(output.logprobs, output.token_counts)]
    elif normalise == "chars":
        scores = [lp / max(n, 1) for lp, n in zip(output.logprobs, output.char_counts)]
    else:
        raise ValueError(f"normalise must be 'none', 'tokens' or 'chars', got {normalise!r}")
    return max(range(len(scores)), key=lambda i: (scores[i], -i))
