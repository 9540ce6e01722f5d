"""Applying a method's update to a model: regularise, check, add; or take its new state.

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
from editharm.methods.base import StateUpdate, WeightUpdate
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


def write_update(method, model, tokenizer, requests, hparams, context, update, regulariser, seed: int,
                 edit_index: int) -> dict[str, dict[str, Any]]:
    """Make one edit operation's `update` (from `method.apply`) take effect, as the pipeline does.

    A WeightUpdate is regularised and added (apply_weight_update); a StateUpdate becomes
    context.state. Then, if the method defines `after_update(model, tokenizer, requests,
    hparams, context)`, it is called with the weights as actually written: a method whose
    state depends on the edited model (AlphaEdit's keys of earlier edits) must see the
    regularised update, not the one it proposed. Returns the regulariser's info per tensor.
    """
    reg_info: dict[str, dict[str, Any]] = {}
    if isinstance(update, WeightUpdate):
        reg_info = apply_weight_update(model, update, regulariser, seed, edit_index,
                                       where=f"edit {edit_index} (request {requests[0].case_id})")
    elif isinstance(update, StateUpdate):
        context.state = update.state
    else:
        raise TypeError(f"method {method.NAME} returned {type(update).__name__}; expected WeightUpdate or StateUpdate")
    after = getattr(method, "after_update", None)
    if after is not None:
        after(model, tokenizer, requests, hparams, context)
    return reg_info
