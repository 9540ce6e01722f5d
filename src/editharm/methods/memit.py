"""MEMIT: Mass-Editing Memory in a Transformer (Meng et al. 2023).

A batch of facts is written into the MLP down projections of a range of layers:

  1. z_i: for each request, the residual stream at the last edited layer L (subject's
     last token) plus a delta optimised as in ROME (values.py); all requests of the
     batch are optimised together in one batched pass.
  2. For each layer l of the range, in order: the keys K (mean mlp_down input over the
     context templates, by template group), the remaining residual
     R = (z - h^L) / (number of layers left), and the least-squares update

         dW (lambda C + K K^T) = R K^T          (C = E[k k^T], lambda = mom2_update_weight)

     which is applied before the next layer's keys and residual are computed.

The model is restored exactly before returning; the pipeline adds the updates.
PMET and AlphaEdit reuse this loop with their own targets, spread and solve.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from editharm import nethook
from editharm.methods.base import EditContext, WeightUpdate
from editharm.methods.prompts import context_templates, fill, pad_rows, subject_keys, tokenize_at_subject
from editharm.methods.values import ValueHparams, ValueProblem, optimize_values
from editharm.requests import EditRequest

NAME = "memit"
SUPPORTS_BATCH = True
EDITS_WEIGHTS = True


@dataclass(kw_only=True)
class Hparams(ValueHparams):
    """MEMIT's own hyperparameters; those of the value optimisation (v_*, kl_factor, ...) come from ValueHparams."""

    layers: list[int]
    mom2_adjustment: bool
    mom2_update_weight: float


def stats_layers(hparams, layout) -> list[int]:
    """Every edited layer needs its key second moment (when mom2_adjustment is on)."""
    return sorted(set(hparams.layers)) if getattr(hparams, "mom2_adjustment", True) else []


# ------------------------------------------------------------------ pure math

def memit_update(keys: torch.Tensor, residuals: torch.Tensor,
                 solve_second_moment: Callable[[torch.Tensor], torch.Tensor] | None,
                 update_weight: float) -> torch.Tensor:
    """dW [out, in] solving dW (lambda C + K K^T) = R K^T, with keys [n, in] and residuals [n, out].

    float64, as in MEMIT (lambda C dominates and float32 loses the K K^T term). With
    n keys and d_ff inputs, the Woodbury identity
        (A + K K^T)^-1 K = A^-1 K (I + K^T A^-1 K)^-1,   A = lambda C,
    needs only C^-1 K (`solve_second_moment`, C's factorisation cached per layer; None
    means C = I, mom2_adjustment off) and an n x n solve.
    """
    k = keys.to(torch.float64).T            # [in, n]
    r = residuals.to(torch.float64)         # [n, out]
    if solve_second_moment is None:
        a_inv_k = k / update_weight
    else:
        a_inv_k = solve_second_moment(k) / update_weight
    small = torch.eye(k.shape[1], dtype=torch.float64, device=k.device) + k.T @ a_inv_k
    return (a_inv_k @ torch.linalg.solve(small, r)).T.to(torch.float32)


# ------------------------------------------------------------------ model helpers

@contextlib.contextmanager
def temporary_updates(model, layout) -> Iterator[Callable[[str, torch.Tensor], None]]:
    """Yield add(name, dW_out_in): adds to a parameter now; every touched parameter is restored bit-exactly on exit."""
    originals: dict[str, torch.Tensor] = {}

    def add(name: str, delta_out_in: torch.Tensor) -> None:
        param = model.get_parameter(name)
        if name not in originals:
            originals[name] = param.detach().clone()
        with torch.no_grad():
            param += layout.to_storage(delta_out_in).to(param.dtype)

    try:
        yield add
    finally:
        with torch.no_grad():
            for name, value in originals.items():
                model.get_parameter(name).copy_(value)


