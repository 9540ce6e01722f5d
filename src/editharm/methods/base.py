"""The method interface: what every editing method module provides and returns.

A method is a module that defines

    NAME: str                   # the name used in config and in result paths
    Hparams: type               # a dataclass; its fields are the YAML keys
    SUPPORTS_BATCH: bool        # may `apply` receive more than one request?
    EDITS_WEIGHTS: bool         # True: returns WeightUpdate (regularisers apply)
    apply(model, tokenizer, requests, hparams, context) -> WeightUpdate | StateUpdate
    stats_layers(hparams, layout) -> list[int]   # optional: layers needing covariance

Optional, for methods that need them:

    TRAINED = True and train(model, tokenizer, requests, hparams, out_dir, seed) -> dict
        a training step (MEND's hypernetwork, SERAC's classifier and counterfactual
        model) run once per (model, method, training dataset) by its own DAG rule; it
        writes its artifacts into out_dir and returns a summary (loss curve, seconds).
        At edit and scoring time context.artifacts["trained_dir"] is that folder.
    attach(model, tokenizer, state, hparams, context) -> model
        for state-based methods (GRACE, SERAC): return a model whose forward uses the
        method state (codebook, memory); scoring and metrics call it after loading a
        checkpoint. Weight-editing methods do not need it.

Nothing else in the pipeline knows about a particular method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from editharm.methods.covariance import SecondMomentSolver
from editharm.requests import EditRequest


@dataclass
class WeightUpdate:
    """Parameter name -> dW, in the parameter's own layout and shape, float32.

    The pipeline regularises each dW, checks it is finite and adds it to the
    parameter; methods never modify the model themselves.
    """

    deltas: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)  # e.g. optimisation steps, losses


@dataclass
class StateUpdate:
    """The new method state (codebooks, memories) for methods that do not change weights."""

    state: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


Update = WeightUpdate | StateUpdate


@dataclass
class EditContext:
    """Shared, cached things a method may use.

    covariance(layer) returns the uncentred second moment E[k k^T] of the MLP keys
    at that layer (float32, [d_ff, d_ff]), loaded lazily from the layer_stats files.
    solve_covariance(layer, rhs) returns C^-1 rhs in float64, factoring each layer's C
    once per device for all the edits that share this context.
    state is the method's accumulated state, carried across sequential segments.
    """

    layout: Any  # editharm.models.ModelLayout
    covariance: Callable[[int], torch.Tensor]
    state: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    artifacts: dict[str, str] = field(default_factory=dict)  # e.g. trained hypernetwork paths
    solver: SecondMomentSolver | None = None

    def __post_init__(self):
        if self.solver is None:
            self.solver = SecondMomentSolver(self.covariance)

    def solve_covariance(self, layer: int, rhs: torch.Tensor) -> torch.Tensor:
        return self.solver.solve(layer, rhs)


class EditMethod(Protocol):
    NAME: str
    Hparams: type
    SUPPORTS_BATCH: bool
    EDITS_WEIGHTS: bool

    def apply(self, model, tokenizer, requests: list[EditRequest], hparams, context: EditContext) -> Update: ...
