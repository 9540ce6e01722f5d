"""GRACE: General Retrieval Adaptors for Continual Editing (Hartvigsen et al., NeurIPS 2023).

The model's weights never change. One module (a linear map inside layer `layer`, e.g.
Llama's MLP down projection) is wrapped by a discrete key-value codebook:

  key     the module's input activation at the edit prompt's last token
  value   a vector that replaces the module's output there, trained (Adam, `edit_lr`,
          `n_iter` steps) to minimise the NLL of target_new given the prompt
  radius  the deferral radius epsilon: a query within radius of its nearest key gets
          that key's value; any other input runs the unedited module, bit for bit
  label   the target the value was trained for

Codebook maintenance for a new edit with query h and label y (the paper's Algorithm 1):
  no key within (eps_init + eps_i) of h  -> add (h, new value, eps_init, y)
  nearest key's label == y               -> expand: eps_i = d(h, k_i) if h lies outside it
                                            ("coverage"; "moving_average" also moves k_i
                                            halfway to h) and keep training its value
  nearest key's label != y               -> split: add (h, new value) and set both radii
                                            to d(h, k_i)/2 (the old one minus 1e-5)

The codebook is the method state (`apply` returns StateUpdate); `attach` installs it as a
persistent output replacement (nethook.replace_output) for scoring and `detach` removes it.

The lookup is done at every position, not only at a designated "last token" (the
reference implementations' `replace_last` with a key position passed in from the
labels): a position whose own query falls inside a radius is replaced. For the edit
prompt that is its last token, as in the paper; scoring (prompt + target tokens,
batched, padded either side) and generation need no extra bookkeeping.
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass
from typing import Any

import torch

from editharm import nethook
from editharm.methods.base import EditContext, StateUpdate
from editharm.methods.ft import encode_prompt_target, target_nll
from editharm.requests import EditRequest

NAME = "grace"
SUPPORTS_BATCH = False
EDITS_WEIGHTS = False

MODULES = ("mlp_down", "mlp_up", "attn_out", "mlp")  # ModelLayout templates whose output is one tensor
VALUE_INITS = ("cold", "warm")
EXPANSIONS = ("coverage", "moving_average")
SPLIT_MARGIN = 1e-5  # the reference implementation keeps the old key's radius just inside d/2


@dataclass
class Hparams:
    layer: int
    module: str = "mlp_down"        # which module of that layer the codebook wraps
    eps: float = 1.0                # initial deferral radius
    n_iter: int = 100               # value optimisation steps per edit
    edit_lr: float = 1.0            # Adam learning rate for the value
    val_init: str = "cold"          # cold: U[0,1) random; warm: the module's current output
    eps_expand: str = "coverage"
    early_stop_loss: float = 0.0    # stop training a value once its NLL is below this (0: never)

    def __post_init__(self) -> None:
        if self.module not in MODULES:
            raise ValueError(f"grace: module={self.module!r} is not one of {', '.join(MODULES)}")
        if self.val_init not in VALUE_INITS:
            raise ValueError(f"grace: val_init={self.val_init!r} is not one of {', '.join(VALUE_INITS)}")
        if self.eps_expand not in EXPANSIONS:
            raise ValueError(f"grace: eps_expand={self.eps_expand!r} is not one of {', '.join(EXPANSIONS)}")
        if self.eps <= 0:
            raise ValueError(f"grace: eps={self.eps} must be positive")


# ---------------------------------------------------------------- the codebook (pure functions)

@dataclass
class Codebook:
    keys: torch.Tensor      # [n, d_in]  float32
    values: torch.Tensor    # [n, d_out] float32
    radii: torch.Tensor     # [n]        float32
    labels: list[str]
    case_ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def empty(cls, d_in: int, d_out: int) -> "Codebook":
        return cls(torch.zeros(0, d_in), torch.zeros(0, d_out), torch.zeros(0), [], [])

    def to_state(self, module_path: str) -> dict[str, Any]:
        return {"keys": self.keys.detach().cpu().clone(), "values": self.values.detach().cpu().clone(),
                "radii": self.radii.detach().cpu().clone(), "labels": list(self.labels),
                "case_ids": list(self.case_ids), "module": module_path}

    @classmethod
    def from_state(cls, state: dict[str, Any], d_in: int, d_out: int, module_path: str) -> "Codebook":
        if not state or "keys" not in state:
            return cls.empty(d_in, d_out)
        if state.get("module") != module_path:
            raise ValueError(f"grace: the codebook in the method state wraps {state.get('module')!r}, "
                             f"but the hyperparameters name {module_path!r}")
        return cls(torch.as_tensor(state["keys"], dtype=torch.float32), torch.as_tensor(state["values"], dtype=torch.float32),
                   torch.as_tensor(state["radii"], dtype=torch.float32), list(state["labels"]), list(state["case_ids"]))


def nearest_keys(keys: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance from each query [m, d] to its nearest key, and that key's index."""
    # cdist's matrix-product mode finds the nearest key fast; the distance to it is then
    # recomputed directly, so a query equal to a key is at distance exactly 0.
    idx = torch.cdist(queries, keys).argmin(dim=1)
    dist = (queries - keys[idx]).norm(dim=1)
    return dist, idx