@torch.no_grad()
def plain_outputs(model, tokenizer, layout, requests: Sequence[EditRequest], module: str) -> torch.Tensor:
    """Output of `module` at the subject's last token of each plain prompt: [R, hidden]."""
    rows, last = [], []
    for req in requests:
        text, a, b = fill("{}", req.prompt, req.subject)
        ids, pos = tokenize_at_subject(tokenizer, text, a, b)
        rows.append(ids[:pos + 1])
        last.append(pos)
    device = next(model.parameters()).device
    ids = pad_rows(rows, 0).to(device)
    with nethook.capture(model, [module], stop_after=module) as rec:
        nethook.run_until_stopped(lambda: model(input_ids=ids, use_cache=False))
    return rec[module].output[torch.arange(len(rows), device=device), torch.tensor(last, device=device)].float()


@dataclass
class LayerSolve:
    """What one layer of a mass edit used and produced (kept for tests and diagnostics)."""

    keys: torch.Tensor        # [n, d_ff]
    residuals: torch.Tensor   # [n, hidden], already divided by the spread
    delta: torch.Tensor       # [out, in]


def spread_layers(model, tokenizer, layout, requests: Sequence[EditRequest], layers: Sequence[int],
                  template_groups, targets: torch.Tensor, target_module: str,
                  spread: Callable[[int], float],
                  solve: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]) -> dict[int, LayerSolve]:
    """MEMIT's layer loop: per layer, keys, residual toward `targets` at `target_module`, solve, apply.

    `spread(i)` divides the residual at the i-th layer (MEMIT: layers left; PMET: its
    square root). The model is restored on return.
    """
    out: dict[int, LayerSolve] = {}
    # A residual-stream target reaches a Gemma MLP's down_proj only through the norm after it.
    through_norm = layout.post_mlp_norm is not None and target_module in {layout.layer.format(l) for l in layers}
    with temporary_updates(model, layout) as add:
        for i, layer in enumerate(layers):
            keys = subject_keys(model, tokenizer, layout, requests, [layer], template_groups, group_mean=True)[layer]
            current = plain_outputs(model, tokenizer, layout, requests, target_module)
            residuals = (targets - current) / spread(i)
            if through_norm:
                residuals = mlp_output_residuals(model, tokenizer, layout, requests, layer, residuals)
            delta = solve(layer, keys, residuals)
            add(layout.down_weight_name(layer), delta)
            out[layer] = LayerSolve(keys=keys, residuals=residuals, delta=delta)
    return out


def mlp_output_residuals(model, tokenizer, layout, requests: Sequence[EditRequest], layer: int,
                         residuals: torch.Tensor) -> torch.Tensor:
    """The change of down_proj's output at `layer` that moves the residual stream by `residuals` ([R, hidden]),
    for a model with a norm after down_proj (Gemma: y = g * o / rms(o), added to the residual).

    MEMIT writes the residual change as the MLP output's change; through the norm that would be
    scaled by g / rms(o) and distorted. The norm's outputs are the vectors g * v with rms(v) = 1;
    the new output is the one of them closest to y + r (`closest_normed_output`), written at the
    size of the current output o. Where y + r is itself such an output, that is y + r exactly.
    """
    o = plain_outputs(model, tokenizer, layout, requests, layout.mlp_down.format(layer))
    norm = model.get_submodule(layout.post_mlp_norm.format(layer))
    dtype = next(norm.parameters()).dtype
    with torch.no_grad():
        gain = norm(torch.ones(1, o.shape[-1], dtype=dtype, device=o.device))[0].float()  # rms(ones) = 1
        y = norm(o.to(dtype)).float()
    rms = o.pow(2).mean(-1, keepdim=True).sqrt()
    return closest_normed_output(gain, y + residuals).to(o.dtype) * rms - o


