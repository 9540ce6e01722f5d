"""Editing metrics (reliability, generalization, locality) over all edits made so far.

Each request's `style` picks the original paper's definitions:

counterfact (Meng et al. 2022, ROME's compute_rewrite_quality_counterfact and summarize):
  the score of a target after a prompt is the mean log-probability of the tokens of
  " " + target. Efficacy (reliability): P(new) > P(true) on the edit prompt; paraphrase
  success (generalization): the same on each paraphrase; neighbourhood success
  (locality): P(true) > P(new) on each neighbourhood prompt. Magnitudes are the mean
  differences of exp(mean log-prob), new minus true (true minus new for neighbours).
zsre (Gu et al. 2024 through EasyEdit): reliability = token accuracy of " " + target_new
  under teacher forcing after the edit prompt (the argmax at each target position equals
  the target token); generalization = the same on each rephrase; locality = share of the
  locality answer's positions where the edited model's argmax equals the unedited
  model's argmax. The unedited argmax comes from `locality_reference` run on the base
  model and stored next to its scores.

Per request, a value is the mean over its prompts of that kind; the summary is the mean
over requests (ROME averages per case first). All prompts of all requests go through
the engine in one batched, length-sorted call.
"""

from __future__ import annotations

import math
from statistics import fmean
from typing import Any, Sequence

from editharm.evaluate.engine import score_choices
from editharm.evaluate.tasks.base import ChoiceItem, ChoiceOutput
from editharm.requests import EditRequest

KINDS = ("rewrite", "paraphrase", "neighborhood")


def target_continuation(target: str) -> str:
    """The scored continuation of a target: one leading space, as ROME and EasyEdit score it."""
    return " " + target.lstrip()


# ---------------------------------------------------------------- pure metric functions

