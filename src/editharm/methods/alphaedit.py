"""AlphaEdit: null-space constrained knowledge editing (Fang et al., ICLR 2025).

MEMIT's targets and layer spread, with an update that cannot disturb preserved
knowledge. Per edited layer, P projects onto the null space of the preserved keys
K0: the eigenvectors of C = E[k k^T] whose eigenvalues are below nullspace_threshold.
The update is

    X = (P (K K^T + K_p K_p^T) + L2 * I)^-1 P K R^T,    dW = X^T

where K_p K_p^T accumulates the keys of all earlier edits. X lies in the range of P,
so dW K0 ~ 0: outputs for preserved keys do not change; the K_p term keeps earlier
edits in place during sequential editing.

State carried across edits and sequential segments (context.state, flat names so it
saves as safetensors): "projection.<layer>" (P, computed once from C) and
"edited_keys_moment.<layer>" (K_p K_p^T, keys recomputed by after_update() once the
pipeline has written each edit's update, regularised or not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from editharm.methods.base import EditContext, WeightUpdate
from editharm.methods.memit import MassEdit, check_layers, spread_layers, value_info
from editharm.methods.prompts import context_templates, subject_keys
from editharm.methods.values import ValueHparams, ValueProblem, optimize_values
from editharm.requests import EditRequest

NAME = "alphaedit"
SUPPORTS_BATCH = True
EDITS_WEIGHTS = True


@dataclass(kw_only=True)
class Hparams(ValueHparams):
    """AlphaEdit's own hyperparameters; those of the value optimisation (v_*, kl_factor, ...) come from ValueHparams."""

    layers: list[int]
    nullspace_threshold: float
    L2: float


def stats_layers(hparams: Hparams, layout) -> list[int]:
    return sorted(set(hparams.layers))


def null_space_projection(second_moment: torch.Tensor, threshold: float) -> torch.Tensor:
    """P = U0 U0^T over the eigenvectors of C with eigenvalue below `threshold` (float32)."""
    values, vectors = torch.linalg.eigh(second_moment.to(torch.float64))
    small = vectors[:, values < threshold]
    return (small @ small.T).to(torch.float32)


def alphaedit_update(keys: torch.Tensor, residuals: torch.Tensor, projection: torch.Tensor,
                     edited_moment: torch.Tensor, l2: float) -> torch.Tensor:
    """dW [out, in] = X^T with X = (P (K K^T + K_p K_p^T) + l2 I)^-1 P K R^T; keys [n, in], residuals [n, out]."""
    k = keys.to(torch.float64)
    r = residuals.to(torch.float64)
    p = projection.to(torch.float64)
    m = k.T @ k + edited_moment.to(torch.float64)
    a = p @ m + l2 * torch.eye(k.shape[1], dtype=torch.float64, device=k.device)
    return torch.linalg.solve(a, p @ k.T @ r).T.to(torch.float32)


def projection(context: EditContext, layer: int, threshold: float) -> torch.Tensor:
    key = f"projection.{layer}"
    if key not in context.state:
        context.state[key] = null_space_projection(context.covariance(layer), threshold)
    return context.state[key]


def edited_moment(context: EditContext, layer: int, size: int) -> torch.Tensor:
    key = f"edited_keys_moment.{layer}"
    if key not in context.state:
        context.state[key] = torch.zeros(size, size)
    return context.state[key]


def compute_alphaedit(model, tokenizer, requests: list[EditRequest], hparams: Hparams, context: EditContext) -> MassEdit:
    if hparams.fact_token != "subject_last":
        raise ValueError(f"AlphaEdit fact_token {hparams.fact_token!r} is not supported; use 'subject_last'")
    layout = context.layout
    layers = check_layers(hparams.layers, layout, "AlphaEdit")
    groups = context_templates(model, tokenizer, context, hparams.context_template_length_params)
    flat = [t for g in groups for t in g]
    z_layer = layers[-1]
    problem = ValueProblem(model, tokenizer, layout, requests, z_layer, flat, sites=("residual",))
    result = optimize_values(problem, hparams.value_settings())
    targets = result.values["residual"]

    def solve(layer, keys, residuals):
        p = projection(context, layer, hparams.nullspace_threshold).to(keys.device)
        moment = edited_moment(context, layer, layout.intermediate_size).to(keys.device)
        return alphaedit_update(keys, residuals, p, moment, hparams.L2)

    solved = spread_layers(model, tokenizer, layout, requests, layers, groups, targets, layout.layer.format(z_layer),
                           spread=lambda i: float(len(layers) - i), solve=solve)
    deltas = {layout.down_weight_name(l): s.delta for l, s in solved.items()}
    info = value_info(result, ("residual",)) | {
        "layers": layers,
        # The trace of a projection is its rank: the dimension of the protected null space.
        "null_space_dims": {str(l): int(round(float(context.state[f"projection.{l}"].trace()))) for l in layers},
    }
    return MassEdit(deltas=deltas, layers=solved, targets=targets, info=info)


def apply(model, tokenizer, requests: list[EditRequest], hparams: Hparams, context: EditContext) -> WeightUpdate:
    edit = compute_alphaedit(model, tokenizer, requests, hparams, context)
    return WeightUpdate({n: context.layout.to_storage(d) for n, d in edit.deltas.items()}, info=edit.info)


@torch.no_grad()
def after_update(model, tokenizer, requests: list[EditRequest], hparams: Hparams, context: EditContext) -> None:
    """K_p K_p^T += K K^T with the keys as the model computes them *after* this edit was written.

    The pipeline calls this once the (possibly regularised) update is in the weights, so
    the protected keys are those of the weights actually written, as in the reference,
    which recomputes the keys on the edited model after all layers are updated.
    """
    layout = context.layout
    layers = check_layers(hparams.layers, layout, "AlphaEdit")
    groups = context_templates(model, tokenizer, context, hparams.context_template_length_params)
    keys = subject_keys(model, tokenizer, layout, requests, layers, groups, group_mean=True)
    for layer, k in keys.items():
        k = k.double()
        context.state[f"edited_keys_moment.{layer}"] = (
            edited_moment(context, layer, layout.intermediate_size).double() + (k.T @ k).cpu()).float()
