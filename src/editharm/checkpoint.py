"""Checkpoints of a sequential editing run: the tensors the edits touched plus method state.

A checkpoint stores the full current values of every touched tensor (not a delta in low
precision), so base model + checkpoint tensors reproduces the edited model bit for bit.
Method state (GRACE codebook, SERAC memory, AlphaEdit keys) is split into tensors, stored
in the same safetensors file under "state::", and JSON values stored in the meta file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from editharm.io import atomic_path, read_json, write_json

PARAM_PREFIX = "param::"
STATE_PREFIX = "state::"


class NonFiniteWeightsError(RuntimeError):
    """An edit produced NaN or Inf weights; the run stops instead of saving them."""


def check_finite(name: str, tensor: torch.Tensor, where: str) -> None:
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise NonFiniteWeightsError(
            f"{where}: tensor {name} has {bad} NaN/Inf element(s) after the edit; nothing was saved. "
            "Lower the method's learning rate or norm bounds, or check the covariance statistics."
        )


def save_checkpoint(tensors_path: str | Path, meta_path: str | Path, tensors: dict[str, torch.Tensor],
                    state: dict[str, Any], meta: dict[str, Any]) -> None:
    flat: dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        check_finite(name, value, str(tensors_path))
        flat[PARAM_PREFIX + name] = value.detach().to("cpu").contiguous()
    json_state = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            flat[STATE_PREFIX + key] = value.detach().to("cpu").contiguous()
        else:
            json_state[key] = value
    with atomic_path(tensors_path) as tmp:
        save_file(flat, str(tmp))
    write_json(meta_path, {**meta, "state_json": json_state, "touched_tensors": sorted(tensors)})


def load_checkpoint(tensors_path: str | Path, meta_path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    flat = load_file(str(tensors_path))
    meta = read_json(meta_path)
    tensors = {k[len(PARAM_PREFIX):]: v for k, v in flat.items() if k.startswith(PARAM_PREFIX)}
    state: dict[str, Any] = dict(meta.get("state_json", {}))
    state.update({k[len(STATE_PREFIX):]: v for k, v in flat.items() if k.startswith(STATE_PREFIX)})
    return tensors, state, meta


@torch.no_grad()
def write_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Replace parameters by checkpoint values, bit-exact."""
    for name, value in tensors.items():
        param = model.get_parameter(name)
        if param.shape != value.shape:
            raise ValueError(f"checkpoint tensor {name} has shape {tuple(value.shape)}, the model's is {tuple(param.shape)}")
        param.copy_(value.to(param.dtype))
