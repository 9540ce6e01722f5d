"""Metric helpers the paper tasks need beyond metrics.py: ROUGE, precision/recall/F1 over
sets of predictions, TruthfulQA's MC2 and ranking scores.  Pure functions on plain values.

ROUGE follows Google's `rouge-score` package (the reference implementation most papers
cite) with its defaults: lower-case, tokens are runs of [a-z0-9], no stemming; ROUGE-N
counts clipped n-gram overlaps; ROUGE-L is the sentence-level longest common subsequence.
It is implemented here (30 lines) rather than imported so the package needs no NLTK.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable, Sequence

_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    return _ROUGE_TOKEN.findall(text.lower())


def f1_from_counts(overlap: float, n_pred: float, n_ref: float) -> float:
    """Harmonic mean of overlap/n_pred and overlap/n_ref; 0 when either side is empty."""
    if overlap <= 0 or n_pred <= 0 or n_ref <= 0:
        return 0.0
    precision, recall = overlap / n_pred, overlap / n_ref
    return 2 * precision * recall / (precision + recall)


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(prediction: str, reference: str, n: int) -> float:
    """ROUGE-N F1: clipped n-gram overlap (each reference n-gram matches at most as often as it occurs)."""
    pred, ref = _ngrams(rouge_tokens(prediction), n), _ngrams(rouge_tokens(reference), n)
    overlap = sum((pred & ref).values())
    return f1_from_counts(overlap, sum(pred.values()), sum(ref.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over the whole text as one sentence (rouge-score's `rougeL`, not `rougeLsum`)."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    return f1_from_counts(lcs_length(pred, ref), len(pred), len(ref))


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    return {
        "rouge1": rouge_n(prediction, reference, 1),
        "rouge2": rouge_n(prediction, reference, 2),
        "rougeL": rouge_l(prediction, reference),
    }


def precision_recall_f1(true_positives: int, n_predicted: int, n_gold: int) -> dict[str, float]:
    """Micro precision, recall and F1 from counts (seqeval's conventions: 0 where undefined)."""
    precision = true_positives / n_predicted if n_predicted else 0.0
    recall = true_positives / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def multiset_matches(predicted: Iterable[str], gold: Iterable[str]) -> int:
    """How many predictions match a gold item, each gold item matched at most once."""
    return sum((Counter(predicted) & Counter(gold)).values())


def logsumexp(values: Sequence[float]) -> float:
    if not values:
        return -math.inf
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def mc2_score(logprobs_true: Sequence[float], logprobs_false: Sequence[float]) -> float:
    """TruthfulQA MC2: probability mass on the true answers, normalised over all answers.

    Computed in log space so that very unlikely answers (log-probabilities of -300 and
    below, where exp underflows to 0) still give a defined score.
    """
    log_true = logsumexp(list(logprobs_true))
    log_all = logsumexp(list(logprobs_true) + list(logprobs_false))
    if log_all == -math.inf:
        return 0.0
    return math.exp(log_true - log_all)


def rank_of(scores: Sequence[float], index: int) -> int:
    """1-based rank of scores[index] among scores, highest first.  Ties go to the earlier
    index, as in `argmax`, so that rank 1 <=> argmax and R@1 agrees with accuracy."""
    target = scores[index]
    return 1 + sum(1 for i, s in enumerate(scores) if s > target or (s == target and i < index))


def argmax(values: Sequence[float]) -> int:
    """Index of the largest value; the first one on ties (as numpy.argmax and lm-eval)."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best
