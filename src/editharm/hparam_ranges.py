"""Allowed ranges of the methods' numeric hyperparameters, declared once per field.

`load_hparams` checks every value against these when a hyperparameter file is read (at
config validation, before any job runs): `v_lr: 1e30` or `v_num_grad_steps: -3` would
otherwise run, finish "successfully" with 0 steps or a NaN loss, and poison everything
downstream. A field's spec is looked up by name: first in the method module's own
`HPARAM_RANGES` (a method outside editharm declares its fields there), then in
`METHOD_RANGES[method]`, then in the shared `FIELD_RANGES`, since the same name means the
same thing across the built-in methods (v_lr is the value optimiser's Adam rate in
ROME, MEMIT, PMET and AlphaEdit alike). The bounds reject values that cannot be meant
(negative counts, zero or absurd learning rates, probabilities above 1); they are not
tuning advice. Layer indices are checked against the model once its depth is known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """low <= x <= high (bounds optional; `*_open` excludes the bound). Always finite."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, x: float) -> bool:
        if not math.isfinite(x):
            return False
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return self.high is None or (x < self.high if self.high_open else x <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g} (finite)" if self.low is not None else "finite"
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        return f"{left}{self.low:g}, {self.high:g}{right}"


@dataclass(frozen=True)
class LayerIndex:
    """A transformer layer index: 0..n-1, or -n..n-1 where negatives count from the end (MEND)."""

    from_end: bool = False

    def contains(self, x: float) -> bool:
        return isinstance(x, int) and (self.from_end or x >= 0)

    def within(self, x: int, n_layers: int) -> bool:
        return (-n_layers if self.from_end else 0) <= x < n_layers

    def allowed(self, n_layers: int | None = None) -> str:
        if n_layers is None:
            return "an integer layer index (negative counts from the last layer)" if self.from_end else "an integer >= 0"
        return f"{-n_layers}..{n_layers - 1}" if self.from_end else f"0..{n_layers - 1}"

    def __str__(self) -> str:
        return self.allowed()


Spec = Range | LayerIndex

POSITIVE = Range(0, None, low_open=True)
NON_NEGATIVE = Range(0, None)
COUNT = Range(1, None)
PROBABILITY = Range(0, 1)
LEARNING_RATE = Range(0, 10, low_open=True)  # Adam/SGD steps above 10 only diverge

FIELD_RANGES: dict[str, Spec] = {
    # where an edit happens
    "layer": LayerIndex(),
    "layers": LayerIndex(),
    # value optimisation (ROME, MEMIT, PMET, AlphaEdit: methods/values.py)
    "v_num_grad_steps": Range(1, 10_000),
    "v_lr": LEARNING_RATE,
    "v_weight_decay": Range(0, 100),
    "clamp_norm_factor": Range(0, 1000, low_open=True),
    "kl_factor": Range(0, 1000),
    "nll_loss_factor": Range(0, 1000),
    "context_template_length_params": Range(1, 1000),  # each [tokens, count] entry
    # key statistics and the closed-form solves
    "mom2_update_weight": NON_NEGATIVE,
    "nullspace_threshold": NON_NEGATIVE,                # an eigenvalue of E[k k^T]
    "L2": NON_NEGATIVE,
    # gradient-trained parts (FT, GRACE, MEND, SERAC)
    "num_steps": Range(1, 100_000),
    "n_iter": Range(1, 100_000),
    "max_iters": COUNT,
    "lr": LEARNING_RATE,
    "edit_lr": Range(0, 100, low_open=True),
    "lr_lr": Range(0, 10),
    "weight_decay": Range(0, 100),
    "norm_constraint": POSITIVE,
    "grad_clip": POSITIVE,
    "early_stop_loss": NON_NEGATIVE,
    "batch_size": COUNT,
    "accumulate_bs": COUNT,
    "feature_batch_size": COUNT,
    "max_length": Range(1, 1_000_000),
    "log_interval": COUNT,
    # GRACE
    "eps": POSITIVE,
    # KN
    "steps": Range(1, 10_000),
    "adaptive_threshold": PROBABILITY,
    "p": PROBABILITY,
    "lambda_1": Range(0, 1000),
    "lambda_2": Range(0, 1000),
    "lambda_1_single": Range(0, 1000),
    "lambda_2_single": Range(0, 1000),
    # MEND
    "rank": COUNT,
    "n_hidden": Range(0, 100),
    "cedit": NON_NEGATIVE,
    "cloc": NON_NEGATIVE,
    # SERAC
    "cls_depth": PROBABILITY,
    "cls_dim": COUNT,
    "threshold": PROBABILITY,       # exp(-d^2) lies in (0, 1]
}

METHOD_RANGES: dict[str, dict[str, Spec]] = {
    "mend": {"layers": LayerIndex(from_end=True)},
}


def spec_for(method: str, module: Any, field: str) -> Spec | None:
    own = getattr(module, "HPARAM_RANGES", None) or {}
    return own.get(field) or METHOD_RANGES.get(method, {}).get(field) or FIELD_RANGES.get(field)


def numbers_in(value: Any) -> list[float]:
    """The numbers inside a value (a number, or nested lists of numbers); bools are not numbers."""
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in numbers_in(v)]
    return []


def range_problem(path: Any, key: str, value: Any, spec: Spec | None, method: str) -> str | None:
    """A message naming file, key, value and the allowed range, or None when the value is allowed."""
    numbers = numbers_in(value)
    if spec is None:
        bad = [x for x in numbers if not math.isfinite(x)]
        return f"{path}: hyperparameter {key}={value!r} is not a finite number" if bad else None
    bad = [x for x in numbers if not spec.contains(x)]
    if not bad:
        return None
    shown = f"{key}={value!r}" if len(numbers) == 1 else f"{key}={value!r} (entry {bad[0]!r})"
    return (f"{path}: hyperparameter {shown} is outside the allowed range for {method}: {spec}. "
            f"Fix the value in {path}.")


def layer_problems(path: Any, hparams: Any, method: str, module: Any, n_layers: int, model: str) -> list[str]:
    """Layer indices in `hparams` that the model (with n_layers layers) does not have."""
    problems = []
    for key, value in vars(hparams).items():
        spec = spec_for(method, module, key)
        if not isinstance(spec, LayerIndex) or value is None:
            continue
        bad = [x for x in numbers_in(value) if not spec.within(int(x), n_layers)]
        if bad:
            problems.append(
                f"{path}: hyperparameter {key}={value!r} names layer {bad[0]}, but model {model!r} has {n_layers} layers "
                f"(allowed: {spec.allowed(n_layers)}). Fix `{key}` in {path}, or give this model its own file "
                f"with models.{model}.hparams.{method}."
            )
    return problems