def closest_normed_output(gain: torch.Tensor, target: torch.Tensor, iterations: int = 200) -> torch.Tensor:
    """Per row of `target` ([R, d]): the v with rms(v) = 1 whose g * v is closest to the row (least squares).

    Stationarity gives v = g t / (g^2 + lam) with the multiplier lam >= -min(g^2) chosen so that
    rms(v) = 1, found by bisection (rms(v) falls as lam grows). lam = 0, v = t / g, when t is
    itself a normed output. Dividing by g alone, as that special case does, lets channels whose
    gain is near 0 (Gemma-3-270M has them from layer 1 on) take huge values that the norm then
    divides every channel by: MEMIT's update on the real model edited 0 of 20 CounterFact facts.
    """
    g, t = gain.double()[None, :], target.double()
    g2 = g * g

    def rms(lam: torch.Tensor) -> torch.Tensor:
        return (g * t / (g2 + lam[:, None])).pow(2).mean(-1).sqrt()

    # Just above the pole at -min(g^2); if rms < 1 even there, the bisection settles on it.
    lo = torch.full((t.shape[0],), float(-g2.min()) + 1e-12 * float(g2.max()), dtype=torch.float64, device=t.device)
    hi = torch.ones_like(lo) + lo.abs()
    while bool((rms(hi) > 1).any()):
        hi = torch.where(rms(hi) > 1, 2 * hi, hi)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        above = rms(mid) > 1
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return (g * t / (g2 + hi[:, None])).to(target.dtype)


def check_layers(layers: Sequence[int], layout, method: str) -> list[int]:
    layers = [int(l) for l in layers]
    if not layers:
        raise ValueError(f"{method}: hparams.layers is empty")
    if layers != sorted(set(layers)):
        raise ValueError(f"{method}: hparams.layers must be increasing and distinct, got {layers}")
    if layers[0] < 0 or layers[-1] >= layout.n_layers:
        raise ValueError(f"{method}: layers {layers} out of range for a model with {layout.n_layers} layers")
    return layers


def value_info(result, sites: Sequence[str]) -> dict:
    """Per-batch summary of the value optimisation for the edit log."""
    n = len(result.steps)
    info = {
        "steps": max(result.steps) if n else 0,
        "steps_mean": sum(result.steps) / max(1, n),
        "loss": sum(result.loss) / max(1, n),
        "nll": sum(result.nll) / max(1, n),
        "kl": sum(result.kl) / max(1, n),
        "target_prob": sum(result.target_prob) / max(1, n),
        "per_request_steps": list(result.steps),
    }
    for s in sites:
        info[f"delta_norm_{s}"] = float(result.deltas[s].norm(dim=-1).mean())
    return info


# ------------------------------------------------------------------ MEMIT

@dataclass
class MassEdit:
    deltas: dict[str, torch.Tensor]       # parameter name -> [out, in]
    layers: dict[int, LayerSolve]
    targets: torch.Tensor                 # z, [R, hidden]
    info: dict


def compute_memit(model, tokenizer, requests: Sequence[EditRequest], hparams: Hparams, context: EditContext) -> MassEdit:
    if hparams.fact_token != "subject_last":
        raise ValueError(f"MEMIT fact_token {hparams.fact_token!r} is not supported; use 'subject_last'")
    layout = context.layout
    layers = check_layers(hparams.layers, layout, "MEMIT")
    groups = context_templates(model, tokenizer, context, hparams.context_template_length_params)
    flat = [t for g in groups for t in g]
    z_layer = layers[-1]
    problem = ValueProblem(model, tokenizer, layout, requests, z_layer, flat, sites=("residual",))
    result = optimize_values(problem, hparams.value_settings())
    targets = result.values["residual"]

    def solve(layer, keys, residuals):
        solve_c = (lambda rhs: context.solve_covariance(layer, rhs)) if hparams.mom2_adjustment else None
        return memit_update(keys, residuals, solve_c, hparams.mom2_update_weight)

    solved = spread_layers(model, tokenizer, layout, requests, layers, groups, targets, layout.layer.format(z_layer),
                           spread=lambda i: float(len(layers) - i), solve=solve)
    deltas = {layout.down_weight_name(l): s.delta for l, s in solved.items()}
    info = value_info(result, ("residual",)) | {"layers": layers}
    return MassEdit(deltas=deltas, layers=solved, targets=targets, info=info)


def apply(model, tokenizer, requests: list[EditRequest], hparams: Hparams, context: EditContext) -> WeightUpdate:
    edit = compute_memit(model, tokenizer, requests, hparams, context)
    return WeightUpdate({n: context.layout.to_storage(d) for n, d in edit.deltas.items()}, info=edit.info)