def update_codebook(book: Codebook, query: torch.Tensor, label: str, case_id: str, init_value: torch.Tensor,
                    eps: float, expand: str) -> tuple[Codebook, int, str]:
    """Insert an edit into the codebook; returns the new codebook, the slot whose value to train, and the action."""
    keys, values, radii = book.keys.clone(), book.values.clone(), book.radii.clone()
    labels, case_ids = list(book.labels), list(book.case_ids)

    def add(radius: float) -> int:
        nonlocal keys, values, radii
        keys = torch.cat([keys, query[None]])
        values = torch.cat([values, init_value[None]])
        radii = torch.cat([radii, torch.tensor([radius], dtype=radii.dtype)])
        labels.append(label)
        case_ids.append(case_id)
        return len(labels) - 1

    if len(labels) == 0:
        slot, action = add(eps), "add"
    else:
        dist, idx = nearest_keys(keys, query[None])
        d, i = float(dist[0]), int(idx[0])
        if d > eps + float(radii[i]):
            slot, action = add(eps), "add"
        elif labels[i] != label:
            slot, action = add(d / 2), "split"
            radii[i] = d / 2 - SPLIT_MARGIN
        else:
            slot, action = i, "within"
            if d > float(radii[i]):
                action = "expand"
                if expand == "moving_average":
                    keys[i] = 0.5 * keys[i] + 0.5 * query
                radii[i] = d
    return Codebook(keys, values, radii, labels, case_ids), slot, action


# ---------------------------------------------------------------- the adaptor (a persistent output replacement)

class Adaptor:
    """Replaces the module's output wherever its input lies inside a deferral radius (installed by nethook.replace_output)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, radii: torch.Tensor):
        self.keys, self.values, self.radii = keys, values, radii
        self.enabled = True
        self.trained_slot: int | None = None          # while training: this slot's value is `trained_value`
        self.trained_value: torch.Tensor | None = None
        self.handle = None

    def current_values(self) -> torch.Tensor:
        if self.trained_slot is None:
            return self.values
        index = torch.tensor([self.trained_slot], device=self.values.device)
        return self.values.index_copy(0, index, self.trained_value[None])

    def __call__(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor | None:
        if not self.enabled or self.keys.shape[0] == 0:
            return None
        flat = x.reshape(-1, x.shape[-1]).to(self.keys.dtype)
        dist, idx = nearest_keys(self.keys, flat)
        hit = dist <= self.radii[idx]
        if not bool(hit.any()):
            return None  # the unedited output object, untouched
        replacement = self.current_values()[idx].to(output.dtype)
        flat_out = output.reshape(-1, output.shape[-1])
        return torch.where(hit[:, None], replacement, flat_out).view_as(output)


_ATTACHED: "weakref.WeakKeyDictionary[torch.nn.Module, Adaptor]" = weakref.WeakKeyDictionary()


def _module_path(layout, hparams: Hparams) -> str:
    if not 0 <= hparams.layer < layout.n_layers:
        raise ValueError(f"grace: layer {hparams.layer} does not exist; the model has layers 0..{layout.n_layers - 1}")
    return getattr(layout, hparams.module).format(hparams.layer)


def _install(model, module_path: str, adaptor: Adaptor) -> Adaptor:
    # Persistent, not a `with` block: an attached codebook acts on every later forward
    # (scoring, sequential edits) until detach() removes it.
    adaptor.handle = nethook.replace_output(model, module_path, adaptor)
    return adaptor


def attach(model, tokenizer, state: dict[str, Any], hparams: Hparams, context: EditContext):
    """Install the codebook of `state` on `model` (replacing any earlier one) and return the model."""
    detach(model)
    if not state or "keys" not in state or len(state["labels"]) == 0:
        return model
    module_path = state["module"]
    device = next(model.parameters()).device
    adaptor = Adaptor(torch.as_tensor(state["keys"], dtype=torch.float32).to(device),
                      torch.as_tensor(state["values"], dtype=torch.float32).to(device),
                      torch.as_tensor(state["radii"], dtype=torch.float32).to(device))
    _ATTACHED[model] = _install(model, module_path, adaptor)
    return model


def detach(model) -> bool:
    """Remove the codebook `attach` installed; True if there was one."""
    adaptor = _ATTACHED.pop(model, None)
    if adaptor is None:
        return False
    adaptor.handle.remove()
    return True


# ---------------------------------------------------------------- editing

def _stable_seed(seed: int, case_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{case_id}".encode()).digest()[:8], "little")


@torch.no_grad()
def _query_and_output(model, module_path: str, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The module's input and output at the prompt's last token (a clean forward pass)."""
    with nethook.capture(model, [module_path], inputs=True, outputs=True) as rec:
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    pos = int(batch.prompt_last[0])
    seen = rec[module_path]
    return seen.input[0, pos].float().clone(), seen.output[0, pos].float().clone()


