"""ROME: Rank-One Model Editing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT").

One fact is written into the MLP down projection W of one layer as a rank-one update.
Two keys enter, as in the reference (kmeng01/rome, compute_u.py and compute_v.py):

    k* = mean over the context templates (the plain prompt "{}" among them) of the MLP
         key (mlp_down input) at the subject's last token          -> the left vector
    k0 = the key at the subject's last token of the plain prompt    -> the right vector
    v* = the MLP output at the plain prompt, W k0 + b, plus the optimised delta of
         values.py (eq. 4)

    u  = C^-1 k*                       (compute_u; C = I when mom2_adjustment is off)
    dW = (v* - W k0 - b) u^T / (u^T k0)  (the end of compute_v)

with C the uncentred second moment of keys over generic text. So the edited layer maps
the plain prompt's own key exactly to v* ((W + dW) k0 + b = v*), and the direction of
the change in key space is the template-averaged C^-1 k*, which is what makes the edit
generalise to the subject in other contexts. (Solving (W + dW) k* = v* instead, at the
averaged key, leaves the plain prompt short of v* by (u^T (k* - k0)) / (u^T k*) of the
delta.) The model is never modified here; the pipeline adds dW.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from editharm.methods.base import EditContext, WeightUpdate
from editharm.methods.prompts import context_templates
from editharm.methods.values import ValueHparams, ValueProblem, optimize_values
from editharm.requests import EditRequest

NAME = "rome"
SUPPORTS_BATCH = False
EDITS_WEIGHTS = True


@dataclass(kw_only=True)
class Hparams(ValueHparams):
    """ROME's own hyperparameters; those of the value optimisation (v_*, kl_factor, ...) come from ValueHparams."""

    layer: int
    mom2_adjustment: bool
    # ROME's templates: "{}" plus 10 prefixes of 5 tokens and 10 of 10.
    context_template_length_params: list[list[int]] = field(default_factory=lambda: [[5, 10], [10, 10]])


def stats_layers(hparams: Hparams, layout) -> list[int]:
    """Layers whose key second moment ROME needs: its edited layer, when mom2_adjustment is on."""
    return [hparams.layer] if hparams.mom2_adjustment else []


def left_vector(key: torch.Tensor, solve_second_moment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """u = C^-1 k* in float64 (compute_u); k* itself when there is no statistic (mom2_adjustment off).

    The reference also normalises u to unit length; the update below divides by u^T k0,
    so u's scale cancels and is left as is.
    """
    k = key.to(torch.float64)
    return k if solve_second_moment is None else solve_second_moment(k)


def rank_one_update(weight: torch.Tensor, bias: torch.Tensor | None, left: torch.Tensor, plain_key: torch.Tensor,
                    value: torch.Tensor) -> torch.Tensor:
    """The [out, in] update dW = (v* - W k0 - b) u^T / (u^T k0), so that (W + dW) k0 + b = v*.

    `left` is u (left_vector), `plain_key` k0. Solved in float64: C of a real model is
    ill-conditioned and the division by u^T k0 amplifies float32 error.
    """
    u = left.to(torch.float64)
    k0 = plain_key.to(torch.float64)
    current = weight.to(torch.float64) @ k0
    if bias is not None:
        current = current + bias.to(torch.float64)
    residual = value.to(torch.float64) - current
    return (torch.outer(residual, u) / (u @ k0)).to(torch.float32)


@dataclass
class RomeEdit:
    """Everything one ROME edit computed (apply returns only the update and a summary)."""

    param_name: str
    delta: torch.Tensor          # [out, in]
    key: torch.Tensor            # k*, the template-averaged key
    plain_key: torch.Tensor      # k0, the plain prompt's key
    left: torch.Tensor           # u = C^-1 k*
    value: torch.Tensor          # v*
    info: dict


def compute_rome(model, tokenizer, request: EditRequest, hparams: Hparams, context: EditContext) -> RomeEdit:
    if hparams.fact_token != "subject_last":
        raise ValueError(f"ROME fact_token {hparams.fact_token!r} is not supported; use 'subject_last' (the paper's choice)")
    layout = context.layout
    layer = hparams.layer
    if not 0 <= layer < layout.n_layers:
        raise ValueError(f"ROME layer {layer} out of range for a model with {layout.n_layers} layers")
    groups = context_templates(model, tokenizer, context, hparams.context_template_length_params)
    templates = [t for g in groups for t in g]
    # k* comes out of the same unedited pass as the value problem: the context-prefixed
    # prompts are the same, and tokens after the subject do not change its key.
    problem = ValueProblem(model, tokenizer, layout, [request], layer, templates, sites=("mlp",))
    result = optimize_values(problem, hparams.value_settings())
    key, plain_key, value = problem.keys[0], problem.plain_keys[0], result.values["mlp"][0]
    name = layout.down_weight_name(layer)
    weight = layout.linear_weight(model.get_parameter(name).detach())
    bias = getattr(model.get_submodule(layout.mlp_down.format(layer)), "bias", None)
    solve_c = (lambda rhs: context.solve_covariance(layer, rhs)) if hparams.mom2_adjustment else None
    left = left_vector(key, solve_c)
    delta = rank_one_update(weight, None if bias is None else bias.detach(), left, plain_key, value)
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
    return RomeEdit(param_name=name, delta=delta, key=key, plain_key=plain_key, left=left, value=value, info=info)


def apply(model, tokenizer, requests: list[EditRequest], hparams: Hparams, context: EditContext) -> WeightUpdate:
    if len(requests) != 1:
        raise ValueError(f"ROME edits one request at a time (SUPPORTS_BATCH = False), got {len(requests)}")
    edit = compute_rome(model, tokenizer, requests[0], hparams, context)
    return WeightUpdate({edit.param_name: context.layout.to_storage(edit.delta)}, info=edit.info)
