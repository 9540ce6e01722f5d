"""ROME: Rank-One Model Editing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT").

One fact is written into the MLP down projection W of one layer as a rank-one update:

    k* = mean over context templates of the MLP key (mlp_down input) at the subject's last token
    v* = the MLP output there plus the optimised delta of values.py (eq. 4)
    dW = (v* - W k* - b) (C^-1 k*)^T / ((C^-1 k*)^T k*)

with C the uncentred second moment of keys over generic text (mom2_adjustment; the
identity when off). dW is the minimum-norm change (in the metric C) for which the
layer maps k* to v* exactly: the constrained least squares of the paper's eq. 2.
The model is never modified here; the pipeline adds dW.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from editharm.methods.base import EditContext, WeightUpdate
from editharm.methods.covariance import solve_second_moment
from editharm.methods.values import ValueProblem, ValueSettings, context_templates, optimize_values
from editharm.requests import EditRequest

NAME = "rome"
SUPPORTS_BATCH = False
EDITS_WEIGHTS = True


@dataclass
class Hparams:
    layer: int
    v_num_grad_steps: int
    v_lr: float
    v_weight_decay: float
    clamp_norm_factor: float
    kl_factor: float
    mom2_adjustment: bool
    # [length in tokens, number of templates] per group, as ROME's context_template_length_params.
    context_template_length_params: list[list[int]] = field(default_factory=lambda: [[5, 10], [10, 10]])
    fact_token: str = "subject_last"


def stats_layers(hparams: Hparams, facts) -> list[int]:
    """Layers whose key second moment ROME needs: its edited layer, when mom2_adjustment is on."""
    return [hparams.layer] if hparams.mom2_adjustment else []


def value_settings(hparams: Hparams) -> ValueSettings:
    return ValueSettings(num_steps=hparams.v_num_grad_steps, lr=hparams.v_lr, weight_decay=hparams.v_weight_decay,
                         clamp_norm_factor=hparams.clamp_norm_factor, kl_factor=hparams.kl_factor)


def rank_one_update(weight: torch.Tensor, bias: torch.Tensor | None, key: torch.Tensor, value: torch.Tensor,
                    second_moment: torch.Tensor | None = None) -> torch.Tensor:
    """The [out, in] update that makes W' k + b = value, minimum-norm in the metric C (eq. 2).

    Solved in float64 (C of a real model is ill-conditioned and the division by u^T k
    amplifies float32 error), with C's factorisation kept across edits.
    """
    k = key.to(torch.float64)
    current = weight.to(torch.float64) @ k
    if bias is not None:
        current = current + bias.to(torch.float64)
    residual = value.to(torch.float64) - current
    if second_moment is None:
        u = k
    else:
        u = solve_second_moment(second_moment, k)
    return (torch.outer(residual, u) / (u @ k)).to(torch.float32)



@dataclass
class RomeEdit:
    """Everything one ROME edit computed (apply returns only the update and a summary)."""

    param_name: str
    delta: torch.Tensor          # [out, in]
    key: torch.Tensor            # k*
    value: torch.Tensor          # v*
    info: dict


def compute_rome(model, tokenizer, request: EditRequest, hparams: Hparams, context: EditContext) -> RomeEdit:
    if hparams.fact_token != "subject_last":
        raise ValueError(f"ROME fact_token {hparams.fact_token!r} is not supported; use 'subject_last' (the paper's choice)")
    facts = context.facts
    layer = hparams.layer
    if not 0 <= layer < facts.n_layers:
        raise ValueError(f"ROME layer {layer} out of range for a model with {facts.n_layers} layers")
    groups = context_templates(model, tokenizer, context, hparams.context_template_length_params)
    templates = [t for g in groups for t in g]
    # k* comes out of the same unedited pass as the value problem: the context-prefixed
    # prompts are the same, and tokens after the subject do not change its key.
    problem = ValueProblem(model, tokenizer, facts, [request], layer, templates, sites=("mlp",))
    result = optimize_values(problem, value_settings(hparams))
    key, value = problem.keys[0], result.values["mlp"][0]
    name = facts.down_weight_name(layer)
    weight = facts.linear_weight(model.get_parameter(name).detach())
    bias = getattr(model.get_submodule(facts.mlp_down.format(layer)), "bias", None)
    second_moment = context.covariance(layer) if hparams.mom2_adjustment else None
    delta = rank_one_update(weight, None if bias is None else bias.detach(), key, value,
                            None if second_moment is None else second_moment.to(key.device))
    info = {
        "layer": layer,
        "steps": result.steps[0],
        "loss": result.loss[0],
        "nll": result.nll[0],
        "kl": result.kl[0],
        "target_prob": result.target_prob[0],
        "delta_norm": float(result.deltas["mlp"][0].norm()),
        "value_norm": float(result.references["mlp"][0].norm()),
        "update_norm": float(delta.norm()),
    }
    return RomeEdit(param_name=name, delta=delta, key=key, value=value, info=info)


def apply(model, tokenizer, requests: list[EditRequest], hparams: Hparams, context: EditContext) -> WeightUpdate:
    if len(requests) != 1:
        raise ValueError(f"ROME edits one request at a time (SUPPORTS_BATCH = False), got {len(requests)}")
    edit = compute_rome(model, tokenizer, requests[0], hparams, context)
    return WeightUpdate({edit.param_name: context.facts.to_storage(edit.delta)}, info=edit.info)