def counterfact_metrics(rewrite: Sequence[tuple[float, float]], paraphrase: Sequence[tuple[float, float]],
                        neighborhood: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """ROME's CounterFact metrics of one request from (new, true) mean token log-probs per prompt.

    Strict comparisons, as ROME's: a tie counts as failure both for the edit and for
    its neighbours. A kind without prompts gives None.
    """
    def success(pairs, new_wins: bool):
        return fmean([(n > t) if new_wins else (t > n) for n, t in pairs]) if pairs else None

    def magnitude(pairs, new_wins: bool):
        if not pairs:
            return None
        sign = 1.0 if new_wins else -1.0
        return fmean([sign * (math.exp(n) - math.exp(t)) for n, t in pairs])

    return {
        "reliability": success(rewrite, True),
        "generalization": success(paraphrase, True),
        "locality": success(neighborhood, False),
        "reliability_magnitude": magnitude(rewrite, True),
        "generalization_magnitude": magnitude(paraphrase, True),
        "locality_magnitude": magnitude(neighborhood, False),
    }


def token_accuracy(argmax_ids: Sequence[int], target_ids: Sequence[int]) -> float:
    """Share of target positions where the teacher-forced argmax is the target token."""
    if len(argmax_ids) != len(target_ids) or not target_ids:
        raise ValueError(f"need one argmax per target token, got {len(argmax_ids)} for {len(target_ids)}")
    return fmean([a == t for a, t in zip(argmax_ids, target_ids)])


def agreement(argmax_ids: Sequence[int], reference_ids: Sequence[int]) -> float:
    """Share of positions where two models' argmax tokens agree (zsRE locality)."""
    if len(argmax_ids) != len(reference_ids) or not reference_ids:
        raise ValueError(f"argmax lists differ in length: {len(argmax_ids)} vs {len(reference_ids)}")
    return fmean([a == r for a, r in zip(argmax_ids, reference_ids)])


def zsre_metrics(rewrite: Sequence[float], paraphrase: Sequence[float], locality: Sequence[float]) -> dict[str, Any]:
    """zsRE metrics of one request from per-prompt token accuracies and locality agreements."""
    return {
        "reliability": fmean(rewrite) if rewrite else None,
        "generalization": fmean(paraphrase) if paraphrase else None,
        "locality": fmean(locality) if locality else None,
    }


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means over requests of every metric a request has (None = not measured for it)."""
    summary: dict[str, Any] = {"n": len(rows)}
    keys = ["reliability", "generalization", "locality",
            "reliability_magnitude", "generalization_magnitude", "locality_magnitude"]
    for key in keys:
        values = [r[key] for r in rows if r.get(key) is not None]
        if key.endswith("_magnitude"):
            if values:  # CounterFact only
                summary[key] = fmean(values)
        else:
            summary[key] = fmean(values) if values else None
            summary[f"n_{key}"] = len(values)  # requests that had prompts of this kind
    for style in ("counterfact", "zsre"):
        summary[f"n_{style}"] = sum(r["style"] == style for r in rows)
    return summary


# ---------------------------------------------------------------- building items

def _prompts(request: EditRequest) -> dict[str, list[tuple[str, str | None]]]:
    """Per kind, (prompt, expected target) pairs; neighbours keep their own expected answer."""
    return {
        "rewrite": [(request.filled_prompt, request.target_true)],
        "paraphrase": [(p, request.target_true) for p in request.paraphrases],
        "neighborhood": [(p.prompt, p.target) for p in request.locality],
    }


def _items(requests: Sequence[EditRequest], kinds: Sequence[str], zsre_locality: bool) -> list[ChoiceItem]:
    items = []
    for request in requests:
        new = target_continuation(request.target_new)
        for kind, pairs in _prompts(request).items():
            if kind not in kinds or (kind == "neighborhood" and request.style == "zsre" and not zsre_locality):
                continue
            for i, (prompt, true) in enumerate(pairs):
                item_id = f"{request.case_id}/{kind}/{i}"
                if request.style == "counterfact":
                    if true is None:
                        raise ValueError(f"edit {request.case_id}: CounterFact metrics need target_true")
                    items.append(ChoiceItem(item_id, prompt, (new, target_continuation(true)), 0))
                elif kind == "neighborhood":
                    items.append(ChoiceItem(item_id, prompt, (target_continuation(true),), 0))
                else:
                    items.append(ChoiceItem(item_id, prompt, (new,), 0))
    return items


def _zsre_locality_items(requests: Sequence[EditRequest]) -> list[ChoiceItem]:
    return [ChoiceItem(f"{r.case_id}/neighborhood/{i}", p.prompt, (target_continuation(p.target),), 0)
            for r in requests if r.style == "zsre" for i, p in enumerate(r.locality)]


# ---------------------------------------------------------------- model-facing entry points

def locality_reference(model, tokenizer, requests: Sequence[EditRequest], batch_size: int = 32,
                       progress: bool = True) -> dict[str, dict[str, list[list[int]]]]:
    """The unedited model's argmax tokens on every zsRE locality answer (teacher-forced).

    Run it on the base model once; pass the result to `edit_metrics` of every edited
    checkpoint. JSON-serialisable: {case_id: {"token_ids": [...], "argmax_ids": [...]}}
    with one list per locality prompt.
    """
    items = _zsre_locality_items(requests)
    outputs = score_choices(model, tokenizer, items, batch_size=batch_size, progress=progress, token_details=True)
    reference: dict[str, dict[str, list[list[int]]]] = {}
    for item, out in zip(items, outputs):
        case_id = item.id.rsplit("/", 2)[0]
        entry = reference.setdefault(case_id, {"token_ids": [], "argmax_ids": []})
        entry["token_ids"].append(out.token_ids[0])
        entry["argmax_ids"].append(out.argmax_ids[0])
    return reference


def _reference_argmax(reference: dict, case_id: str, index: int, token_ids: list[int]) -> list[int]:
    try:
        entry = reference[case_id]
        ref_tokens, ref_argmax = entry["token_ids"][index], entry["argmax_ids"][index]
    except (KeyError, IndexError):
        raise ValueError(f"locality reference has no entry for edit {case_id}, locality prompt {index}; "
                         "compute it with locality_reference() on the base model over the same requests") from None
    if list(ref_tokens) != list(token_ids):
        raise ValueError(f"locality reference for edit {case_id}, prompt {index} was tokenised differently "
                         f"({list(ref_tokens)} vs {token_ids}): it was made with another tokenizer")
    return list(ref_argmax)


def request_row(request: EditRequest, outputs: dict[str, list[ChoiceOutput]], reference: dict | None) -> dict[str, Any]:
    """One request's metrics from the engine's outputs for its prompts (per kind, in order)."""
    row: dict[str, Any] = {"case_id": request.case_id, "style": request.style,
                           "n_paraphrases": len(request.paraphrases), "n_locality": len(request.locality)}
    if request.style == "counterfact":
        pairs = {kind: [(o.logprobs[0] / o.token_counts[0], o.logprobs[1] / o.token_counts[1]) for o in outs]
                 for kind, outs in outputs.items()}
        row.update(counterfact_metrics(pairs["rewrite"], pairs["paraphrase"], pairs["neighborhood"]))
        row["mean_logprobs"] = {kind: [list(p) for p in v] for kind, v in pairs.items()}  # (new, true) per prompt
        return row
    accuracy = {kind: [token_accuracy(o.argmax_ids[0], o.token_ids[0]) for o in outputs[kind]]
                for kind in ("rewrite", "paraphrase")}
    locality = []
    if reference is not None:
        for i, o in enumerate(outputs["neighborhood"]):
            locality.append(agreement(o.argmax_ids[0], _reference_argmax(reference, request.case_id, i, o.token_ids[0])))
    row.update(zsre_metrics(accuracy["rewrite"], accuracy["paraphrase"], locality))
    row["token_accuracy"] = accuracy
    row["locality_agreement"] = locality
    return row


def edit_metrics(model, tokenizer, requests: Sequence[EditRequest], reference: dict | None = None,
                 batch_size: int = 32, progress: bool = True, kinds: Sequence[str] = KINDS,
                 ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-request metric rows and their summary (reliability, generalization, locality, n).

    `requests` are all edits made so far (retention, not only the latest). zsRE locality
    compares with the unedited model's argmax, `reference` from `locality_reference`;
    without it zsRE locality is not measured (None) and its prompts are not scored,
    which suits a quick reliability check right after an edit. `kinds` limits the
    prompts scored (e.g. ("rewrite",) for reliability only; the others are then None).
    Non-finite logits raise engine.NonFiniteLogitsError.
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown prompt kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    ids = [r.case_id for r in requests]
    if len(set(ids)) != len(ids):
        raise ValueError("edit requests must have distinct case_id values")
    items = _items(requests, kinds, zsre_locality=reference is not None)
    outputs = score_choices(model, tokenizer, items, batch_size=batch_size, progress=progress, token_details=True)
    grouped: dict[str, dict[str, list[ChoiceOutput]]] = {r.case_id: {k: [] for k in KINDS} for r in requests}
    for item, out in zip(items, outputs):
        case_id, kind, _ = item.id.rsplit("/", 2)
        grouped[case_id][kind].append(out)
    rows = [request_row(r, grouped[r.case_id], reference) for r in requests]
    return rows, summarize(rows)


def immediate_success(model, tokenizer, requests: Sequence[EditRequest]) -> list[float]:
    """Reliability of the requests just edited, measured right after their edit (the edit log's
    `immediate_success`, written by the workflow's segments and by api.Editor.edit alike)."""
    rows, _ = edit_metrics(model, tokenizer, requests, kinds=("rewrite",), progress=False)
    return [row["reliability"] for row in rows]