def _edit_one(model, tokenizer, request: EditRequest, book: Codebook, module_path: str, hparams: Hparams,
              seed: int) -> tuple[Codebook, dict[str, Any]]:
    device = next(model.parameters()).device
    batch = encode_prompt_target(tokenizer, [request.filled_prompt], [request.target_new], device)
    query, clean_out = _query_and_output(model, module_path, batch)
    if hparams.val_init == "cold":
        gen = torch.Generator().manual_seed(_stable_seed(seed, request.case_id) % (2**63))
        init = torch.rand(clean_out.shape, generator=gen)
    else:
        init = clean_out.cpu()
    book, slot, action = update_codebook(book, query.cpu(), request.target_new, request.case_id, init,
                                         hparams.eps, hparams.eps_expand)

    adaptor = Adaptor(book.keys.to(device), book.values.to(device), book.radii.to(device))
    value = torch.nn.Parameter(book.values[slot].clone().to(device))
    adaptor.trained_slot, adaptor.trained_value = slot, value
    opt = torch.optim.Adam([value], lr=hparams.edit_lr)
    losses: list[float] = []
    with nethook.edit_output(model, module_path, adaptor):
        for _ in range(hparams.n_iter):
            opt.zero_grad(set_to_none=True)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            loss = target_nll(logits, batch).mean()
            losses.append(loss.item())
            if loss.item() < hparams.early_stop_loss:
                break
            loss.backward()
            opt.step()
    book.values[slot] = value.detach().cpu()
    return book, {"action": action, "slot": slot, "iterations": len(losses),
                  "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}


def apply(model, tokenizer, requests: list[EditRequest], hparams: Hparams, context: EditContext) -> StateUpdate:
    layout = context.layout
    module_path = _module_path(layout, hparams)
    module = model.get_submodule(module_path)
    d_in, d_out = _module_dims(module, layout)
    book = Codebook.from_state(context.state, d_in, d_out, module_path)
    # A codebook attached for scoring must not act while the new value is trained.
    attached = _ATTACHED.get(model)
    if attached is not None:
        attached.enabled = False
    infos = []
    try:
        for request in requests:
            book, info = _edit_one(model, tokenizer, request, book, module_path, hparams, context.seed)
            infos.append(info)
    finally:
        if attached is not None:
            attached.enabled = True
    info = dict(infos[-1]) if len(infos) == 1 else {"edits": infos}
    info["n_keys"] = len(book)
    return StateUpdate(state=book.to_state(module_path), info=info)


def _module_dims(module, layout) -> tuple[int, int]:
    """Input and output widths of the wrapped module."""
    weight = getattr(module, "weight", None)
    if weight is not None and weight.dim() == 2:
        out_in = layout.linear_weight(weight)  # GPT-2's Conv1D stores [in, out]
        return out_in.shape[1], out_in.shape[0]
    return layout.hidden_size, layout.hidden_size  # the whole MLP maps the residual stream to itself
