"""lm-evaluation-harness 0.4.x metric definitions, for the tasks scored "as lm-eval does".

Pure functions on log-likelihoods, counts and strings:

- `choice_accuracy`: lm-eval's multiple-choice `acc` (argmax of summed log-likelihoods)
  and `acc_norm` (argmax of log-likelihood per character of the choice string as the
  task writes it, i.e. without the " " target delimiter that is prepended when scoring).
- `perplexity`: lm-eval's `perplexity` aggregation, exp(-mean of per-item summed
  log-likelihoods) - per item, not per token (LAMBADA's "target perplexity").
- `weighted_perplexity`, `bits_per_byte`: lm-eval's rolling-log-likelihood aggregations,
  exp(-sum(ll) / sum(units)) and -sum(ll) / (sum(bytes) * ln 2).
- `exact_match_any`: lm-eval's `exact_match` with ignore_case and ignore_punctuation
  after its remove_whitespace filter (strip both ends): no article removal and no
  whitespace collapsing, unlike the SQuAD normalisation in metrics.py.
"""

from __future__ import annotations

import math
import string
from typing import Sequence

from editharm.evaluate.metrics_extra import argmax

_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def choice_accuracy(logprobs_per_item: Sequence[Sequence[float]], choices_per_item: Sequence[Sequence[str]],
                    golds: Sequence[int], delimiter: str = " ") -> dict[str, float]:
    """`accuracy` and `accuracy_norm` over items (lm-eval's acc and acc_norm).

    `choices_per_item` are the scored continuation strings; `delimiter` is removed from
    their front before counting characters, since lm-eval's completion length is that of
    the choice before its target delimiter is added.
    """
    if not (len(logprobs_per_item) == len(choices_per_item) == len(golds)):
        raise ValueError(f"{len(logprobs_per_item)} outputs, {len(choices_per_item)} choice lists, {len(golds)} golds")
    if not golds:
        raise ValueError("accuracy of no items is undefined")
    acc = acc_norm = 0
    for lps, choices, gold in zip(logprobs_per_item, choices_per_item, golds):
        if len(lps) != len(choices):
            raise ValueError(f"{len(lps)} log-likelihoods for {len(choices)} choices")
        lengths = [len(c.removeprefix(delimiter)) for c in choices]
        if min(lengths) == 0:
            raise ValueError(f"empty choice among {list(choices)!r}: acc_norm divides by its length")
        acc += argmax(list(lps)) == gold
        acc_norm += argmax([lp / n for lp, n in zip(lps, lengths)]) == gold
    return {"accuracy": acc / len(golds), "accuracy_norm": acc_norm / len(golds)}


def perplexity(logliks: Sequence[float]) -> float:
    """exp(-mean(logliks)): lm-eval's `perplexity` over per-item summed log-likelihoods."""
    if not logliks:
        raise ValueError("perplexity of no items is undefined")
    return math.exp(-math.fsum(logliks) / len(logliks))


def weighted_perplexity(logliks: Sequence[float], units: Sequence[int]) -> float:
    """exp(-sum(logliks) / sum(units)): perplexity per word, per byte or per token."""
    total = sum(units)
    if total <= 0:
        raise ValueError(f"weighted perplexity needs a positive unit count, got {total}")
    return math.exp(-math.fsum(logliks) / total)


def bits_per_byte(logliks: Sequence[float], n_bytes: Sequence[int]) -> float:
    """-sum(logliks) / (sum(bytes) * ln 2): lm-eval's bits_per_byte."""
    total = sum(n_bytes)
    if total <= 0:
        raise ValueError(f"bits per byte needs a positive byte count, got {total}")
    return -math.fsum(logliks) / (total * math.log(2))


def normalise_lm_eval(text: str) -> str:
    """remove_whitespace filter, then ignore_case and ignore_punctuation (nothing else)."""
    return text.strip().lower().translate(_NO_PUNCTUATION)


def exact_match_any(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the prediction equals any reference after lm-eval's normalisation, else 0.0.

    lm-eval normalises the references with the same lower-casing and punctuation removal
    but does not strip them; references are compared as given otherwise.
    """
    pred = normalise_lm_eval(prediction)
    return float(any(pred == ref.lower().translate(_NO_PUNCTUATION) for ref in references))
