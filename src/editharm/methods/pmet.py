"""PMET: Precise Model Editing in a Transformer (Li et al., AAAI 2024).

MEMIT's layer-spread update with two changes. The optimisation at the last edited
layer L adds one delta to the attention output and one to the MLP output (the
"transformer component" hidden states) and optimises both together; only the MLP
target is used to update weights (the MLP down projections; attention weights stay).
The residual toward the MLP target is spread over the layers with a square root,
R_l = (v_mlp - m^L) / sqrt(layers left), instead of MEMIT's plain division.

The value optimisation follows PMET's released code: an NLL weight (nll_loss_factor)
that drops tenfold once every target token is already the argmax, and an early stop
when, at that point, the weighted KL term is at most 0.01.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from editharm.methods.base import EditContext, WeightUpdate
from editharm.methods.memit import MassEdit, check_layers, memit_update, spread_layers, value_info
from editharm.methods.memit import stats_layers  # noqa: F401  (same statistics as MEMIT)
from editharm.methods.prompts import context_templates
from editharm.methods.values import ValueHparams, ValueProblem, ValueSettings, optimize_values
from editharm.requests import EditRequest

NAME = "pmet"
SUPPORTS_BATCH = True
EDITS_WEIGHTS = True


@dataclass(kw_only=True)
class Hparams(ValueHparams):
    """PMET's own hyperparameters; those of the value optimisation (v_*, kl_factor, ...) come from ValueHparams."""

    layers: list[int]
    mom2_adjustment: bool
    mom2_update_weight: float
    nll_loss_factor: float = 1.0

    def value_settings(self) -> ValueSettings:
        """The shared settings plus PMET's NLL weight, relaxed once every target token is the argmax."""
        return replace(super().value_settings(), nll_factor=self.nll_loss_factor, relax_when_argmax=True)


def compute_pmet(model, tokenizer, requests: list[EditRequest], hparams: Hparams, context: EditContext) -> MassEdit:
    if hparams.fact_token != "subject_last":
        raise ValueError(f"PMET fact_token {hparams.fact_token!r} is not supported; use 'subject_last'")
    layout = context.layout
    layers = check_layers(hparams.layers, layout, "PMET")
    groups = context_templates(model, tokenizer, context, hparams.context_template_length_params)
    flat = [t for g in groups for t in g]
    z_layer = layers[-1]
    problem = ValueProblem(model, tokenizer, layout, requests, z_layer, flat, sites=("attn", "mlp"))
    result = optimize_values(problem, hparams.value_settings())
    targets = result.values["mlp"]

    def solve(layer, keys, residuals):
        solve_c = (lambda rhs: context.solve_covariance(layer, rhs)) if hparams.mom2_adjustment else None
        return memit_update(keys, residuals, solve_c, hparams.mom2_update_weight)

    solved = spread_layers(model, tokenizer, layout, requests, layers, groups, targets, layout.mlp_down.format(z_layer),
                           spread=lambda i: math.sqrt(len(layers) - i), solve=solve)
    deltas = {layout.down_weight_name(l): s.delta for l, s in solved.items()}
    info = value_info(result, ("attn", "mlp")) | {"layers": layers}
    return MassEdit(deltas=deltas, layers=solved, targets=targets, info=info)


def apply(model, tokenizer, requests: list[EditRequest], hparams: Hparams, context: EditContext) -> WeightUpdate:
    edit = compute_pmet(model, tokenizer, requests, hparams, context)
    return WeightUpdate({n: context.layout.to_storage(d) for n, d in edit.deltas.items()}, info=edit.info)
