"""Checkpoints of a sequential editing run: the tensors the edits touched plus method state.

A checkpoint stores the full current values of every touched tensor (not a delta in low
precision), so base model + checkpoint tensors reproduces the edited model bit for bit.
Method state (GRACE codebook, SERAC memory, AlphaEdit keys) is split into tensors, stored
in the same safetensors file under "state::", and JSON values stored in the meta file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from editharm.io import DataError, atomic_path, json_text, read_json, write_json

PARAM_PREFIX = "param::"
STATE_PREFIX = "state::"
EXTRA_PREFIX = "extra::"
BUNDLE_KEY = "editharm_bundle"


class NonFiniteWeightsError(RuntimeError):
    """An edit produced NaN or Inf weights; the run stops instead of saving them."""


def check_finite(name: str, tensor: torch.Tensor, where: str) -> None:
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise NonFiniteWeightsError(
            f"{where}: tensor {name} has {bad} NaN/Inf element(s) after the edit; nothing was saved. "
            "Lower the method's learning rate or norm bounds, or check the covariance statistics."
        )


def _flatten(tensors: dict[str, torch.Tensor], state: dict[str, Any], where: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Touched tensors and the tensor part of the method state as one safetensors dict; the
    rest of the state (plain JSON values) is returned separately."""
    flat: dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        check_finite(name, value, where)
        flat[PARAM_PREFIX + name] = value.detach().to("cpu").contiguous()
    json_state = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            flat[STATE_PREFIX + key] = value.detach().to("cpu").contiguous()
        else:
            json_state[key] = value
    return flat, json_state


def _unflatten(flat: dict[str, torch.Tensor], json_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {k[len(PARAM_PREFIX):]: v for k, v in flat.items() if k.startswith(PARAM_PREFIX)}
    state: dict[str, Any] = dict(json_state)
    state.update({k[len(STATE_PREFIX):]: v for k, v in flat.items() if k.startswith(STATE_PREFIX)})
    return tensors, state


def save_checkpoint(tensors_path: str | Path, meta_path: str | Path, tensors: dict[str, torch.Tensor],
                    state: dict[str, Any], meta: dict[str, Any]) -> None:
    flat, json_state = _flatten(tensors, state, str(tensors_path))
    with atomic_path(tensors_path) as tmp:
        save_file(flat, str(tmp))
    write_json(meta_path, {**meta, "state_json": json_state, "touched_tensors": sorted(tensors)}, strict=True)


def load_checkpoint(tensors_path: str | Path, meta_path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    flat = load_file(str(tensors_path))
    meta = read_json(meta_path)
    tensors, state = _unflatten(flat, meta.get("state_json", {}))
    return tensors, state, meta


def save_bundle(path: str | Path, tensors: dict[str, torch.Tensor], state: dict[str, Any], record: dict[str, Any],
                extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Tensors, method state, a JSON `record` and `extra_tensors` in ONE file, written atomically.

    A resumable partial save must change as a unit: with tensors, log and progress in
    separate files, a kill between two writes pairs new weights with an old progress count
    and the resumed run applies edits twice. One file moved into place by os.replace is
    either the old state or the new one, never a mix.
    """
    flat, json_state = _flatten(tensors, state, str(path))
    for key, value in (extra_tensors or {}).items():
        flat[EXTRA_PREFIX + key] = value.detach().to("cpu").contiguous()
    header = json_text({"state_json": json_state, "record": record}, path)
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata={BUNDLE_KEY: header})


def load_bundle(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """(tensors, state, record, extra_tensors) of a file written by save_bundle."""
    with safe_open(str(path), framework="pt") as f:
        header = (f.metadata() or {}).get(BUNDLE_KEY)
        flat = {k: f.get_tensor(k) for k in f.keys()}
    if header is None:
        raise DataError(f"{path}: not a bundle written by editharm.checkpoint.save_bundle (no {BUNDLE_KEY!r} metadata); delete it.")
    parsed = json.loads(header)
    tensors, state = _unflatten(flat, parsed["state_json"])
    extra = {k[len(EXTRA_PREFIX):]: v for k, v in flat.items() if k.startswith(EXTRA_PREFIX)}
    return tensors, state, parsed["record"], extra


@torch.no_grad()
def write_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Replace parameters by checkpoint values, bit-exact."""
    for name, value in tensors.items():
        param = model.get_parameter(name)
        if param.shape != value.shape:
            raise ValueError(f"checkpoint tensor {name} has shape {tuple(value.shape)}, the model's is {tuple(param.shape)}")
        param.copy_(value.to(param.dtype))


def load_edited_model(model_dir: str, tensors: str | None, meta: str | None, method_module: str | None = None,
                      trained_dir: str | None = None):
    """Base model plus a checkpoint's tensors (bit-exact), wrapped by the method's attach() if it has one.

    How every consumer of a checkpoint (scoring, editing metrics, export) rebuilds the edited
    model, so all of them measure the same model. tensors=None: the unedited base model.
    """
    from editharm.methods import load_method
    from editharm.methods.base import EditContext
    from editharm.models import layout_for, load_model

    model, tokenizer = load_model(model_dir)
    if tensors is None:
        return model, tokenizer
    values, state, info = load_checkpoint(tensors, meta)
    write_tensors(model, values)
    method = load_method(info["method"], method_module)
    attach = getattr(method, "attach", None)
    if attach:
        hparams = method.Hparams(**info["hparams"])
        context = EditContext(layout=layout_for(model), covariance=_no_covariance, state=state, seed=info.get("seed", 0),
                              artifacts={"trained_dir": trained_dir} if trained_dir else {})
        model = attach(model, tokenizer, state, hparams, context)
    return model, tokenizer


def _no_covariance(layer: int) -> torch.Tensor:
    raise RuntimeError("covariance statistics are not available when scoring a checkpoint")


def base_tensors(model_dir: str | Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The named tensors of the unedited model (float32), read from its folder's safetensors
    files alone: comparing a checkpoint with its base needs no model built."""
    found: dict[str, torch.Tensor] = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in set(names) & set(f.keys()):
                found[name] = f.get_tensor(name).float()
    missing = set(names) - set(found)
    if missing:
        raise KeyError(f"base model in {model_dir} lacks tensors {sorted(missing)}")
    return found
