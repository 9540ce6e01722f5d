"""Applying a method's weight update to a model: regularise, check, add.

This is the one place where a `WeightUpdate` becomes new parameter values, so the
sequential pipeline and the public API (`editharm.api`) change weights identically:
each tensor's delta is checked for NaN/Inf, passed through the regulariser with a
seed derived from (seed, edit index, tensor name) so reruns are bit-identical, and
the sum is checked again before it is written in the parameter's own dtype.
"""

from __future__ import annotations

from typing import Any

import torch

from editharm.checkpoint import check_finite
from editharm.methods.base import WeightUpdate
from editharm.regularize import apply_regulariser, derive_seed


def apply_weight_update(model, update: WeightUpdate, regulariser, seed: int, edit_index: int,
                        where: str) -> dict[str, dict[str, Any]]:
    """Add `update`'s regularised deltas to `model`'s parameters in place.

    `regulariser` is a parsed regulariser (`regularize.parse_regulariser`); `where`
    names the edit in error messages (e.g. "edit 3 (request 17)"). Returns, per changed
    tensor name, the regulariser's info dict (what it kept, scaled or projected).
    """
    reg_info: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        for name in sorted(update.deltas):
            param = model.get_parameter(name)
            delta = update.deltas[name].to(param.device, torch.float32)
            check_finite(name, delta, where + " before regularisation")
            delta, info = apply_regulariser(regulariser, delta, param.detach().float(),
                                            seed=derive_seed(seed, edit_index, name))
            new_value = param.detach().float() + delta
            check_finite(name, new_value, where)
            param.copy_(new_value.to(param.dtype))
            reg_info[name] = info
    return reg_info
